"""Fits of one stage: per-run estimates, a within-run jackknife, pooled over the runs.

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

Where each branch is proportional to its skip path (no normalization in the branch: the theory's
:attr:`~sigprop.theory.Prediction.proportional`), a block's effect on the skip path is a factor:
an early excess is carried into every later increment, and a jackknife that deletes increments
misses it (58% coverage for NF-ResNet slopes at 256 blocks). There a skip slope's uncertainty
comes from the log-factors ``log(m2_{l+1}/m2_l)``, which are nearly independent from block to
block: their smooth trend in ``log l`` is removed, the residuals are summed over contiguous
segments (batch means, which keep the weak long-range dependence), and the variance of the
total log-growth is carried to the slope by the delta method.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

import numpy as np
from scipy import stats as sps

from sigprop.theory import Prediction, predict, predict_gradients
from sigprop.trace import Shortcut, Trace

__all__ = ["GRADIENT_FITS", "Estimate", "FitId", "Growth", "fit", "fits", "projected_growth"]


class FitId(StrEnum):
    """What a fit estimates (one value per stage)."""

    SKIP_M2_SLOPE = "skip_m2_slope"  # mean increment of the skip second moment per block
    SKIP_VAR_SLOPE = "skip_var_slope"  # ... of its average channel variance
    SKIP_SQ_MEAN_SLOPE = "skip_sq_mean_slope"  # ... of its average channel squared mean
    INVERSE_RATIO_SLOPE = "inverse_ratio_slope"  # slope of skip/residual m2 against l
    RATIO_EXPONENT = "ratio_exponent"  # power of the residual/skip ratio in the block position
    GROWTH_RATE = "growth_rate"  # geometric factor g of m2_{l+1} = a + g m2_l
    # Gradients (traces measured with backward=True): the geometric factor g of the gradient's
    # growth towards the input, G_l / G_{l+1} = g + a / var_l, and the power of the branch/skip
    # gradient ratio in the block position.
    GRAD_GROWTH_RATE = "grad_growth_rate"
    GRAD_RATIO_EXPONENT = "grad_ratio_exponent"


GRADIENT_FITS = (FitId.GRAD_GROWTH_RATE, FitId.GRAD_RATIO_EXPONENT)
"""The fits that need gradient statistics (:func:`fits` leaves them out of other traces)."""


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
_Fitter = Callable[[Any, np.ndarray], tuple[float, float]]


def _on_spliced(fitter: Callable[[_Series], tuple[float, float]]) -> _Fitter:
    return lambda s, keep: fitter(s if keep.all() else s.spliced(keep))


def _mean_increment(levels: Callable[[_Series], np.ndarray]) -> _Fitter:
    def fitter(s: _Series) -> tuple[float, float]:
        y = levels(s)
        if y.size < 2:
            return math.nan, math.nan
        slope = float(y[-1] - y[0]) / (y.size - 1)
        # Summing y/n, not y: levels near the largest float have a finite mean whose sum is not.
        return slope, float(((y - slope * np.arange(y.size)) / y.size).sum())
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
    with np.errstate(divide="ignore", invalid="ignore"):  # a level of 0 is not usable
        return _rate_over_level(level, following / level, keep[:-1])


# Below this coefficient of variation of ``1 / level`` over a stage, ``a / level`` cannot be told
# from a constant: ``g`` would be an extrapolation to ``1 / level = 0`` from a narrow range.
# ConvNeXt's layer scale (1e-6) keeps the skip path constant to 1e-7: timm's convnext_atto got a
# forward g = 0.64 [0.28, 0.99] (a skip path shrinking per block), torchvision's convnext_tiny a
# gradient g = 1.07 [-6.4, 8.6], for factors of 1.0000; timm's ViT-Tiny (var_l up 22% over 24
# blocks) a gradient g = -22 [-71, 27]. The built-in networks of the calibrations vary by 25%
# (NF, 32 blocks) or more.
_LEVEL_SPREAD = 0.1


def _rate_over_level(level: np.ndarray, factor: np.ndarray, keep: np.ndarray
                     ) -> tuple[float, float]:
    """``g`` and ``a`` of ``factor = g + a / level``, fitted on the kept pairs that are usable (a
    positive level, a finite factor).

    Where ``1 / level`` varies by less than :data:`_LEVEL_SPREAD` over all usable pairs, kept or
    not (the whole stage decides, so every jackknife fit of it agrees), the factor is taken as
    constant: ``g`` is its geometric mean, whose power is the measured growth, and ``a = 0``.
    """
    usable = (level > 0) & np.isfinite(factor)
    pairs = keep & usable
    if pairs.sum() < 3:
        return math.nan, math.nan
    inverse = 1.0 / level[usable]
    if inverse.std() < _LEVEL_SPREAD * inverse.mean():
        with np.errstate(divide="ignore"):  # a factor of 0 (the signal stops) gives g = 0
            return float(np.exp(np.log(factor[pairs]).mean())), 0.0
    design = np.column_stack([np.ones(int(pairs.sum())), 1.0 / level[pairs]])
    (rate, increment), *_ = np.linalg.lstsq(design, factor[pairs] - 1.0, rcond=None)
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
    levels: Callable[[_Series], np.ndarray] | None = None  # a skip slope's level series

    def edges(self, size: int) -> np.ndarray:
        """Segment boundaries over ``size`` blocks (segments of at least 2 blocks)."""
        count = min(self.segments, size // 2)
        if count < 2:
            return np.array([0, size])
        if self.log_spaced:
            return np.unique(np.geomspace(1, size + 1, count + 1).round().astype(int) - 1)
        return np.linspace(0, size, count + 1).round().astype(int)


def _skip_slope(levels: Callable[[_Series], np.ndarray]) -> _Fit:
    return _Fit(_mean_increment(levels), levels=levels)


_FITS: dict[FitId, _Fit] = {
    FitId.SKIP_M2_SLOPE: _skip_slope(lambda s: s.skip_m2),
    FitId.SKIP_VAR_SLOPE: _skip_slope(lambda s: s.skip_var),
    FitId.SKIP_SQ_MEAN_SLOPE: _skip_slope(lambda s: s.skip_sq_mean),
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


# Segments of the log-factors' batch means, and the trend removed before them (1, log l, log^2 l).
_FACTOR_SEGMENTS = 6
_FACTOR_TREND = 3


def _factor_variance(levels: np.ndarray) -> tuple[float, int]:
    """Variance and df of a proportional walk's mean increment ``(y_L - y_0) / L``.

    The log-factors ``log(y_{l+1}/y_l)`` minus their least-squares trend in ``log l`` are summed
    over contiguous segments; the spread of the sums (corrected for the trend's parameters)
    estimates the variance of ``log(y_L/y_0)``, and ``d slope / d log(y_L/y_0) = y_L / L``.
    """
    steps = levels.size - 1
    count = min(_FACTOR_SEGMENTS, steps // 2)
    if count < 2 or steps <= 2 * _FACTOR_TREND or not (levels > 0).all():
        return math.nan, 0
    log_factors = np.log(levels[1:] / levels[:-1])
    position = np.log(np.arange(1, steps + 1, dtype=float))
    design = np.vander(position, _FACTOR_TREND, increasing=True)
    coefficients, *_ = np.linalg.lstsq(design, log_factors, rcond=None)
    residuals = log_factors - design @ coefficients
    edges = np.linspace(0, steps, count + 1).round().astype(int)
    sums = np.add.reduceat(residuals, edges[:-1])
    log_variance = (count / (count - 1) * float((sums**2).sum())
                    * steps / (steps - _FACTOR_TREND))
    return log_variance * (float(levels[-1]) / steps) ** 2, count - 1


def _run_fit(fit: _Fit, s: _Series | _GradSeries, proportional: bool = False) -> _RunFit:
    """Fit one run and delete each of its segments in turn (the jackknife).

    With ``proportional`` branches a skip slope's variance comes from its log-factors instead
    (:func:`_factor_variance`).
    """
    everything = np.ones(s.size, dtype=bool)
    value, intercept = fit.fitter(s, everything)
    if proportional and fit.levels is not None and isinstance(s, _Series):
        if not math.isfinite(value):
            return _RunFit(value, intercept, math.nan, 0)
        variance, df = _factor_variance(fit.levels(s))
        return _RunFit(value, intercept, variance, df)
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
    with np.errstate(over="ignore"):  # a variance beyond the largest float is infinite
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
            * ``growth_rate``: ``g`` of ``m2_{l+1} = a + g m2_l`` (1 for linear growth; where
              ``m2_l`` is too flat over the stage to separate ``a``, the geometric mean factor);
            * ``grad_growth_rate`` (gradients): ``g`` of ``G_l / G_{l+1} = g + a / var_l``,
              with ``G_l`` the input gradient's second moment of block ``l`` and ``var_l`` the
              forward skip's average channel variance: BN's ``1 + rho_l`` with
              ``rho_l ~ 1/var_l`` has ``g = 1`` (a power law towards the input), a geometric
              explosion ``g > 1`` (where ``var_l`` is too flat, the geometric mean factor);
            * ``grad_ratio_exponent`` (gradients): power of the branch/skip gradient ratio
              in the position ``n = 1, 2, ...``.
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
    if fit_id in GRADIENT_FITS:
        return _gradient_fit(trace, fit_id, stage, level)
    chosen = _FITS[fit_id]
    series = _series(trace, stage)
    prediction = prediction if prediction is not None else predict(trace)
    proportional = prediction is not None and prediction.proportional
    estimate, ci, intercept, runs, df = _pooled(
        [_run_fit(chosen, s, proportional) for s in series], level)
    predicted = None
    longest = max((s.size for s in series), default=0)
    if prediction is not None and longest:
        predicted_series = _predicted_series(prediction, stage, longest)
        value = chosen.fitter(predicted_series, np.ones(longest, bool))[0]
        predicted = value if math.isfinite(value) else None
    blocks = sum(s.size for s in series)
    return Estimate(fit_id, stage, estimate, ci, blocks, runs, df, predicted, intercept)


def fits(trace: Trace, level: float = 0.95) -> list[Estimate]:
    """Every fit of every stage, in :class:`FitId` order within each stage (the gradient fits
    only for a trace with gradients)."""
    prediction = predict(trace)
    chosen = [f for f in FitId if trace.has_gradients or f not in GRADIENT_FITS]
    return [fit(trace, fit_id, stage, level, prediction)
            for stage in sorted(trace.by_stage()) for fit_id in chosen]


@dataclass(frozen=True, slots=True)
class _GradSeries:
    """One run's identity blocks of one stage: the forward skip's average channel variance, and
    the input gradient's second moment and the branch/skip gradient ratio, per block."""

    skip_var: np.ndarray
    grad_input: np.ndarray
    grad_ratio: np.ndarray

    @property
    def size(self) -> int:
        return int(self.skip_var.size)


def _grad_series(rows: Sequence[tuple[float, float, float]]) -> _GradSeries:
    columns = np.array(rows, dtype=float).reshape(-1, 3)
    bad = np.flatnonzero(~np.isfinite(columns).all(axis=1))
    return _GradSeries(*(columns[bad[-1] + 1:] if bad.size else columns).T)


def _grad_growth(s: _GradSeries, keep: np.ndarray) -> tuple[float, float]:
    """``g`` of ``G_l / G_{l+1} - 1 = (g - 1) + a / var_l`` (as :func:`_growth`, backwards).

    Batch norm divides the branch's gradient by the channel variance ``var_l`` of the block
    input it normalizes, so a BN network has ``g = 1`` exactly; without normalization the
    factor is constant and ``g`` is it (:func:`_rate_over_level`: a constant factor where
    ``var_l`` is too flat to separate the two terms).
    """
    return _rate_over_level(s.skip_var[:-1], s.grad_input[:-1] / s.grad_input[1:], keep[:-1])


def _grad_ratio_power_law(s: _GradSeries, keep: np.ndarray) -> tuple[float, float]:
    positions = np.arange(1, s.size + 1, dtype=float)
    used = keep & (s.grad_ratio > 0)
    if used.sum() < 3:
        return math.nan, math.nan
    slope, intercept = np.polyfit(np.log(positions[used]), np.log(s.grad_ratio[used]), 1)
    return float(slope), float(math.exp(intercept))


# The jackknife layouts of the gradient fits, from their calibration on real traces
# (benchmarks/calibration.py --gradients, docs/theory.md). Where the theory's skip path grows
# geometrically (unnormalized, SkipInit, branch / sqrt(d), Fixup without its zero last layer),
# the gradient's factors carry a part that the whole run shares (the gradient's and the skip
# path's channel composition persist: the mean log-factors of a run's two halves correlate
# 0.2-0.6 over seeds), which no split of one run sees in full. A branch that renews a large
# share of the gradient per block (unnormalized: rho ~ 1) leaves 3 segments enough; a small
# one (SkipInit, sqrt-depth: rho << 1) only the halves' disagreement (one degree of freedom).
# Elsewhere (batch norm, NF) a growth rate's factors are close to independent: 8 segments.
_GRADIENT_FITS = {FitId.GRAD_GROWTH_RATE: _Fit(_grad_growth, segments=8),
                  FitId.GRAD_RATIO_EXPONENT: _Fit(_grad_ratio_power_law, segments=6,
                                                  log_spaced=True)}
_GEOMETRIC_GRADIENT_FITS = {FitId.GRAD_GROWTH_RATE: _Fit(_grad_growth, segments=3),
                            FitId.GRAD_RATIO_EXPONENT: _Fit(_grad_ratio_power_law, segments=3,
                                                            log_spaced=True)}
_SLOW_GROWTH_RATE = _Fit(_grad_growth, segments=2)
_FAST_GROWTH = 1.5  # a geometric factor per block from which the branch renews the gradient fast


def _gradient_layout(fit_id: FitId, forward: Prediction | None) -> tuple[_Fit, bool]:
    """The jackknife of a gradient fit for this theory, and whether its growth is geometric."""
    growth = forward.growth if forward is not None else None
    if growth is None or growth <= 1:
        return _GRADIENT_FITS[fit_id], False
    if fit_id is FitId.GRAD_GROWTH_RATE and growth < _FAST_GROWTH:
        return _SLOW_GROWTH_RATE, True
    return _GEOMETRIC_GRADIENT_FITS[fit_id], True


def _gradient_fit(trace: Trace, fit_id: FitId, stage: int, level: float) -> Estimate:
    """A gradient fit of one stage's identity blocks (a projection's parts leave the stage).

    The jackknife's layout depends on whether the theory's skip path grows geometrically
    (:func:`_gradient_layout`); models without a theory get batch norm's. Where the
    theory predicts a falling ratio (batch norm, NF), the ratio exponent's within-run
    variance comes from the deviations from the theory's curve
    (:func:`_deviation_variance`).
    """
    forward = predict(trace)
    chosen, geometric = _gradient_layout(fit_id, forward)
    series = []
    for run in trace.runs:
        blocks = [b for b in run.blocks if b.stage == stage
                  and b.shortcut is Shortcut.IDENTITY and b.grad is not None]
        series.append(_grad_series([(b.skip.var, b.grad.input.m2, b.grad.ratio)
                                    for b in blocks if b.grad is not None]))
    backward = predict_gradients(trace)
    theory = None
    if forward is not None and backward is not None:
        indices = [b.index for b in trace.runs[0].blocks if b.stage == stage
                   and b.shortcut is Shortcut.IDENTITY]
        theory = _grad_series([(_skip_var(trace, forward, i), backward.input[i],
                                backward.ratio[i]) for i in indices])
    per_run = [_run_fit(chosen, s) for s in series]
    if fit_id is FitId.GRAD_RATIO_EXPONENT and not geometric and theory is not None:
        per_run = [_RunFit(r.value, r.intercept,
                           *_deviation_variance(s, theory.grad_ratio[theory.size - s.size:]))
                   if math.isfinite(r.value) and s.size <= theory.size else r
                   for r, s in zip(per_run, series, strict=True)]
    estimate, ci, intercept, runs, df = _pooled(per_run, level)
    predicted = None
    if theory is not None and theory.size:
        value = chosen.fitter(theory, np.ones(theory.size, bool))[0]
        predicted = value if math.isfinite(value) else None
    return Estimate(fit_id, stage, estimate, ci, sum(s.size for s in series), runs, df,
                    predicted, intercept)


# Segments of the batch means of the ratio exponent's deviations from the theory.
_DEVIATION_SEGMENTS = 4


def _deviation_variance(s: _GradSeries, predicted_ratio: np.ndarray) -> tuple[float, int]:
    """Variance and df of one run's ``grad_ratio_exponent`` from its deviations from the theory.

    The exponent is a linear function of the log ratios, ``sum_l c_l log r_l``; the theory's
    curve is not a power law (``1/var_l`` bends in ``log n``), so residuals around the fitted
    line are mostly that bend, the same in every run, and a jackknife on them is 7 (BN) to 50
    (NF) times the spread over seeds. The deviations ``d_l = log(r_l / r_l^theory)`` are the
    run's own noise: the sums of ``c_l (d_l - mean d)`` over 4 contiguous segments (batch means,
    which keep the skip path's slow wander) estimate the exponent's variance.
    """
    positions = np.arange(1, s.size + 1, dtype=float)
    used = (s.grad_ratio > 0) & (predicted_ratio > 0)
    count = min(_DEVIATION_SEGMENTS, int(used.sum()) // 2)
    if count < 2:
        return math.nan, 0
    design = np.column_stack([np.ones(int(used.sum())), np.log(positions[used])])
    weights = np.linalg.pinv(design)[1]
    deviation = np.log(s.grad_ratio[used] / predicted_ratio[used])
    edges = np.linspace(0, deviation.size, count + 1).round().astype(int)
    sums = np.add.reduceat(weights * (deviation - deviation.mean()), edges[:-1])
    return count / (count - 1) * float((sums**2).sum()), count - 1


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
                     level: float = 0.95, estimates: Sequence[Estimate] = ()) -> Growth:
    """Geometric growth of the skip second moment over ``stages`` (default: the network).

    Each stage contributes ``g ** n`` with ``g`` its :data:`FitId.GROWTH_RATE` and ``n`` its
    blocks; the interval combines the stages' intervals on the log scale (delta method).
    ``estimates`` may hold the stages' growth rates already fitted at ``level`` (e.g. a
    report's fits), which are then not fitted again.

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(48, norm="none", seed=0),
    ...                         sigprop.InputSpec("gaussian", (8, 3, 16, 16), 0))
    >>> projected_growth(trace).factor > 1e6
    True
    """
    by_stage = trace.by_stage()
    chosen = sorted(by_stage) if stages is None else list(stages)
    known = {e.stage: e for e in estimates if e.id is FitId.GROWTH_RATE}
    log_factor, log_variance, df, blocks, unjudged = 0.0, 0.0, math.inf, 0, 0
    for stage in chosen:
        n = len(by_stage[stage])
        rate = known.get(stage) or fit(trace, FitId.GROWTH_RATE, stage, level)
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
    return Growth(_exp(log_factor), (_exp(log_factor - half), _exp(log_factor + half)),
                  _exp(log_factor / blocks), blocks, unjudged, overflow)


def _exp(log_value: float) -> float:
    """``e ** log_value``, infinite beyond the largest float (a network that grows by more
    than 1e308 over its depth) instead of an OverflowError."""
    return math.exp(log_value) if log_value < _LOG_MAX_FLOAT else math.inf


_LOG_MAX_FLOAT = math.log(sys.float_info.max)


def _skip_var(trace: Trace, forward: Prediction, index: int) -> float:
    """The predicted skip variance of a block, else the measured one (mean over runs)."""
    predicted = forward.blocks[index].skip_var
    if math.isfinite(predicted):
        return predicted
    measured = [run.blocks[index].skip.var for run in trace.runs]
    finite = [v for v in measured if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan
