"""Orderings and variants of the residual branch, and the stages of a multi-stage network."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sigprop.plotting._helpers import (
    LINEAR,
    band_line,
    canvas,
    mark_stages,
    outside_legend,
    scale_y,
    theory_legend_entry,
    theory_line,
)
from sigprop.plotting.quantities import MEASURED, PREDICTED
from sigprop.plotting.style import DOUBLE_COLUMN, palette
from sigprop.theory import predict
from sigprop.trace import Trace

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_orderings"]

_PANELS = (
    ("(a) Ordering: skip second moment", r"$E[x_l^2]$"),
    ("(b) Ordering: skip channel squared mean", r"$\mathrm{mean}_c\,\mu_c^2(x_l)$"),
    ("(c) Post- vs pre-activation", r"$E[x_l^2]$ (v1: after the previous ReLU)"),
    ("(d) Stages: the skip path resets", r"$E[x_l^2]$"),
)


def plot_orderings(bn_relu: Trace, relu_bn: Trace, v1: Trace, multistage: Trace, *,
                   axes: Sequence[Axes] | None = None) -> Figure:
    """Orderings and variants: four panels against the block index, theory dashed.

    (a) skip second moment of BN-ReLU-Conv vs ReLU-BN-Conv branches (+1 vs +2 per block on an
    infinite image);
    (b) their skip average channel squared mean (+1/pi vs 0 per block on an infinite image);
    (c) post-activation v1 vs pre-activation v2 (``bn_relu``), skip second moment (in v1 the
    skip path is the previous block's sum after its ReLU; its theory is approximate and
    labelled so, dashed in its colour);
    (d) a multi-stage v2 network: skip second moment and its reset at every projection.

    Args:
        bn_relu, relu_bn: v2 BN networks with the two orderings.
        v1: a v1 (post-activation) BN network.
        multistage: a v2 BN network with several stages.
        axes: four axes to draw into (default: a new 2x2 figure, 7 in wide).

    Returns:
        The figure, with one legend under the panels (in the first panel when ``axes`` are
        given).
    """
    colors = palette()
    with canvas(axes, len(_PANELS), 2, (DOUBLE_COLUMN, 4.8)) as (fig, axs):

        def draw(ax: Axes, trace: Trace, quantity: str, color: str, label: str) -> None:
            band_line(ax, trace, MEASURED[quantity], color, label)
            prediction = predict(trace)
            if prediction is not None and not prediction.exact:  # said so, in its colour
                theory_line(ax, trace, PREDICTED[quantity], f"{label}: approximate theory",
                            color=color)
            else:
                theory_line(ax, trace, PREDICTED[quantity])

        for trace, label, color in ((bn_relu, "BN-ReLU-Conv", colors[0]),
                                    (relu_bn, "ReLU-BN-Conv", colors[4])):
            draw(axs[0], trace, "skip_m2", color, label)
            draw(axs[1], trace, "skip_sq_mean", color, label)
        for trace, label, color in ((bn_relu, "v2 (pre-activation)", colors[0]),
                                    (v1, "v1 (post-activation)", colors[5])):
            draw(axs[2], trace, "skip_m2", color, label)
        stages = len(multistage.by_stage())
        draw(axs[3], multistage, "skip_m2", colors[2], f"{stages} stages, v2")
        mark_stages(axs[3], multistage, "projection shortcut")
        for ax, (title, ylabel) in zip(axs, _PANELS, strict=True):
            ax.set_title(title)
            ax.set_xlabel("block index $l$")
            ax.set_ylabel(ylabel)
            scale_y(ax, LINEAR)
        theory_legend_entry(axs[0])
        outside_legend(fig, axs[0], axes is None, ncol=4, more=axs[1:])
    return fig
