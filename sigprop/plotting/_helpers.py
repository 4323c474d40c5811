"""Drawing pieces shared by the plot functions, one definition each.

Series and axes, lines with bands, theory, markers, scales and legends: every figure draws a
thing the same way.
"""

from __future__ import annotations

import math
import textwrap
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
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.legend import Legend

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
    would reach below 0. Line and band stop before the first block at which any run is
    non-finite (:func:`last_finite`): past it they would average only the surviving seeds.
    """
    if log:
        b = stats.band(trace, lambda blk: log_or_nan(quantity(blk)))
        mean, lo, hi = (np.exp(np.asarray(v, dtype=float)) for v in (b.mean, b.lo, b.hi))
    else:
        b = stats.band(trace, quantity)
        mean, lo, hi = (np.asarray(v, dtype=float) for v in (b.mean, b.lo, b.hi))
    shown = sum(1 for i in b.index if i <= last_finite(trace))
    mean, lo, hi = mean[:shown], lo[:shown], hi[:shown]
    xs = [x(i) for i in b.index[:shown]]
    ax.plot(xs, mean, color=color, linestyle=linestyle, label=label)
    if b.n_runs > 1:
        ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)


def theory_line(ax: Axes, trace: Trace, quantity: TheoryQuantity, label: str | None = None,
                x: Callable[[int], float] = float, color: str | None = None) -> None:
    """The closed form of ``quantity`` for ``trace``, where :func:`predict` knows one.

    It stops where the measured lines stop (:func:`last_finite`): past an overflow the
    prediction (e.g. 2^l) leaves float32's range and only squashes the axis. Without ``label``
    it has no legend
    entry; ``color`` replaces the theory's black (an overlay gives each trace its own).
    """
    prediction = predict(trace)
    if prediction is None:
        return
    blocks = prediction.blocks[: last_finite(trace) + 1]
    values = [quantity(p) for p in blocks]
    if all(not math.isfinite(v) for v in values):
        return
    look = THEORY if color is None else {**THEORY, "color": color, "alpha": 1.0}
    ax.plot([x(p.index) for p in blocks], values, label=label or "_theory", **look)


def theory_legend_entry(ax: Axes, label: str = "theory") -> None:
    """A legend entry for the theory lines drawn without one."""
    ax.plot([], [], label=label, **THEORY)


def last_finite(trace: Trace) -> int:
    """The last block index at which every run is still finite."""
    first = trace.first_overflow
    return trace.n_blocks - 1 if first is None else first - 1


def mark_overflow(axes: Sequence[Axes], trace: Trace, label: str | None = None) -> None:
    """A vertical line at the first non-finite block of any run, with a note.

    The note (naming ``label``) stands where the overflowing line has ended.
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


def mark_stages(ax: Axes, trace: Trace, label: str | None = None, numbered: bool = False
                ) -> None:
    """A vertical line where each stage after the first starts; ``label`` names them.

    ``numbered`` writes each stage's number at the top of its line.
    """
    from matplotlib.transforms import blended_transform_factory

    where = blended_transform_factory(ax.transData, ax.transAxes)
    for stage, blocks in trace.by_stage().items():
        if stage > 0:
            ax.axvline(blocks[0].index, **STAGE)
            if numbered:
                ax.text(blocks[0].index, 0.98, f"stage {stage}", transform=where, rotation=90,
                        ha="right", va="top", fontsize=5.5, color=STAGE["color"])
    if label:
        ax.plot([], [], label=label, **STAGE)


