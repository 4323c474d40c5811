"""Test helpers: tiny models with known answers, inputs with known moments, and the one snapshot
of a model's (and torch's global) state that every path must leave unchanged."""

from __future__ import annotations

import pickle
import random
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


class ProjectedScaledBlock(ScaledBlock):
    """:class:`ScaledBlock` with a projection shortcut ``p * x`` (a 1x1 convolution, weight p*I),
    marked as such: a new stage, whose shortcut and branch each read ``x`` in a node of their own.

    Residual = c x, skip = p x, output = (p + c) x.
    """

    def __init__(self, channels: int, c: float, p: float = 1.0):
        super().__init__(channels, c)
        self.shortcut = nn.Conv2d(channels, channels, 1, bias=False)
        with torch.no_grad():
            self.shortcut.weight.copy_(p * torch.eye(channels).view(channels, channels, 1, 1))
        self.add = sigprop.ResidualAdd(shortcut="projection")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.add(self.shortcut(x), self.branch(x))
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


def _hooks(holder: Any) -> dict[str, Any]:
    """Every hook dict (or flag) of a module, or of ``torch.nn.modules.module`` (global hooks),
    as plain lists of keys and the hooks' identities."""
    found: dict[str, Any] = {}
    for name, value in vars(holder).items():
        if "hook" in name:
            found[name] = [(k, id(v)) for k, v in value.items()] if isinstance(value, dict) \
                else value
    return found


def global_state() -> dict[str, Any]:
    """torch's global state that sigprop must leave unchanged: global module hooks, the RNG
    states (torch, random, numpy), grad mode, the function-mode stack, the thread count."""
    from torch.nn.modules import module as torch_module
    from torch.overrides import _get_current_function_mode_stack

    return {
        "global_hooks": _hooks(torch_module),
        "rng": (torch.get_rng_state(), random.getstate(), pickle.dumps(np.random.get_state())),
        "grad_mode": (torch.is_grad_enabled(), torch.is_inference_mode_enabled()),
        "function_modes": list(
            _get_current_function_mode_stack()),  # type: ignore[no-untyped-call]
        "threads": torch.get_num_threads(),
    }


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything measuring must leave unchanged: parameters and buffers (bitwise), gradients,
    every module's ``training`` and plain flags, ``requires_grad``, hooks of every kind (module,
    global and tensor hooks), the global RNG states, grad mode and the function-mode stack."""
    parameters = dict(model.named_parameters(remove_duplicate=False))
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "grads": {k: None if p.grad is None else p.grad.clone() for k, p in parameters.items()},
        "requires_grad": {k: p.requires_grad for k, p in parameters.items()},
        "tensor_hooks": {k: None if p._backward_hooks is None else list(p._backward_hooks)
                         for k, p in parameters.items()},
        "training": [m.training for m in model.modules()],
        "flags": [{k: v for k, v in vars(m).items() if isinstance(v, bool | int | float | str)
                   or v is None} for m in model.modules()],
        "hooks": [_hooks(m) for m in model.modules()],
        **global_state(),
    }


def assert_unchanged(model: nn.Module | None, before: dict[str, Any]) -> None:
    """Fails naming the first part of :func:`snapshot` (or :func:`global_state`, without a
    model) that changed."""
    after = global_state() if model is None else snapshot(model)
    assert after.keys() == before.keys()
    for part in before:
        if part in ("state", "grads"):
            assert after[part].keys() == before[part].keys(), part
            for key, value in before[part].items():
                changed = after[part][key]
                same = (value is None and changed is None) or (
                    value is not None and changed is not None and torch.equal(changed, value))
                assert same, f"{part}: {key}"
        elif part == "rng":
            torch_rng, python_rng, numpy_rng = after[part]
            assert torch.equal(torch_rng, before[part][0]), "torch RNG state"
            assert python_rng == before[part][1], "random's state"
            assert numpy_rng == before[part][2], "numpy's RNG state"
        else:
            assert after[part] == before[part], part


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
