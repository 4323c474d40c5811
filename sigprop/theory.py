"""Closed-form predictions of THEORY.md for the built-in ResNets, block by block.

Every rule propagates the skip second moment from the *measured* skip second moment of the first
block of each stage (``m2_0``): a projection shortcut resets the skip path, so each stage is
anchored on its own. Assumptions: infinite width, branch independent of the skip path at
initialization, Gaussian input, He-initialized convolutions. See docs/theory.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sigprop.trace import Trace

__all__ = ["BlockPrediction", "Prediction", "predict"]

# Second moment split of a BN-ReLU-Conv branch with He init: ReLU of a unit Gaussian has mean
# 1/sqrt(2 pi) and second moment 1/2; the He conv (gain 2) maps that to per-channel means of
# variance 2 * 1/(2 pi) = 1/pi and to a total second moment of 1.
BN_BRANCH_VAR = 1.0 - 1.0 / math.pi
BN_BRANCH_SQ_MEAN = 1.0 / math.pi


@dataclass(frozen=True, slots=True)
class BlockPrediction:
    """Predicted second moments of one block (NaN where the theory says nothing)."""

    index: int
    stage: int
    skip_m2: float
    residual_m2: float
    skip_var: float = math.nan
    skip_sq_mean: float = math.nan

    @property
    def ratio(self) -> float:
        """Predicted residual/skip ratio of second moments."""
        return self.residual_m2 / self.skip_m2 if self.skip_m2 else math.nan

    @property
    def output_m2(self) -> float:
        """Predicted second moment of ``skip + residual`` (independent operands add)."""
        return self.skip_m2 + self.residual_m2


@dataclass(frozen=True, slots=True)
class Prediction:
    """Per-block predictions for one network, with the rule that produced them.

    Attributes:
        family: which closed form applies, e.g. ``bn-v2``.
        rule: the recursion in words, e.g. ``m2_l = m2_0 + l, ratio = 1/(m2_0 + l)``.
        exact: False where THEORY.md only gives an approximation (v1 with BN).
        blocks: one prediction per measured block, in call order.
        growth: the skip second moment's factor per block for geometric families (2 for
            unnormalized, 1 + alpha^2 for SkipInit, 1 + 1/d for sqrt-depth); None for linear ones.
    """

    family: str
    rule: str
    exact: bool
    blocks: tuple[BlockPrediction, ...]
    growth: float | None = None


# (skip m2 at the stage's first block, position in the stage) -> skip m2, residual m2.
_Recursion = Callable[[float, int], tuple[float, float]]


@dataclass(frozen=True, slots=True)
class _Family:
    name: str
    rule: str
    exact: bool
    recursion: _Recursion
    growth: float | None = None


def _geometric(name: str, rule: str, exact: bool, branch: float) -> _Family:
    """Skip m2 times ``1 + branch`` per block; the branch carries ``branch`` times the skip."""
    return _Family(name, rule, exact,
                   lambda m0, l: (m0 * (1 + branch) ** l, branch * m0 * (1 + branch) ** l),
                   1 + branch)


def _family(config: dict[str, Any]) -> _Family | None:
    if config.get("name") != "resnet":
        return None
    norm, variant, depth = config["norm"], config["variant"], int(config["depth"])
    # A ReLU after the addition (v1) breaks the exact recursions.
    exact = variant == "v2"
    if norm == "batchnorm" and exact and config.get("order") == "relu-bn":
        return _Family("bn-v2-relu-bn",
                       "m2_l = m2_0 + 2l; residual m2 = 2; ratio = 2/(m2_0 + 2l)", True,
                       lambda m0, l: (m0 + 2 * l, 2.0))
    if norm == "batchnorm" and exact:
        return _Family("bn-v2", "m2_l = m2_0 + l; residual m2 = 1; ratio = 1/(m2_0 + l)", True,
                       lambda m0, l: (m0 + l, 1.0))
    if norm == "batchnorm":
        return _Family("bn-v1",
                       "approximately m2_l = m2_0 + l (ReLU after the addition clips little)",
                       False, lambda m0, l: (m0 + l, 1.0))
    if norm == "none":
        return _geometric("unnormalized", "m2_l = 2^l m2_0; ratio = 1", exact, 1.0)
    if norm == "skipinit":
        alpha = float(config["alpha"])
        rule = f"m2_l = (1 + alpha^2)^l m2_0; ratio = alpha^2 = {alpha**2:g}"
        return _geometric("skipinit", rule, exact, alpha**2)
    if norm == "sqrt-depth":
        return _geometric("sqrt-depth", f"m2_l = (1 + 1/d)^l m2_0; ratio = 1/d = 1/{depth}",
                          exact, 1 / depth)
    return None


def predict(trace: Trace) -> Prediction | None:
    """Closed-form per-block predictions for a built-in ResNet trace, or None for other models.

    Each stage is anchored on the measured skip second moment of its first block, averaged over
    the trace's runs (non-finite runs excluded).

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(4, seed=0),
    ...                         sigprop.InputSpec("gaussian", (8, 3, 8, 8), 0))
    >>> p = predict(trace)
    >>> p.family, [round(b.skip_m2 - p.blocks[0].skip_m2, 6) for b in p.blocks]
    ('bn-v2', [0.0, 1.0, 2.0, 3.0])
    """
    family = _family(dict(trace.model))
    if family is None or not trace.runs:
        return None
    anchors: dict[int, tuple[int, float]] = {}
    for block in trace.runs[0].blocks:
        if block.stage not in anchors:
            values = [run.blocks[block.index].skip.m2 for run in trace.runs]
            finite = [v for v in values if math.isfinite(v)]
            anchors[block.stage] = (block.index, float(np.mean(finite)) if finite else math.nan)
    predictions = []
    for block in trace.runs[0].blocks:
        start, m2_0 = anchors[block.stage]
        skip, residual = family.recursion(m2_0, block.index - start)
        split = _skip_split(trace, start, block.index, family.name)
        predictions.append(BlockPrediction(block.index, block.stage, skip, residual,
                                           *(split or (math.nan, math.nan))))
    return Prediction(family.name, family.rule, family.exact, tuple(predictions), family.growth)


# Per-block increments of the skip path's (var, sq_mean) where the branch's split is known.
_SPLITS = {"bn-v2": (BN_BRANCH_VAR, BN_BRANCH_SQ_MEAN), "bn-v2-relu-bn": (2.0, 0.0)}


def _skip_split(trace: Trace, start: int, index: int, family: str) -> tuple[float, float] | None:
    """Skip var and sq_mean: each block adds the branch's split to the stage's first block."""
    if family not in _SPLITS:
        return None
    var_step, sq_step = _SPLITS[family]
    first = [run.blocks[start].skip for run in trace.runs if run.blocks[start].skip.finite]
    var_0 = float(np.mean([m.var for m in first])) if first else math.nan
    sq_0 = float(np.mean([m.sq_mean for m in first])) if first else math.nan
    steps = index - start
    return var_0 + steps * var_step, sq_0 + steps * sq_step
