"""The depth figures: the sqrt(depth) law and the depth sweep."""

from __future__ import annotations

import numpy as np

from sigprop import stats
from sigprop.paper.config import FigureConfig, RunSpec
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


# The closed form of each variant's growth E[x_d^2] / E[x_0^2], for the caption.
_SWEEP_THEORY = {"BN v2": "1 + f d / m2_0", "unnormalized": "(1 + f)^d, f < 1 with zero "
                 "padding (2^d on an infinite image)",
                 "branch / sqrt(d)": "(1 + f/d)^d ~ e^f"}


def sweep_figure(config: FigureConfig) -> FigureSpec:
    """The skip path's growth over the network against the number of blocks."""
    depths, seeds = config.sweep_depths, config.seeds[:config.sweep_seeds]
    runs = {
        "BN v2": [RunSpec(d, seeds=seeds) for d in depths],
        "unnormalized": [RunSpec(d, norm="none", seeds=seeds) for d in depths
                         if d <= config.sweep_overflow_depth],
        "branch / sqrt(d)": [RunSpec(d, norm="sqrt-depth", seeds=seeds) for d in depths],
    }

    def render(traces: Traces) -> Rendering:
        sweeps = {label: [traces[r] for r in specs] for label, specs in runs.items()}
        fig = plot_depth_sweep(sweeps, explosive=["unnormalized"])
        bn = sweep_points(sweeps["BN v2"])
        xs = np.array([p.depth for p in bn], dtype=float)
        slope = float(np.polyfit(np.log(xs), np.log([p.value - 1 for p in bn]), 1)[0])
        rules = "; ".join(f"{k}: {v}" for k, v in _SWEEP_THEORY.items())
        none = [p.per_block() for p in sweep_points(sweeps["unnormalized"])]
        finite = [p for p in none if not p.overflow]
        first = next((p.depth for p in none if p.overflow), None)
        scaled = sweep_points(sweeps["branch / sqrt(d)"])
        caption = (
            "Depth sweep: the skip path's growth over the network, E[x_d^2] / E[x_0^2] (the "
            "last block's output over the first block's skip path), against the number of "
            "residual blocks d, one line per variant (geometric mean over seeds with 95% error "
            f"bars), each with its theory dashed in the same colour ({rules}; m2_0 = E[x_0^2]). "
            "BN v2's growth minus 1 rises as d^"
            f"{slope:.2f} (linear growth: d^1), from {bn[0].value:.3g} at d = {bn[0].depth} to "
            f"{bn[-1].value:.3g} at d = {bn[-1].depth} (theory {bn[-1].theory:.3g}); with the "
            "1/sqrt(d) branch scaling the growth stays between "
            f"{min(p.value for p in scaled):.3g} and {max(p.value for p in scaled):.3g} over "
            f"all depths (theory {min(p.theory for p in scaled):.3g} to "
            f"{max(p.theory for p in scaled):.3g}). Right: the unnormalized network's factor "
            "per block, (E[x_d^2] / E[x_0^2])^(1/d), "
            + ", ".join(f"{p.value:.3f} (theory {p.theory:.3f}) at d = {p.depth}"
                        for p in finite)
            + "; the theory includes zero padding, the rest of the gap is finite width"
            + (f"; it is non-finite (float32 overflow) at d = {first}, not drawn" if first else "")
            + ". SkipInit at alpha = 0 (every block the identity: a growth of exactly 1 at "
            "every depth) is left out. "
            f"Depths {', '.join(str(d) for d in config.sweep_depths)}. "
            f"{config.describe(seeds=seeds)}")
        return fig, final_m2(sweeps), caption

    return FigureSpec("depth-sweep", "Depth sweep", tuple(r for rs in runs.values() for r in rs),
                      render)
