"""Drawing pieces shared by the plot functions, one definition each.

Series and axes, lines with bands, theory, markers, scales and legends: every figure draws a
thing the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np

from sigprop import stats
from sigprop.config import ResNetConfig
from sigprop.plotting.quantities import Quantity, TheoryQuantity
from sigprop.plotting.style import palette, style
from sigprop.theory import predict
from sigprop.trace import Trace

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Closed-form predictions: thin dashed black, under the measured colours.
THEORY: dict[str, Any] = {"color": "black", "linestyle": (0, (4, 3)), "linewidth": 0.9,
                          "alpha": 0.8}
# Stage boundaries (projection shortcuts) and the first non-finite block.
STAGE: dict[str, Any] = {"color": "0.5", "linestyle": ":", "linewidth": 0.9}
OVERFLOW: dict[str, Any] = {"color": "#d55e00", "linewidth": 0.8, "linestyle": "-."}

# Arguments of scale_y: the decades above their median the positive data must reach for a log
# axis. LOG: whenever there are positive data; LINEAR: never.
LOG, LINEAR = 0.0, math.inf


class Series(NamedTuple):
    """One trace of a figure, with its legend entry and colour."""

    trace: Trace
    label: str
    color: str


def series(traces: Sequence[Trace], labels: Sequence[str] | None = None,
           colors: Sequence[str] | None = None) -> list[Series]:
    """The traces with their legend entries and colours.

    Labels are checked against the traces, or named from each model; colours are ``colors`` in
    turn, or sigprop's palette.
    """
    if not traces:
        raise ValueError("this figure needs at least one trace")
    if labels is None:
        labels = [_model_label(t) for t in traces]
    if len(labels) != len(traces):
        raise ValueError(f"got {len(labels)} labels for {len(traces)} traces")
    cycle = list(colors) if colors else palette()
    return [Series(trace, label, cycle[k % len(cycle)])
            for k, (trace, label) in enumerate(zip(traces, labels, strict=True))]


def _model_label(trace: Trace) -> str:
    config = ResNetConfig.of(trace.model)
    if config is not None:
        return f"ResNet-{config.variant} {config.norm}, d={config.depth}"
    return str(trace.model.get("name", "model"))


@contextmanager
def canvas(axes: Sequence[Axes] | None, count: int, rows: int, size: tuple[float, float]
           ) -> Iterator[tuple[Figure, list[Axes]]]:
    """A figure and its axes to draw on in sigprop's style.

    The given ``axes``, checked to be ``count``, or a new grid of ``rows`` rows and ``size``
    inches.
    """
    import matplotlib.pyplot as plt

    with style():
        if axes is None:
            fig, grid = plt.subplots(rows, count // rows, figsize=size, layout="constrained",
                                     squeeze=False)
            yield fig, list(grid.flat)
            return
        if len(axes) != count:
            raise ValueError(f"this figure draws {count} panels, got {len(axes)} axes")
        yield cast("Figure", axes[0].get_figure(root=True)), list(axes)


def log_or_nan(value: float) -> float:
    """The natural log, NaN for values a log axis cannot show (0 and below)."""
    return math.log(value) if value > 0 else math.nan


def band_line(ax: Axes, trace: Trace, quantity: Quantity, color: str, label: str,
              linestyle: str = "-", x: Callable[[int], float] = float, log: bool = False) -> None:
    """Mean over runs against ``x(block index)``, with a 95% band when there are several runs.

    With ``log`` the line is the geometric mean and the band the interval of the mean log
    value: seeds of a geometric quantity differ by factors, and a band of the arithmetic mean
    would reach below 0.
    """
    if log:
        b = stats.band(trace, lambda blk: log_or_nan(quantity(blk)))
        mean, lo, hi = (np.exp(np.asarray(v, dtype=float)) for v in (b.mean, b.lo, b.hi))
    else:
        b = stats.band(trace, quantity)
        mean, lo, hi = (np.asarray(v, dtype=float) for v in (b.mean, b.lo, b.hi))
    xs = [x(i) for i in b.index]
    ax.plot(xs, mean, color=color, linestyle=linestyle, label=label)
    if b.n_runs > 1:
        ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)


def theory_line(ax: Axes, trace: Trace, quantity: TheoryQuantity, label: str | None = None,
                x: Callable[[int], float] = float) -> None:
    """The closed form of ``quantity`` for ``trace``, where :func:`predict` knows one.

    It stops at the last block any run measured finitely: past an overflow the prediction (e.g.
    2^l) leaves float32's range and only squashes the axis. Without ``label`` it has no legend
    entry.
    """
    prediction = predict(trace)
    if prediction is None:
        return
    blocks = prediction.blocks[: last_finite(trace) + 1]
    values = [quantity(p) for p in blocks]
    if all(not math.isfinite(v) for v in values):
        return
    ax.plot([x(p.index) for p in blocks], values, label=label or "_theory", **THEORY)


def theory_legend_entry(ax: Axes, label: str = "theory") -> None:
    """A legend entry for the theory lines drawn without one."""
    ax.plot([], [], label=label, **THEORY)


def last_finite(trace: Trace) -> int:
    """The last block index at which some run is still finite."""
    ends = [trace.n_blocks if r.first_overflow is None else r.first_overflow for r in trace.runs]
    return max(ends) - 1


def mark_overflow(axes: Sequence[Axes], trace: Trace, label: str | None = None) -> None:
    """A vertical line at the first non-finite block of any run, with a note.

    The note (naming ``label``) stands beside the end of the last finite run, where the
    overflowing line has ended.
    """
    block = trace.first_overflow
    if block is None:
        return
    for ax in axes:
        ax.axvline(block, **OVERFLOW)
    text = f"non-finite from\nblock {block}"
    axes[0].annotate(f"{label}:\n{text}" if label else text,
                     xy=(last_finite(trace), 0.5), xycoords=("data", "axes fraction"),
                     xytext=(4, 0), textcoords="offset points", fontsize=6,
                     color=OVERFLOW["color"], ha="left", va="center")


def mark_stages(ax: Axes, trace: Trace, label: str | None = None) -> None:
    """A vertical line where each stage after the first starts; ``label`` names them."""
    for stage, blocks in trace.by_stage().items():
        if stage > 0:
            ax.axvline(blocks[0].index, **STAGE)
    if label:
        ax.plot([], [], label=label, **STAGE)


def scale_y(ax: Axes, log_from: float) -> None:
    """Log y-scale when the data span ``log_from`` decades; y-limits from the data lines.

    The scale is logarithmic when the positive data reach ``log_from`` decades above their
    median (:data:`LOG`, 0: whenever there are some; :data:`LINEAR`, inf: never); data that are
    all zero (e.g. a SkipInit branch with alpha = 0) keep a linear axis, where zero can be seen.
    The limits come from the lines, measured and theory, not from the bands, which with few
    seeds can be far wider; markers drawn in axes coordinates (vertical lines) are ignored.
    """
    data = [np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()
            if line.get_transform() == ax.transData]
    values = np.concatenate(data) if data else np.array([])
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    if positive.size and positive.max() / np.median(positive) >= 10.0**log_from:
        ax.set_yscale("log")
        ax.set_ylim(positive.min() / 2, positive.max() * 2)
    elif finite.size and finite.max() > finite.min():
        pad = 0.05 * (finite.max() - finite.min())
        ax.set_ylim(finite.min() - pad, finite.max() + pad)


def all_zero(trace: Trace, quantity: Quantity) -> bool:
    """Whether every finite value of ``quantity`` is 0 (nothing to draw on a log axis)."""
    values = [quantity(b) for _, b in trace.blocks()]
    return all(v == 0 for v in values if math.isfinite(v))


def log_label(trace: Trace, quantity: Quantity, label: str) -> str:
    """The legend entry of a log-axis line, saying so when the data are all 0 (not drawable)."""
    return label + (r" ($\equiv 0$, not drawn)" if all_zero(trace, quantity) else "")


def legend(ax: Axes, **kwargs: Any) -> None:
    """A frameless legend whose handles are long enough to show the theory's dashes."""
    ax.legend(frameon=False, handlelength=2.2, **kwargs)


def outside_legend(fig: Figure, ax: Axes, own_figure: bool, **kwargs: Any) -> None:
    """The legend of ``ax`` under the figure (when the figure is ours), else inside ``ax``."""
    if own_figure:
        handles, labels = ax.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", frameon=False,
                   handlelength=2.2, **kwargs)
    else:
        legend(ax, **{k: v for k, v in kwargs.items() if k != "ncol"})
