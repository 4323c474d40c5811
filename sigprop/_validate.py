"""Argument checks shared by the public functions: one message style, raised before any work."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

E = TypeVar("E", bound=StrEnum)


def parse_choice(enum: type[E], value: E | str, name: str) -> E:
    """``value`` as a member of ``enum``, or a ValueError listing the choices."""
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(repr(e.value) for e in enum)
        raise ValueError(f"unknown {name} {value!r}: choose one of {choices}") from None


def check_int(name: str, value: int, minimum: int, unit: str) -> None:
    """Raise unless ``value`` is an integer >= ``minimum`` (``unit`` names what it counts)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum} {unit}, got {value}")


def resolve_device(device: str) -> torch.device:
    """``device`` as a torch.device that exists on this machine, or a ValueError saying why.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    import torch  # here: the command line's choices import this module without torch

    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} is not available: this machine has no CUDA GPU; use 'cpu'"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device {device!r} does not exist: this machine has {count} CUDA device(s), "
                f"use 'cuda:0'..'cuda:{count - 1}'"
            )
    elif resolved.type != "cpu":
        raise ValueError(f"unsupported device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")
    return resolved
