"""Identity bias: how close each block's output stays to its skip path."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sigprop import stats
from sigprop.plotting._helpers import (
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

_NORM_RATIO_LABEL = r"$\|f_l(x_l)\|\,/\,\|x_l\|$"


def plot_zoo(traces: Sequence[Trace], labels: Sequence[str] | None = None, *,
             groups: Sequence[str] | None = None, threshold: float = 0.1,
             colors: Sequence[str] | None = None, axes: Sequence[Axes] | None = None) -> Figure:
    """Which networks are biased towards the identity: any traces, in small multiples.

    One panel per group of traces (``groups``, e.g. built-in with BN, built-in without it, real
    architectures; by default one panel): the branch/skip norm ratio
    ``||f_l(x_l)|| / ||x_l||`` against the block index, log axis, the dotted line at
    ``threshold``. A trace whose branches are all exactly 0 cannot be drawn on a log axis: it is
    drawn as triangles on the panel's bottom edge and said so in the legend. Each panel's
    legend, under it, gives :func:`sigprop.stats.effective_depth` (blocks whose branch moves the
    skip path by at least ``threshold`` in norm) out of the number of blocks; colours restart in
    every panel, so no two lines of a panel share one.

    Args:
        traces: traces of any models (built-in or not; no theory is drawn).
        labels: legend entry per trace (default: from the model, as in
            :func:`sigprop.plotting.plot_spp`).
        groups: the panel title of each trace (default: one panel).
        threshold: the norm ratio under which a block counts as close to the identity.
        colors: colours of each panel's lines, in order (default: sigprop's palette).
        axes: one axis per group, in order of first appearance (default: a new row, 7 in wide).

    Returns:
        The figure.
    """
    lines = series(traces, labels)
    titles = list(groups) if groups is not None else [""] * len(lines)
    if len(titles) != len(lines):
        raise ValueError(f"got {len(titles)} groups for {len(lines)} traces")
    panels = list(dict.fromkeys(titles))
    cycle = list(colors) if colors else palette()
    norm_ratio = MEASURED["branch_norm_ratio"]
    with canvas(axes, len(panels), 1, (DOUBLE_COLUMN, 4.2)) as (fig, axs):
        for ax, title in zip(axs, panels, strict=True):
            members = [line for line, group in zip(lines, titles, strict=True) if group == title]
            zero = []
            for k, (trace, label, _) in enumerate(members):
                color = cycle[k % len(cycle)]
                n = trace.n_blocks
                text = f"{label}: {stats.effective_depth(trace, threshold)}/{n}"
                if all_zero(trace, norm_ratio):
                    zero.append((trace, text, color))
                else:
                    band_line(ax, trace, norm_ratio, color, text, log=True)
            ax.axhline(threshold, color="0.4", linestyle=":", linewidth=0.9)
            scale_y(ax, LOG)
            bottom = ax.get_ylim()[0]
            for (trace, text, color), marker in zip(zero, "vs^D", strict=False):
                ax.plot(range(trace.n_blocks), [bottom] * trace.n_blocks, color=color,
                        linestyle="none", marker=marker, markersize=3, clip_on=False,
                        label=text + r" (branch $\equiv 0$: bottom edge)")
            ax.set_title(title)
            ax.set_xlabel("block index $l$")
            integer_blocks(ax)
            handles, texts = ax.get_legend_handles_labels()
            # One column, wrapped to the panel's width: the legends of neighbours never meet.
            ax.legend(handles, [textwrap.fill(t, 34) for t in texts], loc="upper center",
                      bbox_to_anchor=(0.5, -0.2), frameon=False, fontsize=6, handlelength=2.2,
                      title_fontsize=6, title=f"blocks with norm ratio >= {threshold:g}")
        axs[0].set_ylabel(_NORM_RATIO_LABEL)
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
