"""Per-block summaries over the runs of a trace: bands, the effective depth, relative errors."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from sigprop.theory import predict
from sigprop.trace import BlockStats, Trace

__all__ = ["Band", "band", "effective_depth", "relative_errors", "t_interval"]

_Quantity = Callable[[BlockStats], float]


@dataclass(frozen=True, slots=True)
class Band:
    """Per-block mean over runs with a two-sided confidence interval of that mean.

    With a single run the interval collapses onto the mean. Non-finite values are left out of
    each block's mean; a block with no finite value is NaN.
    """

    index: tuple[int, ...]
    mean: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    n_runs: int


def band(trace: Trace, quantity: _Quantity, level: float = 0.95) -> Band:
    """Mean of ``quantity(block)`` over the runs of ``trace`` with a Student-t interval.

    >>> import sigprop
    >>> t = sigprop.measure(sigprop.models.resnet(2, seed=0),
    ...                     sigprop.InputSpec("gaussian", (4, 3, 8, 8), 0))
    >>> b = band(t, lambda blk: blk.residual.m2)
    >>> b.lo == b.mean == b.hi
    True
    """
    values = np.array([[quantity(b) for b in run.blocks] for run in trace.runs], dtype=float)
    finite = np.isfinite(values)
    counts = finite.sum(axis=0)
    masked = np.where(finite, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = masked.sum(axis=0) / counts
        dev = np.where(finite, values - mean, 0.0)
        sd = np.sqrt((dev**2).sum(axis=0) / np.maximum(counts - 1, 1))
        half = sps.t.ppf(0.5 + level / 2, np.maximum(counts - 1, 1)) * sd / np.sqrt(counts)
    half = np.where(counts > 1, half, 0.0)
    index = tuple(b.index for b in trace.runs[0].blocks)
    return Band(index, tuple(mean.tolist()), tuple((mean - half).tolist()),
                tuple((mean + half).tolist()), len(trace.runs))


def t_interval(samples: Sequence[float] | np.ndarray, level: float = 0.95
               ) -> tuple[float, tuple[float, float]]:
    """Mean of independent ``samples`` and its Student-t interval (NaN with fewer than 2).

    >>> mean, (lo, hi) = t_interval([1.0, 2.0, 3.0])
    >>> mean, round(lo, 3), round(hi, 3)
    (2.0, -0.484, 4.484)
    """
    values = np.asarray(samples, dtype=float)
    if values.size == 0:
        return math.nan, (math.nan, math.nan)
    mean = float(values.mean())
    if values.size < 2:
        return mean, (math.nan, math.nan)
    half = float(sps.t.ppf(0.5 + level / 2, values.size - 1) * values.std(ddof=1)
                 / math.sqrt(values.size))
    return mean, (mean - half, mean + half)


def relative_errors(trace: Trace) -> list[dict[str, float]] | None:
    """Per block: measured (mean over runs) vs predicted skip m2, residual m2 and ratio.

    Returns None where no closed form exists. Each entry holds ``index``, and for ``skip_m2``,
    ``residual_m2`` and ``ratio`` the measured and predicted values and ``(measured -
    predicted) / predicted``.
    """
    prediction = predict(trace)
    if prediction is None:
        return None
    measured = {
        "skip_m2": band(trace, lambda b: b.skip.m2).mean,
        "residual_m2": band(trace, lambda b: b.residual.m2).mean,
        "ratio": band(trace, lambda b: b.ratio).mean,
    }
    rows = []
    for k, p in enumerate(prediction.blocks):
        row: dict[str, float] = {"index": p.index}
        for name, predicted in (("skip_m2", p.skip_m2), ("residual_m2", p.residual_m2),
                                ("ratio", p.ratio)):
            value = measured[name][k]
            row[f"{name}_measured"] = value
            row[f"{name}_predicted"] = predicted
            row[f"{name}_rel_error"] = (value - predicted) / predicted if predicted else math.nan
        rows.append(row)
    return rows


def effective_depth(trace: Trace, threshold: float = 0.1) -> int:
    """Number of blocks whose branch moves the skip path by at least ``threshold`` in norm.

    A block counts when its mean (over runs) ``||residual|| / ||skip||`` is >= ``threshold``;
    the others are within ``threshold`` of the identity. In a BN ResNet-v2 this is about the
    first ``1/threshold**2`` blocks, whatever the total depth.
    """
    norm_ratio = band(trace, lambda b: b.branch_norm_ratio).mean
    return int(sum(1 for r in norm_ratio if math.isfinite(r) and r >= threshold))
