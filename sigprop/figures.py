"""The paper-style figure set: what to measure, tidy data, figures and captions.

Each figure is described by a :class:`FigureSpec`: the built-in ResNets it measures
(:class:`RunSpec`) and a renderer that turns their traces into a :class:`FigureResult` (a
matplotlib figure, its data as a tidy long table and a caption). :func:`generate` measures and
renders the whole set for a :class:`FigureConfig` (:data:`FULL` or :data:`QUICK`), reusing a
trace when several figures need the same network.

The ``plot_*`` functions take traces, never models; each accepts optional axes, returns the
figure, and draws inside :func:`sigprop.plotting.style`. matplotlib and pandas are imported when
a figure or table is made, so ``import sigprop`` stays light.

>>> import sigprop
>>> trace = sigprop.measure(sigprop.models.resnet(8, seed=0),
...                         sigprop.InputSpec("gaussian", (4, 3, 8, 8), 0))
>>> frame = tidy([trace], ["BN v2"], {"ratio": lambda b: b.ratio})
>>> sorted(set(frame["source"])), len(frame[frame["source"] == "measured"])
(['measured', 'theory'], 8)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from torch import nn

from sigprop import stats
from sigprop.plotting import style
from sigprop.recording import measure
from sigprop.sources import ModelSource
from sigprop.theory import BlockPrediction, predict
from sigprop.trace import BlockStats, InputSpec, Trace

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "COLUMNS",
    "FULL",
    "QUICK",
    "FigureConfig",
    "FigureResult",
    "FigureSpec",
    "RunSpec",
    "SweepPoint",
    "figure_specs",
    "generate",
    "measure_run",
    "plot_depth_sweep",
    "plot_identity_bias",
    "plot_orderings",
    "plot_spp_trio",
    "plot_sqrt_depth_law",
    "plot_zoo",
    "sweep_points",
    "tidy",
    "total_blocks",
]

Quantity = Callable[[BlockStats], float]
TheoryQuantity = Callable[[BlockPrediction], float]

#: Columns of every figure's data table (one row per value).
COLUMNS = ["series", "source", "seed", "depth", "block", "stage", "quantity", "value"]

# Figure widths: single and double column of a two-column paper, in inches.
SINGLE, DOUBLE = 3.4, 7.0
OVERFLOW_COLOR = "#d55e00"
_THEORY: dict[str, Any] = {"color": "black", "linestyle": (0, (4, 3)), "linewidth": 0.9,
                           "alpha": 0.8}

_QUANTITIES: dict[str, Quantity] = {
    "skip_m2": lambda b: b.skip.m2,
    "skip_var": lambda b: b.skip.var,
    "skip_sq_mean": lambda b: b.skip.sq_mean,
    "residual_var": lambda b: b.residual.var,
    "residual_m2": lambda b: b.residual.m2,
    "output_m2": lambda b: b.output.m2,
    "ratio": lambda b: b.ratio,
    "cosine": lambda b: b.cosine,
    "branch_norm_ratio": lambda b: b.branch_norm_ratio,
}
# The closed form of each quantity, where theory.predict gives one.
_PREDICTED: dict[str, TheoryQuantity] = {
    "skip_m2": lambda p: p.skip_m2,
    "skip_var": lambda p: p.skip_var,
    "skip_sq_mean": lambda p: p.skip_sq_mean,
    "residual_m2": lambda p: p.residual_m2,
    "output_m2": lambda p: p.output_m2,
    "ratio": lambda p: p.ratio,
    "cosine": lambda p: 1 / math.sqrt(1 + p.ratio),
    "branch_norm_ratio": lambda p: math.sqrt(p.ratio),
}


# --------------------------------------------------------------------------------------------
# What to measure


@dataclass(frozen=True, slots=True)
class RunSpec:
    """A network to measure: a built-in ResNet (the arguments of :func:`sigprop.models.resnet`)
    or, with ``model``, a real architecture.

    Attributes:
        depth: number of residual blocks (for a real architecture: how many it has, for the
            progress bar).
        norm, variant, order, alpha, stages: as in :func:`sigprop.models.resnet`.
        width, batch, image, seeds: channels of the first stage, images per batch, image side
            and seeds; None takes the :class:`FigureConfig`'s value.
    """

    depth: int
    norm: str = "batchnorm"
    variant: str = "v2"
    order: str = "bn-relu"
    alpha: float | None = None
    stages: int = 1
    width: int | None = None
    batch: int | None = None
    image: int | None = None
    seeds: tuple[int, ...] | None = None
    model: str | None = None  # "torchvision:NAME" or "timm:NAME", built without weights


@dataclass(frozen=True, slots=True)
class FigureConfig:
    """Sizes and seeds of a figure set.

    Attributes:
        name: ``full`` or ``quick``, written in the captions.
        width, batch, image: defaults of every network (channels, images per batch, side).
        seeds: the seeds of every network (weights and input batch); bands are over these.
        sweep_seeds: the depth sweep uses only the first ``sweep_seeds`` seeds (its deep
            networks cost the most).
        spp_depth: depth of the SPP trio and the identity-bias figure.
        law_depths: depths of the sqrt(depth)-law figure.
        sweep_depths: depths of the depth sweep.
        sweep_overflow_depth: the unnormalized network is measured only up to this depth (it
            overflows float32 after a few hundred blocks; deeper ones add nothing but time).
        variants_depth: depth of the orderings/variants figure and of the zoo.
        stages: number of stages of the multi-stage network.
        headline: (depth, batch, image) of the README's single-network SPP.
        zoo_image, zoo_batch: input size of the real architectures (torchvision, timm) in the
            zoo.
    """

    name: str
    width: int
    batch: int
    image: int
    seeds: tuple[int, ...]
    sweep_seeds: int
    spp_depth: int
    law_depths: tuple[int, ...]
    sweep_depths: tuple[int, ...]
    sweep_overflow_depth: int
    variants_depth: int
    stages: int
    headline: tuple[int, int, int]
    zoo_image: int
    zoo_batch: int

    def describe(self, spec: RunSpec | None = None, seeds: Sequence[int] | None = None) -> str:
        """The sizes and seeds in words, for a caption."""
        width = self.width if spec is None or spec.width is None else spec.width
        batch = self.batch if spec is None or spec.batch is None else spec.batch
        image = self.image if spec is None or spec.image is None else spec.image
        seeds = self.seeds if seeds is None else seeds
        seed_text = (f"seed {seeds[0]}" if len(seeds) == 1 else
                     f"{len(seeds)} seeds ({seeds[0]}-{seeds[-1]}): mean with 95% band, on log "
                     "axes geometric mean with the band of the mean log")
        return (f"Width {width}, batch of {batch} Gaussian {image}x{image} images, {seed_text}, "
                "BN with batch statistics.")


FULL = FigureConfig(
    name="full", width=16, batch=8, image=16, seeds=(0, 1, 2, 3, 4), sweep_seeds=3,
    spp_depth=512,
    law_depths=(64, 256, 1024), sweep_depths=(16, 32, 64, 128, 256, 512, 1024, 2048),
    sweep_overflow_depth=512, variants_depth=256, stages=3, headline=(512, 32, 32),
    zoo_image=64, zoo_batch=8,
)
QUICK = FigureConfig(
    name="quick", width=8, batch=4, image=8, seeds=(0, 1, 2), sweep_seeds=3, spp_depth=48,
    law_depths=(16, 48), sweep_depths=(4, 8, 16, 32, 64), sweep_overflow_depth=64,
    variants_depth=24, stages=3, headline=(32, 4, 8), zoo_image=32, zoo_batch=2,
)


@dataclass(frozen=True, slots=True)
class FigureResult:
    """A rendered figure with its data and caption.

    Attributes:
        name: file stem, e.g. ``sqrt-depth-law``.
        title: a short title for galleries.
        figure: the matplotlib figure (close it when written).
        data: tidy long table with :data:`COLUMNS`.
        caption: what the figure shows, with sizes, seeds and fitted figures.
    """

    name: str
    title: str
    figure: Figure
    data: pd.DataFrame
    caption: str


Traces = Mapping[RunSpec, Trace]


@dataclass(frozen=True, slots=True)
class FigureSpec:
    """One figure of the set: the networks it needs and how to render it from their traces."""

    name: str
    title: str
    runs: tuple[RunSpec, ...]
    render: Callable[[Traces], FigureResult] = field(repr=False)


def measure_run(spec: RunSpec, config: FigureConfig,
                progress: Callable[[int], None] | None = None) -> Trace:
    """Measure ``spec`` once per seed of ``config`` (weights and input) and merge the runs.

    Args:
        spec: the network.
        config: default sizes and the seeds.
        progress: called after every measured block (with the blocks done in that run).

    Returns:
        One trace with a run per seed.

    >>> trace = measure_run(RunSpec(4), QUICK)
    >>> trace.n_blocks, trace.seeds
    (4, (0, 1, 2))
    """
    width = spec.width or config.width
    batch = spec.batch or config.batch
    image = spec.image or config.image
    traces = []
    for seed in spec.seeds or config.seeds:
        net, info = _build(spec, width, seed)
        traces.append(measure(net, InputSpec("gaussian", (batch, 3, image, image), seed),
                              model_info=info, progress=progress))
    return reduce(Trace.merge, traces)


def _build(spec: RunSpec, width: int, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    if spec.model is not None:
        return ModelSource.parse(spec.model).builder()(seed)
    return ModelSource.parse("resnet", depth=spec.depth, variant=spec.variant, norm=spec.norm,
                             width=width, stages=spec.stages, alpha=spec.alpha,
                             order=spec.order).builder()(seed)


def total_blocks(specs: Sequence[FigureSpec], config: FigureConfig) -> int:
    """Blocks measured by :func:`generate` for ``specs`` (each network once), for progress bars.

    >>> total_blocks(figure_specs(QUICK), QUICK) > 0
    True
    """
    unique = {run for spec in specs for run in spec.runs}
    return sum(run.depth * len(run.seeds or config.seeds) for run in unique)


def generate(config: FigureConfig, specs: Sequence[FigureSpec] | None = None,
             progress: Callable[[str], None] | None = None) -> Iterator[FigureResult]:
    """Measure and render the figure set, one figure at a time.

    Args:
        config: :data:`FULL`, :data:`QUICK` or your own sizes.
        specs: the figures (default: :func:`figure_specs` of ``config``).
        progress: called with the figure's name after every measured block.

    Returns:
        An iterator of rendered figures; traces needed by several figures are measured once.
    """
    specs = figure_specs(config) if specs is None else specs
    cache: dict[RunSpec, Trace] = {}
    for spec in specs:
        name = spec.name

        def tick(_done: int, name: str = name) -> None:
            if progress is not None:
                progress(name)

        for run in spec.runs:
            if run not in cache:
                cache[run] = measure_run(run, config, tick)
        yield spec.render({run: cache[run] for run in spec.runs})
        needed = {run for later in specs[specs.index(spec) + 1:] for run in later.runs}
        for run in [r for r in cache if r not in needed]:
            del cache[run]


# --------------------------------------------------------------------------------------------
# Tidy data


def _depth(trace: Trace) -> int:
    return int(dict(trace.model).get("depth", trace.n_blocks))


def tidy(traces: Sequence[Trace], labels: Sequence[str],
         quantities: Mapping[str, Quantity], theory: bool = True) -> pd.DataFrame:
    """Per-block quantities of several traces as one long table with :data:`COLUMNS`.

    Measured rows have ``source="measured"`` and the run's seed; where :func:`theory.predict`
    has a closed form for a quantity (same name as in the table) a ``source="theory"`` row
    follows, with an empty seed.

    Args:
        traces: the traces.
        labels: the ``series`` name of each trace.
        quantities: column name -> function of a block, e.g. ``{"ratio": lambda b: b.ratio}``.
        theory: add the theory rows.

    Returns:
        A pandas DataFrame.
    """
    import pandas as pd

    rows: list[tuple[Any, ...]] = []
    for trace, label in zip(traces, labels, strict=True):
        depth = _depth(trace)
        for seed, block in trace.blocks():
            for name, quantity in quantities.items():
                rows.append((label, "measured", seed, depth, block.index, block.stage, name,
                             quantity(block)))
        prediction = predict(trace) if theory else None
        if prediction is None:
            continue
        for p in prediction.blocks:
            for name in quantities:
                if name in _PREDICTED and math.isfinite(value := _PREDICTED[name](p)):
                    rows.append((label, "theory", None, depth, p.index, p.stage, name, value))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["seed"] = frame["seed"].astype("Int64")
    return frame


# --------------------------------------------------------------------------------------------
# Drawing helpers


def _axes(axes: Sequence[Axes] | None, count: int, rows: int, size: tuple[float, float]
          ) -> tuple[Figure, list[Axes]]:
    import matplotlib.pyplot as plt

    if axes is None:
        fig, grid = plt.subplots(rows, count // rows, figsize=size, layout="constrained",
                                 squeeze=False)
        return fig, list(grid.flat)
    if len(axes) != count:
        raise ValueError(f"this figure draws {count} panels, got {len(axes)} axes")
    return cast("Figure", axes[0].get_figure(root=True)), list(axes)


def _palette(colors: Sequence[str] | None = None) -> list[str]:
    """``colors`` if given, else the colours of the current style's cycle."""
    if colors:
        return list(colors)
    import matplotlib.pyplot as plt

    return list(plt.rcParams["axes.prop_cycle"].by_key()["color"])


