"""Test helpers: tiny models with known answers, inputs with known moments, state snapshots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

import sigprop


class ScaledBlock(nn.Module):
    """A residual block whose branch is the linear map ``c * x`` (a 1x1 conv with weight c*I).

    Its statistics are known in closed form: residual = c * skip, output = (1 + c) * skip, so
    var and sq_mean scale by c**2 and (1 + c)**2.
    """

    def __init__(self, channels: int, c: float):
        super().__init__()
        self.branch = nn.Conv2d(channels, channels, 1, bias=False)
        with torch.no_grad():
            self.branch.weight.copy_(c * torch.eye(channels).view(channels, channels, 1, 1))
        self.add = sigprop.ResidualAdd()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.add(x, self.branch(x))
        return out


def offset_input(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float64
                 ) -> torch.Tensor:
    """Gaussian data with a different mean and scale per channel (dimension 1)."""
    g = torch.Generator().manual_seed(seed)
    channels = shape[1]
    view = (1, channels) + (1,) * (len(shape) - 2)
    mean = torch.linspace(-2.0, 3.0, channels, dtype=dtype).view(view)
    scale = torch.linspace(0.5, 2.0, channels, dtype=dtype).view(view)
    return torch.randn(shape, generator=g, dtype=dtype) * scale + mean


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything measuring must leave unchanged: tensors bitwise, modes, flags and hooks."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "training": [m.training for m in model.modules()],
        "track": [getattr(m, "track_running_stats", None) for m in model.modules()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()
        ],
        "requires_grad": [p.requires_grad for p in model.parameters()],
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["track"] == before["track"]
    assert after["hooks"] == before["hooks"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key


def synthetic_trace(skip_m2: Sequence[Sequence[float] | np.ndarray],
                    residual_m2: Sequence[Sequence[float] | np.ndarray],
                    model: dict[str, Any] | None = None, stage_starts: Sequence[int] = (0,)
                    ) -> sigprop.Trace:
    """A hand-built trace: one run per row, second moments put in ``var`` (``sq_mean`` 0)."""
    runs = []
    for seed, (skips, residuals) in enumerate(zip(skip_m2, residual_m2, strict=True)):
        blocks = []
        for index, (s, r) in enumerate(zip(skips, residuals, strict=True)):
            stage = sum(1 for start in stage_starts if start <= index) - 1
            shortcut = "projection" if index in stage_starts and index > 0 else "identity"
            blocks.append(sigprop.BlockStats(
                index, f"blocks.{index}", stage, sigprop.Shortcut(shortcut),
                sigprop.Moments(s, 0.0), sigprop.Moments(r, 0.0), sigprop.Moments(s + r, 0.0),
                0.0))
        runs.append(sigprop.Run(seed, tuple(blocks)))
    return sigprop.Trace(model or {"name": "synthetic"}, sigprop.InputSpec("tensor", (1,), None),
                         "train", tuple(runs))
