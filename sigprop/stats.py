"""Statistics over measured traces: pure functions returning estimates, intervals and verdicts.

Every fit works within one stage (a projection shortcut resets the skip path) and pools the runs
(seeds) of the trace. Intervals are 95% Student-t intervals unless a ``level`` says otherwise.

Why the intervals are built as they are: at initialization every block draws fresh weights, so
the per-block *increments* of the skip second moment (``m2_{l+1} - m2_l``) and the per-block
*growth factors* (``m2_{l+1} / m2_l``) are close to independent draws, while the cumulative
``m2_l`` is a random walk whose least-squares residuals are strongly correlated. Slopes and growth
rates are therefore the mean increment / factor with an interval over the pooled increments; an
ordinary least-squares interval on ``m2_l`` would be far too narrow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats as sps

from sigprop.theory import Prediction, predict
from sigprop.trace import BlockStats, Trace

__all__ = [
    "Band",
    "Estimate",
    "Report",
    "Tolerances",
    "Verdict",
    "band",
    "effective_depth",
    "fits",
    "growth_rate",
    "ratio_exponent",
    "relative_errors",
    "report",
    "skip_slope",
    "verdicts",
]

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


@dataclass(frozen=True, slots=True)
class Estimate:
    """A fitted figure with its confidence interval.

    Attributes:
        id: stable identifier (``skip_m2_slope``, ``ratio_exponent``, ``growth_rate``, ...).
        stage: the stage it was fitted in.
        estimate: the point estimate (NaN when there are too few finite blocks).
        ci95: the interval ``(lo, hi)`` at the level of the fit (95% by default).
        n: number of data points (increments, factors or blocks) behind it.
        r2: coefficient of determination of the line it describes, where one is fitted.
        intercept: the line's value at the stage's first block, where one is fitted.
    """

    id: str
    stage: int
    estimate: float
    ci95: tuple[float, float]
    n: int
    r2: float = math.nan
    intercept: float = math.nan

    def contains(self, value: float) -> bool:
        """True when ``value`` lies inside the interval."""
        return self.ci95[0] <= value <= self.ci95[1]


def _t_interval(samples: np.ndarray, level: float) -> tuple[float, tuple[float, float]]:
    """Mean of ``samples`` and its Student-t interval (degenerate with fewer than 2 samples)."""
    if samples.size == 0:
        return math.nan, (math.nan, math.nan)
    mean = float(samples.mean())
    if samples.size < 2:
        return mean, (math.nan, math.nan)
    half = float(sps.t.ppf(0.5 + level / 2, samples.size - 1) * samples.std(ddof=1)
                 / math.sqrt(samples.size))
    return mean, (mean - half, mean + half)


def _stage_series(trace: Trace, stage: int, quantity: _Quantity) -> list[np.ndarray]:
    """For every run, ``quantity`` along the blocks of ``stage``, cut at the first non-finite."""
    series = []
    for run in trace.runs:
        values = np.array([quantity(b) for b in run.blocks if b.stage == stage], dtype=float)
        bad = np.flatnonzero(~np.isfinite(values))
        series.append(values[: bad[0]] if bad.size else values)
    return series


def _r2(x: np.ndarray, y: np.ndarray, slope: float, intercept: float) -> float:
    total = float(((y - y.mean()) ** 2).sum())
    if total == 0.0:
        return math.nan
    return 1.0 - float(((y - (intercept + slope * x)) ** 2).sum()) / total


def skip_slope(trace: Trace, stage: int = 0, quantity: _Quantity = lambda b: b.skip.m2,
               fit_id: str = "skip_m2_slope", level: float = 0.95) -> Estimate:
    """Linear growth per block of a skip-path statistic within ``stage`` (default: its m2).

    The slope is the mean per-block increment, pooled over runs, with a t-interval; the intercept
    is the least-squares intercept given that slope (its interval spans the runs' first blocks);
    ``r2`` says how well the straight line describes the pooled points.

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(32, seed=0),
    ...                         sigprop.InputSpec("gaussian", (8, 3, 16, 16), 0))
    >>> fit = skip_slope(trace)
    >>> 0.5 < fit.estimate < 1.5 and fit.r2 > 0.9
    True
    """
    series = _stage_series(trace, stage, quantity)
    increments = np.concatenate([np.diff(s) for s in series])
    slope, ci = _t_interval(increments, level)
    x = np.concatenate([np.arange(s.size) for s in series])
    y = np.concatenate(series)
    if not y.size or math.isnan(slope):
        return Estimate(fit_id, stage, slope, ci, int(increments.size))
    intercept = float((y - slope * x).mean())
    return Estimate(fit_id, stage, slope, ci, int(increments.size), _r2(x, y, slope, intercept),
                    intercept)


def growth_rate(trace: Trace, stage: int = 0, level: float = 0.95) -> Estimate:
    """Geometric growth factor per block of the skip second moment within ``stage``.

    The mean of the per-block factors ``m2_{l+1} / m2_l`` (before any overflow), pooled over
    runs: an estimate of the expected factor (2 for an unnormalized He-init ResNet). It is not
    the exponential of the mean log-factor, which finite width biases low (1.86 instead of 2 at
    width 16). ``r2`` is that of a straight line through ``log m2_l``.
    """
    series = _stage_series(trace, stage, lambda b: b.skip.m2)
    positive = [s[: np.argmax(s <= 0)] if (s <= 0).any() else s for s in series]
    factors = np.concatenate([s[1:] / s[:-1] for s in positive])
    rate, ci = _t_interval(factors, level)
    x = np.concatenate([np.arange(s.size) for s in positive])
    y = np.log(np.concatenate(positive)) if x.size else np.array([])
    if x.size < 2:
        return Estimate("growth_rate", stage, rate, ci, int(factors.size))
    slope, intercept = np.polyfit(x, y, 1)
    return Estimate("growth_rate", stage, rate, ci, int(factors.size),
                    _r2(x, y, float(slope), float(intercept)), float(math.exp(intercept)))


def ratio_exponent(trace: Trace, stage: int = 0, level: float = 0.95) -> Estimate:
    """Power-law exponent of the residual/skip ratio against the block's position in its stage.

    Least squares of ``log ratio`` on ``log n``, where ``n = 1, 2, ...`` is the position of the
    block in the stage, pooled over runs. The sqrt(depth) law ``ratio = 1/(m2_0 + l)`` gives -1
    for second moments (-1/2 for standard deviations). Blocks with a zero or non-finite ratio are
    left out (a SkipInit branch at alpha = 0 has no exponent: NaN).

    The ratio divides by the skip second moment, a random walk, so neighbouring residuals of the
    fit are correlated; the interval widens the least-squares standard error by the AR(1)
    factor ``sqrt((1 + rho) / (1 - rho))``, with ``rho`` the lag-1 autocorrelation of the
    residuals within each run (no widening when ``rho <= 0``).
    """
    series = _stage_series(trace, stage, lambda b: b.ratio)
    xs, ys = [], []
    for s in series:
        n = np.arange(1, s.size + 1, dtype=float)
        keep = s > 0
        xs.append(np.log(n[keep]))
        ys.append(np.log(s[keep]))
    x, y = np.concatenate(xs), np.concatenate(ys)
    if x.size < 3 or np.ptp(x) == 0:
        return Estimate("ratio_exponent", stage, math.nan, (math.nan, math.nan), int(x.size))
    result = sps.linregress(x, y)
    slope = float(result.slope)
    rho = _lag1_autocorrelation([yr - (result.intercept + slope * xr) for xr, yr in zip(xs, ys,
                                                                                      strict=True)])
    widen = math.sqrt((1 + rho) / (1 - rho)) if 0 < rho < 1 else 1.0
    half = float(sps.t.ppf(0.5 + level / 2, x.size - 2) * result.stderr) * widen
    return Estimate("ratio_exponent", stage, slope, (slope - half, slope + half), int(x.size),
                    float(result.rvalue**2), float(math.exp(result.intercept)))


def _lag1_autocorrelation(residuals: list[np.ndarray]) -> float:
    """Lag-1 autocorrelation of residual series, pairs taken within each series only."""
    pairs = [(r[:-1], r[1:]) for r in residuals if r.size > 2]
    if not pairs:
        return 0.0
    lead = np.concatenate([a for a, _ in pairs])
    lag = np.concatenate([b for _, b in pairs])
    denominator = float(np.sqrt((lead**2).sum() * (lag**2).sum()))
    return float((lead * lag).sum()) / denominator if denominator > 0 else 0.0


def fits(trace: Trace, level: float = 0.95) -> list[Estimate]:
    """Every fit of every stage: skip m2 / var / sq_mean slopes, ratio exponent, growth rate."""
    out = []
    for stage in sorted(trace.by_stage()):
        out += [
            skip_slope(trace, stage, level=level),
            skip_slope(trace, stage, lambda b: b.skip.var, "skip_var_slope", level),
            skip_slope(trace, stage, lambda b: b.skip.sq_mean, "skip_sq_mean_slope", level),
            ratio_exponent(trace, stage, level),
            growth_rate(trace, stage, level),
        ]
    return out


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
class Tolerances:
    """Tolerances of the verdicts; every default is documented in docs/theory.md.

    Attributes:
        slope_rel: relative band around a predicted linear slope (0.2: 1 +- 0.2 per block).
        exponent_abs: absolute band around the predicted ratio exponent (0.15: -1 +- 0.15).
        explosion_rate: growth factor per block above which the signal explodes (1.1).
        linear_r2: the straight line must explain at least this share of the skip m2 (0.9).
        identity_norm: largest ``||residual|| / ||skip||`` of an identity block (1e-6).
    """

    slope_rel: float = 0.2
    exponent_abs: float = 0.15
    explosion_rate: float = 1.1
    linear_r2: float = 0.9
    identity_norm: float = 1e-6


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether one claim of the theory holds for the measured network.

    Attributes:
        id: stable identifier, e.g. ``sqrt_depth_downscaling``.
        claim: the claim in words.
        measured: the figure measured (NaN when it cannot be measured).
        interval: its 95% interval (NaN where the figure is not a statistical estimate).
        predicted: the value the claim predicts for this network (None when no closed form).
        tolerance: how far the measurement may be from the prediction, in words.
        consistent: whether the claim holds for this network.
        detail: the reasoning in one sentence a researcher would write.
    """

    id: str
    claim: str
    measured: float
    interval: tuple[float, float]
    predicted: float | None
    tolerance: str
    consistent: bool
    detail: str


