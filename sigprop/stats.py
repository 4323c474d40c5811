"""Statistics over measured traces: pure functions returning numbers, intervals and verdicts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from sigprop.trace import BlockStats, Trace

__all__ = ["Band", "band"]


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


def band(trace: Trace, quantity: Callable[[BlockStats], float], level: float = 0.95) -> Band:
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
