"""The backward signal-propagation plot: gradient second moments and ratio per block."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sigprop.plotting._helpers import (
    LOG,
    THEORY,
    band_line,
    canvas,
    last_finite,
    log_label,
    mark_overflow,
    mark_stages,
    outside_legend,
    scale_y,
    series,
)
from sigprop.plotting.quantities import MEASURED
from sigprop.plotting.style import DOUBLE_COLUMN
from sigprop.theory import predict_gradients
from sigprop.trace import GradRole, Trace

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_spp_backward"]

_LINES = ((GradRole.INPUT, "-"), (GradRole.SKIP, "--"), (GradRole.RESIDUAL, ":"))


def plot_spp_backward(
    traces: Trace | Sequence[Trace],
    labels: Sequence[str] | None = None,
    *,
    theory: bool = True,
    colors: Sequence[str] | None = None,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Backward signal-propagation plot against block index, two panels on log axes.

    The gradients' second moments (``input`` dL/dx_l, and for a single trace its ``skip``
    and ``residual`` parts; ``skip`` is dL/dy_l for an identity shortcut) and the branch/skip
    ratio of the gradients' second moments, one colour per trace (geometric mean over runs
    with a 95% band), the closed form of :func:`sigprop.theory.predict_gradients` dashed for
    the built-in ResNets (in black for one trace, with its rule in the legend; in each
    trace's colour when several are overlaid). Read from the right: the gradient enters at
    the last block and grows (or not) towards the first.

    Args:
        traces: traces measured with ``backward=True``.
        labels: legend entry per trace (default: from the model).
        theory: draw the closed form where there is one.
        colors: colour per trace (default: sigprop's palette in order).
        axes: two axes to draw into (default: a new 1x2 figure).

    Returns:
        The figure holding the axes, with one legend under both panels (inside the first when
        ``axes`` are given).

    Raises:
        ValueError: a trace has no gradient statistics.

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(4, width=4, seed=0),
    ...                         sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0), backward=True)
    >>> [ax.get_yscale() for ax in plot_spp_backward(trace).axes]
    ['log', 'log']
    """
    lines = series([traces] if isinstance(traces, Trace) else list(traces), labels, colors)
    for line in lines:
        if not line.trace.has_gradients:
            raise ValueError(f"{line.label}: the trace has no gradient statistics; measure it "
                             "with backward=True (sigprop analyze ... --backward)")
    several = len(lines) > 1
    with_theory = False
    with canvas(axes, 2, 1, (DOUBLE_COLUMN, 3.4)) as (fig, axs):
        # Overlaid traces show the whole gradient dL/dx only: three line styles per trace
        # would be unreadable.
        roles = ((GradRole.INPUT, "-"),) if several else _LINES
        for trace, label, color in lines:
            for role, linestyle in roles:
                quantity = MEASURED[f"grad_{role.value}_m2"]
                band_line(axs[0], trace, quantity, color,
                          log_label(trace, quantity, label if several else role.value),
                          linestyle, log=True)
            ratio = MEASURED["grad_ratio"]
            band_line(axs[1], trace, ratio, color,
                      log_label(trace, ratio, label if several else "measured"), log=True)
            prediction = predict_gradients(trace) if theory else None
            if prediction is not None:
                end = last_finite(trace) + 1
                look = {**THEORY, "color": color, "alpha": 1.0} if several else THEORY
                name = "theory" + ("" if prediction.exact else " (approx.)")
                axs[0].plot(range(end), prediction.input[:end],
                            label="_theory" if several else f"{name}: input", **look)
                axs[1].plot(range(end), prediction.ratio[:end],
                            label="_theory" if several else
                            f"{name}: {prediction.rule.split(';')[0]}", **look)
                with_theory = True
            for ax in axs:
                mark_stages(ax, trace)
            mark_overflow(axs, trace, label if several else None)
        titles = (("Gradient second moment", r"$E[(\partial L/\partial \cdot)^2]$"),
                  ("Residual / skip gradient", r"$E[(J_f^\top g)^2]\, /\, E[(J_s^\top g)^2]$"))
        for ax, (title, ylabel) in zip(axs, titles, strict=True):
            ax.set_title(title)
            ax.set_xlabel("block index $l$")
            ax.set_ylabel(ylabel)
            scale_y(ax, LOG)
        if several and with_theory:
            axs[0].plot([], [], label="theory: input (dashed, in its trace's colour)",
                        **{**THEORY, "color": "0.3"})
        outside_legend(fig, axs[0], axes is None, ncol=3 if several else 2, more=[axs[1]],
                       fontsize=6)
    return fig