def _overlaps(ci: tuple[float, float], estimate: float, lo: float, hi: float) -> bool:
    """The interval (or, without one, the estimate) meets ``[lo, hi]``."""
    if math.isnan(ci[0]):
        return lo <= estimate <= hi
    return ci[0] <= hi and ci[1] >= lo


def _longest_stage(trace: Trace) -> int:
    stages = trace.by_stage()
    return max(stages, key=lambda s: len(stages[s]))


def verdicts(trace: Trace, tol: Tolerances | None = None) -> list[Verdict]:
    """The four claims of THEORY.md, evaluated for any model (in its longest stage).

    * ``skip_linear_growth``: the skip second moment grows linearly (BN: by ~1 per block);
    * ``sqrt_depth_downscaling``: the residual/skip ratio falls as ``l^-1``;
    * ``geometric_explosion``: the skip second moment grows geometrically (or overflows);
    * ``identity_at_init``: every block is exactly the identity.
    """
    tol = tol or Tolerances()
    stage = _longest_stage(trace)
    prediction = predict(trace)
    family = prediction.family if prediction else None
    slope = skip_slope(trace, stage)
    growth = growth_rate(trace, stage)
    overflow = [r.first_overflow for r in trace.runs if r.first_overflow is not None]
    return [
        _linear_verdict(slope, growth, family, tol),
        _sqrt_depth_verdict(ratio_exponent(trace, stage), tol),
        _explosion_verdict(growth, slope, overflow, prediction, tol),
        _identity_verdict(trace, prediction, tol),
    ]


