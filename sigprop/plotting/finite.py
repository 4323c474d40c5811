"""Finite-size effects: what zero padding and finite width do to the per-block laws."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sigprop import stats
from sigprop.config import ResNetConfig
from sigprop.plotting._helpers import THEORY, canvas, outside_legend
from sigprop.plotting.style import DOUBLE_COLUMN, palette
from sigprop.theory import BN_BRANCH_SQ_MEAN, BN_BRANCH_VAR
from sigprop.trace import Trace

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_finite_size"]

# (title, y label, fit, infinite-size value, what the x axis is)
_PANELS = (
    ("Skip squared mean per block", r"slope of $\mathrm{mean}_c\,\mu_c^2(x_l)$",
     stats.FitId.SKIP_SQ_MEAN_SLOPE, BN_BRANCH_SQ_MEAN, "image"),
    ("Skip variance per block", r"slope of $\mathrm{mean}_c\,\sigma_c^2(x_l)$",
     stats.FitId.SKIP_VAR_SLOPE, BN_BRANCH_VAR, "image"),
    ("Growth without BN", r"$g$ of $m_{2,l+1} = a + g\, m_{2,l}$",
     stats.FitId.GROWTH_RATE, 2.0, "width"),
)
_INFINITE: dict[str, Any] = {"color": "0.5", "linestyle": ":", "linewidth": 0.9}


def image_side(trace: Trace) -> int:
    """The side of the trace's (square) input images."""
    return int(trace.input.shape[-1])


def network_width(trace: Trace) -> int:
    """Channels of the first stage of a built-in ResNet trace."""
    config = ResNetConfig.of(trace.model)
    if config is None:
        raise ValueError(f"{trace.model.get('name', 'the model')} is not a built-in ResNet: "
                         "its width is unknown")
    return config.width


def plot_finite_size(by_image: Sequence[Trace], by_width: Sequence[Trace], *,
                     axes: Sequence[Axes] | None = None) -> Figure:
    """The per-block laws against image size (BN) and width (unnormalized), with theory.

    (a, b) the slopes per block of the skip path's average channel squared mean and variance
    in a BN ResNet-v2 against the image side: zero padding lowers both below their
    infinite-image values 1/pi and 1 - 1/pi (dotted), as the padding-corrected theory (dashed)
    says; (c) the growth factor per block of an unnormalized network against its width: the
    theory (dashed; zero padding included, width-independent) is an infinite-width limit that
    the measurement approaches as the width grows; 2 on an infinite image (dotted). Points are
    :func:`sigprop.stats.fit` estimates with their 95% intervals.

    Args:
        by_image: BN traces at several image sizes (one stage each).
        by_width: unnormalized traces at several widths.
        axes: the three panels (default: a new 1x3 figure, 7 in wide).

    Returns:
        The figure, with the legend under the panels.
    """
    color = palette()[0]
    with canvas(axes, len(_PANELS), 1, (DOUBLE_COLUMN, 2.8)) as (fig, axs):
        for ax, (title, ylabel, fit_id, infinite, along) in zip(axs, _PANELS, strict=True):
            traces = by_image if along == "image" else by_width
            size = image_side if along == "image" else network_width
            ordered = sorted(traces, key=size)
            xs = [size(t) for t in ordered]
            estimates = [stats.fit(t, fit_id) for t in ordered]
            ax.errorbar(xs, [e.estimate for e in estimates],
                        yerr=[[e.estimate - e.ci95[0] for e in estimates],
                              [e.ci95[1] - e.estimate for e in estimates]],
                        color=color, marker="o", markersize=3.5, capsize=1.5, linewidth=1.1,
                        label="measured (95% CI)")
            theory = [(x, e.predicted) for x, e in zip(xs, estimates, strict=True)
                      if e.predicted is not None and math.isfinite(e.predicted)]
            ax.plot([x for x, _ in theory], [p for _, p in theory], marker="x", markersize=4,
                    label="theory, zero padding", **THEORY)
            ax.axhline(infinite, label="infinite image", **_INFINITE)
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.minorticks_off()
            ax.set_xlabel("image side (pixels)" if along == "image" else "width (channels)")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
        outside_legend(fig, axs[0], axes is None, ncol=3)
    return fig