def _log(value: float) -> float:
    return math.log(value) if value > 0 else math.nan


def _line(ax: Axes, trace: Trace, quantity: Quantity, color: str, label: str,
          linestyle: str = "-", x: Callable[[int], float] = float, log: bool = False) -> None:
    """Mean over runs against ``x(block index)``, with a 95% band when there are several runs.

    On a log axis (``log``) the line is the geometric mean and the band the interval of the mean
    log value: seeds of a geometric quantity differ by factors, and a band of the arithmetic
    mean would reach below 0.
    """
    if log:
        b = stats.band(trace, lambda blk: _log(quantity(blk)))
        mean, lo, hi = (np.exp(np.asarray(v, dtype=float)) for v in (b.mean, b.lo, b.hi))
    else:
        b = stats.band(trace, quantity)
        mean, lo, hi = (np.asarray(v, dtype=float) for v in (b.mean, b.lo, b.hi))
    xs = [x(i) for i in b.index]
    ax.plot(xs, mean, color=color, linestyle=linestyle, label=label)
    if b.n_runs > 1:
        ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)


def _theory_line(ax: Axes, trace: Trace, quantity: TheoryQuantity, label: str | None,
                 x: Callable[[int], float] = float) -> None:
    """The closed form of ``quantity``, up to the last block any run measured finitely: past an
    overflow the prediction (e.g. 2^l) leaves float32's range and only squashes the axis."""
    prediction = predict(trace)
    if prediction is None:
        return
    blocks = prediction.blocks[: _last_finite(trace) + 1]
    values = [quantity(p) for p in blocks]
    if all(not math.isfinite(v) for v in values):
        return
    ax.plot([x(p.index) for p in blocks], values, label=label if label else "_theory",
            **_THEORY)


