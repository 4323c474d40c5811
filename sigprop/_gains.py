"""Gains on residual branches: what multiplies a branch just before its addition."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["GainTerm", "describe_gains"]


@dataclass(frozen=True, slots=True)
class GainTerm:
    """A factor seen on the residual branch just before the addition.

    Attributes:
        kind: ``param`` (a parameter or buffer multiplying the branch, e.g. SkipInit alpha or
            layer scale gamma), ``weight`` (the weight of the normalization, convolution or
            linear layer that produced the branch; reported only when it is all zero) or
            ``constant`` (a Python number).
        name: qualified name of the parameter (empty for a constant).
        value: the tensor (read after the forward pass) or the constant.
        derived: the tensor was computed from the parameter ``name`` (e.g. a standardized
            weight), it is not the parameter itself.
    """

    kind: str
    name: str
    value: torch.Tensor | float
    derived: bool = False


def describe_gains(blocks: Sequence[tuple[str, tuple[GainTerm, ...]]]) -> list[str | None]:
    """A description of the branch gain of every block (one device sync for all).

    Args:
        blocks: per block, the name of its owner module and the terms seen on its branch.

    Returns:
        Per block: a parameter gain reads ``alpha = 0`` (scalar) or ``gamma: mean |g| = 1e-06``
        (per channel); a layer's weight is reported only when all zero (``bn3.weight = 0``;
        ``conv3.weight (effective) = 0`` when the layer used a weight computed from its
        parameters); a constant factor reads ``constant 0.2``; several are joined with `` * ``.
        Names are relative to the block when inside it. None: no gain seen.
    """
    tensors = [t.value for _, terms in blocks for t in terms if isinstance(t.value, torch.Tensor)]
    summary: list[list[float]] = []
    if tensors:
        with torch.no_grad():
            rows = [torch.stack((v.detach().double().abs().mean(),
                                 (v.detach() == 0).all().double(),
                                 v.detach().double().reshape(-1)[0])).to(tensors[0].device)
                    for v in tensors]
            summary = torch.stack(rows).cpu().tolist()
    it = iter(summary)
    described: list[str | None] = []
    for owner, terms in blocks:
        parts = []
        for term in terms:
            if isinstance(term.value, float):
                parts.append(f"constant {term.value:g}")
                continue
            mean_abs, zero, first = next(it)
            name = term.name
            if name.startswith(owner + "."):
                name = name[len(owner) + 1:]
            if zero:
                parts.append(f"{name} (effective) = 0" if term.derived else f"{name} = 0")
            elif term.kind == "param":
                parts.append(f"{name} = {first:.3g}" if term.value.numel() == 1
                             else f"{name}: mean |g| = {mean_abs:.3g}")
        described.append(" * ".join(parts) if parts else None)
    return described
