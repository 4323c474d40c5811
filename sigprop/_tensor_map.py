"""A map from tensors to values by identity that does not keep the tensors alive."""

from __future__ import annotations

from typing import Generic, TypeVar, cast

import torch
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["TensorMap"]

V = TypeVar("V")


class TensorMap(Generic[V]):
    """Tensor -> value by identity, without keeping the tensor (an activation) alive."""

    def __init__(self) -> None:
        self._map = WeakIdKeyDictionary()

    def get(self, tensor: torch.Tensor) -> V | None:
        """The value of ``tensor``, or None."""
        value = self._map.get(tensor)  # type: ignore[no-untyped-call]
        return cast("V | None", value)

    def __setitem__(self, tensor: torch.Tensor, value: V) -> None:
        self._map[tensor] = value

    def __contains__(self, tensor: torch.Tensor) -> bool:
        return tensor in self._map

    def __delitem__(self, tensor: torch.Tensor) -> None:
        del self._map[tensor]
