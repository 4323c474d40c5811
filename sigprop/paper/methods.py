"""Batch norm beside the normalizer-free family: BN, SkipInit, NF-ResNet and Fixup, equal depth."""

from __future__ import annotations

from sigprop import stats
from sigprop.paper.config import FigureConfig, RunSpec
from sigprop.paper.networks import overlay, skipinit_label
from sigprop.paper.spec import FigureSpec, Rendering, Traces
from sigprop.plotting import MEASURED, fit_text, plot_comparison
from sigprop.trace import Trace

__all__ = ["NF_LABEL", "methods_figure"]

#: The series name of the built-in NF-ResNet of the figure set (alpha = 0.2, gains not zeroed).
NF_LABEL = "NF-ResNet, alpha = 0.2"
_FIXUP = "Fixup"
_FIXUP_NONZERO = "Fixup, non-zero last layer"


def _methods(config: FigureConfig) -> dict[str, RunSpec]:
    """BN, SkipInit, NF-ResNet and Fixup (with and without its zero layer) at the SPP depth."""
    d = config.spp_depth
    return {
        "BN v2": RunSpec(d),
        skipinit_label(0.2): RunSpec(d, norm="skipinit", alpha=0.2),
        NF_LABEL: RunSpec(d, norm="nf", alpha=0.2),
        _FIXUP: RunSpec(d, norm="fixup"),
        _FIXUP_NONZERO: RunSpec(d, norm="fixup", fixup_zero_last=False),
    }


def _end_over_start(trace: Trace) -> float:
    """The mean skip second moment at the last block over the one at the first."""
    m2 = stats.band(trace, MEASURED["skip_m2"]).mean
    return m2[-1] / m2[0]


def methods_figure(config: FigureConfig) -> FigureSpec:
    """Second moment, branch ratio and identity bias of the four answers to deep ResNets."""
    runs = _methods(config)
    d = config.spp_depth

    def render(traces: Traces) -> Rendering:
        named, fig, data = overlay(plot_comparison, traces, runs,
                                   ("skip_m2", "residual_m2", "ratio", "one_minus_cosine"))
        bn, skipinit, nf = named["BN v2"], named[skipinit_label(0.2)], named[NF_LABEL]
        fixup, nonzero = named[_FIXUP], named[_FIXUP_NONZERO]
        largest = max(b.branch_norm_ratio for _, b in fixup.blocks())
        ends = "; ".join(f"{label} x{_end_over_start(t):.3g}" for label, t in named.items())
        caption = (
            f"Batch norm and the normalizer-free family at equal depth: {d}-block ResNets (v2, "
            "one stage), forward pass at initialization. Skip-path second moment E[x_l^2] "
            "(log axis), residual/skip ratio of second moments and identity bias 1 - cos "
            "between skip path and block output (log axes), against the block index; theory "
            "dashed in each network's colour. BN v2 grows "
            f"linearly, by {fit_text(bn, stats.FitId.SKIP_M2_SLOPE)} per block. SkipInit with "
            "alpha = 0.2 grows geometrically, by "
            f"{fit_text(skipinit, stats.FitId.GROWTH_RATE, digits=3)} per block (1 + alpha^2 "
            "= 1.04 on an infinite image). The NF-ResNet with the same alpha divides the "
            "branch's input by beta_l = sqrt(1 + l alpha^2), its expected standard deviation, "
            "and standardizes every convolution's weights: its skip path grows linearly, by "
            f"{fit_text(nf, stats.FitId.SKIP_M2_SLOPE, digits=4)} per block (alpha^2 m2_0 on "
            "an infinite image; zero padding gives m2_0 (1 + l alpha^2)^f, f < 1), and its "
            "ratio falls as alpha^2 f / (1 + l alpha^2): BN's identity bias without BN (1/ratio "
            f"grows by {fit_text(nf, stats.FitId.INVERSE_RATIO_SLOPE)} per block). Fixup "
            "zero-initializes every branch's last layer: each block is exactly the identity "
            f"(largest branch/skip norm ratio {largest:.3g}; its ratio and 1 - cos are 0, not "
            "drawn on the log axes). Without the zero layer, Fixup's first layer scaled by "
            "d^(-1/2) makes each branch 1/d of its input, like dividing the branch by sqrt(d): "
            f"{fit_text(nonzero, stats.FitId.GROWTH_RATE, digits=4)} per block (1 + f/d), about "
            f"e^f over the network. Last over first skip second moment: {ends}. "
            f"{config.describe()}")
        return fig, data, caption

    return FigureSpec("normalizer-free", "BN, SkipInit, NF-ResNet and Fixup",
                      tuple(runs.values()), render)
