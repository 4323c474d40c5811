"""The depth figures: the sqrt(depth) law and the depth sweep."""

from __future__ import annotations

import numpy as np

from sigprop import stats
from sigprop.paper.config import FigureConfig, RunSpec
from sigprop.paper.networks import skipinit_label
from sigprop.paper.spec import FigureSpec, Rendering, Traces
from sigprop.paper.tables import final_m2, measured, tidy
from sigprop.plotting import fit_text, plot_depth_sweep, plot_sqrt_depth_law, sweep_points

__all__ = ["law_figure", "sweep_figure"]


def law_figure(config: FigureConfig) -> FigureSpec:
    """Skip/residual second moments against the block for BN networks of several depths."""
    runs = [RunSpec(d) for d in config.law_depths]

    def render(traces: Traces) -> Rendering:
        ordered = [traces[r] for r in runs]
        labels = [f"d = {r.depth}" for r in runs]
        fig = plot_sqrt_depth_law(ordered, labels)
        data = tidy(ordered, labels, measured("inverse_ratio", "ratio"))
        fits = "; ".join(f"d = {r.depth}: {fit_text(t, stats.FitId.INVERSE_RATIO_SLOPE)}"
                         for r, t in zip(runs, ordered, strict=True))
        exponents = "; ".join(f"d = {r.depth}: {fit_text(t, stats.FitId.RATIO_EXPONENT)}"
                              for r, t in zip(runs, ordered, strict=True))
        caption = (
            "The sqrt(depth) law as a straight line: the skip path's second moment over the "
            "residual branch's, E[x_l^2] / E[f_l(x_l)^2] = 1/ratio, against the block index l, "
            "for BN ResNet-v2 networks of several depths (one stage). In theory it is "
            "(m2_0 + f l)/f, a line of slope 1 whatever the depth (dashed, in each network's "
            "colour): the branch is downscaled by sqrt(l) in standard deviation. Fitted "
            f"slopes with calibrated 95% intervals, beside the same fit of the theory: {fits}. "
            "As a power law of the ratio in l + 1 the same data give exponents "
            f"{exponents} (-1 only at infinite depth: the m2_0 offset bends the first "
            f"blocks). {config.describe()}")
        return fig, data, caption

    return FigureSpec("sqrt-depth-law", "The sqrt(depth) law", tuple(runs), render)


# The closed form of E[x_d^2] of each variant of the sweep, for the caption.
_SWEEP_THEORY = {"BN v2": "m2_0 + f d", "unnormalized": "(1 + f)^d m2_0, f < 1 with zero "
                 "padding (2^d m2_0 on an infinite image)", skipinit_label(0.0): "m2_0",
                 "branch / sqrt(d)": "(1 + f/d)^d m2_0 ~ e^f m2_0"}


def sweep_figure(config: FigureConfig) -> FigureSpec:
    """The skip path's second moment after the last block against the number of blocks."""
    depths, seeds = config.sweep_depths, config.seeds[:config.sweep_seeds]
    runs = {
        "BN v2": [RunSpec(d, seeds=seeds) for d in depths],
        "unnormalized": [RunSpec(d, norm="none", seeds=seeds) for d in depths
                         if d <= config.sweep_overflow_depth],
        skipinit_label(0.0): [RunSpec(d, norm="skipinit", alpha=0.0, seeds=seeds)
                              for d in depths],
        "branch / sqrt(d)": [RunSpec(d, norm="sqrt-depth", seeds=seeds) for d in depths],
    }

    def render(traces: Traces) -> Rendering:
        sweeps = {label: [traces[r] for r in specs] for label, specs in runs.items()}
        fig = plot_depth_sweep(sweeps, explosive=["unnormalized"])
        bn = sweep_points(sweeps["BN v2"])
        xs = np.array([p.depth for p in bn], dtype=float)
        ys = np.array([p.value for p in bn])
        slope = float(np.polyfit(xs, ys, 1)[0])
        theory_slope = float(np.polyfit(xs, [p.theory for p in bn], 1)[0])
        rules = "; ".join(f"{k}: {v}" for k, v in _SWEEP_THEORY.items())
        none = sweep_points(sweeps["unnormalized"])
        first = next((p.depth for p in none if p.overflow), None)
        caption = (
            "Depth sweep: second moment of the skip path after the last block, E[x_d^2] (the "
            "last block's output), against the number of residual blocks d, one line per "
            "variant (geometric mean over seeds with 95% error bars), each with its theory "
            "dashed in "
            f"the same colour ({rules}; m2_0 is the measured skip second moment at block 0). "
            f"BN v2 grows linearly in d (least-squares slope {slope:.2f}, theory "
            f"{theory_slope:.2f} with zero padding); the unnormalized network grows "
            "geometrically"
            + (f"; it is non-finite (float32 overflow) at d = {first}, not drawn" if first else "")
            + f"; deeper unnormalized networks are not measured; SkipInit at alpha = 0 "
            "stays at m2_0 and the 1/sqrt(d) branch scaling ends near e m2_0 at every depth. "
            f"Depths {', '.join(str(d) for d in config.sweep_depths)}. "
            f"{config.describe(seeds=seeds)}")
        return fig, final_m2(sweeps), caption

    return FigureSpec("depth-sweep", "Depth sweep", tuple(r for rs in runs.values() for r in rs),
                      render)
