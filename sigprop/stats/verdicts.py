"""Verdicts: the claims of the theory as equivalence tests, per stage and for the network."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from sigprop._html import html_table
from sigprop.stats.bands import effective_depth
from sigprop.stats.fits import Estimate, FitId, Growth, fits, projected_growth
from sigprop.theory import predict
from sigprop.trace import Trace

__all__ = ["Outcome", "Report", "Tolerances", "Verdict", "VerdictId", "report", "verdicts"]


class VerdictId(StrEnum):
    """The claims of the theory that every measurement is judged against."""

    SKIP_LINEAR_GROWTH = "skip_linear_growth"
    SQRT_DEPTH_DOWNSCALING = "sqrt_depth_downscaling"
    GEOMETRIC_EXPLOSION = "geometric_explosion"
    IDENTITY_AT_INIT = "identity_at_init"
    GRADIENT_PROPAGATION = "gradient_propagation"  # only for traces with gradients


class Outcome(StrEnum):
    """Three-valued outcome of a verdict: an equivalence test against a tolerance band."""

    CONSISTENT = "consistent"  # the whole interval lies inside the band
    INCONSISTENT = "inconsistent"  # the whole interval lies outside it
    INCONCLUSIVE = "inconclusive"  # anything else: too few blocks or runs, too wide


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
        gradient_growth: projected geometric growth of the gradient's second moment towards
            the input over a stage, at or beyond which (or below its inverse) the gradient
            explodes (vanishes) geometrically (10x, as ``explosion_growth``).
    """

    slope_rel: float = 0.2
    downscaling_rel: float = 0.2
    explosion_growth: float = 10.0
    identity_norm: float = 1e-6
    gradient_growth: float = 10.0


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
                  "block(s) in all): measure more seeds (their spread gives one) or deeper "
                  "stages")
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
    * ``identity_at_init`` (the network): every block is exactly the identity;
    * ``gradient_propagation`` (per stage, traces with gradients): the gradient's projected
      geometric growth towards the input reaches ``tol.gradient_growth`` (or its inverse).

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
        growth = projected_growth(trace, [stage], estimates=estimates)
        zero_branch = all(b.residual.m2 == 0 for run in trace.runs for b in run.blocks
                          if b.stage == stage)
        out += [
            _linear_verdict(by_key[FitId.SKIP_M2_SLOPE, stage], growth, linear, tol),
            _downscaling_verdict(by_key[FitId.INVERSE_RATIO_SLOPE, stage],
                                 by_key[FitId.RATIO_EXPONENT, stage], zero_branch, tol),
            _explosion_verdict(stage, growth, len(trace.runs), tol),
        ]
    if len(stages) > 1:
        out.append(_explosion_verdict(None, projected_growth(trace, estimates=estimates),
                                      len(trace.runs), tol))
    out.append(_identity_verdict(trace, tol))
    if trace.has_gradients:
        out += [_gradient_verdict(trace, by_key[FitId.GRAD_GROWTH_RATE, stage],
                                  by_key[FitId.GRAD_RATIO_EXPONENT, stage], tol)
                for stage in stages]
    return out


