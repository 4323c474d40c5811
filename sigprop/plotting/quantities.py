"""What figures read off a trace: named quantities, closed forms, depth, fits as text."""

from __future__ import annotations

import math
from collections.abc import Callable

from sigprop import stats
from sigprop.config import ResNetConfig
from sigprop.theory import BlockPrediction
from sigprop.trace import BlockStats, GradRole, Trace

__all__ = ["MEASURED", "PREDICTED", "Quantity", "TheoryQuantity", "fit_text", "network_depth"]

Quantity = Callable[[BlockStats], float]
TheoryQuantity = Callable[[BlockPrediction], float]

def _gradient_m2(role: GradRole) -> Quantity:
    """The second moment of one of a block's gradients (NaN where none was measured)."""
    def quantity(block: BlockStats) -> float:
        return math.nan if block.grad is None else block.grad.moments(role).m2
    return quantity


#: Per-block quantities by name: the names of the figures' data tables.
MEASURED: dict[str, Quantity] = {
    "skip_m2": lambda b: b.skip.m2,
    "skip_var": lambda b: b.skip.var,
    "skip_sq_mean": lambda b: b.skip.sq_mean,
    "residual_var": lambda b: b.residual.var,
    "residual_m2": lambda b: b.residual.m2,
    "output_m2": lambda b: b.output.m2,
    "output_var": lambda b: b.output.var,
    "output_sq_mean": lambda b: b.output.sq_mean,
    "ratio": lambda b: b.ratio,
    "inverse_ratio": lambda b: 1 / b.ratio if b.ratio > 0 else math.nan,
    "cosine": lambda b: b.cosine,
    "one_minus_cosine": lambda b: 1 - b.cosine,
    "branch_norm_ratio": lambda b: b.branch_norm_ratio,
    # Gradients (NaN for a trace measured without backward=True).
    **{f"grad_{role.value}_m2": _gradient_m2(role) for role in GradRole},
    "grad_ratio": lambda b: math.nan if b.grad is None else b.grad.ratio,
}

#: The closed form of each quantity of :data:`MEASURED` that :func:`sigprop.theory.predict` gives.
PREDICTED: dict[str, TheoryQuantity] = {
    "skip_m2": lambda p: p.skip_m2,
    "skip_var": lambda p: p.skip_var,
    "skip_sq_mean": lambda p: p.skip_sq_mean,
    "residual_m2": lambda p: p.residual_m2,
    "residual_var": lambda p: p.residual_var,
    "output_m2": lambda p: p.output_m2,
    "output_var": lambda p: p.output_var,
    "output_sq_mean": lambda p: p.output_sq_mean,
    "ratio": lambda p: p.ratio,
    "inverse_ratio": lambda p: 1 / p.ratio if p.ratio > 0 else math.nan,
    "cosine": lambda p: 1 / math.sqrt(1 + p.ratio),
    "one_minus_cosine": lambda p: -math.expm1(-0.5 * math.log1p(p.ratio)),
    "branch_norm_ratio": lambda p: math.sqrt(p.ratio),
}


def network_depth(trace: Trace) -> int:
    """The network's depth: its configured number of blocks, else the blocks measured.

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(3, width=4, seed=0),
    ...                         sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0))
    >>> network_depth(trace)
    3
    """
    config = ResNetConfig.of(trace.model)
    return trace.n_blocks if config is None else config.depth


def fit_text(trace: Trace, fit_id: stats.FitId, stage: int = 0, digits: int = 2) -> str:
    """A fit of ``trace`` as ``estimate [95% CI] (theory p)``, for legends and captions.

    Args:
        trace: the measured trace.
        fit_id: what to fit (see :func:`sigprop.stats.fit`).
        stage: the stage fitted.
        digits: decimals of every number.

    Returns:
        The estimate with its 95% interval, and the same fit of the theory where there is one.

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(8, width=4, seed=0),
    ...                         sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0))
    >>> text = fit_text(trace, stats.FitId.SKIP_M2_SLOPE)  # '0.58 [0.25, 0.92] (theory 0.88)'
    >>> text.count("[") == 1 and "(theory" in text
    True
    """
    estimate = stats.fit(trace, fit_id, stage)
    lo, hi = estimate.ci95
    text = f"{estimate.estimate:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    if estimate.predicted is None:
        return text
    return f"{text} (theory {estimate.predicted:.{digits}f})"
