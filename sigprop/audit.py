"""Checks a practitioner runs on an architecture before training it, from one measurement."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from sigprop._html import html_table
from sigprop.stats import (
    Outcome,
    Report,
    Tolerances,
    Verdict,
    VerdictId,
    band,
    projected_growth,
    report,
)
from sigprop.trace import Trace

__all__ = ["AuditTolerances", "Finding", "Findings", "Status", "audit", "no_blocks"]


class Status(StrEnum):
    """Outcome of one check: ``fail`` makes ``sigprop audit`` exit with code 1."""

    PASS = "pass"
    FAIL = "fail"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Finding:
    """One check with its measured figure.

    Attributes:
        id: stable identifier (``residual_blocks``, ``signal_explosion``, ``identity_bias``,
            ``zero_branches``, ``bn_eval_mode``, ``gradient_propagation``).
        status: pass, fail or info.
        message: the finding in one sentence, with its figure.
        measured: the figure behind it (None where it is a count or not applicable).
    """

    id: str
    status: Status
    message: str
    measured: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (non-finite figures become None)."""
        doc = asdict(self)
        doc["status"] = self.status.value
        if self.measured is not None and not math.isfinite(self.measured):
            doc["measured"] = None
        return doc


@dataclass(frozen=True, slots=True)
class AuditTolerances:
    """Thresholds of the audit.

    Attributes:
        dominant_ratio: residual/skip ratio of second moments, averaged over the deepest quarter
            of a stage's blocks, at or above which branches dominate their skip path (0.5).
        min_stage_blocks: blocks a stage needs before a missing identity bias matters (4; in a
            shorter stage even BN leaves the ratio near 1/(1 + l) ~ 0.3-1).
        zero_norm: ``||residual|| / ||skip||`` at or below which a branch counts as zero (1e-6).
        stats: tolerances of the underlying verdicts (geometric explosion: projected growth).
    """

    dominant_ratio: float = 0.5
    min_stage_blocks: int = 4
    zero_norm: float = 1e-6
    stats: Tolerances = field(default_factory=Tolerances)


def no_blocks(reason: str) -> list[Finding]:
    """The audit of a model in which no residual block was found."""
    return [Finding("residual_blocks", Status.FAIL, f"no residual block found: {reason}")]


class Findings(list[Finding]):
    """The audit's findings, one per check: a list that renders as a table in Jupyter."""

    def _repr_html_(self) -> str:
        return html_table("sigprop audit: one finding per check", ["check", "status", "finding"],
                          [(f.id, f.status.value, f.message) for f in self])


def audit(trace: Trace, tol: AuditTolerances | None = None,
          result: Report | None = None) -> Findings:
    """Run every check on a measured trace.

    Args:
        trace: the measurement (one or more seeds); it records the model's batch-norm layers.
        tol: thresholds (defaults documented in :class:`AuditTolerances`).
        result: the trace's :func:`sigprop.stats.report`, if already computed.

    Returns:
        One finding per check, in a fixed order (a list; a table in Jupyter).

    >>> import sigprop
    >>> net = sigprop.models.resnet(64, norm="none", seed=0)
    >>> trace = sigprop.measure(net, sigprop.InputSpec("gaussian", (4, 3, 16, 16), 0))
    >>> [f.status.value for f in audit(trace)]  # gradients not measured: the last is info
    ['pass', 'fail', 'fail', 'pass', 'pass', 'info']
    """
    tol = tol or AuditTolerances()
    result = result or report(trace, tol.stats)
    return Findings([
        Finding("residual_blocks", Status.PASS,
                f"{trace.n_blocks} residual blocks in {len(trace.by_stage())} stage(s)",
                float(trace.n_blocks)),
        _explosion(trace, result),
        _identity_bias(trace, tol),
        _zero_branches(trace, tol),
        _bn_mode(trace),
        _gradient_propagation(trace, result),
    ])


def _explosion(trace: Trace, result: Report) -> Finding:
    verdict = result.verdict(VerdictId.GEOMETRIC_EXPLOSION)
    growth = projected_growth(trace, estimates=result.fits)
    figure = (f"x{growth.factor:.3g} [{growth.ci95[0]:.3g}, {growth.ci95[1]:.3g}] projected over "
              f"{growth.blocks} blocks (x{verdict.measured:.4g} per block)") if growth.blocks \
        else ""
    if verdict.outcome is Outcome.CONSISTENT:
        what = (f"float32 overflow from block {growth.overflow}" if growth.overflow is not None
                else figure)
        return Finding("signal_explosion", Status.FAIL,
                       f"the skip path's second moment grows geometrically: {what}",
                       verdict.measured)
    if verdict.outcome is Outcome.INCONSISTENT:
        return Finding("signal_explosion", Status.PASS,
                       f"no geometric growth that matters at this depth: {figure} (< "
                       f"x{result.tolerances.explosion_growth:g})", verdict.measured)
    return Finding("signal_explosion", Status.INFO,
                   f"cannot tell linear from geometric growth: {verdict.detail}",
                   verdict.measured)