def _gradient_verdict(trace: Trace, rate: Estimate, exponent: Estimate,
                      tol: Tolerances) -> Verdict:
    """The gradient grows (or vanishes) geometrically towards the input of a stage.

    Projected over the stage's identity blocks as ``g ** n`` from the fitted rate
    :data:`FitId.GRAD_GROWTH_RATE`; a non-finite gradient counts as an explosion.
    """
    n = rate.n // max(len(trace.runs), 1)  # identity blocks per run
    bound = tol.gradient_growth
    tolerance = (f"projected growth towards the input >= x{bound:g} or <= x{1 / bound:g} over "
                 "the stage, or a non-finite gradient")
    gradients = [b.grad for _, b in trace.blocks() if b.stage == rate.stage and b.grad is not None]
    overflow = any(not g.finite for g in gradients)
    zero = bool(gradients) and all(g.output.m2 == 0 and g.input.m2 == 0 for g in gradients)
    factor = rate.estimate ** n if math.isfinite(rate.estimate) else math.nan
    # A rate's interval may reach below 0 (one seed of a geometric family: its halves'
    # disagreement): the projected growth's lower end is then 0.
    ci = tuple(max(c, 0.0) ** n if math.isfinite(c) else math.nan for c in rate.ci95)
    if overflow:
        outcome, detail = Outcome.CONSISTENT, "the gradient is non-finite in this stage"
    elif zero:
        outcome, detail = Outcome.INCONCLUSIVE, (
            "every gradient of this stage is exactly 0: nothing reaches it from the output (a "
            "zero-initialized layer after the blocks, such as Fixup's classifier)")
    elif not math.isfinite(rate.estimate):
        outcome, detail = Outcome.INCONCLUSIVE, (
            f"too short to fit a growth rate ({n} identity block(s); the fit needs at least 4)")
    elif rate.estimate < 0:
        outcome, detail = Outcome.INCONCLUSIVE, (
            f"the fit G_l / G_l+1 = g + a / var_l gives g = {rate.estimate:.3g} < 0 over {n} "
            "identity block(s): the factors do not follow var_l here")
    elif not math.isfinite(ci[0]) or not math.isfinite(ci[1]):
        outcome, detail = Outcome.INCONCLUSIVE, (
            f"x{rate.estimate:.4g} per block, but {n} identity block(s) of one run give no "
            "interval: measure more seeds (their spread gives one) or a deeper stage")
    else:
        explodes, vanishes = (_equivalence(ci, bound, math.inf),  # type: ignore[arg-type]
                              _equivalence(ci, 0.0, 1 / bound))  # type: ignore[arg-type]
        outcome = (Outcome.CONSISTENT if Outcome.CONSISTENT in (explodes, vanishes) else
                   Outcome.INCONSISTENT if explodes is vanishes is Outcome.INCONSISTENT else
                   Outcome.INCONCLUSIVE)
        detail = (f"x{rate.estimate:.4g} per block towards the input, x{factor:.3g} "
                  f"[{ci[0]:.3g}, {ci[1]:.3g}] over {n} block(s)")
        if rate.predicted is not None:
            detail += f" (theory x{rate.predicted:.4g} per block)"
        if outcome is Outcome.INCONCLUSIVE:
            detail += "; the interval straddles the threshold: measure more seeds"
    if math.isfinite(exponent.estimate):
        detail += f"; branch/skip gradient ratio ~ n^{exponent.estimate:.3g}" + (
            "" if exponent.predicted is None else f" (theory n^{exponent.predicted:.3g})")
    return Verdict(VerdictId.GRADIENT_PROPAGATION, rate.stage,
                   "the gradient grows or vanishes geometrically towards the input",
                   rate.estimate, rate.ci95, rate.predicted, tolerance, outcome, detail,
                   rate.n_runs, n)


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

    def _repr_html_(self) -> str:
        """The verdicts as a table in Jupyter: claim, where, measured [95% CI], outcome."""
        rows = [(v.claim, "network" if v.stage is None else f"stage {v.stage}",
                 f"{v.n_runs} x {v.n_blocks}", _with_interval(v.measured, v.interval),
                 "-" if v.predicted is None else f"{v.predicted:.4g}", v.tolerance,
                 v.outcome.value, v.detail) for v in self.verdicts]
        return html_table(
            f"theory vs measurement (95% intervals); effective depth {self.effective_depth}",
            ["claim", "where", "runs x blocks", "measured [95% CI]", "claim predicts",
             "tolerance", "outcome", "why"], rows)

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


def _with_interval(value: float, interval: tuple[float, float]) -> str:
    if not math.isfinite(interval[0]):
        return f"{value:.4g}"
    return f"{value:.4g} [{interval[0]:.4g}, {interval[1]:.4g}]"


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
