"""Signal-propagation plots from measured traces (matplotlib and seaborn imported lazily)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from sigprop.stats import band
from sigprop.theory import Prediction, predict
from sigprop.trace import BlockStats, Trace

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_spp", "style"]

# Panels of the SPP: (title, y label, [(legend, quantity, line style)]).
_Quantity = Callable[[BlockStats], float]
_PANELS: tuple[tuple[str, str, tuple[tuple[str, _Quantity, str], ...]], ...] = (
    ("Average channel squared mean", r"$\mathrm{mean}_c\, \mu_c^2$", (
        ("skip", lambda b: b.skip.sq_mean, "-"),
        ("output", lambda b: b.output.sq_mean, "--"),
    )),
    ("Average channel variance", r"$\mathrm{mean}_c\, \sigma_c^2$", (
        ("skip", lambda b: b.skip.var, "-"),
        ("output", lambda b: b.output.var, "--"),
        ("residual", lambda b: b.residual.var, ":"),
    )),
    ("Residual / skip", r"$E[f_l(x_l)^2]\, /\, E[x_l^2]$", (
        ("measured", lambda b: b.ratio, "-"),
    )),
    ("Identity bias", r"$\cos(x_l,\ x_l + f_l(x_l))$", (
        ("skip vs output", lambda b: b.cosine, "-"),
    )),
)


@contextmanager
def style() -> Iterator[None]:
    """sigprop's plotting style (colour-blind-safe palette, paper-sized fonts), as a context."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from cycler import cycler

    with sns.axes_style("ticks"), plt.rc_context({
        "axes.prop_cycle": cycler(color=sns.color_palette("colorblind")),
        "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7,
        "xtick.labelsize": 7, "ytick.labelsize": 7, "lines.linewidth": 1.3,
        "axes.spines.top": False, "axes.spines.right": False, "savefig.dpi": 200,
        "savefig.bbox": "tight",
    }):
        yield


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
        labels: legend entry per trace (default: the model's name and norm, if known).
        theory: draw the closed-form predictions where they exist.
        axes: four axes to draw into (default: a new 2x2 figure).

    Returns:
        The figure holding the axes.
    """
    import matplotlib.pyplot as plt

    traces = [traces] if isinstance(traces, Trace) else list(traces)
    if not traces:
        raise ValueError("plot_spp needs at least one trace")
    labels = list(labels) if labels is not None else [_label(t) for t in traces]
    if len(labels) != len(traces):
        raise ValueError(f"got {len(labels)} labels for {len(traces)} traces")
    with style():
        if axes is None:
            fig, axes_array = plt.subplots(2, 2, figsize=(7.0, 4.6), layout="constrained")
            axes = list(axes_array.flat)
        if len(axes) != len(_PANELS):
            raise ValueError(f"plot_spp draws {len(_PANELS)} panels, got {len(axes)} axes")
        fig = cast("Figure", axes[0].get_figure(root=True))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for k, (trace, label) in enumerate(zip(traces, labels, strict=True)):
            color = colors[k % len(colors)]
            prediction = predict(trace) if theory else None
            for ax, (_, _, quantities) in zip(axes, _PANELS, strict=True):
                for name, quantity, linestyle in quantities:
                    prefix = f"{label}: " if len(traces) > 1 else ""
                    _draw_band(ax, trace, quantity, color, linestyle, prefix + name)
            if prediction is not None:
                _draw_theory(axes, prediction, len(traces) > 1, label)
            _mark_stages_and_overflow(axes, trace, color)
        for ax, (title, ylabel, _) in zip(axes, _PANELS, strict=True):
            ax.set_title(title)
            ax.set_xlabel("block index $l$")
            ax.set_ylabel(ylabel)
            ax.legend(frameon=False)
        for ax, decades in zip(axes, (2.0, 2.0, 0.0, math.inf), strict=True):
            _scale_y(ax, decades)
    return fig


def _label(trace: Trace) -> str:
    model = dict(trace.model)
    if model.get("name") == "resnet":
        return f"ResNet-{model['variant']} {model['norm']}, d={model['depth']}"
    return str(model.get("name", "model"))


def _draw_band(ax: Axes, trace: Trace, quantity: _Quantity, color: str, linestyle: str,
               label: str) -> None:
    b = band(trace, quantity)
    ax.plot(b.index, b.mean, linestyle=linestyle, color=color, label=label)
    if b.n_runs > 1:
        ax.fill_between(b.index, b.lo, b.hi, color=color, alpha=0.25, linewidth=0)


def _draw_theory(axes: Sequence[Axes], prediction: Prediction, several: bool, label: str) -> None:
    index = [p.index for p in prediction.blocks]
    name = "theory" + ("" if prediction.exact else " (approx.)")
    name = f"{label}: {name}" if several else name
    kwargs: dict[str, Any] = {"color": "black", "linestyle": (0, (4, 3)), "linewidth": 0.9,
                              "alpha": 0.8}
    skip_var = [p.skip_var for p in prediction.blocks]
    if not all(math.isnan(v) for v in skip_var):
        axes[0].plot(index, [p.skip_sq_mean for p in prediction.blocks], label=name, **kwargs)
        axes[1].plot(index, skip_var, label=name, **kwargs)
    axes[2].plot(index, [p.ratio for p in prediction.blocks],
                 label=f"{name}: {_ratio_rule(prediction.rule)}", **kwargs)
    axes[3].plot(index, [1 / math.sqrt(1 + p.ratio) for p in prediction.blocks],
                 label=f"{name}: 1/sqrt(1 + ratio)", **kwargs)


def _mark_stages_and_overflow(axes: Sequence[Axes], trace: Trace, color: str) -> None:
    starts = [blocks[0].index for stage, blocks in trace.by_stage().items() if stage > 0]
    overflow = trace.first_overflow
    for ax in axes:
        for start in starts:
            ax.axvline(start, color="0.6", linestyle=":", linewidth=0.8)
        if overflow is not None:
            ax.axvline(overflow, color="#d55e00", linewidth=0.9)
    if overflow is not None:
        axes[0].annotate(f"non-finite from block {overflow}", xy=(overflow, 0.5),
                         xycoords=("data", "axes fraction"), rotation=90, fontsize=6,
                         color="#d55e00", ha="right", va="center")


def _scale_y(ax: Axes, decades: float) -> None:
    """Log y-scale when the positive data reach ``decades`` decades above their median; y-limits
    from the lines, so that a wide band (few seeds) cannot squash them.

    Marker lines (unlabelled, in axes coordinates) are ignored; data that are all zero (e.g. a
    SkipInit branch with alpha = 0) keep a linear axis, where zero can be seen.
    """
    data = [np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()
            if not str(line.get_label()).startswith("_")]
    values = np.concatenate(data) if data else np.array([])
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    if positive.size and positive.max() / np.median(positive) >= 10.0**decades:
        ax.set_yscale("log")
        ax.set_ylim(positive.min() / 2, positive.max() * 2)
    elif finite.size and finite.max() > finite.min():
        pad = 0.05 * (finite.max() - finite.min())
        ax.set_ylim(finite.min() - pad, finite.max() + pad)


def _ratio_rule(rule: str) -> str:
    """The part of a theory's rule that gives the residual/skip ratio."""
    return next((part.strip() for part in rule.split(";") if "ratio" in part), rule)