def _identity_bias(trace: Trace, tol: AuditTolerances) -> Finding:
    """Branches dominating their skip path in the deep blocks of stages long enough to matter."""
    ratio = np.array(band(trace, lambda b: b.ratio).mean)
    judged, dominated, means = 0, [], []
    for stage, blocks in trace.by_stage().items():
        if len(blocks) < tol.min_stage_blocks:
            continue
        deep = ratio[[b.index for b in blocks[len(blocks) - max(1, len(blocks) // 4):]]]
        deep = deep[np.isfinite(deep)]
        if not deep.size:
            continue
        judged += 1
        means.append(float(deep.mean()))
        if means[-1] >= tol.dominant_ratio:
            dominated.append(stage)
    if not judged:
        return Finding("identity_bias", Status.INFO,
                       f"no stage has {tol.min_stage_blocks} blocks with a finite ratio: too "
                       "short for a missing identity bias to compound", None)
    worst = max(means)
    where = (f"residual/skip second moments in the deepest quarter of each stage of >= "
             f"{tol.min_stage_blocks} blocks: at most {worst:.3g}")
    if dominated:
        return Finding("identity_bias", Status.FAIL,
                       f"branches dominate their skip path in stage(s) "
                       f"{', '.join(map(str, dominated))}, no identity bias: {where} "
                       f"(>= {tol.dominant_ratio:g})", worst)
    return Finding("identity_bias", Status.PASS,
                   f"deep blocks are biased towards the identity: {where}", worst)


def _zero_branches(trace: Trace, tol: AuditTolerances) -> Finding:
    zero = [b for _, b in trace.blocks() if b.branch_norm_ratio <= tol.zero_norm]
    if not zero:
        return Finding("zero_branches", Status.PASS, "no residual branch is zero at initialization",
                       0.0)
    gains = Counter(block.gain or "no gain seen" for block in zero)
    causes = "; ".join(f"{gain} ({n})" for gain, n in gains.items())
    per_run = len(zero) / len(trace.runs)
    return Finding("zero_branches", Status.INFO,
                   f"{per_run:g} of {trace.n_blocks} residual branches are ~0 at initialization "
                   f"(often deliberate, e.g. zero-init gains): {causes}", per_run)


def _bn_mode(trace: Trace) -> Finding:
    if trace.batchnorms is None:
        return Finding("bn_eval_mode", Status.INFO,
                       "the trace does not record the model's batch-norm layers (measured by an "
                       "older sigprop): measure again to check the BN mode")
    layers, fresh = trace.batchnorms.layers, trace.batchnorms.fresh
    if not layers:
        return Finding("bn_eval_mode", Status.PASS, "no batch-norm layer")
    if trace.bn_mode == "eval" and fresh:
        return Finding("bn_eval_mode", Status.FAIL,
                       f"{fresh} of {layers} batch-norm layers have fresh running statistics "
                       "(mean 0, variance 1): in eval mode they are the identity and the network "
                       "behaves unnormalized; measure with --bn-mode train", float(fresh))
    return Finding("bn_eval_mode", Status.PASS,
                   f"{layers} batch-norm layers normalize with "
                   + ("batch statistics" if trace.bn_mode == "train" else "trained running "
                      "statistics"), float(layers))


def _gradient_propagation(trace: Trace, result: Report) -> Finding:
    """Gradients exploding or vanishing geometrically towards the input, stage by stage.

    Fails when a stage's verdict is consistent with geometric growth (or decay); passes when
    every stage's rules it out; stages too short (or too noisy) to judge make it info, which
    names every stage left open and what the others ruled out.
    """
    if not trace.has_gradients:
        return Finding("gradient_propagation", Status.INFO,
                       "gradients not measured: measure with backward=True (sigprop audit "
                       "... --backward) to check how they propagate")
    judged = [v for v in result.verdicts if v.id is VerdictId.GRADIENT_PROPAGATION]
    failing = [v for v in judged if v.outcome is Outcome.CONSISTENT]
    worst = max(judged, key=lambda v: abs(math.log(v.measured))
                if v.measured > 0 and math.isfinite(v.measured) else math.inf)
    if failing:
        where = "; ".join(f"stage {v.stage}: {v.detail}" for v in failing)
        direction = "vanishes" if all(0 < v.measured < 1 for v in failing) else "explodes"
        return Finding("gradient_propagation", Status.FAIL,
                       f"the gradient {direction} geometrically towards the input: {where}",
                       failing[0].measured)
    if all(v.outcome is Outcome.INCONSISTENT for v in judged):
        return Finding("gradient_propagation", Status.PASS,
                       f"no geometric growth or decay of the gradient towards the input "
                       f"(within x{result.tolerances.gradient_growth:g} either way per stage); "
                       f"stage {worst.stage}: {worst.detail}", worst.measured)
    unclear = [v for v in judged if v.outcome is Outcome.INCONCLUSIVE]
    ruled_out = [v for v in judged if v.outcome is Outcome.INCONSISTENT]

    def stages(verdicts: list[Verdict]) -> str:
        return "; ".join(f"stage {v.stage}: {v.detail}" for v in verdicts)

    message = "cannot tell: " + stages(unclear)
    if ruled_out:
        message += (f"; ruled out (within x{result.tolerances.gradient_growth:g} either way) in "
                    + stages(ruled_out))
    return Finding("gradient_propagation", Status.INFO, message, unclear[0].measured)