def _linear_verdict(slope: Estimate, growth: Estimate, family: str | None,
                    tol: Tolerances) -> Verdict:
    predicted = {"bn-v2": 1.0, "bn-v1": 1.0, "bn-v2-relu-bn": 2.0}.get(family or "")
    linear = slope.r2 >= tol.linear_r2 and slope.r2 >= growth.r2 and slope.estimate > 0
    near = predicted is None or _overlaps(slope.ci95, slope.estimate,
                                          predicted * (1 - tol.slope_rel),
                                          predicted * (1 + tol.slope_rel))
    detail = (f"slope {slope.estimate:.3g} per block, R^2 {slope.r2:.3f} for a line vs "
              f"{growth.r2:.3f} for an exponential")
    return Verdict("skip_linear_growth",
                   "skip second moment grows linearly",
                   slope.estimate, slope.ci95, predicted,
                   f"R^2 >= {tol.linear_r2}, a line fits better than an exponential"
                   + (f", slope within {tol.slope_rel:.0%} of the prediction" if predicted else ""),
                   bool(linear and near), detail)


def _sqrt_depth_verdict(exponent: Estimate, tol: Tolerances) -> Verdict:
    consistent = not math.isnan(exponent.estimate) and _overlaps(
        exponent.ci95, exponent.estimate, -1 - tol.exponent_abs, -1 + tol.exponent_abs)
    detail = ("no exponent: the residual branch is zero" if math.isnan(exponent.estimate) else
              f"ratio ~ l^{exponent.estimate:.3f} (R^2 {exponent.r2:.3f}); -1 means the branch is "
              "downscaled by sqrt(l) in standard deviation")
    return Verdict("sqrt_depth_downscaling",
                   "residual/skip ratio falls as 1/l (sqrt(depth) downscaling)",
                   exponent.estimate, exponent.ci95, -1.0, f"+-{tol.exponent_abs} on the exponent",
                   bool(consistent), detail)