def _last_finite(trace: Trace) -> int:
    """The last block index at which some run is still finite."""
    ends = [trace.n_blocks if r.first_overflow is None else r.first_overflow for r in trace.runs]
    return max(ends) - 1


def _mark_overflow(axes: Sequence[Axes], trace: Trace, label: str) -> None:
    """A vertical line at the first non-finite block of any run, said in words beside the end
    of the last finite run (where the overflowing line has ended)."""
    block = trace.first_overflow
    if block is None:
        return
    for ax in axes:
        ax.axvline(block, color=OVERFLOW_COLOR, linewidth=0.8, linestyle="-.")
    axes[0].annotate(f"{label}:\nnon-finite from\nblock {block}",
                     xy=(_last_finite(trace), 0.5), xycoords=("data", "axes fraction"),
                     xytext=(4, 0), textcoords="offset points", fontsize=6,
                     color=OVERFLOW_COLOR, ha="left", va="center")


def _fit_y(ax: Axes, log: bool) -> None:
    """y-limits from the data lines (measured and theory), not from the bands, which with few
    seeds can be far wider; markers drawn in axes coordinates (vertical lines) are ignored."""
    data = [np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()
            if line.get_transform() == ax.transData]
    values = np.concatenate(data) if data else np.array([])
    finite = values[np.isfinite(values)]
    if log:
        ax.set_yscale("log")
        positive = finite[finite > 0]
        if positive.size:
            ax.set_ylim(positive.min() / 2, positive.max() * 2)
    elif finite.size and finite.max() > finite.min():
        pad = 0.05 * (finite.max() - finite.min())
        ax.set_ylim(finite.min() - pad, finite.max() + pad)


def _all_zero(trace: Trace, quantity: Quantity) -> bool:
    values = [quantity(b) for _, b in trace.blocks()]
    return all(v == 0 for v in values if math.isfinite(v))


def _log_label(trace: Trace, quantity: str, label: str) -> str:
    """The legend entry of a log-axis line, saying so when the data are all 0 (not drawable)."""
    return label + (r" ($\equiv 0$, not drawn)" if _all_zero(trace, _QUANTITIES[quantity]) else "")


def _check(traces: Sequence[Trace], labels: Sequence[str] | None) -> list[str]:
    if not traces:
        raise ValueError("this figure needs at least one trace")
    if labels is None:
        return [str(dict(t.model).get("name", "model")) for t in traces]
    if len(labels) != len(traces):
        raise ValueError(f"got {len(labels)} labels for {len(traces)} traces")
    return list(labels)


def _legend(ax: Axes, **kwargs: Any) -> None:
    ax.legend(frameon=False, handlelength=2.2, **kwargs)


def _outside_legend(fig: Figure, ax: Axes, own_figure: bool, **kwargs: Any) -> None:
    """The legend of ``ax`` under the figure (when the figure is ours), else inside ``ax``."""
    if own_figure:
        handles, labels = ax.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", frameon=False,
                   handlelength=2.2, **kwargs)
    else:
        _legend(ax, **{k: v for k, v in kwargs.items() if k != "ncol"})


