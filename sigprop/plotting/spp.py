"""Signal-propagation plots (SPP): skip-path and branch statistics against the block index."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sigprop.plotting._helpers import (
    LINEAR,
    LOG,
    band_line,
    canvas,
    legend,
    log_label,
    mark_overflow,
    mark_stages,
    scale_y,
    series,
    theory_legend_entry,
    theory_line,
)
from sigprop.plotting.quantities import MEASURED, PREDICTED
from sigprop.plotting.style import DOUBLE_COLUMN
from sigprop.theory import Prediction, predict
from sigprop.trace import Trace

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_spp", "plot_spp_trio"]


@dataclass(frozen=True, slots=True)
class _Panel:
    """A panel of :func:`plot_spp`: its lines (legend, quantity, line style) and its theory."""

    title: str
    ylabel: str
    log_from: float  # decades for a log axis, as in scale_y
    lines: tuple[tuple[str, str, str], ...]
    theory: str  # the quantity of PREDICTED
    theory_note: Callable[[Prediction], str] | None = None


def _ratio_rule(prediction: Prediction) -> str:
    """The part of a theory's rule that gives the residual/skip ratio."""
    rule = prediction.rule
    return next((part.strip() for part in rule.split(";") if "ratio" in part), rule)


_PANELS = (
    _Panel("Average channel squared mean", r"$\mathrm{mean}_c\, \mu_c^2$", 2.0,
           (("skip", "skip_sq_mean", "-"), ("output", "output_sq_mean", "--")), "skip_sq_mean"),
    _Panel("Average channel variance", r"$\mathrm{mean}_c\, \sigma_c^2$", 2.0,
           (("skip", "skip_var", "-"), ("output", "output_var", "--"),
            ("residual", "residual_var", ":")), "skip_var"),
    _Panel("Residual / skip", r"$E[f_l(x_l)^2]\, /\, E[x_l^2]$", LOG,
           (("measured", "ratio", "-"),), "ratio", _ratio_rule),
    _Panel("Identity bias", r"$\cos(x_l,\ x_l + f_l(x_l))$", LINEAR,
           (("skip vs output", "cosine", "-"),), "cosine", lambda _: "1/sqrt(1 + ratio)"),
)


def plot_spp(
    traces: Trace | Sequence[Trace],
    labels: Sequence[str] | None = None,
    *,
    theory: bool = True,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Signal-propagation plot against block index, four panels.

    Average channel squared mean and variance (skip, output, residual), the residual/skip ratio of
    second moments, and the identity bias: the cosine between the skip operand and the block
    output (1: the block is the identity).

    Several traces (e.g. two architectures) are overlaid, one colour each. With several runs
    (seeds) a trace is drawn as its mean with a 95% confidence band. The theory (docs/theory.md) is
    drawn dashed in black for the built-in ResNets; stage boundaries are dotted vertical lines;
    the first block with a non-finite statistic (float32 overflow) is marked in red.

    Args:
        traces: one trace or several to overlay.
        labels: legend entry per trace (default: the model's name; for a built-in ResNet its
            variant, norm and depth).
        theory: draw the closed-form predictions where they exist.
        axes: four axes to draw into (default: a new 2x2 figure).

    Returns:
        The figure holding the axes.

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(4, width=4, seed=0),
    ...                         sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0))
    >>> len(plot_spp(trace).axes)
    4
    """
    lines = series([traces] if isinstance(traces, Trace) else list(traces), labels)
    several = len(lines) > 1
    with canvas(axes, len(_PANELS), 2, (DOUBLE_COLUMN, 4.6)) as (fig, axs):
        for trace, label, color in lines:
            prefix = f"{label}: " if several else ""
            for ax, panel in zip(axs, _PANELS, strict=True):
                for name, quantity, linestyle in panel.lines:
                    band_line(ax, trace, MEASURED[quantity], color, prefix + name, linestyle)
            prediction = predict(trace) if theory else None
            if prediction is not None:
                name = prefix + "theory" + ("" if prediction.exact else " (approx.)")
                for ax, panel in zip(axs, _PANELS, strict=True):
                    note = "" if panel.theory_note is None else f": {panel.theory_note(prediction)}"
                    theory_line(ax, trace, PREDICTED[panel.theory], name + note)
            for ax in axs:
                mark_stages(ax, trace)
            mark_overflow(axs, trace, label if several else None)
        for ax, panel in zip(axs, _PANELS, strict=True):
            ax.set_title(panel.title)
            ax.set_xlabel("block index $l$")
            ax.set_ylabel(panel.ylabel)
            # matplotlib's default handle length, not legend()'s: the committed SPP keeps its
            # look until the figures are redesigned.
            ax.legend(frameon=False)
            scale_y(ax, panel.log_from)
    return fig


_TRIO = (
    ("Skip path: second moment", r"$E[x_l^2]$", "skip_m2"),
    ("Skip path: average channel variance", r"$\mathrm{mean}_c\,\sigma_c^2(x_l)$", "skip_var"),
    ("Skip path: average channel squared mean", r"$\mathrm{mean}_c\,\mu_c^2(x_l)$",
     "skip_sq_mean"),
    ("Residual branch: average channel variance", r"$\mathrm{mean}_c\,\sigma_c^2(f_l(x_l))$",
     "residual_var"),
)


def plot_spp_trio(traces: Sequence[Trace], labels: Sequence[str] | None = None, *,
                  colors: Sequence[str] | None = None, axes: Sequence[Axes] | None = None
                  ) -> Figure:
    """Signal-propagation plot of several networks, four panels on log axes.

    Skip second moment, skip average channel variance and squared mean, and the residual
    branch's average channel variance against the block index, one colour per trace (mean over
    runs with a 95% band), theory dashed in black, the first non-finite block of an overflowing
    network marked. A statistic that is exactly 0 (a SkipInit branch at alpha = 0) cannot be
    drawn on a log axis and is said so in the legend.

    Args:
        traces: the traces to overlay.
        labels: legend entry per trace (default: from the model, as in
            :func:`sigprop.plotting.plot_spp`).
        colors: colour per trace (default: sigprop's palette in order).
        axes: the four panels, in the order above (default: a new 2x2 figure, 7 in wide).

    Returns:
        The figure, with the legend in its first and last panels.

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(4, width=4, seed=0),
    ...                         sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0))
    >>> [ax.get_yscale() for ax in plot_spp_trio([trace], ["BN v2"]).axes]
    ['log', 'log', 'log', 'log']
    """
    lines = series(traces, labels, colors)
    with canvas(axes, len(_TRIO), 2, (DOUBLE_COLUMN, 5.0)) as (fig, axs):
        for trace, label, color in lines:
            for ax, (_, _, name) in zip(axs, _TRIO, strict=True):
                band_line(ax, trace, MEASURED[name], color,
                          log_label(trace, MEASURED[name], label), log=True)
                if name in PREDICTED:
                    theory_line(ax, trace, PREDICTED[name])
            mark_overflow(axs, trace, label)
        for ax, (title, ylabel, _) in zip(axs, _TRIO, strict=True):
            ax.set_title(title)
            ax.set_xlabel("block index $l$")
            ax.set_ylabel(ylabel)
            scale_y(ax, LOG)
        theory_legend_entry(axs[0])
        legend(axs[0], loc="upper left")
        legend(axs[3], loc="upper left")
    return fig

