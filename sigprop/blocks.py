"""The marked residual addition ``skip + residual``."""

from __future__ import annotations

import torch
from torch import nn

from sigprop.trace import Shortcut

__all__ = ["ResidualAdd", "marked_additions"]


class ResidualAdd(nn.Module):
    """The addition ``skip + residual`` of a residual block, marked so sigprop can tap it.

    Every block of :func:`sigprop.models.resnet` ends with one. In your own model, replace
    ``out = identity + branch`` by ``out = self.add(identity, branch)`` with
    ``self.add = ResidualAdd(shortcut=...)`` to tell sigprop exactly where the skip and the
    residual operands are. It computes the plain sum, so the model's output does not change.

    Args:
        shortcut: ``identity`` if the skip operand is the block input, ``projection`` if it is a
            transformation of it (e.g. a strided 1x1 convolution at a stage transition).
        channels_last: True for ``(N, ..., C)`` activations such as transformer tokens.
        gain: name, relative to the module that owns this addition, of a parameter or buffer
            that multiplies the residual branch just before it (e.g. ``"gain.alpha"``), so the
            report can say that a branch is ~0 because of it.

    >>> add = ResidualAdd()
    >>> add(torch.ones(1, 2), torch.ones(1, 2))
    tensor([[2., 2.]])
    """

    def __init__(self, shortcut: Shortcut | str = Shortcut.IDENTITY, channels_last: bool = False,
                 gain: str | None = None):
        super().__init__()
        self.shortcut = Shortcut(shortcut)
        self.channels_last = channels_last
        self.gain = gain

    def forward(self, skip: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return skip + residual

    def extra_repr(self) -> str:
        gain = f", gain={self.gain}" if self.gain else ""
        return f"shortcut={self.shortcut.value}, channels_last={self.channels_last}{gain}"


def marked_additions(model: nn.Module) -> list[tuple[str, nn.Module, ResidualAdd]]:
    """Every :class:`ResidualAdd` of ``model`` with the name and module of its owning block.

    An addition owned by the model itself is named after the model's class.
    """
    found = []
    for name, module in model.named_modules():
        if isinstance(module, ResidualAdd):
            owner = name.rpartition(".")[0]
            found.append((owner or type(model).__name__, model.get_submodule(owner), module))
    return found
