"""Checks a practitioner runs on an architecture before training it, from one measurement."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from sigprop.stats import Report, Tolerances, band, report
from sigprop.trace import Trace

__all__ = ["AuditTolerances", "Finding", "Status", "audit", "fresh_batchnorms", "no_blocks"]

MIN_STAGE_BLOCKS = 4
"""Blocks a stage needs before its growth can be called geometric or linear."""


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
            ``zero_branches``, ``bn_eval_mode``).
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
            of the blocks, at or above which branches dominate their skip path (0.5).
        zero_norm: ``||residual|| / ||skip||`` at or below which a branch counts as zero (1e-6).
        stats: tolerances of the underlying verdicts (geometric explosion).
    """

    dominant_ratio: float = 0.5
    zero_norm: float = 1e-6
    stats: Tolerances = field(default_factory=Tolerances)


def fresh_batchnorms(model: nn.Module) -> tuple[int, int]:
    """``(batch-norm layers, of which with fresh running statistics: mean 0, variance 1)``."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    fresh = sum(
        1 for m in layers
        if m.running_mean is not None and m.running_var is not None
        and bool((m.running_mean == 0).all()) and bool((m.running_var == 1).all())
    )
    return len(layers), fresh


def no_blocks(reason: str) -> list[Finding]:
    """The audit of a model in which no residual block was found."""
    return [Finding("residual_blocks", Status.FAIL, f"no residual block found: {reason}")]


def audit(trace: Trace, batchnorms: tuple[int, int] = (0, 0),
          tol: AuditTolerances | None = None, result: Report | None = None) -> list[Finding]:
    """Run every check on a measured trace.

    Args:
        trace: the measurement (one or more seeds).
        batchnorms: :func:`fresh_batchnorms` of the model, for the BN-mode check.
        tol: thresholds (defaults documented in :class:`AuditTolerances`).
        result: the trace's :func:`sigprop.stats.report`, if already computed.

    Returns:
        One finding per check, in a fixed order.

    >>> import sigprop
    >>> net = sigprop.models.resnet(64, norm="none", seed=0)
    >>> trace = sigprop.measure(net, sigprop.InputSpec("gaussian", (4, 3, 16, 16), 0))
    >>> [f.status.value for f in audit(trace)]
    ['pass', 'fail', 'fail', 'pass', 'pass']
    """
    tol = tol or AuditTolerances()
    result = result or report(trace, tol.stats)
    return [
        Finding("residual_blocks", Status.PASS,
                f"{trace.n_blocks} residual blocks in {len(trace.by_stage())} stage(s)",
                float(trace.n_blocks)),
        _explosion(trace, result),
        _identity_bias(trace, tol),
        _zero_branches(trace, tol),
        _bn_mode(trace, batchnorms),
    ]


def _explosion(trace: Trace, result: Report) -> Finding:
    verdict = next(v for v in result.verdicts if v.id == "geometric_explosion")
    overflow = [r.first_overflow for r in trace.runs if r.first_overflow is not None]
    longest = max(len(blocks) for blocks in trace.by_stage().values())
    if not overflow and longest < MIN_STAGE_BLOCKS:
        return Finding("signal_explosion", Status.INFO,
                       f"too few blocks per stage to tell linear from geometric growth (longest "
                       f"stage: {longest} blocks, need {MIN_STAGE_BLOCKS}); "
                       f"x{verdict.measured:.3g} per block", verdict.measured)
    if overflow:
        return Finding("signal_explosion", Status.FAIL,
                       f"float32 overflow from block {min(overflow)}: the signal explodes "
                       f"(x{verdict.measured:.3g} per block)", verdict.measured)
    if verdict.consistent:
        return Finding("signal_explosion", Status.FAIL,
                       f"the skip path's second moment grows geometrically, "
                       f"x{verdict.measured:.3g} per block", verdict.measured)
    return Finding("signal_explosion", Status.PASS,
                   f"no geometric growth: x{verdict.measured:.3g} per block", verdict.measured)


def _identity_bias(trace: Trace, tol: AuditTolerances) -> Finding:
    ratio = np.array(band(trace, lambda b: b.ratio).mean)
    deep = ratio[len(ratio) - max(1, len(ratio) // 4):]
    deep = deep[np.isfinite(deep)]
    if not deep.size:
        return Finding("identity_bias", Status.FAIL,
                       "no finite residual/skip ratio in the deepest quarter of the blocks")
    mean = float(deep.mean())
    where = f"residual/skip second moments {mean:.3g} on average in the deepest quarter"
    if mean >= tol.dominant_ratio:
        return Finding("identity_bias", Status.FAIL,
                       f"branches dominate their skip path, no identity bias: {where} "
                       f"(>= {tol.dominant_ratio:g})", mean)
    return Finding("identity_bias", Status.PASS,
                   f"deep blocks are biased towards the identity: {where}", mean)


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


def _bn_mode(trace: Trace, batchnorms: tuple[int, int]) -> Finding:
    layers, fresh = batchnorms
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
