"""Initializations side by side: skip path, branch ratio and identity bias at equal depth."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sigprop.plotting._helpers import (
    LOG,
    all_zero,
    band_line,
    canvas,
    mark_overflow,
    outside_legend,
    scale_y,
    series,
    theory_legend_entry,
    theory_line,
)
from sigprop.plotting.quantities import MEASURED, PREDICTED
from sigprop.plotting.style import DOUBLE_COLUMN
from sigprop.trace import Trace

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_comparison"]

# (title, y label, quantity, log_from as in scale_y)
_PANELS = (
    ("Skip path: second moment", r"$E[x_l^2]$", "skip_m2", LOG),
    ("Residual / skip", r"$E[f_l(x_l)^2]\, /\, E[x_l^2]$", "ratio", LOG),
    ("Identity bias", r"$1 - \cos(x_l,\ x_l + f_l(x_l))$", "one_minus_cosine", LOG),
)


def plot_comparison(traces: Sequence[Trace], labels: Sequence[str] | None = None, *,
                    colors: Sequence[str] | None = None, axes: Sequence[Axes] | None = None
                    ) -> Figure:
    """Several networks (e.g. initializations at equal depth) in three panels, theory dashed.

    (a) the skip path's second moment ``E[x_l^2]`` (log axis), (b) the residual/skip ratio of
    second moments and (c) the identity bias ``1 - cos`` between the skip operand and the block
    output (0: the block is the identity), both on log axes (a branch that is exactly 0 cannot
    be drawn there and its legend entry says so), against the block index, each network's mean
    over runs with a 95% band and its closed form dashed in its colour where
    :func:`sigprop.theory.predict` has one.

    Args:
        traces: the traces to overlay.
        labels: legend entry per trace (default: from the model, as in
            :func:`sigprop.plotting.plot_spp`).
        colors: colour per trace (default: sigprop's palette in order).
        axes: the three panels (default: a new 1x3 figure, 7 in wide).

    Returns:
        The figure; the legend is under the panels when the figure is new, else in the ratio
        panel.

    >>> import sigprop
    >>> traces = [sigprop.measure(sigprop.models.resnet(4, width=4, norm=norm, seed=0),
    ...                           sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0))
    ...           for norm in ("nf", "fixup")]
    >>> [ax.get_yscale() for ax in plot_comparison(traces, ["NF", "Fixup"]).axes]
    ['log', 'log', 'log']
    """
    lines = series(traces, labels, colors)
    with canvas(axes, len(_PANELS), 1, (DOUBLE_COLUMN, 2.7)) as (fig, axs):
        for trace, label, color in lines:
            for ax, (_, _, name, log_from) in zip(axs, _PANELS, strict=True):
                log = log_from == LOG
                zero = log and all_zero(trace, MEASURED["residual_m2"])
                band_line(ax, trace, MEASURED[name], color,
                          label + (r" (branch $\equiv 0$: ratio and 1 - cos not drawn)"
                                   if zero else ""), log=log)
                theory_line(ax, trace, PREDICTED[name], color=color)
            mark_overflow(axs, trace, label)
        for ax, (title, ylabel, _, log_from) in zip(axs, _PANELS, strict=True):
            ax.set_title(title)
            ax.set_xlabel("block index $l$")
            ax.set_ylabel(ylabel)
            scale_y(ax, log_from)
        theory_legend_entry(axs[1], "theory (dashed, in its network's colour)")
        outside_legend(fig, axs[1], axes is None, ncol=3)
    return fig
