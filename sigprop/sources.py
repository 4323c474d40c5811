"""Real architectures to measure: torchvision and timm models, built without weights.

torchvision and timm are optional (``pip install 'sigprop[compat]'``) and imported on use.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["Builder", "seeded", "timm_builder", "torchvision_builder"]

Builder = Callable[[int], tuple[nn.Module, dict[str, Any]]]


def seeded(seed: int, make: Callable[[], Any]) -> Any:
    """Call ``make`` with the torch RNG seeded, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def _unknown(kind: str, name: str, known: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown {kind} model {name!r}{hint}")


def torchvision_builder(name: str) -> Builder:
    """A builder of the torchvision classification model ``name`` (no weights)."""
    try:
        import torchvision
    except ImportError as e:
        raise ValueError("torchvision is not installed: pip install 'sigprop[compat]'") from e
    known = sorted(torchvision.models.list_models(module=torchvision.models))
    if name not in known:
        raise _unknown("torchvision classification", name, known)

    def build(seed: int) -> tuple[nn.Module, dict[str, Any]]:
        model = seeded(seed, lambda: torchvision.models.get_model(name, weights=None))
        return model, {"source": "torchvision", "name": name}

    return build


def timm_builder(name: str) -> Builder:
    """A builder of the timm model ``name`` (``pretrained=False``)."""
    try:
        import timm
    except ImportError as e:
        raise ValueError("timm is not installed: pip install 'sigprop[compat]'") from e
    if not timm.is_model(name):
        raise _unknown("timm", name, sorted(timm.list_models()))

    def build(seed: int) -> tuple[nn.Module, dict[str, Any]]:
        model = seeded(seed, lambda: timm.create_model(name, pretrained=False))
        return model, {"source": "timm", "name": name}

    return build
