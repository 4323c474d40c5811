"""How statistics scale with depth: the sqrt(depth) law and the depth sweep."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sigprop import stats
from sigprop.plotting._helpers import (
    LINEAR,
    band_line,
    canvas,
    integer_blocks,
    log_or_nan,
    outside_legend,
    scale_y,
    series,
    theory_legend_entry,
    theory_line,
)
from sigprop.plotting.quantities import MEASURED, PREDICTED, fit_text, network_depth
from sigprop.plotting.style import DOUBLE_COLUMN, SINGLE_COLUMN, palette
from sigprop.theory import predict
from sigprop.trace import Trace

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["SweepPoint", "plot_depth_sweep", "plot_sqrt_depth_law", "sweep_points"]

# The depth sweep draws each variant's theory in the variant's own colour, finely dashed.
_SWEEP_THEORY: dict[str, Any] = {"linestyle": (0, (2, 2)), "linewidth": 0.9}


def plot_sqrt_depth_law(traces: Sequence[Trace], labels: Sequence[str] | None = None, *,
                        ax: Axes | None = None) -> Figure:
    """The sqrt(depth) law as a straight line: skip/residual second moments against the block.

    ``1/ratio = E[x_l^2] / E[f_l(x_l)^2]`` is ``(m2_0 + f l) / f`` in theory: a line of slope 1
    whatever the network's depth (the branch is downscaled by sqrt(l) in standard deviation).
    One colour per trace (e.g. BN v2 at several depths; mean over runs with a 95% band), each
    trace's theory dashed in its colour, and the slope fitted by :func:`sigprop.stats.fit`
    (``inverse_ratio_slope``) with its calibrated 95% interval in the legend, beside the same
    fit of the theory.

    Args:
        traces: the traces (one stage each is assumed; the first stage is fitted).
        labels: legend entry per trace (default: ``d = depth``).
        ax: axes to draw into (default: a new single-column figure, legend under it).

    Returns:
        The figure.

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(4, width=4, seed=0),
    ...                         sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0))
    >>> plot_sqrt_depth_law([trace]).axes[0].get_xscale()
    'linear'
    """
    lines = series(traces, labels or [f"d = {network_depth(t)}" for t in traces])
    deepest_first = sorted(lines, key=lambda line: -network_depth(line.trace))
    with canvas(None if ax is None else [ax], 1, 1, (SINGLE_COLUMN, 3.3)) as (fig, (axis,)):
        for trace, label, color in deepest_first:
            text = f"{label}: slope {fit_text(trace, stats.FitId.INVERSE_RATIO_SLOPE)}"
            band_line(axis, trace, MEASURED["inverse_ratio"], color, text)
            theory_line(axis, trace, PREDICTED["inverse_ratio"], color=color)
        theory_legend_entry(axis, "theory $(m_{2,0} + f\\,l)/f$, slope 1 (dashed)")
        axis.set_xlabel("block index $l$")
        axis.set_ylabel(r"$E[x_l^2]\,/\,E[f_l(x_l)^2]$")
        axis.set_title("The sqrt(depth) law")
        integer_blocks(axis)
        scale_y(axis, LINEAR)
        outside_legend(fig, axis, ax is None, title="fitted slope [95% CI] (theory)")
    return fig


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """The growth of one network of a depth sweep: geometric mean over runs, theory where known.

    ``value`` is ``E[x_d^2] / E[x_0^2]``, the skip path's second moment after the last block
    over the one entering the first; ``lo, hi`` its 95% interval; ``theory`` the closed form's.
    """

    depth: int
    value: float
    lo: float
    hi: float
    theory: float
    overflow: bool

    def per_block(self) -> SweepPoint:
        """The same point as a factor per block, ``value ** (1/d)`` (interval and theory too)."""
        root = 1 / self.depth
        return SweepPoint(self.depth, self.value**root, self.lo**root, self.hi**root,
                          self.theory**root, self.overflow)


def sweep_points(traces: Sequence[Trace]) -> list[SweepPoint]:
    """For each trace: the skip path's growth over the network, ``E[x_d^2] / E[x_0^2]``.

    ``E[x_d^2]`` is the last block's output (the skip path's next value), ``E[x_0^2]`` the skip
    path entering the first block; their closed forms are ``1 + f d / m2_0`` (BN v2), ``(1 +
    f)^d`` (unnormalized), 1 (SkipInit, alpha = 0) and ``(1 + f/d)^d ~ e^f`` (branch /
    sqrt(d)). Seeds differ by factors, so ``value`` is the geometric mean over runs and ``lo,
    hi`` the 95% interval of the mean log value.

    Args:
        traces: one trace per depth.

    Returns:
        One point per trace, sorted by depth; ``overflow`` when any run is non-finite.

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(3, width=4, seed=0),
    ...                         sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0))
    >>> [(p.depth, p.overflow, p.value > 1) for p in sweep_points([trace])]
    [(3, False, True)]
    """
    points = []
    for trace in traces:
        growth = [log_or_nan(run.blocks[-1].output.m2) - log_or_nan(run.blocks[0].skip.m2)
                  for run in trace.runs]
        mean, (lo, hi) = _mean_interval(np.array([v for v in growth if math.isfinite(v)]))
        prediction = predict(trace)
        theory = (prediction.blocks[-1].output_m2 / prediction.blocks[0].skip_m2
                  if prediction is not None else math.nan)
        points.append(SweepPoint(network_depth(trace), math.exp(mean), math.exp(lo),
                                 math.exp(hi), theory, trace.first_overflow is not None))
    return sorted(points, key=lambda p: p.depth)


def _mean_interval(samples: np.ndarray) -> tuple[float, tuple[float, float]]:
    """Mean of ``samples`` and its 95% Student-t interval (collapsed onto the mean for one)."""
    if samples.size == 0:
        return math.nan, (math.nan, math.nan)
    mean, ci = stats.t_interval(samples, 0.95)
    return mean, ci if samples.size > 1 else (mean, mean)


def plot_depth_sweep(sweeps: Mapping[str, Sequence[Trace]], *,
                     explosive: Sequence[str] = (), axes: Sequence[Axes] | None = None
                     ) -> Figure:
    """The skip path's growth over the network, ``E[x_d^2] / E[x_0^2]``, against ``d`` blocks.

    One line per variant (geometric mean over runs with 95% error bars), its theory dashed in
    the same colour; depths at which a variant overflows are left out and said in the legend.
    Variants named in ``explosive`` get a second panel showing their growth *per block*,
    ``(E[x_d^2] / E[x_0^2])^(1/d)``, on linear axes: a geometric explosion is a constant there,
    and its finite-width gap to the theory is read off directly instead of compounding over
    ``d`` blocks.

    Args:
        sweeps: legend label -> the traces of that variant at several depths.
        explosive: labels to draw on the second panel.
        axes: one axis (two with ``explosive``) to draw into (default: a new figure).

    Returns:
        The figure.

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(4, width=4, seed=0),
    ...                         sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0))
    >>> len(plot_depth_sweep({"BN v2": [trace]}).axes)
    1
    """
    if not sweeps:
        raise ValueError("plot_depth_sweep needs at least one variant")
    unknown = [label for label in explosive if label not in sweeps]
    if unknown:
        raise ValueError(f"explosive names {unknown} that are not in sweeps: {list(sweeps)}")
    colors = palette()
    markers = "osD^v<>"
    depths = sorted({network_depth(t) for traces in sweeps.values() for t in traces})
    with canvas(axes, 2 if explosive else 1, 1,
                (DOUBLE_COLUMN if explosive else SINGLE_COLUMN, 3.2)) as (fig, axs):
        for k, (label, traces) in enumerate(sweeps.items()):
            per_block = label in explosive
            axis = axs[1] if per_block else axs[0]
            color = colors[k % len(colors)]
            points = [p.per_block() if per_block else p for p in sweep_points(traces)]
            finite = [p for p in points if not p.overflow]
            overflowed = [p.depth for p in points if p.overflow]
            text = label + (f" (non-finite at d = {overflowed[0]})" if overflowed else "")
            axis.errorbar([p.depth for p in finite], [p.value for p in finite],
                          yerr=[[p.value - p.lo for p in finite], [p.hi - p.value for p in finite]],
                          color=color, marker=markers[k % len(markers)], markersize=3.5,
                          linewidth=1.1, capsize=1.5, label=text)
            theory = [p for p in finite if math.isfinite(p.theory)]
            axis.plot([p.depth for p in theory], [p.theory for p in theory], color=color,
                      **_SWEEP_THEORY)
        for n, axis in enumerate(axs):
            axis.plot([], [], color="0.3", label="theory (same colour)", **_SWEEP_THEORY)
            axis.set_xlabel("number of residual blocks $d$")
            axis.set_xscale("log", base=2)
            shown = [d for d in depths if any(x == d for line in axis.get_lines()
                                              for x in np.asarray(line.get_xdata()))]
            axis.set_xticks(shown, [str(d) for d in shown])
            axis.minorticks_off()
            if n == 0:
                axis.set_yscale("log")
                axis.set_ylabel(r"$E[x_d^2]\,/\,E[x_0^2]$ over the network")
                axis.set_title("Growth of the skip path over the network")
            else:
                axis.set_ylabel(r"$(E[x_d^2]\,/\,E[x_0^2])^{1/d}$")
                axis.set_title("Geometric growth: factor per block")
                scale_y(axis, LINEAR)
        outside_legend(fig, axs[0], axes is None, ncol=3, more=axs[1:])
    return fig
