"""Gains on residual branches: what multiplies a branch just before its addition.

During discovery, :class:`BranchGains` follows each tensor from the layer that produced it
through the factors applied to it since; after the pass, :func:`describe_gains` reads the
factors of every block's branch in one device sync.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import nn

from sigprop._tensor_map import TensorMap

__all__ = ["BranchGains", "GainTerm", "OpKind", "ParamNames", "describe_gains"]

_LAYERS = frozenset({torch.conv1d, torch.conv2d, torch.conv3d, nn.functional.linear})

OpKind = Literal["layout", "gain", "other"]
"""How an operation on a tensor bears on its gain: a layout change keeps it, a factor (``gain``:
a multiplication or division of one labeled tensor) extends it, anything else replaces it."""


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
    """A description of the branch gain of every block (a device sync per device and dtype).

    Args:
        blocks: per block, the name of its owner module and the terms seen on its branch.

    Returns:
        Per block: a parameter gain reads ``alpha = 0`` (scalar) or ``gamma: mean |g| = 1e-06``
        (per channel); a layer's weight is reported only when all zero (``bn3.weight = 0``;
        ``conv3.weight (effective) = 0`` when the layer used a weight computed from its
        parameters); a constant factor reads ``constant 0.2``; several are joined with `` * ``.
        Names are relative to the block when inside it. None: no gain seen.
    """
    terms = [t for _, ts in blocks for t in ts if isinstance(t.value, torch.Tensor)]
    with torch.no_grad():
        summaries = iter(_summaries(terms))
    described: list[str | None] = []
    for owner, block_terms in blocks:
        parts = []
        for term in block_terms:
            if isinstance(term.value, float):
                parts.append(f"constant {term.value:g}")
                continue
            mean_abs, zero, first = next(summaries)
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


def _summaries(terms: Sequence[GainTerm]) -> list[tuple[float, bool, float]]:
    """``(mean |v|, all zero, first value)`` of each term's tensor, in few device operations.

    A parameter gain (a scale: few values) gets all three, in float64. A layer's weight
    (millions of values) is only tested for zero: ``max |v| == 0``, exact, for all weights of a
    device and dtype in two ``_foreach`` operations (per-weight operations cost a few us each,
    which 5,000 tiny blocks feel); its mean and first value are not needed (NaN).
    """
    out: list[tuple[float, bool, float]] = [(math.nan, False, math.nan)] * len(terms)
    params = [i for i, t in enumerate(terms) if t.kind == "param"]
    if params:
        rows = []
        device = cast("torch.Tensor", terms[params[0]].value).device
        for i in params:
            v = cast("torch.Tensor", terms[i].value).detach()
            rows.append(torch.stack((v.double().abs().mean(), (v == 0).all().double(),
                                     v.reshape(-1)[0].double())).to(device))
        for i, (mean, zero, first) in zip(params, torch.stack(rows).cpu().tolist(), strict=True):
            out[i] = (mean, bool(zero), first)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, term in enumerate(terms):
        if term.kind != "param":
            value = cast("torch.Tensor", term.value)
            groups.setdefault((value.device, value.dtype), []).append(i)
    for indices in groups.values():
        weights = [cast("torch.Tensor", terms[i].value).detach() for i in indices]
        peaks = torch._foreach_max(torch._foreach_abs(weights))
        for i, zero in zip(indices, (torch.stack(peaks) == 0).tolist(), strict=True):
            out[i] = (math.nan, zero, math.nan)
    return out


class ParamNames:
    """The qualified names of a model's parameters and buffers, and of tensors made from them."""

    def __init__(self, model: nn.Module) -> None:
        self.own: dict[int, str] = {}
        """``id(tensor) -> name`` of the parameters and buffers (the first name of a shared one)."""
        self._tensors: dict[str, torch.Tensor] = {}
        # One walk of the modules (not one for parameters and one for buffers: a walk costs
        # ~10 ms at 15,000 modules); parameters first, as named_parameters() + named_buffers().
        modules = list(model.named_modules())
        for attribute in ("_parameters", "_buffers"):
            for prefix, module in modules:
                for key, tensor in getattr(module, attribute).items():
                    if tensor is None:
                        continue
                    name = f"{prefix}.{key}" if prefix else key
                    if self.own.setdefault(id(tensor), name) == name:
                        self._tensors[name] = tensor
        self._aliases: TensorMap[str] = TensorMap()

    def tensor(self, name: str) -> torch.Tensor | None:
        """The parameter or buffer ``name`` (a name :meth:`of` gave), None if none."""
        return self._tensors.get(name)

    def of(self, tensor: torch.Tensor) -> str | None:
        """The name of ``tensor`` if it is a parameter or buffer or was computed from one only."""
        name = self.own.get(id(tensor))
        return name if name is not None else self._aliases.get(tensor)

    def is_own(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is a parameter or buffer itself, not computed from one."""
        return id(tensor) in self.own

    def alias(self, tensors: Sequence[torch.Tensor], name: str) -> None:
        """Name tensors computed from the parameter ``name`` only.

        For example ``gamma.view(1, -1, 1, 1)``, or a standardized weight.
        """
        for tensor in tensors:
            self._aliases[tensor] = name


class BranchGains:
    """The gain terms of each tensor: the layer that produced it and the factors applied since."""

    def __init__(self, params: ParamNames) -> None:
        self._params = params
        self._terms: TensorMap[tuple[GainTerm, ...]] = TensorMap()

    def of(self, tensor: torch.Tensor) -> tuple[GainTerm, ...]:
        """The terms of ``tensor`` (empty if none)."""
        return self._terms.get(tensor) or ()

    def normalized(self, output: torch.Tensor, weight_name: str, weight: torch.Tensor) -> None:
        """``output`` was produced by a normalization layer with this weight."""
        self._terms[output] = (GainTerm("weight", weight_name, weight),)

    def derive(self, kind: OpKind, func: Callable[..., Any], args: Sequence[Any],
               kwargs: dict[str, Any], branch: torch.Tensor,
               outputs: Sequence[torch.Tensor]) -> None:
        """The terms of the outputs of an operation whose first labeled input is ``branch``."""
        terms: tuple[GainTerm, ...] | None = None  # None: the outputs have no terms
        if kind == "layout":
            terms = self._terms.get(branch)
        elif kind == "gain":
            term = self._factor(args, kwargs, branch)
            terms = (*self.of(branch), term) if term is not None else self.of(branch)
        elif func in _LAYERS and len(args) > 1 and isinstance(args[1], torch.Tensor):
            # The layer that produced the branch: its weight matters only if it is all zero
            # (e.g. an NF-ResNet's last conv, whose standardized weight has gain 0).
            weight = args[1]
            name = self._params.of(weight)
            if name is not None:
                terms = (GainTerm("weight", name, weight, not self._params.is_own(weight)),)
        for tensor in outputs:
            if terms is not None:
                self._terms[tensor] = terms
            elif tensor in self._terms:
                del self._terms[tensor]

    def _factor(self, args: Sequence[Any], kwargs: dict[str, Any],
                branch: torch.Tensor) -> GainTerm | None:
        """The factor multiplying (or dividing) ``branch``: a named tensor or a number."""
        for value in itertools.chain(args, kwargs.values()):
            if value is branch:
                continue
            if isinstance(value, torch.Tensor):
                name = self._params.of(value)
                return None if name is None else GainTerm("param", name, value)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return GainTerm("constant", "", float(value))
        return None