# --------------------------------------------------------------------------------------------
# The figures


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
        labels: legend entry per trace (default: the model's name).
        colors: colour per trace (default: sigprop's palette in order).
        axes: four axes to draw into (default: a new 2x2 figure, 7 in wide).

    Returns:
        The figure.
    """
    labels = _check(traces, labels)
    with style():
        fig, axs = _axes(axes, 4, 2, (DOUBLE, 5.0))
        palette = _palette(colors)
        for k, (trace, label) in enumerate(zip(traces, labels, strict=True)):
            for ax, (_, _, name) in zip(axs, _TRIO, strict=True):
                _line(ax, trace, _QUANTITIES[name], palette[k % len(palette)],
                      _log_label(trace, name, label), log=True)
                if name in _PREDICTED:
                    _theory_line(ax, trace, _PREDICTED[name], None)
            _mark_overflow(axs, trace, label)
        for ax, (title, ylabel, _) in zip(axs, _TRIO, strict=True):
            ax.set_title(title)
            ax.set_xlabel("block index $l$")
            ax.set_ylabel(ylabel)
            _fit_y(ax, log=True)
        axs[0].plot([], [], label="theory", **_THEORY)
        _legend(axs[0], loc="upper left")
        _legend(axs[3], loc="upper left")
    return fig


def plot_sqrt_depth_law(traces: Sequence[Trace], labels: Sequence[str] | None = None, *,
                        ax: Axes | None = None) -> Figure:
    """The residual/skip ratio of second moments against block position, log-log.

    One colour per trace (e.g. BN v2 at several depths; mean over runs with a 95% band), the
    theory ``1/(m2_0 + l)`` dashed, and the exponent fitted by :func:`stats.fit`
    (``ratio_exponent``) with its 95% interval in the legend, beside the same fit of the
    theory at that depth (-1 only at infinite depth).

    Args:
        traces: the traces (one stage each is assumed; the first stage is fitted).
        labels: legend entry per trace (default: ``d = depth``).
        ax: axes to draw into (default: a new single-column figure).

    Returns:
        The figure.
    """
    labels = _check(traces, labels or [f"d = {_depth(t)}" for t in traces])
    with style():
        fig, (axis,) = _axes(None if ax is None else [ax], 1, 1, (SINGLE, 2.9))
        colors = _palette()
        position = lambda i: i + 1.0  # noqa: E731 -- log axis: block l is the (l+1)-th
        order = sorted(range(len(traces)), key=lambda k: -_depth(traces[k]))
        for k in order:
            text = f"{labels[k]}: {_fit_text(traces[k], stats.FitId.RATIO_EXPONENT)}"
            _line(axis, traces[k], _QUANTITIES["ratio"], colors[k % len(colors)], text,
                  x=position, log=True)
            _theory_line(axis, traces[k], _PREDICTED["ratio"],
                         "theory $1/(m_{2,0} + l)$" if k == order[-1] else None,
                         x=position)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("block position $l + 1$")
        axis.set_ylabel(r"$E[f_l(x_l)^2]\,/\,E[x_l^2]$")
        axis.set_title("The sqrt(depth) law")
        _legend(axis, loc="lower left", title="fitted exponent [95% CI] (theory)")
    return fig


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """The end of one network of a depth sweep: geometric mean over runs, theory where known."""

    depth: int
    value: float
    lo: float
    hi: float
    theory: float
    overflow: bool


def sweep_points(traces: Sequence[Trace]) -> list[SweepPoint]:
    """For each trace: the second moment of the skip path after its last block, ``E[x_d^2]``.

    That is the last block's output (the skip path's next value), whose closed forms are
    ``m2_0 + d`` (BN v2), ``2^d m2_0`` (unnormalized), ``m2_0`` (SkipInit, alpha = 0) and
    ``(1 + 1/d)^d m2_0 ~ e m2_0`` (branch / sqrt(d)). Seeds of a geometric quantity differ by
    factors, so ``value`` is the geometric mean over runs and ``lo, hi`` the 95% interval of the
    mean log value.

    Args:
        traces: one trace per depth.

    Returns:
        One point per trace, sorted by depth; ``overflow`` when any run is non-finite.
    """
    points = []
    for trace in traces:
        last = [_log(run.blocks[-1].output.m2) for run in trace.runs]
        logs = np.array([v for v in last if math.isfinite(v)])
        mean, ci = _interval(logs)
        prediction = predict(trace)
        theory = prediction.blocks[-1].output_m2 if prediction is not None else math.nan
        points.append(SweepPoint(_depth(trace), math.exp(mean), math.exp(ci[0]),
                                 math.exp(ci[1]), theory, trace.first_overflow is not None))
    return sorted(points, key=lambda p: p.depth)


def _interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """Mean of ``samples`` and its Student-t interval (collapsed onto the mean for one sample)."""
    if samples.size == 0:
        return math.nan, (math.nan, math.nan)
    mean, ci = stats.t_interval(samples, level)
    return mean, ci if samples.size > 1 else (mean, mean)


def plot_depth_sweep(sweeps: Mapping[str, Sequence[Trace]], *,
                     explosive: Sequence[str] = (), axes: Sequence[Axes] | None = None
                     ) -> Figure:
    """``E[x_d^2]`` after the last block against the number of blocks ``d``.

    One line per variant (geometric mean over runs with 95% error bars), its theory dashed in
    the same colour; depths at which a variant overflows are left out and said in the legend.
    Variants named in ``explosive`` get a second panel with a linear ``d`` axis, where geometric
    growth is a straight line and cannot squash the others.

    Args:
        sweeps: legend label -> the traces of that variant at several depths.
        explosive: labels to draw on the second panel.
        axes: one axis (two with ``explosive``) to draw into (default: a new figure).

    Returns:
        The figure.
    """
    if not sweeps:
        raise ValueError("plot_depth_sweep needs at least one variant")
    unknown = [label for label in explosive if label not in sweeps]
    if unknown:
        raise ValueError(f"explosive names {unknown} that are not in sweeps: {list(sweeps)}")
    panels = 2 if explosive else 1
    with style():
        fig, axs = _axes(axes, panels, 1, (DOUBLE if explosive else SINGLE, 3.0))
        colors = _palette()
        markers = "osD^v<>"
        for k, (label, traces) in enumerate(sweeps.items()):
            axis = axs[1] if label in explosive else axs[0]
            color = colors[k % len(colors)]
            points = sweep_points(traces)
            finite = [p for p in points if not p.overflow]
            overflowed = [p.depth for p in points if p.overflow]
            text = label + (f" (non-finite at d = {overflowed[0]})" if overflowed else "")
            axis.errorbar([p.depth for p in finite], [p.value for p in finite],
                          yerr=[[p.value - p.lo for p in finite], [p.hi - p.value for p in finite]],
                          color=color, marker=markers[k % len(markers)], markersize=3.5,
                          linewidth=1.1, capsize=1.5, label=text)
            theory = [p for p in finite if math.isfinite(p.theory)]
            axis.plot([p.depth for p in theory], [p.theory for p in theory], color=color,
                      linestyle=(0, (2, 2)), linewidth=0.9)
        depths = sorted({_depth(t) for traces in sweeps.values() for t in traces})
        for n, axis in enumerate(axs):
            axis.plot([], [], color="0.3", linestyle=(0, (2, 2)), linewidth=0.9,
                      label="theory (same colour)")
            axis.set_yscale("log")
            axis.set_ylabel(r"$E[x_d^2]$ after the last block")
            axis.set_xlabel("number of residual blocks $d$")
            _legend(axis, loc="upper left")
            if n == 0:
                axis.set_xscale("log", base=2)
                axis.set_xticks(depths, [str(d) for d in depths])
                axis.minorticks_off()
                axis.set_title("Skip path at the end of the network")
            else:
                axis.set_title("Geometric growth (linear $d$ axis)")
    return fig


def plot_orderings(bn_relu: Trace, relu_bn: Trace, v1: Trace, multistage: Trace, *,
                   axes: Sequence[Axes] | None = None) -> Figure:
    """Orderings and variants: four panels against the block index, theory dashed.

    (a) skip second moment of BN-ReLU-Conv vs ReLU-BN-Conv branches (+1 vs +2 per block on an
    infinite image);
    (b) their skip average channel squared mean (+1/pi vs 0 per block on an infinite image);
    (c) post-activation v1 vs pre-activation v2 (``bn_relu``), skip second moment;
    (d) a multi-stage v2 network: skip second moment and its reset at every projection.

    Args:
        bn_relu, relu_bn: v2 BN networks with the two orderings.
        v1: a v1 (post-activation) BN network.
        multistage: a v2 BN network with several stages.
        axes: four axes to draw into (default: a new 2x2 figure, 7 in wide).

    Returns:
        The figure.
    """
    with style():
        fig, axs = _axes(axes, 4, 2, (DOUBLE, 4.8))
        colors = _palette()
        orderings = ((bn_relu, "BN-ReLU-Conv", colors[0]), (relu_bn, "ReLU-BN-Conv", colors[4]))
        for trace, label, color in orderings:
            _line(axs[0], trace, _QUANTITIES["skip_m2"], color, label)
            _theory_line(axs[0], trace, _PREDICTED["skip_m2"], None)
            _line(axs[1], trace, _QUANTITIES["skip_sq_mean"], color, label)
            _theory_line(axs[1], trace, _PREDICTED["skip_sq_mean"], None)
        for trace, label, color in ((bn_relu, "v2 (pre-activation)", colors[0]),
                                    (v1, "v1 (post-activation)", colors[5])):
            _line(axs[2], trace, _QUANTITIES["skip_m2"], color, label)
            _theory_line(axs[2], trace, _PREDICTED["skip_m2"], None)
        stages = dict(multistage.model).get("stages", len(multistage.by_stage()))
        _line(axs[3], multistage, _QUANTITIES["skip_m2"], colors[2], f"{stages} stages, v2")
        _theory_line(axs[3], multistage, _PREDICTED["skip_m2"], None)
        for stage, blocks in multistage.by_stage().items():
            if stage > 0:
                axs[3].axvline(blocks[0].index, color="0.5", linestyle=":", linewidth=0.9)
        axs[3].plot([], [], color="0.5", linestyle=":", linewidth=0.9,
                    label="projection shortcut")
        titles = (
            ("(a) Ordering: skip second moment", r"$E[x_l^2]$"),
            ("(b) Ordering: skip channel squared mean", r"$\mathrm{mean}_c\,\mu_c^2(x_l)$"),
            ("(c) Post- vs pre-activation", r"$E[x_l^2]$ (v1: before the ReLU)"),
            ("(d) Stages: the skip path resets", r"$E[x_l^2]$"),
        )
        for ax, (title, ylabel) in zip(axs, titles, strict=True):
            ax.set_title(title)
            ax.set_xlabel("block index $l$")
            ax.set_ylabel(ylabel)
            ax.plot([], [], label="theory", **_THEORY)
            _fit_y(ax, log=False)
        # Headroom for the legend: the first stage's line ends in the top left.
        bottom, top = axs[3].get_ylim()
        axs[3].set_ylim(bottom, top + 0.35 * (top - bottom))
        for ax in axs:
            _legend(ax, loc="upper left")
    return fig


def plot_zoo(traces: Sequence[Trace], labels: Sequence[str] | None = None, *,
             threshold: float = 0.1, colors: Sequence[str] | None = None,
             axes: Sequence[Axes] | None = None) -> Figure:
    """Which networks are biased towards the identity: any traces, against relative depth.

    (a) the branch/skip norm ratio ``||f_l(x_l)|| / ||x_l||`` (log axis; the dotted line is
    ``threshold``); (b) the cosine between the skip operand and the block output (1: identity).
    The x axis is the block's relative depth ``(l + 1) / n`` so networks of different depths
    share it; the legend gives :func:`stats.effective_depth` (blocks whose branch moves the
    skip path by at least ``threshold`` in norm) out of the number of blocks.

    Args:
        traces: traces of any models (built-in or not; no theory is drawn).
        labels: legend entry per trace (default: the model's name).
        threshold: the norm ratio under which a block counts as close to the identity.
        colors: colour per trace (default: sigprop's palette in order).
        axes: two axes to draw into (default: a new 1x2 figure, 7 in wide).

    Returns:
        The figure.
    """
    labels = _check(traces, labels)
    with style():
        fig, axs = _axes(axes, 2, 1, (DOUBLE, 2.9))
        palette = _palette(colors)
        styles = ("-", "--", "-.", ":")
        for k, (trace, label) in enumerate(zip(traces, labels, strict=True)):
            n = trace.n_blocks
            relative = lambda i, n=n: (i + 1) / n  # noqa: E731
            color, linestyle = palette[k % len(palette)], styles[(k // len(palette)) % 4]
            depth = stats.effective_depth(trace, threshold)
            zero = _all_zero(trace, _QUANTITIES["branch_norm_ratio"])
            text = f"{label}: {depth}/{n}" + (r" (branch $\equiv 0$)" if zero else "")
            _line(axs[0], trace, _QUANTITIES["branch_norm_ratio"], color, text, linestyle,
                  relative, log=True)
            _line(axs[1], trace, _QUANTITIES["cosine"], color, label, linestyle, relative)
        axs[0].axhline(threshold, color="0.4", linestyle=":", linewidth=0.9)
        axs[0].set_ylabel(r"$\|f_l(x_l)\|\,/\,\|x_l\|$")
        axs[0].set_title("Branch / skip norm ratio")
        _fit_y(axs[0], log=True)
        axs[1].set_ylabel(r"$\cos(x_l,\ x_l + f_l(x_l))$")
        axs[1].set_title("Identity bias (1: the block is the identity)")
        _fit_y(axs[1], log=False)
        for ax in axs:
            ax.set_xlabel("relative depth $(l + 1) / n$")
            ax.set_xlim(0, 1)
        _outside_legend(fig, axs[0], axes is None, ncol=3,
                        title=f"effective depth (blocks with norm ratio >= {threshold:g}) / blocks")
    return fig


def plot_identity_bias(traces: Sequence[Trace], labels: Sequence[str] | None = None, *,
                       colors: Sequence[str] | None = None, axes: Sequence[Axes] | None = None
                       ) -> Figure:
    """Per-block closeness of the output to the skip path, with the theory dashed.

    (a) cosine between skip and output (:attr:`BlockStats.cosine`; theory
    ``1/sqrt(1 + ratio)``); (b) branch/skip norm ratio (:attr:`BlockStats.branch_norm_ratio`;
    theory ``sqrt(ratio)``), log axis.

    Args:
        traces: the traces to overlay.
        labels: legend entry per trace (default: the model's name).
        colors: colour per trace (default: sigprop's palette in order).
        axes: two axes to draw into (default: a new 1x2 figure, 7 in wide).

    Returns:
        The figure.
    """
    labels = _check(traces, labels)
    with style():
        fig, axs = _axes(axes, 2, 1, (DOUBLE, 2.9))
        palette = _palette(colors)
        for k, (trace, label) in enumerate(zip(traces, labels, strict=True)):
            color = palette[k % len(palette)]
            _line(axs[0], trace, _QUANTITIES["cosine"], color, label)
            _theory_line(axs[0], trace, _PREDICTED["cosine"], None)
            _line(axs[1], trace, _QUANTITIES["branch_norm_ratio"], color,
                  _log_label(trace, "branch_norm_ratio", label), log=True)
            _theory_line(axs[1], trace, _PREDICTED["branch_norm_ratio"], None)
            _mark_overflow(axs, trace, label)
        axs[0].set_ylabel(r"$\cos(x_l,\ x_l + f_l(x_l))$")
        axs[0].set_title("Cosine between skip path and block output")
        axs[1].set_ylabel(r"$\|f_l(x_l)\|\,/\,\|x_l\|$")
        axs[1].set_title("Branch / skip norm ratio")
        _fit_y(axs[1], log=True)
        _fit_y(axs[0], log=False)
        for ax in axs:
            ax.set_xlabel("block index $l$")
        axs[1].plot([], [], label="theory", **_THEORY)
        _outside_legend(fig, axs[1], axes is None, ncol=5)
    return fig


# --------------------------------------------------------------------------------------------
# The figure set


def _fmt(estimate: stats.Estimate, digits: int = 2) -> str:
    return (f"{estimate.estimate:.{digits}f} "
            f"[{estimate.ci95[0]:.{digits}f}, {estimate.ci95[1]:.{digits}f}]")


def _fit_text(trace: Trace, fit_id: stats.FitId, stage: int = 0, digits: int = 2) -> str:
    """``estimate [95% CI] (theory p)``: a fit of ``trace`` beside the same fit of its theory."""
    estimate = stats.fit(trace, fit_id, stage)
    theory = "" if estimate.predicted is None else \
        f" (theory {estimate.predicted:.{digits}f})"
    return _fmt(estimate, digits) + theory


def _alpha_text(alpha: float) -> str:
    return f"SkipInit, alpha = {alpha:g}"


# One colour per network across the figure set (seaborn's colour-blind palette, by index).
_PALETTE_INDEX = {"BN v2": 0, "unnormalized": 1, "SkipInit, alpha = 0": 2,
                  "SkipInit, alpha = 0.1": 4, "branch / sqrt(d)": 5, "BN v1": 3,
                  "BN v2, 3 stages": 6}


def _colors_for(labels: Sequence[str]) -> list[str]:
    """Fixed colours for the built-in networks; the others take the colours left, in order."""
    import seaborn as sns

    palette = sns.color_palette("colorblind").as_hex()
    spare = iter([c for k, c in enumerate(palette) if k not in _PALETTE_INDEX.values()]
                 + ["#000000", "#7b3294", "#a6611a"])
    return [palette[_PALETTE_INDEX[label]] if label in _PALETTE_INDEX else next(spare, "#444444")
            for label in labels]


def _spp_runs(config: FigureConfig) -> dict[str, RunSpec]:
    d = config.spp_depth
    return {
        "BN v2": RunSpec(d),
        "unnormalized": RunSpec(d, norm="none"),
        _alpha_text(0.0): RunSpec(d, norm="skipinit", alpha=0.0),
        _alpha_text(0.1): RunSpec(d, norm="skipinit", alpha=0.1),
    }


def _render_headline(config: FigureConfig, spec: RunSpec) -> Callable[[Traces], FigureResult]:
    def render(traces: Traces) -> FigureResult:
        from sigprop.plotting import plot_spp

        trace = traces[spec]
        fig = plot_spp(trace)
        data = tidy([trace], ["BN v2"], {k: _QUANTITIES[k] for k in
                                         ("skip_sq_mean", "skip_var", "residual_var", "ratio",
                                          "cosine")})
        b = stats.band(trace, _QUANTITIES["ratio"])
        prediction = predict(trace)
        theory = prediction.blocks[-1].ratio if prediction else math.nan
        caption = (
            f"Signal propagation of a {spec.depth}-block BN ResNet-v2 (one stage), as drawn by "
            f"`sigprop analyze resnet --depth {spec.depth} --width {spec.width or config.width} "
            f"--batch-size {spec.batch} --image-size {spec.image}`. The skip path's "
            "average channel squared mean and variance grow linearly, by "
            f"{_fit_text(trace, stats.FitId.SKIP_SQ_MEAN_SLOPE, digits=3)} and "
            f"{_fit_text(trace, stats.FitId.SKIP_VAR_SLOPE, digits=3)} per block (1/pi and "
            "1 - 1/pi on an infinite image; zero padding lowers both); the residual/skip ratio "
            "of second moments falls as "
            f"1/(m2_0 + l): {b.mean[0]:.2f} at block 0, {b.mean[-1]:.4f} at block "
            f"{trace.n_blocks - 1} (theory {theory:.4f}); the cosine between skip and output "
            f"approaches 1. Theory dashed. {config.describe(spec, [config.seeds[0]])}")
        return FigureResult("spp-resnet-v2-batchnorm", "SPP of a BN ResNet-v2", fig, data,
                            caption)
    return render


def _render_trio(config: FigureConfig, runs: dict[str, RunSpec]
                 ) -> Callable[[Traces], FigureResult]:
    def render(traces: Traces) -> FigureResult:
        labels = list(runs)
        ordered = [traces[runs[k]] for k in labels]
        fig = plot_spp_trio(ordered, labels, colors=_colors_for(labels))
        data = tidy(ordered, labels, {k: _QUANTITIES[k] for k in
                                      ("skip_m2", "skip_var", "skip_sq_mean", "residual_var")})
        bn, none = traces[runs["BN v2"]], traces[runs["unnormalized"]]
        overflow = none.first_overflow
        caption = (
            f"Signal-propagation plot of four {config.spp_depth}-block ResNets (v2, one stage): "
            "skip-path second moment E[x_l^2], its average channel variance and squared mean, "
            "and the residual branch's average channel variance, against the block index, on "
            "log axes. BN v2 grows linearly (slope of E[x_l^2] "
            f"{_fit_text(bn, stats.FitId.SKIP_M2_SLOPE)} per block); the unnormalized "
            f"network grows geometrically, by "
            f"{_fit_text(none, stats.FitId.GROWTH_RATE)} per block (2 on an infinite image; "
            "the theory includes zero padding, the rest of the gap is finite width)"
            + (f" and overflows float32 at block {overflow} (vertical line)" if overflow
               is not None else "")
            + "; SkipInit with alpha = 0 is the identity (its residual is exactly 0, so it "
            "has no point on the log axis) and with alpha = 0.1 grows by "
            f"{_fit_text(traces[runs[_alpha_text(0.1)]], stats.FitId.GROWTH_RATE, digits=3)} "
            "per block. On "
            "axes that span the unnormalized explosion, the linear growth of BN v2 lies near "
            "the bottom; the single-network SPP and the orderings figure show it on linear "
            f"axes. Theory dashed. {config.describe()}")
        return FigureResult("spp-trio", "SPP of BN, unnormalized and SkipInit", fig, data,
                            caption)
    return render


def _render_law(config: FigureConfig, runs: list[RunSpec]) -> Callable[[Traces], FigureResult]:
    def render(traces: Traces) -> FigureResult:
        ordered = [traces[r] for r in runs]
        labels = [f"d = {r.depth}" for r in runs]
        fig = plot_sqrt_depth_law(ordered, labels)
        data = tidy(ordered, labels, {"ratio": _QUANTITIES["ratio"]})
        fits = "; ".join(f"d = {r.depth}: {_fit_text(t, stats.FitId.RATIO_EXPONENT)}"
                         for r, t in zip(runs, ordered, strict=True))
        caption = (
            "The sqrt(depth) law: residual/skip ratio of second moments E[f_l(x_l)^2] / "
            "E[x_l^2] against the block position l + 1, log-log, for BN ResNet-v2 networks of "
            "several depths (one stage). The curves coincide: the ratio depends on the block's "
            "position, not on the network's depth, and follows 1/(m2_0 + l) (dashed), a power "
            "law with exponent -1 at infinite depth (the branch is downscaled by sqrt(l) in "
            "standard deviation). Fitted exponents with 95% intervals, beside the same fit of "
            f"the theory at that depth (the m2_0 offset bends the first blocks): {fits}. "
            f"{config.describe()}")
        return FigureResult("sqrt-depth-law", "The sqrt(depth) law", fig, data, caption)
    return render


def _sweep_runs(config: FigureConfig) -> dict[str, list[RunSpec]]:
    depths, seeds = config.sweep_depths, config.seeds[:config.sweep_seeds]
    return {
        "BN v2": [RunSpec(d, seeds=seeds) for d in depths],
        "unnormalized": [RunSpec(d, norm="none", seeds=seeds) for d in depths
                         if d <= config.sweep_overflow_depth],
        _alpha_text(0.0): [RunSpec(d, norm="skipinit", alpha=0.0, seeds=seeds) for d in depths],
        "branch / sqrt(d)": [RunSpec(d, norm="sqrt-depth", seeds=seeds) for d in depths],
    }


def _render_sweep(config: FigureConfig, runs: dict[str, list[RunSpec]]
                  ) -> Callable[[Traces], FigureResult]:
    import pandas as pd

    theory_names = {"BN v2": "m2_0 + f d", "unnormalized": "(1 + f)^d m2_0, f < 1 with zero "
                    "padding (2^d m2_0 on an infinite image)", _alpha_text(0.0): "m2_0",
                    "branch / sqrt(d)": "(1 + f/d)^d m2_0 ~ e^f m2_0"}

    def render(traces: Traces) -> FigureResult:
        sweeps = {label: [traces[r] for r in specs] for label, specs in runs.items()}
        fig = plot_depth_sweep(sweeps, explosive=["unnormalized"])
        rows: list[tuple[Any, ...]] = []
        for label, ts in sweeps.items():
            for trace in ts:
                last = trace.runs[0].blocks[-1]
                for run in trace.runs:
                    rows.append((label, "measured", run.seed, _depth(trace), last.index,
                                 last.stage, "final_m2", run.blocks[-1].output.m2))
                prediction = predict(trace)
                if prediction is not None:
                    rows.append((label, "theory", None, _depth(trace), last.index, last.stage,
                                 "final_m2", prediction.blocks[-1].output_m2))
        data = pd.DataFrame(rows, columns=COLUMNS)
        data["seed"] = data["seed"].astype("Int64")
        bn = sweep_points(sweeps["BN v2"])
        xs = np.array([p.depth for p in bn], dtype=float)
        ys = np.array([p.value for p in bn])
        slope = float(np.polyfit(xs, ys, 1)[0])
        theory_slope = float(np.polyfit(xs, [p.theory for p in bn], 1)[0])
        rules = "; ".join(f"{k}: {v}" for k, v in theory_names.items())
        none = sweep_points(sweeps["unnormalized"])
        first = next((p.depth for p in none if p.overflow), None)
        caption = (
            "Depth sweep: second moment of the skip path after the last block, E[x_d^2] (the "
            "last block's output), against the number of residual blocks d, one line per "
            "variant (geometric mean over seeds with 95% error bars), each with its theory "
            "dashed in "
            f"the same colour ({rules}; m2_0 is the measured skip second moment at block 0). "
            f"BN v2 grows linearly in d (least-squares slope {slope:.2f}, theory "
            f"{theory_slope:.2f} with zero padding); the unnormalized network grows "
            "geometrically"
            + (f"; it is non-finite (float32 overflow) at d = {first}, not drawn" if first else "")
            + f"; deeper unnormalized networks are not measured; SkipInit at alpha = 0 "
            "stays at m2_0 and the 1/sqrt(d) branch scaling ends near e m2_0 at every depth. "
            f"Depths {', '.join(str(d) for d in config.sweep_depths)}. "
            f"{config.describe(seeds=config.seeds[:config.sweep_seeds])}")
        return FigureResult("depth-sweep", "Depth sweep", fig, data, caption)
    return render


def _variant_runs(config: FigureConfig) -> dict[str, RunSpec]:
    d = config.variants_depth
    return {
        "BN-ReLU-Conv": RunSpec(d),
        "ReLU-BN-Conv": RunSpec(d, order="relu-bn"),
        "v1": RunSpec(d, variant="v1"),
        "multi-stage": RunSpec(d, stages=config.stages),
    }


def _render_orderings(config: FigureConfig, runs: dict[str, RunSpec]
                      ) -> Callable[[Traces], FigureResult]:
    def render(traces: Traces) -> FigureResult:
        t = {k: traces[v] for k, v in runs.items()}
        fig = plot_orderings(t["BN-ReLU-Conv"], t["ReLU-BN-Conv"], t["v1"], t["multi-stage"])
        labels = ["BN-ReLU-Conv v2", "ReLU-BN-Conv v2", "BN v1",
                  f"BN v2, {config.stages} stages"]
        data = tidy(list(t.values()), labels, {k: _QUANTITIES[k] for k in
                                               ("skip_m2", "skip_var", "skip_sq_mean")})
        multi = t["multi-stage"]
        slopes = ", ".join(_fit_text(multi, stats.FitId.SKIP_M2_SLOPE, s)
                           for s in sorted(multi.by_stage()))
        starts = ", ".join(f"{stats.band(multi, _QUANTITIES['skip_m2']).mean[b[0].index]:.2f}"
                           for s, b in multi.by_stage().items())
        caption = (
            f"Orderings and variants, {config.variants_depth} blocks each, against the block "
            "index, theory dashed. (a, b) BN-ReLU-Conv vs ReLU-BN-Conv branches: the skip "
            "second moment grows by "
            f"{_fit_text(t['BN-ReLU-Conv'], stats.FitId.SKIP_M2_SLOPE)} vs "
            f"{_fit_text(t['ReLU-BN-Conv'], stats.FitId.SKIP_M2_SLOPE)} per block (1 and 2 on "
            "an infinite image; the theory includes zero padding), and only "
            "BN-ReLU-Conv gives the skip path a mean (squared mean "
            f"{_fit_text(t['BN-ReLU-Conv'], stats.FitId.SKIP_SQ_MEAN_SLOPE)} per "
            "block, 1/pi = 0.32 on an infinite image; ReLU-BN-Conv: 0). "
            "(c) post-activation v1 (statistics of the sum before the ReLU) vs pre-activation "
            f"v2: v1 grows by {_fit_text(t['v1'], stats.FitId.SKIP_M2_SLOPE)} per block, "
            "roughly linearly "
            "(approximate theory). (d) a "
            f"{config.stages}-stage v2 network (width doubles, resolution halves at every "
            "projection shortcut, dotted): the skip path restarts at every stage (first-block "
            f"second moments {starts}) and grows linearly again (slopes per stage {slopes}; the "
            "later stages run at lower resolution, where zero padding lowers the branch's "
            "gain). "
            f"{config.describe()}")
        return FigureResult("orderings", "Orderings and variants", fig, data, caption)
    return render


def _zoo_runs(config: FigureConfig) -> dict[str, RunSpec]:
    d = config.variants_depth
    return {
        "BN v2": RunSpec(d),
        "BN v1": RunSpec(d, variant="v1"),
        f"BN v2, {config.stages} stages": RunSpec(d, stages=config.stages),
        "unnormalized": RunSpec(d, norm="none"),
        _alpha_text(0.0): RunSpec(d, norm="skipinit", alpha=0.0),
        "branch / sqrt(d)": RunSpec(d, norm="sqrt-depth"),
        **{label: RunSpec(blocks, model=model, image=config.zoo_image, batch=config.zoo_batch)
           for label, model, blocks in _REAL_MODELS},
    }


# Real architectures of the zoo: (legend, source:name, residual blocks).
_REAL_MODELS = (
    ("torchvision resnet50", "torchvision:resnet50", 16),
    ("timm resnet50 (zero-init last BN)", "timm:resnet50", 16),
    ("timm resnetv2_50", "timm:resnetv2_50", 16),
    ("timm nf_resnet50", "timm:nf_resnet50", 16),
    ("timm convnext_atto (layer scale)", "timm:convnext_atto", 12),
)


def _render_zoo(config: FigureConfig, runs: dict[str, RunSpec]
                ) -> Callable[[Traces], FigureResult]:
    def render(traces: Traces) -> FigureResult:
        labels = list(runs)
        ordered = [traces[runs[k]] for k in labels]
        fig = plot_zoo(ordered, labels, colors=_colors_for(labels))
        data = tidy(ordered, labels, {k: _QUANTITIES[k] for k in
                                      ("branch_norm_ratio", "cosine")}, theory=False)
        depths = "; ".join(f"{label}: {stats.effective_depth(t)} of {t.n_blocks}"
                           for label, t in zip(labels, ordered, strict=True))
        caption = (
            "Model zoo: which networks are biased towards the identity at initialization. "
            "Branch/skip norm ratio ||f_l(x_l)|| / ||x_l|| (log axis; dotted: 0.1) and cosine "
            "between skip path and block output against relative depth (l + 1)/n. The legend "
            "gives the effective depth, the number of blocks whose branch moves the skip path "
            f"by at least 10% in norm: {depths}. BN biases "
            "deep blocks towards the identity (norm ratio ~ 1/sqrt(l)); SkipInit at alpha = 0 "
            "makes every block exactly the identity; a 1/sqrt(d) branch scaling makes every "
            "block uniformly close to it; the unnormalized network has no identity bias. "
            "Real architectures, built without weights and measured on "
            f"{config.zoo_batch} Gaussian {config.zoo_image}x{config.zoo_image} images: "
            "timm's resnet50 zero-initializes the last BN of every branch and its nf_resnet50 "
            "the last convolution (SkipInit-like), so their blocks start as exact identities; "
            "convnext_atto's layer scale (1e-6) makes every branch ~1e-6 of its skip path; "
            "torchvision's resnet50 and timm's resnetv2_50 rely on BN alone. "
            f"Built-in ResNets: {config.describe()}")
        return FigureResult("zoo", "Model zoo", fig, data, caption)
    return render


def _render_identity(config: FigureConfig, runs: dict[str, RunSpec]
                     ) -> Callable[[Traces], FigureResult]:
    def render(traces: Traces) -> FigureResult:
        labels = list(runs)
        ordered = [traces[runs[k]] for k in labels]
        fig = plot_identity_bias(ordered, labels, colors=_colors_for(labels))
        data = tidy(ordered, labels, {k: _QUANTITIES[k] for k in
                                      ("cosine", "branch_norm_ratio")})
        bn = stats.band(traces[runs["BN v2"]], _QUANTITIES["cosine"]).mean
        none = stats.band(traces[runs["unnormalized"]], _QUANTITIES["cosine"]).mean
        finite = [v for v in none if math.isfinite(v)]
        caption = (
            f"Identity bias of {config.spp_depth}-block ResNets (v2, one stage): cosine between "
            "the skip operand x_l and the block output x_l + f_l(x_l) (1: the block is the "
            "identity), and the branch/skip norm ratio ||f_l(x_l)|| / ||x_l|| (log axis), "
            "against the block index; theory 1/sqrt(1 + ratio) and sqrt(ratio) dashed. In BN "
            f"v2 the cosine rises from {bn[0]:.3f} to {bn[-1]:.4f}; the unnormalized network "
            f"stays near 1/sqrt(2) = 0.707 (mean {np.mean(finite):.3f} before overflow); "
            "SkipInit is the identity at alpha = 0 (cosine 1, norm ratio exactly 0, not drawn "
            "on the log axis) and close to it at alpha = 0.1 (norm ratio 0.1). "
            f"{config.describe()}")
        return FigureResult("identity-bias", "Identity bias", fig, data, caption)
    return render


def figure_specs(config: FigureConfig) -> list[FigureSpec]:
    """The figure set for ``config``: every figure with the networks it measures.

    >>> [spec.name for spec in figure_specs(QUICK)]  # doctest: +NORMALIZE_WHITESPACE
    ['spp-resnet-v2-batchnorm', 'spp-trio', 'identity-bias', 'sqrt-depth-law', 'depth-sweep',
     'orderings', 'zoo']
    """
    depth, batch, image = config.headline
    headline = RunSpec(depth, batch=batch, image=image, seeds=config.seeds[:1])
    trio = _spp_runs(config)
    identity = {k: trio[k] for k in ("BN v2", "unnormalized", _alpha_text(0.0),
                                     _alpha_text(0.1))}
    law = [RunSpec(d) for d in config.law_depths]
    sweep = _sweep_runs(config)
    variants = _variant_runs(config)
    zoo = _zoo_runs(config)
    # The headline figure is `sigprop analyze resnet` with its defaults: one network, one seed.
    return [
        FigureSpec("spp-resnet-v2-batchnorm", "SPP of a BN ResNet-v2", (headline,),
                   _render_headline(config, headline)),
        FigureSpec("spp-trio", "SPP of BN, unnormalized and SkipInit", tuple(trio.values()),
                   _render_trio(config, trio)),
        FigureSpec("identity-bias", "Identity bias", tuple(identity.values()),
                   _render_identity(config, identity)),
        FigureSpec("sqrt-depth-law", "The sqrt(depth) law", tuple(law),
                   _render_law(config, law)),
        FigureSpec("depth-sweep", "Depth sweep", tuple(r for rs in sweep.values() for r in rs),
                   _render_sweep(config, sweep)),
        FigureSpec("orderings", "Orderings and variants", tuple(variants.values()),
                   _render_orderings(config, variants)),
        FigureSpec("zoo", "Model zoo", tuple(zoo.values()), _render_zoo(config, zoo)),
    ]
