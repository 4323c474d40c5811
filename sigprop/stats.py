"""Statistics over measured traces: pure functions returning estimates, intervals and verdicts.

Every fit works within one stage (a projection shortcut resets the skip path). It is computed on
each run (seed) and averaged over the runs.

Why the intervals are built as they are (docs/theory.md has the calibration table): seeds are
independent, blocks within one trace are not. Within a run, ``m2_l`` is a random walk and every
figure computed from its levels (a line through ``1/ratio``, a power law of the ratio) has
residuals correlated over spans that grow with ``l``, so an interval that treats blocks as
independent is several times too narrow. What *is* close to independent is each block's own
contribution: its fresh branch (its increment of the skip path and its branch second moment).
The within-run uncertainty is therefore a delete-a-segment jackknife over contiguous segments of
blocks, in which a deleted segment's increments are removed from the skip path and the remaining
pieces are joined (the run as if those blocks did not exist). With several runs, the spread of
the per-run estimates (``runs - 1`` degrees of freedom) and the runs' jackknife variances are
pooled, weighted by their degrees of freedom. ``benchmarks/calibration.py`` measures the coverage
of these intervals on real traces of the built-in networks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

import numpy as np
from scipy import stats as sps

from sigprop.theory import Prediction, predict
from sigprop.trace import BlockStats, Trace

__all__ = [
    "Band",
    "Estimate",
    "FitId",
    "Growth",
    "Outcome",
    "Report",
    "Tolerances",
    "Verdict",
    "VerdictId",
    "band",
    "effective_depth",
    "fit",
    "fits",
    "projected_growth",
    "relative_errors",
    "report",
    "t_interval",
    "verdicts",
]

_Quantity = Callable[[BlockStats], float]


class FitId(StrEnum):
    """What a fit estimates (one value per stage)."""

    SKIP_M2_SLOPE = "skip_m2_slope"  # mean increment of the skip second moment per block
    SKIP_VAR_SLOPE = "skip_var_slope"  # ... of its average channel variance
    SKIP_SQ_MEAN_SLOPE = "skip_sq_mean_slope"  # ... of its average channel squared mean
    INVERSE_RATIO_SLOPE = "inverse_ratio_slope"  # slope of skip/residual m2 against l
    RATIO_EXPONENT = "ratio_exponent"  # power of the residual/skip ratio in the block position
    GROWTH_RATE = "growth_rate"  # geometric factor g of m2_{l+1} = a + g m2_l


class VerdictId(StrEnum):
    """The claims of the theory that every measurement is judged against."""

    SKIP_LINEAR_GROWTH = "skip_linear_growth"
    SQRT_DEPTH_DOWNSCALING = "sqrt_depth_downscaling"
    GEOMETRIC_EXPLOSION = "geometric_explosion"
    IDENTITY_AT_INIT = "identity_at_init"


class Outcome(StrEnum):
    """Three-valued outcome of a verdict: an equivalence test against a tolerance band."""

    CONSISTENT = "consistent"  # the whole interval lies inside the band
    INCONSISTENT = "inconsistent"  # the whole interval lies outside it
    INCONCLUSIVE = "inconclusive"  # anything else: too few blocks or runs, too wide


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


@dataclass(frozen=True, slots=True)
class Estimate:
    """A fitted figure with its confidence interval and the theory's value for it.

    Attributes:
        id: what is estimated (:class:`FitId`).
        stage: the stage it was fitted in.
        estimate: the point estimate, the mean of the runs' estimates (NaN when no run has
            enough finite blocks).
        ci95: the interval ``(lo, hi)`` at the level of the fit (95% by default); NaN when
            the data cannot give one (one run of fewer than four blocks).
        n: blocks behind it, summed over the runs.
        n_runs: runs (seeds) behind it.
        df: degrees of freedom of the interval's t quantile (0 without an interval).
        predicted: the same fit applied to the theory's per-block prediction for this model
            (finite-depth and finite-image effects included); None where no theory applies.
        intercept: the line's value at the stage's first block, where a line is fitted.
    """

    id: FitId
    stage: int
    estimate: float
    ci95: tuple[float, float]
    n: int
    n_runs: int
    df: int = 0
    predicted: float | None = None
    intercept: float = math.nan

    def contains(self, value: float) -> bool:
        """True when ``value`` lies inside the interval."""
        return self.ci95[0] <= value <= self.ci95[1]

    @property
    def half_width(self) -> float:
        """Half the width of the interval (NaN without one)."""
        return (self.ci95[1] - self.ci95[0]) / 2


@dataclass(frozen=True, slots=True)
class _Series:
    """One run's blocks of one stage, up to its first non-finite block."""

    skip_m2: np.ndarray
    skip_var: np.ndarray
    skip_sq_mean: np.ndarray
    residual_m2: np.ndarray

    @property
    def size(self) -> int:
        return int(self.skip_m2.size)

    def spliced(self, keep: np.ndarray) -> _Series:
        """The run as if the blocks not in ``keep`` did not exist: their branches and increments go.

        The skip path enters the stage at its first level and after a gap continues from the
        level before it, so what remains is a shorter run of the same network, not a series with
        a jump (nor one that starts from a deeper level when the first blocks go).
        """
        kept = np.flatnonzero(keep)

        def splice(levels: np.ndarray) -> np.ndarray:
            increments = np.diff(levels)[kept[:-1]]
            joined: np.ndarray = levels[0] + np.concatenate([[0.0], np.cumsum(increments)])
            return joined

        return _Series(splice(self.skip_m2), splice(self.skip_var), splice(self.skip_sq_mean),
                       self.residual_m2[kept])


