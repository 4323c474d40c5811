"""The signal-propagation figures: the README's BN ResNet, four normalizations, identity bias."""

from __future__ import annotations

import math

import numpy as np

from sigprop import stats
from sigprop.paper.config import FigureConfig, RunSpec
from sigprop.paper.networks import overlay, skipinit_label
from sigprop.paper.spec import FigureSpec, Rendering, Traces
from sigprop.paper.tables import measured, tidy
from sigprop.plotting import (
    MEASURED,
    PREDICTED,
    fit_text,
    plot_identity_bias,
    plot_spp,
    plot_spp_trio,
)
from sigprop.theory import predict

__all__ = ["headline_figure", "identity_figure", "trio_figure"]


def headline_figure(config: FigureConfig) -> FigureSpec:
    """The SPP of one BN ResNet-v2: what ``sigprop analyze resnet`` draws, one seed."""
    depth, batch, image = config.headline
    spec = RunSpec(depth, batch=batch, image=image, seeds=config.seeds[:1])

    def render(traces: Traces) -> Rendering:
        trace = traces[spec]
        fig = plot_spp(trace)
        data = tidy([trace], ["BN v2"], measured("output_sq_mean", "output_var", "residual_var",
                                                 "ratio", "one_minus_cosine"))
        b = stats.band(trace, MEASURED["ratio"])
        prediction = predict(trace)
        theory = prediction.blocks[-1].ratio if prediction else math.nan
        gap = stats.band(trace, MEASURED["one_minus_cosine"]).mean
        gap_theory = PREDICTED["one_minus_cosine"](prediction.blocks[-1]) if prediction \
            else math.nan
        branch = float(np.mean(stats.band(trace, MEASURED["residual_var"]).mean))
        branch_theory = float(np.mean([p.residual_var for p in prediction.blocks])) \
            if prediction else math.nan
        caption = (
            f"Signal propagation of a {spec.depth}-block BN ResNet-v2 (one stage), as drawn by "
            f"`sigprop analyze resnet --depth {spec.depth} --width {spec.width or config.width} "
            f"--batch-size {spec.batch} --image-size {spec.image}`, in the panels of Brock, De "
            "& Smith (2021). At the end of each block the average channel squared mean and "
            "variance grow linearly, by "
            f"{fit_text(trace, stats.FitId.SKIP_SQ_MEAN_SLOPE, digits=3)} and "
            f"{fit_text(trace, stats.FitId.SKIP_VAR_SLOPE, digits=3)} per block (1/pi and "
            "1 - 1/pi on an infinite image; zero padding lowers both); the residual branch's "
            f"variance averages {branch:.3f} (theory {branch_theory:.3f}); the residual/skip "
            "ratio of second moments falls as "
            f"1/(m2_0 + l): {b.mean[0]:.2f} at block 0, {b.mean[-1]:.4f} at block "
            f"{trace.n_blocks - 1} (theory {theory:.4f}); the identity bias 1 - cos(x_l, x_l+1) "
            f"falls from {gap[0]:.3f} to {gap[-1]:.2e} (theory {gap_theory:.2e}). Theory dashed. "
            f"{config.describe(spec, [config.seeds[0]])}")
        return fig, data, caption

    return FigureSpec("spp-resnet-v2-batchnorm", "SPP of a BN ResNet-v2", (spec,), render)


def _normalizations(config: FigureConfig) -> dict[str, RunSpec]:
    """BN, none and SkipInit at the SPP depth, by series name."""
    d = config.spp_depth
    return {
        "BN v2": RunSpec(d),
        "unnormalized": RunSpec(d, norm="none"),
        skipinit_label(0.0): RunSpec(d, norm="skipinit", alpha=0.0),
        skipinit_label(0.1): RunSpec(d, norm="skipinit", alpha=0.1),
    }


def trio_figure(config: FigureConfig) -> FigureSpec:
    """Four normalizations: the explosion on a log axis, the rest on linear axes."""
    runs = _normalizations(config)

    def render(traces: Traces) -> Rendering:
        named, fig, data = overlay(plot_spp_trio, traces, runs,
                                   ("skip_m2", "skip_var", "skip_sq_mean", "residual_var"))
        bn, none = named["BN v2"], named["unnormalized"]
        overflow = none.first_overflow
        caption = (
            f"Signal-propagation plot of four {config.spp_depth}-block ResNets (v2, one stage) "
            "against the block index. Top left, on a log axis: the skip path's second moment "
            "E[x_l^2] of all four; the unnormalized network grows geometrically, by "
            f"{fit_text(none, stats.FitId.GROWTH_RATE)} per block (2 on an infinite image; "
            "the theory includes zero padding; the rest of the gap, compounded over the "
            "blocks, is finite width)"
            + (f", and overflows float32 at block {overflow} (vertical line)" if overflow
               is not None else "")
            + ". The other panels, on linear axes, leave the explosion out: the skip path's "
            "average channel variance and squared mean and the residual branch's average "
            "channel variance. BN v2 grows linearly (slope of E[x_l^2] "
            f"{fit_text(bn, stats.FitId.SKIP_M2_SLOPE)} per block) with a branch variance "
            "near 1 - 1/pi less the zero padding's share; SkipInit with alpha = 0 is the "
            "identity (its branch is exactly 0) and with alpha = 0.1 grows by "
            f"{fit_text(named[skipinit_label(0.1)], stats.FitId.GROWTH_RATE, digits=3)} "
            "per block. Theory dashed in each network's colour. "
            f"{config.describe()}")
        return fig, data, caption

    return FigureSpec("spp-trio", "SPP of BN, unnormalized and SkipInit", tuple(runs.values()),
                      render)


def identity_figure(config: FigureConfig) -> FigureSpec:
    """Identity bias (1 - cos) and norm ratio between each block's output and its skip path."""
    runs = _normalizations(config)

    def render(traces: Traces) -> Rendering:
        named, fig, data = overlay(plot_identity_bias, traces, runs,
                                   ("one_minus_cosine", "branch_norm_ratio"))
        bn = stats.band(named["BN v2"], MEASURED["one_minus_cosine"]).mean
        none = stats.band(named["unnormalized"], MEASURED["one_minus_cosine"]).mean
        finite = [v for v in none if math.isfinite(v)]
        small = stats.band(named[skipinit_label(0.1)], MEASURED["branch_norm_ratio"]).mean
        caption = (
            f"Identity bias of {config.spp_depth}-block ResNets (v2, one stage): 1 - cos "
            "between the skip operand x_l and the block output x_l + f_l(x_l) (0: the block is "
            "the identity), and the branch/skip norm ratio ||f_l(x_l)|| / ||x_l||, both on log "
            "axes against the block index; theory 1 - 1/sqrt(1 + ratio) and sqrt(ratio) "
            f"dashed. In BN v2, 1 - cos falls from {bn[0]:.3f} to {bn[-1]:.2e}; the "
            "unnormalized network stays near 1 - 1/sqrt(2) = 0.293 (mean "
            f"{np.mean(finite):.3f}"
            + (" before overflow" if named["unnormalized"].first_overflow is not None else "")
            + "); SkipInit is the identity at alpha = 0 (both exactly 0, not drawn on the log "
            "axes) and close to it at alpha = 0.1 (norm ratio "
            f"{np.mean([v for v in small if math.isfinite(v)]):.3f}). {config.describe()}")
        return fig, data, caption

    return FigureSpec("identity-bias", "Identity bias", tuple(runs.values()), render)