def _explosion_verdict(growth: Estimate, slope: Estimate, overflow: list[int],
                       prediction: Prediction | None, tol: Tolerances) -> Verdict:
    predicted = prediction.growth if prediction is not None else None
    geometric = growth.r2 > slope.r2 and _overlaps(growth.ci95, growth.estimate,
                                                   tol.explosion_rate, math.inf)
    consistent = bool(overflow) or (geometric and growth.estimate >= tol.explosion_rate)
    detail = (f"x{growth.estimate:.3g} per block (R^2 {growth.r2:.3f} exponential vs "
              f"{slope.r2:.3f} linear)")
    if overflow:
        detail += f"; float32 overflow from block {min(overflow)}"
    return Verdict("geometric_explosion",
                   "skip second moment grows geometrically (explodes)",
                   growth.estimate, growth.ci95, predicted,
                   f"growth >= x{tol.explosion_rate} per block and an exponential fits better "
                   "than a line, or overflow", consistent, detail)


def _identity_verdict(trace: Trace, prediction: Prediction | None, tol: Tolerances) -> Verdict:
    norms = [b.branch_norm_ratio for _, b in trace.blocks()]
    finite = [n for n in norms if math.isfinite(n)]
    largest = max(finite) if finite else math.nan
    predicted_norms = [math.sqrt(p.ratio) for p in prediction.blocks
                       if math.isfinite(p.ratio)] if prediction else []
    predicted = max(predicted_norms) if predicted_norms else None
    consistent = bool(finite) and largest <= tol.identity_norm
    return Verdict("identity_at_init",
                   "every block is the identity (zero branch)",
                   largest, (math.nan, math.nan), predicted,
                   f"||residual|| / ||skip|| <= {tol.identity_norm:g} in every block",
                   consistent,
                   f"largest branch/skip norm ratio {largest:.3g} over {len(finite)} blocks")


@dataclass(frozen=True, slots=True)
class Report:
    """Fits, verdicts and identity figures of one trace, ready for stats.json."""

    fits: tuple[Estimate, ...]
    verdicts: tuple[Verdict, ...]
    effective_depth: int
    tolerances: Tolerances = field(default_factory=Tolerances)

    def to_dict(self) -> dict[str, Any]:
        """``{"fits": [...], "verdicts": [...], "effective_depth", "tolerances"}`` (no NaN)."""
        doc: dict[str, Any] = _json_safe({
            "fits": [asdict(f) for f in self.fits],
            "verdicts": [asdict(v) for v in self.verdicts],
            "effective_depth": self.effective_depth,
            "tolerances": asdict(self.tolerances),
        })
        return doc


def report(trace: Trace, tol: Tolerances | None = None) -> Report:
    """Every fit and verdict of ``trace``.

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(8, norm="skipinit", seed=0),
    ...                         sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0))
    >>> [(v.id, v.consistent) for v in report(trace).verdicts][-1]
    ('identity_at_init', True)
    """
    tol = tol or Tolerances()
    return Report(tuple(fits(trace)), tuple(verdicts(trace, tol)), effective_depth(trace), tol)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_json_safe(v) for v in value]
    return value