def _series(trace: Trace, stage: int) -> list[_Series]:
    out = []
    for run in trace.runs:
        blocks = [b for b in run.blocks if b.stage == stage]
        columns = np.array([[b.skip.m2, b.skip.var, b.skip.sq_mean, b.residual.m2]
                            for b in blocks], dtype=float).reshape(-1, 4)
        bad = np.flatnonzero(~np.isfinite(columns).all(axis=1))
        columns = columns[: bad[0]] if bad.size else columns
        out.append(_Series(*columns.T))
    return out


# A fit of one run on the blocks in a mask: its value and, for lines, the intercept at the
# stage's first block.
_Fitter = Callable[[_Series, np.ndarray], tuple[float, float]]


def _on_spliced(fitter: Callable[[_Series], tuple[float, float]]) -> _Fitter:
    return lambda s, keep: fitter(s if keep.all() else s.spliced(keep))


def _mean_increment(levels: Callable[[_Series], np.ndarray]) -> _Fitter:
    def fitter(s: _Series) -> tuple[float, float]:
        y = levels(s)
        if y.size < 2:
            return math.nan, math.nan
        slope = float(y[-1] - y[0]) / (y.size - 1)
        return slope, float((y - slope * np.arange(y.size)).mean())
    return _on_spliced(fitter)


def _inverse_ratio_line(s: _Series) -> tuple[float, float]:
    keep = s.residual_m2 > 0
    if keep.sum() < 2:
        return math.nan, math.nan
    x = np.arange(s.size, dtype=float)[keep]
    slope, intercept = np.polyfit(x, s.skip_m2[keep] / s.residual_m2[keep], 1)
    return float(slope), float(intercept)


def _ratio_power_law(s: _Series) -> tuple[float, float]:
    keep = (s.residual_m2 > 0) & (s.skip_m2 > 0)
    if keep.sum() < 3:
        return math.nan, math.nan
    x = np.log(np.arange(1, s.size + 1, dtype=float)[keep])
    slope, intercept = np.polyfit(x, np.log(s.residual_m2[keep] / s.skip_m2[keep]), 1)
    return float(slope), float(math.exp(intercept))


def _growth(s: _Series, keep: np.ndarray) -> tuple[float, float]:
    """``g`` of ``m2_{l+1} = a + g m2_l``, from ``m2_{l+1}/m2_l - 1 = (g - 1) + a / m2_l``.

    A linear walk has ``g = 1`` whatever its increment ``a``; a geometric one ``a = 0``. A jump
    at the start of a stage (a small ``m2_0``) lands in ``a``, not in ``g``. The units are the
    pairs (block, next block), so the jackknife drops pairs rather than splicing the walk.
    """
    level, following = s.skip_m2[:-1], s.skip_m2[1:]
    pairs = keep[:-1] & (level > 0) & np.isfinite(following)
    if pairs.sum() < 3:
        return math.nan, math.nan
    level, following = level[pairs], following[pairs]
    if np.ptp(level) <= 1e-9 * level.max():
        # A flat walk (identity blocks): no spread of levels to separate a from g.
        return float((following / level).mean()), 0.0
    design = np.column_stack([np.ones(level.size), 1.0 / level])
    (rate, increment), *_ = np.linalg.lstsq(design, following / level - 1.0, rcond=None)
    return 1.0 + float(rate), float(increment)


@dataclass(frozen=True, slots=True)
class _Fit:
    """A fitter and the segments its within-run jackknife deletes.

    The layouts come from the calibration on real traces (benchmarks/calibration.py): the
    growth factors of a run stay correlated over long spans (the skip path's channel means
    persist), so its jackknife deletes a quarter of the run at a time; the power law of the
    ratio spends its leverage on the first blocks, so its segments are equal in ``log n``.
    """

    fitter: _Fitter
    segments: int = 8
    log_spaced: bool = False

    def edges(self, size: int) -> np.ndarray:
        """Segment boundaries over ``size`` blocks (segments of at least 2 blocks)."""
        count = min(self.segments, size // 2)
        if count < 2:
            return np.array([0, size])
        if self.log_spaced:
            return np.unique(np.geomspace(1, size + 1, count + 1).round().astype(int) - 1)
        return np.linspace(0, size, count + 1).round().astype(int)


_FITS: dict[FitId, _Fit] = {
    FitId.SKIP_M2_SLOPE: _Fit(_mean_increment(lambda s: s.skip_m2)),
    FitId.SKIP_VAR_SLOPE: _Fit(_mean_increment(lambda s: s.skip_var)),
    FitId.SKIP_SQ_MEAN_SLOPE: _Fit(_mean_increment(lambda s: s.skip_sq_mean)),
    FitId.INVERSE_RATIO_SLOPE: _Fit(_on_spliced(_inverse_ratio_line)),
    FitId.RATIO_EXPONENT: _Fit(_on_spliced(_ratio_power_law), segments=6, log_spaced=True),
    FitId.GROWTH_RATE: _Fit(_growth, segments=4),
}


class _RunFit(NamedTuple):
    """One run's fit: its value, intercept, within-run jackknife variance and that variance's
    degrees of freedom (0 without one)."""

    value: float
    intercept: float
    variance: float
    df: int


def _run_fit(fit: _Fit, s: _Series) -> _RunFit:
    """Fit one run and delete each of its segments in turn (the jackknife)."""
    everything = np.ones(s.size, dtype=bool)
    value, intercept = fit.fitter(s, everything)
    edges = fit.edges(s.size)
    segments = edges.size - 1
    if not math.isfinite(value) or segments < 2:
        return _RunFit(value, intercept, math.nan, 0)
    left_out = []
    for start, stop in itertools.pairwise(edges):
        keep = everything.copy()
        keep[start:stop] = False
        left_out.append(fit.fitter(s, keep)[0])
    values = np.array(left_out)
    if not np.isfinite(values).all():
        return _RunFit(value, intercept, math.nan, 0)
    variance = (segments - 1) / segments * float(((values - values.mean()) ** 2).sum())
    return _RunFit(value, intercept, variance, segments - 1)


def _pooled(per_run: list[_RunFit], level: float
            ) -> tuple[float, tuple[float, float], float, int, int]:
    """Mean over runs, its interval, the mean intercept, the runs used and the interval's df.

    The variance of one run's estimate is the spread of the runs' estimates (``runs - 1``
    degrees of freedom) pooled with the runs' jackknife variances, weighted by degrees of freedom.
    """
    finite = [r for r in per_run if math.isfinite(r.value)]
    if not finite:
        return math.nan, (math.nan, math.nan), math.nan, 0, 0
    values = np.array([r.value for r in finite])
    estimate = float(values.mean())
    intercept = float(np.mean([r.intercept for r in finite]))
    df_between = values.size - 1
    between = float(values.var(ddof=1)) if df_between else 0.0
    within = [(r.variance, r.df) for r in finite if r.df > 0]
    df_within = sum(df for _, df in within)
    df = df_between + df_within
    if df == 0:
        return estimate, (math.nan, math.nan), intercept, values.size, 0
    variance = (df_between * between + sum(v * d for v, d in within)) / df
    half = float(sps.t.ppf(0.5 + level / 2, df)) * math.sqrt(variance / values.size)
    return estimate, (estimate - half, estimate + half), intercept, values.size, df


def _predicted_series(prediction: Prediction, stage: int, size: int) -> _Series:
    blocks = [b for b in prediction.blocks if b.stage == stage][:size]
    columns = np.array([[b.skip_m2, b.skip_var, b.skip_sq_mean, b.residual_m2]
                        for b in blocks], dtype=float).reshape(-1, 4)
    return _Series(*columns.T)


def fit(trace: Trace, fit_id: FitId | str, stage: int = 0, level: float = 0.95,
        prediction: Prediction | None = None) -> Estimate:
    """One fit of one stage: the runs' mean estimate, its interval and the theory's value.

    Args:
        trace: the measurement (one or more runs).
        fit_id: what to estimate (:class:`FitId`):

            * ``skip_m2_slope`` / ``skip_var_slope`` / ``skip_sq_mean_slope``: the mean
              increment per block of the skip path's statistic (linear growth: BN v2 ~1);
            * ``inverse_ratio_slope``: least-squares slope of ``skip m2 / residual m2`` against
              the block's position in the stage: the straight-line form of the sqrt(depth) law
              (skip increment per block / branch second moment: 1 in theory);
            * ``ratio_exponent``: power of ``residual/skip`` in the position ``n = 1, 2, ...``
              (-1 only at infinite depth: ``1/(m2_0 + l)`` fits -0.90 at 64 blocks);
            * ``growth_rate``: ``g`` of ``m2_{l+1} = a + g m2_l`` (1 for linear growth).
        stage: the stage to fit.
        level: confidence level of the interval.
        prediction: the theory's prediction (default: :func:`sigprop.theory.predict`).

    Returns:
        An :class:`Estimate`; its ``predicted`` is the same fit of the predicted blocks.

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(32, seed=0),
    ...                         sigprop.InputSpec("gaussian", (8, 3, 16, 16), 0))
    >>> slope = fit(trace, "skip_m2_slope")
    >>> slope.ci95[0] < slope.estimate < slope.ci95[1], round(slope.predicted, 3)
    (True, 0.943)
    """
    fit_id = FitId(fit_id)
    chosen = _FITS[fit_id]
    series = _series(trace, stage)
    estimate, ci, intercept, runs, df = _pooled([_run_fit(chosen, s) for s in series], level)
    prediction = prediction if prediction is not None else predict(trace)
    predicted = None
    longest = max((s.size for s in series), default=0)
    if prediction is not None and longest:
        predicted_series = _predicted_series(prediction, stage, longest)
        value = chosen.fitter(predicted_series, np.ones(longest, bool))[0]
        predicted = value if math.isfinite(value) else None
    blocks = sum(s.size for s in series)
    return Estimate(fit_id, stage, estimate, ci, blocks, runs, df, predicted, intercept)


def fits(trace: Trace, level: float = 0.95) -> list[Estimate]:
    """Every fit of every stage, in :class:`FitId` order within each stage."""
    prediction = predict(trace)
    return [fit(trace, fit_id, stage, level, prediction)
            for stage in sorted(trace.by_stage()) for fit_id in FitId]


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


@dataclass(frozen=True, slots=True)
class Growth:
    """The geometric part of the skip path's growth, projected over a run of blocks.

    Attributes:
        factor: projected growth ``prod_s g_s^(n_s)`` over the judged stages (1: linear or
            no growth), with ``ci95`` its interval.
        per_block: ``factor ** (1 / blocks)``, the equivalent factor per block.
        blocks: blocks of the stages that could be judged; ``unjudged``: blocks of stages
            too short (or too noisy) to estimate a growth rate.
        overflow: index of the first block that overflowed in any run, or None.
    """

    factor: float
    ci95: tuple[float, float]
    per_block: float
    blocks: int
    unjudged: int
    overflow: int | None


def projected_growth(trace: Trace, stages: Sequence[int] | None = None,
                     level: float = 0.95) -> Growth:
    """Geometric growth of the skip second moment over ``stages`` (default: the network).

    Each stage contributes ``g ** n`` with ``g`` its :data:`FitId.GROWTH_RATE` and ``n`` its
    blocks; the interval combines the stages' intervals on the log scale (delta method).

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(48, norm="none", seed=0),
    ...                         sigprop.InputSpec("gaussian", (8, 3, 16, 16), 0))
    >>> projected_growth(trace).factor > 1e6
    True
    """
    by_stage = trace.by_stage()
    chosen = sorted(by_stage) if stages is None else list(stages)
    log_factor, log_variance, df, blocks, unjudged = 0.0, 0.0, math.inf, 0, 0
    for stage in chosen:
        n = len(by_stage[stage])
        rate = fit(trace, FitId.GROWTH_RATE, stage, level)
        if not (rate.estimate > 0 and math.isfinite(rate.half_width) and rate.ci95[0] > 0):
            unjudged += n
            continue
        se = rate.half_width / float(sps.t.ppf(0.5 + level / 2, rate.df))
        log_factor += n * math.log(rate.estimate)
        log_variance += (n * se / rate.estimate) ** 2
        df = min(df, rate.df)
        blocks += n
    first = trace.first_overflow
    # A stage after the one that overflowed is non-finite from its first block.
    overflow = None if first is None else next(
        (b.index for b in trace.runs[0].blocks if b.index >= first and b.stage in chosen), None)
    if not blocks:
        return Growth(math.nan, (math.nan, math.nan), math.nan, 0, unjudged, overflow)
    half = float(sps.t.ppf(0.5 + level / 2, df)) * math.sqrt(log_variance)
    return Growth(math.exp(log_factor), (math.exp(log_factor - half), math.exp(log_factor + half)),
                  math.exp(log_factor / blocks), blocks, unjudged, overflow)


@dataclass(frozen=True, slots=True)
class Tolerances:
    """Tolerance bands of the verdicts; every default is documented in docs/theory.md.

    Attributes:
        slope_rel: relative band around a predicted linear slope (0.2: prediction +- 20%).
        downscaling_rel: relative band around 1 for the slope of ``1/ratio`` against ``l``
            (the straight-line form of the sqrt(depth) law).
        explosion_growth: projected geometric growth of the skip second moment over a stage
            (or the network) from which the signal counts as exploding (10x, a decade: the
            paper's bound ``alpha < 1/sqrt(d)`` keeps SkipInit's ``(1 + alpha^2)^d`` below e).
        identity_norm: largest ``||residual|| / ||skip||`` of an identity block (1e-6).
    """

    slope_rel: float = 0.2
    downscaling_rel: float = 0.2
    explosion_growth: float = 10.0
    identity_norm: float = 1e-6


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether one claim of the theory holds for the measured network, in one stage or overall.

    Attributes:
        id: which claim (:class:`VerdictId`).
        stage: the stage judged, or None for the whole network.
        claim: the claim in words.
        measured: the figure measured (NaN when it cannot be measured).
        interval: its 95% interval (NaN where there is none).
        predicted: the value the *claim* predicts (e.g. 1 for the slope of ``1/ratio``), or
            None where the claim makes no numerical prediction for this model.
        tolerance: the band the whole interval must lie in, in words.
        outcome: consistent, inconsistent or inconclusive (:class:`Outcome`).
        detail: the reasoning in one sentence, with the reason when inconclusive.
        n_runs: runs (seeds) behind it; ``n_blocks``: blocks per run judged.
    """

    id: VerdictId
    stage: int | None
    claim: str
    measured: float
    interval: tuple[float, float]
    predicted: float | None
    tolerance: str
    outcome: Outcome
    detail: str
    n_runs: int
    n_blocks: int

    @property
    def consistent(self) -> bool | None:
        """True, False, or None when inconclusive."""
        return None if self.outcome is Outcome.INCONCLUSIVE else \
            self.outcome is Outcome.CONSISTENT

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields, with ``consistent`` as true, false or null."""
        doc = asdict(self)
        doc["id"], doc["outcome"] = self.id.value, self.outcome.value
        doc["consistent"] = self.consistent
        return doc


def _equivalence(ci: tuple[float, float], lo: float, hi: float) -> Outcome:
    """Consistent when the whole interval lies in ``[lo, hi]``, inconsistent when it misses it."""
    if not (math.isfinite(ci[0]) and math.isfinite(ci[1])):
        return Outcome.INCONCLUSIVE
    if lo <= ci[0] and ci[1] <= hi:
        return Outcome.CONSISTENT
    if ci[1] < lo or ci[0] > hi:
        return Outcome.INCONSISTENT
    return Outcome.INCONCLUSIVE


def _why_inconclusive(estimate: Estimate) -> str:
    if not math.isfinite(estimate.estimate):
        return f"too few finite blocks ({estimate.n}) to fit"
    if not math.isfinite(estimate.ci95[0]):
        return (f"{estimate.n} block(s) in {estimate.n_runs} run(s) give no interval: "
                "measure more blocks or seeds")
    return "the interval straddles the tolerance band: measure more seeds"


def _runs_blocks(estimate: Estimate) -> tuple[int, int]:
    return estimate.n_runs, estimate.n // max(estimate.n_runs, 1)


def _linear_verdict(slope: Estimate, growth: Growth, linear: bool, tol: Tolerances) -> Verdict:
    explodes = growth.overflow is not None or growth.ci95[0] >= tol.explosion_growth
    # Only a linear theory predicts a slope the claim can be held to; without one, growth is
    # linear when its geometric part stays within a factor explosion_growth either way.
    predicted = slope.predicted if linear else None
    if predicted is not None:
        lo, hi = sorted((predicted * (1 - tol.slope_rel), predicted * (1 + tol.slope_rel)))
        tolerance = f"slope in [{lo:.3g}, {hi:.3g}] per block ({tol.slope_rel:.0%} of theory)"
    else:
        tolerance = (f"slope > 0 and a geometric part within x{tol.explosion_growth:g} "
                     "either way (no linear theory for this model)")
    detail = f"slope {slope.estimate:.3g} per block"
    if explodes:
        outcome = Outcome.INCONSISTENT
        detail += f"; the growth is geometric (x{growth.per_block:.4g} per block)"
    elif predicted is not None:
        outcome = _equivalence(slope.ci95, lo, hi)
    else:
        bound = tol.explosion_growth
        flat = _equivalence(growth.ci95, 1 / bound, bound)
        rising = _equivalence(slope.ci95, 0.0, math.inf)
        outcome = (Outcome.CONSISTENT if flat is rising is Outcome.CONSISTENT else
                   Outcome.INCONSISTENT if Outcome.INCONSISTENT in (flat, rising) else
                   Outcome.INCONCLUSIVE)
        detail += (f"; geometric part x{growth.factor:.3g} [{growth.ci95[0]:.3g}, "
                   f"{growth.ci95[1]:.3g}] over {growth.blocks} block(s)" if growth.blocks
                   else "; too few blocks to separate a geometric part")
    if outcome is Outcome.INCONCLUSIVE and predicted is not None:
        detail += "; " + _why_inconclusive(slope)
    return Verdict(VerdictId.SKIP_LINEAR_GROWTH, slope.stage,
                   "skip second moment grows linearly", slope.estimate, slope.ci95, predicted,
                   tolerance, outcome, detail, *_runs_blocks(slope))


def _downscaling_verdict(inverse: Estimate, exponent: Estimate, zero_branch: bool,
                         tol: Tolerances) -> Verdict:
    lo, hi = 1 - tol.downscaling_rel, 1 + tol.downscaling_rel
    outcome = _equivalence(inverse.ci95, lo, hi)
    if math.isnan(inverse.estimate):
        detail = "no ratio to fit: the residual branch is zero in this stage" if zero_branch \
            else _why_inconclusive(inverse)
    else:
        detail = (f"skip/residual grows by {inverse.estimate:.3g} per block (1: the branch is "
                  "downscaled by sqrt(l) in standard deviation)")
        if math.isfinite(exponent.estimate):
            detail += f"; ratio ~ n^{exponent.estimate:.3g}" + (
                "" if exponent.predicted is None else
                f" (theory at this depth: n^{exponent.predicted:.3g})")
        if outcome is Outcome.INCONCLUSIVE:
            detail += "; " + _why_inconclusive(inverse)
    return Verdict(VerdictId.SQRT_DEPTH_DOWNSCALING, inverse.stage,
                   "residual/skip ratio falls as 1/l (sqrt(depth) downscaling)",
                   inverse.estimate, inverse.ci95, 1.0,
                   f"slope of 1/ratio in [{lo:g}, {hi:g}] per block", outcome, detail,
                   *_runs_blocks(inverse))


def _explosion_verdict(stage: int | None, growth: Growth, n_runs: int,
                       tol: Tolerances) -> Verdict:
    over = f"{growth.blocks} block(s)" + (f" ({growth.unjudged} more in stages too short or "
                                          "too noisy to fit)" if growth.unjudged else "")
    if growth.overflow is not None:
        outcome = Outcome.CONSISTENT
        detail = f"float32 overflow from block {growth.overflow}"
    elif not growth.blocks:
        outcome = Outcome.INCONCLUSIVE
        where = "this stage is" if stage is not None else "every stage is"
        detail = (f"{where} too short to fit a growth rate with an interval ({growth.unjudged} "
                  "block(s) in all; a stage needs at least 4 blocks, and seeds narrow it)")
    else:
        outcome = _equivalence(growth.ci95, tol.explosion_growth, math.inf)
        if outcome is Outcome.INCONSISTENT and growth.unjudged:
            # Stages too short to fit could still explode.
            outcome = Outcome.INCONCLUSIVE
        detail = (f"x{growth.per_block:.4g} per block, x{growth.factor:.3g} "
                  f"[{growth.ci95[0]:.3g}, {growth.ci95[1]:.3g}] over {over}")
        if outcome is Outcome.INCONCLUSIVE and not growth.unjudged:
            detail += "; the interval straddles the threshold: measure more seeds"
    per_block_ci = tuple(c ** (1 / growth.blocks) if growth.blocks else math.nan
                         for c in growth.ci95)
    return Verdict(VerdictId.GEOMETRIC_EXPLOSION, stage,
                   "skip second moment grows geometrically (explodes)", growth.per_block,
                   (per_block_ci[0], per_block_ci[1]), None,
                   f"projected growth >= x{tol.explosion_growth:g} over the blocks, or overflow",
                   outcome, detail, n_runs, growth.blocks + growth.unjudged)


def _identity_verdict(trace: Trace, tol: Tolerances) -> Verdict:
    norms = [b.branch_norm_ratio for _, b in trace.blocks()]
    finite = [n for n in norms if math.isfinite(n)]
    largest = max(finite) if finite else math.nan
    outcome = (Outcome.INCONCLUSIVE if not finite else
               Outcome.CONSISTENT if largest <= tol.identity_norm else Outcome.INCONSISTENT)
    return Verdict(VerdictId.IDENTITY_AT_INIT, None, "every block is the identity (zero branch)",
                   largest, (math.nan, math.nan), 0.0,
                   f"||residual|| / ||skip|| <= {tol.identity_norm:g} in every block", outcome,
                   f"largest branch/skip norm ratio {largest:.3g} over {trace.n_blocks} blocks"
                   + (f" x {len(trace.runs)} runs" if len(trace.runs) > 1 else ""),
                   len(trace.runs), trace.n_blocks)


def verdicts(trace: Trace, tol: Tolerances | None = None,
             estimates: Sequence[Estimate] | None = None) -> list[Verdict]:
    """The claims of the theory, judged per stage and for the whole network.

    * ``skip_linear_growth`` (per stage): the skip second moment grows linearly, by the
      theory's slope where one exists (BN v2: ~1 per block);
    * ``sqrt_depth_downscaling`` (per stage): ``1/ratio`` grows by 1 per block;
    * ``geometric_explosion`` (per stage, then the network): the projected geometric growth
      reaches ``tol.explosion_growth``, or the signal overflows;
    * ``identity_at_init`` (the network): every block is exactly the identity.

    Args:
        trace: the measurement.
        tol: the tolerance bands (defaults: :class:`Tolerances`).
        estimates: the trace's :func:`fits`, if already computed.
    """
    tol = tol or Tolerances()
    estimates = list(estimates) if estimates is not None else fits(trace)
    by_key = {(e.id, e.stage): e for e in estimates}
    stages = sorted(trace.by_stage())
    # A linear theory: no geometric factor, or a factor of exactly 1 (identity blocks). Its
    # fitted growth rate is only near 1 where the finite image bends the walk (zero padding).
    prediction = predict(trace)
    linear = prediction is not None and prediction.growth in (None, 1.0)
    out = []
    for stage in stages:
        growth = projected_growth(trace, [stage])
        zero_branch = all(b.residual.m2 == 0 for run in trace.runs for b in run.blocks
                          if b.stage == stage)
        out += [
            _linear_verdict(by_key[FitId.SKIP_M2_SLOPE, stage], growth, linear, tol),
            _downscaling_verdict(by_key[FitId.INVERSE_RATIO_SLOPE, stage],
                                 by_key[FitId.RATIO_EXPONENT, stage], zero_branch, tol),
            _explosion_verdict(stage, growth, len(trace.runs), tol),
        ]
    if len(stages) > 1:
        out.append(_explosion_verdict(None, projected_growth(trace), len(trace.runs), tol))
    out.append(_identity_verdict(trace, tol))
    return out


@dataclass(frozen=True, slots=True)
class Report:
    """Fits, verdicts and identity figures of one trace, ready for stats.json."""

    fits: tuple[Estimate, ...]
    verdicts: tuple[Verdict, ...]
    effective_depth: int
    tolerances: Tolerances = field(default_factory=Tolerances)

    def verdict(self, verdict_id: VerdictId | str, stage: int | None = None) -> Verdict:
        """The verdict ``verdict_id`` of ``stage`` (None: the whole network where it exists,
        else the only stage)."""
        matches = [v for v in self.verdicts if v.id == VerdictId(verdict_id)]
        exact = [v for v in matches if v.stage == stage]
        if exact:
            return exact[0]
        if stage is None and len(matches) == 1:
            return matches[0]
        raise KeyError(f"no verdict {verdict_id!r} for stage {stage}")

    def to_dict(self) -> dict[str, Any]:
        """``{"fits": [...], "verdicts": [...], "effective_depth", "tolerances"}`` (no NaN)."""
        fits_doc = []
        for f in self.fits:
            entry = asdict(f)
            entry["id"] = f.id.value
            fits_doc.append(entry)
        doc: dict[str, Any] = _json_safe({
            "fits": fits_doc,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "effective_depth": self.effective_depth,
            "tolerances": asdict(self.tolerances),
        })
        return doc


def report(trace: Trace, tol: Tolerances | None = None) -> Report:
    """Every fit and verdict of ``trace``.

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(8, norm="skipinit", seed=0),
    ...                         sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0))
    >>> report(trace).verdict("identity_at_init").outcome.value
    'consistent'
    """
    tol = tol or Tolerances()
    estimates = fits(trace)
    return Report(tuple(estimates), tuple(verdicts(trace, tol, estimates)),
                  effective_depth(trace), tol)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_json_safe(v) for v in value]
    return value
