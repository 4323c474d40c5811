"""Fits, intervals and verdicts: closed-form values on hand-built traces, and the built-in laws.

The coverage of the intervals on real traces is checked in test_calibration.py.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

import sigprop
from sigprop import InputSpec, Trace, measure, stats
from sigprop.stats import FitId, Outcome, VerdictId
from sigprop.theory import Prediction
from tests.helpers import synthetic_trace


def seeds_trace(depth: int, seeds: int, shape: tuple[int, ...] = (8, 3, 16, 16),
                **kwargs: object) -> Trace:
    traces = []
    for seed in range(seeds):
        net = sigprop.models.resnet(depth, seed=seed, **kwargs)  # type: ignore[arg-type]
        traces.append(measure(net, InputSpec("gaussian", shape, seed=seed)))
    merged = traces[0]
    for t in traces[1:]:
        merged = merged.merge(t)
    return merged


def test_band_is_a_student_t_interval_of_the_mean() -> None:
    values = [[1.0, 10.0], [2.0, 12.0], [4.0, 11.0]]
    trace = synthetic_trace(values, [[0.0, 0.0]] * 3)
    b = stats.band(trace, lambda blk: blk.skip.m2)
    assert b.mean == pytest.approx((7 / 3, 11.0))
    half = 4.302652729911275 * np.std([1.0, 2.0, 4.0], ddof=1) / math.sqrt(3)  # t(0.975, 2)
    assert b.hi[0] - b.mean[0] == pytest.approx(half)


def test_an_exact_line_has_its_slope_and_a_zero_width_interval() -> None:
    slope = stats.fit(synthetic_trace([[2.0 + 0.5 * l for l in range(12)]], [[1.0] * 12]),
                      FitId.SKIP_M2_SLOPE)
    assert slope.estimate == pytest.approx(0.5) and slope.intercept == pytest.approx(2.0)
    assert slope.ci95 == pytest.approx((0.5, 0.5))
    assert (slope.n, slope.n_runs, slope.df) == (12, 1, 5)  # 6 segments of 2 blocks


def test_several_runs_pool_their_spread_with_the_within_run_jackknife() -> None:
    # Two exact lines (slopes 1 and 3, no within-run noise) of 10 blocks: 5 segments each.
    trace = synthetic_trace([[float(l) for l in range(10)], [3.0 * l for l in range(10)]],
                            [[1.0] * 10] * 2)
    slope = stats.fit(trace, FitId.SKIP_M2_SLOPE)
    # between-run variance 2 with 1 df, within-run variance 0 with 2 x 4 df: 2/9 per run.
    half = sps.t.ppf(0.975, 9) * math.sqrt(2 / 9 / 2)
    assert slope.estimate == 2.0 and slope.df == 9
    assert slope.ci95 == pytest.approx((2.0 - half, 2.0 + half))


def test_the_jackknife_deletes_blocks_not_levels() -> None:
    # A walk whose increments are 1 except one block of +9: deleting that block's segment
    # removes its increment from every later level, so the spread comes from the increments.
    increments = [1.0] * 15
    increments[7] = 9.0
    levels = np.concatenate([[0.0], np.cumsum(increments)])
    slope = stats.fit(synthetic_trace([levels], [np.ones(16)]), FitId.SKIP_M2_SLOPE)
    left_out = []
    for start in range(0, 16, 2):  # 8 segments of 2 blocks; block 15 has no increment
        kept = [d for k, d in enumerate(increments) if not start <= k < start + 2]
        left_out.append(np.mean(kept if start < 14 else kept[:-1]))
    variance = 7 / 8 * np.sum((np.array(left_out) - np.mean(left_out)) ** 2)
    half = sps.t.ppf(0.975, 7) * math.sqrt(variance)
    assert slope.estimate == pytest.approx(23 / 15)
    assert slope.half_width == pytest.approx(half)


def test_growth_separates_a_geometric_factor_from_a_linear_increment() -> None:
    geometric = [3.0 * 2.0**l for l in range(10)]
    linear = [0.1 + 0.7 * l for l in range(10)]  # a jump from a small start is not explosion
    fit = stats.fit(synthetic_trace([geometric, linear], [geometric, [1.0] * 10]),
                    FitId.GROWTH_RATE)
    per_run = [stats.fit(synthetic_trace([s], [[1.0] * 10]), FitId.GROWTH_RATE).estimate
               for s in (geometric, linear)]
    assert per_run == pytest.approx([2.0, 1.0])
    assert fit.estimate == pytest.approx(1.5)


def test_inverse_ratio_line_and_power_law_on_exact_series() -> None:
    n = np.arange(16, dtype=float)
    line = stats.fit(synthetic_trace([2.0 + n], [np.ones(16)]), FitId.INVERSE_RATIO_SLOPE)
    assert line.estimate == pytest.approx(1.0) and line.intercept == pytest.approx(2.0)
    power = stats.fit(synthetic_trace([np.ones(16)], [3.0 * (n + 1) ** -1.0]),
                      FitId.RATIO_EXPONENT)
    assert power.estimate == pytest.approx(-1.0) and power.intercept == pytest.approx(3.0)


def test_fits_pool_runs_and_stop_at_the_first_overflow() -> None:
    runs = [[1.0, 2.0, 4.0, 8.0, 16.0, math.inf, math.nan], [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]]
    growth = stats.fit(synthetic_trace(runs, runs), FitId.GROWTH_RATE)
    assert growth.estimate == pytest.approx(2.0) and growth.n == 5 + 7


def test_growth_beyond_the_largest_float_is_infinite_not_an_error() -> None:
    # x16 per block over 300 blocks: 16^300 = 1e361; float64 itself overflows at block 256.
    with np.errstate(over="ignore"):
        runs = [16.0 ** np.arange(300.0)] * 2
    report = stats.report(synthetic_trace(runs, runs))
    growth = stats.projected_growth(synthetic_trace(runs, runs), estimates=report.fits)
    assert growth.factor == math.inf and growth.per_block == pytest.approx(16.0)
    assert report.verdict(VerdictId.GEOMETRIC_EXPLOSION).outcome is Outcome.CONSISTENT


def test_fits_are_per_stage() -> None:
    skips = [[2.0, 3.0, 4.0, 1.0, 1.5, 2.0, 2.5]]
    trace = synthetic_trace(skips, [[1.0] * 7], stage_starts=(0, 3))
    by_id = {(f.id, f.stage): f for f in stats.fits(trace)}
    assert by_id[FitId.SKIP_M2_SLOPE, 0].estimate == 1.0
    assert by_id[FitId.SKIP_M2_SLOPE, 1].estimate == 0.5
    assert by_id[FitId.SKIP_M2_SLOPE, 1].intercept == 1.0


def test_zero_branch_has_no_ratio_fit() -> None:
    fit = stats.fit(synthetic_trace([[1.0] * 5], [[0.0] * 5]), FitId.RATIO_EXPONENT)
    assert math.isnan(fit.estimate) and fit.n_runs == 0


def test_predicted_is_the_same_fit_of_the_theory() -> None:
    trace = seeds_trace(64, seeds=1, shape=(4, 3, 8, 8), width=8)
    prediction = sigprop.theory.predict(trace)
    assert prediction is not None
    m2 = np.array([b.skip_m2 for b in prediction.blocks])
    ratio = np.array([b.ratio for b in prediction.blocks])
    slope = stats.fit(trace, FitId.SKIP_M2_SLOPE)
    exponent = stats.fit(trace, FitId.RATIO_EXPONENT)
    # Uniform 8x8 map, zero padding: ((9H - 10) / (3 (3H - 2)))^2 per branch.
    assert slope.predicted == pytest.approx((62 / 66) ** 2)
    assert slope.predicted == pytest.approx((m2[-1] - m2[0]) / 63)
    expected = np.polyfit(np.log(np.arange(1, 65)), np.log(ratio), 1)[0]
    assert exponent.predicted == pytest.approx(expected)
    assert -0.95 < expected < -0.85  # the finite-depth exponent, not -1


def test_effective_depth_counts_blocks_that_move_their_input() -> None:
    # Branch/skip norm ratios 1, 1/2, ..., 1/10: three of them are >= 0.3.
    ratios = [1 / (k + 1) ** 2 for k in range(10)]
    trace = synthetic_trace([[1.0] * 10], [ratios])
    assert stats.effective_depth(trace, threshold=0.3) == 3
    assert stats.effective_depth(trace, threshold=0.1) == 10


def test_relative_errors_compare_with_the_closed_form() -> None:
    net = sigprop.models.resnet(8, padding="circular", seed=0)
    trace = measure(net, InputSpec("gaussian", (4, 3, 8, 8), seed=0))
    rows = stats.relative_errors(trace)
    assert rows is not None and len(rows) == 8
    block = trace.runs[0].blocks[5]
    expected = trace.runs[0].blocks[0].skip.m2 + 5
    assert rows[5]["skip_m2_predicted"] == pytest.approx(expected)
    assert rows[5]["skip_m2_rel_error"] == pytest.approx((block.skip.m2 - expected) / expected)
    assert stats.relative_errors(synthetic_trace([[1.0]], [[1.0]])) is None


@pytest.mark.parametrize(("values", "outcome"), [
    ([1.0, 1.02, 0.98, 1.01, 0.99] * 4, Outcome.CONSISTENT),  # tight, inside [0.8, 1.2]
    ([0.3, 0.32, 0.28, 0.31, 0.29] * 4, Outcome.INCONSISTENT),  # tight, outside
    (list(np.random.default_rng(3).normal(1.0, 1.0, 20)), Outcome.INCONCLUSIVE),  # too noisy
])
def test_verdicts_are_equivalence_tests(values: list[float], outcome: Outcome) -> None:
    skip = 2.0 + np.concatenate([[0.0], np.cumsum(values[:-1])])
    trace = synthetic_trace([skip], [np.ones(len(values))])
    verdict = {v.id: v for v in stats.verdicts(trace)}[VerdictId.SQRT_DEPTH_DOWNSCALING]
    assert verdict.outcome is outcome
    assert verdict.consistent is {Outcome.CONSISTENT: True, Outcome.INCONSISTENT: False,
                                  Outcome.INCONCLUSIVE: None}[outcome]


def test_short_bn_network_is_inconclusive_not_consistent() -> None:
    result = stats.report(seeds_trace(8, seeds=1))
    assert result.verdict(VerdictId.SKIP_LINEAR_GROWTH).outcome is Outcome.INCONCLUSIVE
    assert result.verdict(VerdictId.SQRT_DEPTH_DOWNSCALING).outcome is Outcome.INCONCLUSIVE
    assert "interval" in result.verdict(VerdictId.SKIP_LINEAR_GROWTH).detail


def test_deep_bn_network_with_three_seeds_follows_the_law() -> None:
    result = stats.report(seeds_trace(512, seeds=3, shape=(8, 3, 16, 16)))
    assert result.verdict(VerdictId.SKIP_LINEAR_GROWTH).outcome is Outcome.CONSISTENT
    assert result.verdict(VerdictId.SQRT_DEPTH_DOWNSCALING).outcome is Outcome.CONSISTENT
    explosion = result.verdict(VerdictId.GEOMETRIC_EXPLOSION)
    assert explosion.outcome is Outcome.INCONSISTENT
    assert (explosion.n_runs, explosion.n_blocks) == (3, 512)
    assert result.verdict(VerdictId.IDENTITY_AT_INIT).outcome is Outcome.INCONSISTENT


@pytest.mark.parametrize(("depth", "kwargs"), [
    (64, {"norm": "none"}),
    (256, {"norm": "skipinit", "alpha": 0.25}),
])
def test_exploding_networks_are_consistent_with_explosion(depth: int,
                                                          kwargs: dict[str, Any]) -> None:
    result = stats.report(seeds_trace(depth, seeds=1, **kwargs))
    explosion = result.verdict(VerdictId.GEOMETRIC_EXPLOSION)
    assert explosion.outcome is Outcome.CONSISTENT, explosion.detail
    linear = result.verdict(VerdictId.SKIP_LINEAR_GROWTH)
    assert linear.outcome is Outcome.INCONSISTENT


@pytest.mark.parametrize("kwargs", [{"order": "relu-bn"}, {"norm": "nf"}])
def test_linear_theories_hold_the_slope_also_where_zero_padding_bends_the_walk(
        kwargs: dict[str, Any]) -> None:
    # Zero padding makes the predicted walk only nearly linear (its fitted growth rate is
    # 1 +- 0.002); the claim is still held to the theory's slope.
    trace = seeds_trace(16, seeds=1, shape=(2, 3, 8, 8), **kwargs)
    rate = stats.fit(trace, stats.FitId.GROWTH_RATE)
    assert rate.predicted is not None and rate.predicted != 1.0
    linear = stats.report(trace).verdict(VerdictId.SKIP_LINEAR_GROWTH)
    assert linear.predicted == stats.fit(trace, stats.FitId.SKIP_M2_SLOPE).predicted
    assert linear.predicted is not None and "theory" in linear.tolerance


def test_skipinit_alpha_zero_is_the_identity() -> None:
    result = stats.report(seeds_trace(16, seeds=1, shape=(2, 3, 8, 8), norm="skipinit"))
    identity = result.verdict(VerdictId.IDENTITY_AT_INIT)
    assert identity.outcome is Outcome.CONSISTENT and identity.measured == 0.0
    downscaling = result.verdict(VerdictId.SQRT_DEPTH_DOWNSCALING)
    assert downscaling.outcome is Outcome.INCONCLUSIVE and "zero" in downscaling.detail


def test_verdicts_are_per_stage_with_the_network_explosion() -> None:
    trace = seeds_trace(12, seeds=1, shape=(2, 3, 8, 8), width=4, stages=3)
    result = stats.report(trace)
    where = [(v.id.value, v.stage) for v in result.verdicts]
    assert where[:3] == [("skip_linear_growth", 0), ("sqrt_depth_downscaling", 0),
                         ("geometric_explosion", 0)]
    assert ("geometric_explosion", None) in where and where[-1] == ("identity_at_init", None)
    assert {v.n_blocks for v in result.verdicts if v.stage == 1} == {4}


def test_tolerances_are_parameters() -> None:
    trace = synthetic_trace([2.0 + np.arange(20.0)], [np.ones(20)])
    strict = stats.Tolerances(downscaling_rel=1e-9)
    verdict = {v.id: v for v in stats.verdicts(trace, strict)}[VerdictId.SQRT_DEPTH_DOWNSCALING]
    assert verdict.outcome is Outcome.CONSISTENT  # an exact line: a zero-width interval at 1
    off = synthetic_trace([2.0 + 1.5 * np.arange(20.0)], [np.ones(20)])
    assert {v.id: v for v in stats.verdicts(off, strict)}[
        VerdictId.SQRT_DEPTH_DOWNSCALING].outcome is Outcome.INCONSISTENT


def test_report_is_json_ready_with_stable_ids() -> None:
    doc = stats.report(seeds_trace(16, seeds=2, shape=(2, 3, 8, 8))).to_dict()
    json.dumps(doc, allow_nan=False)
    assert [f["id"] for f in doc["fits"]] == [f.value for f in FitId
                                              if f not in stats.GRADIENT_FITS]
    assert all("predicted" in f and len(f["ci95"]) == 2 for f in doc["fits"])
    assert [v["id"] for v in doc["verdicts"]] == [v.value for v in VerdictId
                                                  if v is not VerdictId.GRADIENT_PROPAGATION]
    for verdict in doc["verdicts"]:
        assert set(verdict) >= {"id", "stage", "claim", "measured", "interval", "predicted",
                                "tolerance", "outcome", "consistent", "n_runs", "n_blocks"}
        assert verdict["consistent"] == {"consistent": True, "inconsistent": False,
                                         "inconclusive": None}[verdict["outcome"]]


def test_linear_growth_without_a_theory_is_judged_by_its_geometric_part() -> None:
    n = np.arange(32.0)
    linear = stats.verdicts(synthetic_trace([1.0 + 0.5 * n], [np.full(32, 0.5)]))[0]
    geometric = stats.verdicts(synthetic_trace([1.1**n], [0.1 * 1.1**n]))[0]
    assert linear.id is VerdictId.SKIP_LINEAR_GROWTH and linear.predicted is None
    assert linear.outcome is Outcome.CONSISTENT, linear.detail
    assert geometric.outcome is Outcome.INCONSISTENT and "geometric" in geometric.detail


def test_proportional_branches_take_the_slope_interval_from_the_log_factors() -> None:
    # A walk whose blocks act as factors (NF-like: 1 + 0.04 / (1 + 0.04 l), with noise): with a
    # theory that says so, the interval is the delta method over batch means of the detrended
    # log-factors, computed here independently.
    rng = np.random.default_rng(3)
    steps = 36
    factors = 1 + 0.04 / (1 + 0.04 * np.arange(steps)) * (1 + 0.3 * rng.standard_normal(steps))
    levels = 1.7 * np.concatenate([[1.0], np.cumprod(factors)])
    trace = synthetic_trace([levels], [np.ones(steps + 1)])
    theory = Prediction("nf", "m2_{l+1} = (1 + alpha^2 / beta_l^2) m2_l", True, (),
                        proportional=True)
    slope = stats.fit(trace, FitId.SKIP_M2_SLOPE, prediction=theory)

    position = np.log(np.arange(1, steps + 1))
    log_factors = np.log(factors)
    trend = np.polyval(np.polyfit(position, log_factors, 2), position)
    sums = [float((log_factors - trend)[6 * k: 6 * k + 6].sum()) for k in range(6)]
    log_variance = 6 / 5 * sum(x * x for x in sums) * steps / (steps - 3)
    half = sps.t.ppf(0.975, 5) * math.sqrt(log_variance) * levels[-1] / steps
    assert slope.estimate == pytest.approx((levels[-1] - levels[0]) / steps)
    assert slope.df == 5 and slope.half_width == pytest.approx(half, rel=1e-9)
    # The same walk without the theory's flag keeps the segment jackknife (another width).
    assert stats.fit(trace, FitId.SKIP_M2_SLOPE).half_width != pytest.approx(half, rel=0.01)
    # An exactly geometric walk is one factor repeated: nothing left around the trend.
    geometric = stats.fit(synthetic_trace([1.5 * 1.03 ** np.arange(20.0)], [np.ones(20)]),
                          FitId.SKIP_M2_SLOPE, prediction=theory)
    assert geometric.half_width == pytest.approx(0.0, abs=1e-12)