def integer_blocks(ax: Axes) -> None:
    """Block-index ticks on integers only (short networks would get 0.5, 1.5, ...)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True, steps=[1, 2, 5, 10]))


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
    from matplotlib.ticker import ScalarFormatter

    if positive.size and positive.max() / np.median(positive) >= 10.0**log_from:
        ax.set_yscale("log")
        lo, hi = positive.min() / 2, positive.max() * 2
        ax.set_ylim(lo, hi)
        _decade_ticks(ax, lo, hi)
        if math.floor(math.log10(hi)) > math.ceil(math.log10(lo)):
            # Two powers of ten are labelled: the minor ticks (2x10^0, 3x10^0, ...) stay bare.
            from matplotlib.ticker import NullFormatter

            ax.yaxis.set_minor_formatter(NullFormatter())
    elif finite.size and finite.max() > finite.min():
        # At least 1% of the largest magnitude: a quantity that is constant to 1e-6 (a BN
        # output) is drawn flat, not as noise around an offset.
        pad = max(0.05 * (finite.max() - finite.min()), 0.01 * np.abs(finite).max())
        ax.set_ylim(finite.min() - pad, finite.max() + pad)
        formatter = ax.yaxis.get_major_formatter()
        if isinstance(formatter, ScalarFormatter):
            formatter.set_useOffset(False)


def _decade_ticks(ax: Axes, lo: float, hi: float, most: int = 6) -> None:
    """Major ticks every 1, 2, 5, 10, 20, ... decades: at most ``most`` of them, evenly spaced."""
    from matplotlib.ticker import FixedLocator, LogFormatterSciNotation, NullLocator

    first, last = math.ceil(math.log10(lo)), math.floor(math.log10(hi))
    span = last - first
    if span < most:
        return  # matplotlib's own decades are regular here
    step = next(k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500) if span / k <= most - 1
                ) if span <= 500 * (most - 1) else math.ceil(span / (most - 1))
    start = math.ceil(first / step) * step
    ax.yaxis.set_major_locator(FixedLocator([10.0**e for e in range(start, last + 1, step)]))
    ax.yaxis.set_major_formatter(LogFormatterSciNotation())
    ax.yaxis.set_minor_locator(NullLocator())


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


def outside_legend(fig: Figure, ax: Axes, own_figure: bool, ncol: int = 1,
                   more: Sequence[Axes] = (), **kwargs: Any) -> None:
    """The legend of ``ax`` (and of the ``more`` axes) under the figure when the figure is
    ours, else inside ``ax``.

    Under the figure it takes at most ``ncol`` columns, fewer when a row would be wider than the
    figure, so that it never leaves the canvas; an entry repeated on several axes is listed once.
    The layout centres it, so its width alone decides, and measuring it takes no drawing.
    """
    if not own_figure:
        legend(ax, **kwargs)
        return
    entries: dict[str, Any] = {}
    for source in (ax, *more):
        for handle, label in zip(*source.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    handles, labels = list(entries.values()), list(entries)
    for columns in range(max(ncol, 1), 0, -1):
        below = fig.legend(handles, labels, loc="outside lower center", frameon=False,
                           handlelength=2.2, ncols=columns, **kwargs)
        if columns == 1 or below.get_window_extent().width <= fig.bbox.width:
            return
        below.remove()


def legend_panel(ax: Axes, entries: Sequence[tuple[Artist, str]]) -> Legend:
    """Turn ``ax`` into the figure's legend: a panel with no data, so the legend covers none.

    Labels are wrapped to the panel's width; the font shrinks (7 to 5 pt), then the entries
    spread over two columns, until the legend lies inside the panel (the smallest is kept if
    none does). The figure is laid out once (drawn without rendering) to measure the panel; the
    legend stays out of the layout, so each candidate is measured without drawing again.
    """
    ax.set_axis_off()
    handles = [handle for handle, _ in entries]
    fig = ax.get_figure(root=True)
    assert fig is not None
    fig.draw_without_rendering()
    room = ax.get_window_extent()
    points = room.width * 72 / fig.dpi
    legend = None
    for columns in (1, 2):
        for size in (7.0, 6.0, 5.0):
            # About 0.55 em per character, 5 em for the handle and its padding per column.
            chars = max(12, int((points / columns - 5 * size) / (0.55 * size)))
            labels = [textwrap.fill(label, chars) for _, label in entries]
            legend = ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.0, 1.0),
                               frameon=False, fontsize=size, ncols=columns, handlelength=2.2,
                               borderaxespad=0.0)
            legend.set_in_layout(False)  # the panel is its room; the layout does not grow it
            box = legend.get_window_extent()
            if box.y0 >= room.y0 - 0.5 and box.x1 <= room.x1 + 0.5:
                return legend
    assert legend is not None
    return legend
