"""The signature of every torch operation of a forward pass: what ran, on which tensors.

A :class:`Tape` gives each operation a signature: the function and, for each argument, where a
tensor comes from (the model's input, a parameter or buffer by name, or the result of an earlier
operation, numbered in the order they were produced) with its shape, and any other argument as
it is. Discovery writes the signatures of a pass (:mod:`sigprop.planning` keeps them in a plan);
a later pass that produces the same signatures, operation by operation, ran the same operations
on the same data flow, so the additions discovery found are where it found them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sigprop._gains import ParamNames
from sigprop._tensor_map import TensorMap

__all__ = ["Signature", "Site", "Tape", "tensors"]

Signature = tuple[Any, ...]
"""``(func, source of each argument..., (keyword, source)...)``."""

_PLAIN = (int, float, bool, str, type(None), slice, type(Ellipsis), torch.dtype, torch.device,
          torch.memory_format, torch.layout)


@dataclass(frozen=True, slots=True)
class Site:
    """Where a residual addition ran in the operations of a pass.

    Attributes:
        op: the index of the addition among the pass's operations.
        skip_first: its first operand is the skip.
        commit: the index of the operation after which the block was numbered (the addition
            itself, or with ``blocks=[...]`` the last operation of the named module's call).
    """

    op: int
    skip_first: bool
    commit: int


class Tape:
    """Signatures of the operations of one forward pass, keeping no tensor alive.

    Args:
        params: the names of the model's parameters and buffers.

    Attributes:
        signatures: the signatures written so far (by discovery).
        index: the number of operations signed so far.
        produced: the number of tensors produced so far (the number of the next one).
    """

    __slots__ = ("_names", "_sources", "index", "params", "produced", "signatures")

    def __init__(self, params: ParamNames) -> None:
        self.params = params
        self._names = params.own
        self.signatures: list[Signature] = []
        self._sources: TensorMap[int] = TensorMap()  # tensor -> its source number
        self.index = 0
        self.produced = 0

    def inputs(self, values: Iterable[Any]) -> None:
        """The model's inputs, in argument order: its tensors are numbered -1, -2, ..."""
        k = 0
        for x in values:
            if isinstance(x, torch.Tensor):
                k += 1
                self._sources[x] = -k

    def signature(self, func: Callable[..., Any], args: Sequence[Any],
                  kwargs: dict[str, Any]) -> Signature:
        """The signature of ``func(*args, **kwargs)``."""
        source = self.source
        if kwargs:
            return (func, *map(source, args), *[(k, source(v)) for k, v in kwargs.items()])
        return (func, *map(source, args))

    def source(self, value: Any) -> Any:
        """Where ``value`` comes from: a tensor's name or number and shape; a plain value."""
        if isinstance(value, torch.Tensor):
            name = self._names.get(id(value))
            if name is not None:
                return name
            return self._sources.get(value), value.shape
        if isinstance(value, list | tuple):
            return tuple(map(self.source, value))
        return value if isinstance(value, _PLAIN) else type(value)

    def number(self, tensor: torch.Tensor) -> int | None:
        """The source number of ``tensor`` (input or result of an operation), None if none."""
        return self._sources.get(tensor)

    def produce(self, out: Any) -> int:
        """Number the tensors an operation returned; returns the number of the first."""
        first = self.produced
        for tensor in tensors(out):
            self._sources[tensor] = self.produced
            self.produced += 1
        return first


def tensors(out: Any) -> list[torch.Tensor]:
    """The tensors an operation returned (itself, or the items of a list or tuple)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, list | tuple):
        return [t for t in out if isinstance(t, torch.Tensor)]
    return []
