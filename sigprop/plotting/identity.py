"""Identity bias: how close each block's output stays to its skip path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sigprop import stats
from sigprop.plotting._helpers import (
    LINEAR,
    LOG,
    all_zero,
    band_line,
    canvas,
    integer_blocks,
    log_label,
    mark_overflow,
    outside_legend,
    scale_y,
    series,
    theory_legend_entry,
    theory_line,
)
from sigprop.plotting.quantities import MEASURED, PREDICTED
from sigprop.plotting.style import DOUBLE_COLUMN, palette
from sigprop.trace import Trace

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_identity_bias", "plot_zoo"]

_COSINE_LABEL = r"$\cos(x_l,\ x_l + f_l(x_l))$"
_NORM_RATIO_LABEL = r"$\|f_l(x_l)\|\,/\,\|x_l\|$"


def plot_zoo(traces: Sequence[Trace], labels: Sequence[str] | None = None, *,
             threshold: float = 0.1, colors: Sequence[str] | None = None,
             axes: Sequence[Axes] | None = None) -> Figure:
    """Which networks are biased towards the identity: any traces, against relative depth.

    (a) the branch/skip norm ratio ``||f_l(x_l)|| / ||x_l||`` (log axis; the dotted line is
    ``threshold``); (b) the cosine between the skip operand and the block output (1: identity).
    The x axis is the block's relative depth ``(l + 1) / n`` so networks of different depths
    share it; the legend gives :func:`sigprop.stats.effective_depth` (blocks whose branch moves
    the skip path by at least ``threshold`` in norm) out of the number of blocks.

    Args:
        traces: traces of any models (built-in or not; no theory is drawn).
        labels: legend entry per trace (default: from the model, as in
            :func:`sigprop.plotting.plot_spp`).
        threshold: the norm ratio under which a block counts as close to the identity.
        colors: colour per trace (default: sigprop's palette in order).
        axes: the norm-ratio and the cosine axes (default: a new 1x2 figure, 7 in wide).

    Returns:
        The figure; the legend, with the effective depths, is under the panels when the figure
        is new, else in the norm-ratio panel.
    """
    lines = series(traces, labels, colors)
    norm_ratio = MEASURED["branch_norm_ratio"]
    # Once the colours are used up they repeat with the next line style: no two lines look alike.
    cycle = len(colors or palette())
    linestyles = ("-", "--", "-.", ":")
    with canvas(axes, 2, 1, (DOUBLE_COLUMN, 2.9)) as (fig, axs):
        for k, (trace, label, color) in enumerate(lines):
            n = trace.n_blocks
            relative = lambda i, n=n: (i + 1) / n  # noqa: E731
            linestyle = linestyles[(k // cycle) % len(linestyles)]
            depth = stats.effective_depth(trace, threshold)
            zero = r" (branch $\equiv 0$)" if all_zero(trace, norm_ratio) else ""
            band_line(axs[0], trace, norm_ratio, color, f"{label}: {depth}/{n}{zero}", linestyle,
                      relative, log=True)
            band_line(axs[1], trace, MEASURED["cosine"], color, label, linestyle, relative)
        axs[0].axhline(threshold, color="0.4", linestyle=":", linewidth=0.9)
        axs[0].set_ylabel(_NORM_RATIO_LABEL)
        axs[0].set_title("Branch / skip norm ratio")
        scale_y(axs[0], LOG)
        axs[1].set_ylabel(_COSINE_LABEL)
        axs[1].set_title("Identity bias (1: the block is the identity)")
        scale_y(axs[1], LINEAR)
        for ax in axs:
            ax.set_xlabel("relative depth $(l + 1) / n$")
            ax.set_xlim(0, 1)
        outside_legend(fig, axs[0], axes is None, ncol=3,
                       title=f"effective depth (blocks with norm ratio >= {threshold:g}) / blocks")
    return fig


def plot_identity_bias(traces: Sequence[Trace], labels: Sequence[str] | None = None, *,
                       colors: Sequence[str] | None = None, axes: Sequence[Axes] | None = None
                       ) -> Figure:
    """Per-block closeness of the output to the skip path, with the theory dashed.

    (a) the identity bias ``1 - cos`` between skip and output
    (:attr:`sigprop.BlockStats.cosine`; theory ``1 - 1/sqrt(1 + ratio)``), log axis: 0 is the
    identity, so a deep BN block's 1e-3 and an unnormalized block's 0.3 are both visible;
    (b) branch/skip norm ratio (:attr:`sigprop.BlockStats.branch_norm_ratio`; theory
    ``sqrt(ratio)``), log axis. Theory dashed in each trace's colour; a trace that is exactly
    the identity (both 0) is named in the legend as not drawn.

    Args:
        traces: the traces to overlay.
        labels: legend entry per trace (default: from the model, as in
            :func:`sigprop.plotting.plot_spp`).
        colors: colour per trace (default: sigprop's palette in order).
        axes: the identity-bias and the norm-ratio axes (default: a new 1x2 figure, 7 in wide).

    Returns:
        The figure; the legend is under the panels when the figure is new, else in the
        norm-ratio panel.

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(4, width=4, seed=0),
    ...                         sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0))
    >>> [ax.get_yscale() for ax in plot_identity_bias([trace]).axes]
    ['log', 'log']
    """
    norm_ratio, gap = MEASURED["branch_norm_ratio"], MEASURED["one_minus_cosine"]
    with canvas(axes, 2, 1, (DOUBLE_COLUMN, 2.9)) as (fig, axs):
        for trace, label, color in series(traces, labels, colors):
            band_line(axs[0], trace, gap, color, label, log=True)
            theory_line(axs[0], trace, PREDICTED["one_minus_cosine"], color=color)
            band_line(axs[1], trace, norm_ratio, color, log_label(trace, norm_ratio, label),
                      log=True)
            theory_line(axs[1], trace, PREDICTED["branch_norm_ratio"], color=color)
            mark_overflow(axs, trace, label)
        axs[0].set_ylabel(r"$1 - \cos(x_l,\ x_l + f_l(x_l))$")
        axs[0].set_title("Identity bias: 1 - cosine of skip path and block output")
        axs[1].set_ylabel(_NORM_RATIO_LABEL)
        axs[1].set_title("Branch / skip norm ratio")
        for ax in axs:
            scale_y(ax, LOG)
            ax.set_xlabel("block index $l$")
            integer_blocks(ax)
        theory_legend_entry(axs[1], "theory (dashed, in its network's colour)")
        outside_legend(fig, axs[1], axes is None, ncol=5)
    return fig
