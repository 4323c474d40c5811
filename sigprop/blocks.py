"""The marked residual addition ``skip + residual``, and the finder of marked additions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sigprop._blame import runs_model_code
from sigprop._gains import GainTerm
from sigprop._modules import Modules
from sigprop.finding import BlockFinder, FoundBlocks
from sigprop.trace import Shortcut

__all__ = ["MarkedAdditions", "ResidualAdd"]


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

    @runs_model_code  # a shape mismatch here is the model's error
    def forward(self, skip: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return skip + residual

    def extra_repr(self) -> str:
        gain = f", gain={self.gain}" if self.gain else ""
        return f"shortcut={self.shortcut.value}, channels_last={self.channels_last}{gain}"


@dataclass(frozen=True, slots=True)
class _Mark:
    """One :class:`ResidualAdd` of a model: the block it defines, known before the pass."""

    add: ResidualAdd
    owner: str  # registered name of the module owning the addition ("" for the model)
    name: str  # of the block: the owner's, or the model's class name
    gains: tuple[GainTerm, ...]


class MarkedAdditions(BlockFinder):
    """Blocks defined by the :class:`ResidualAdd` modules of a model: one per call of each.

    Build it with :meth:`of`, which checks every declared gain before any forward pass.
    """

    def __init__(self, model: nn.Module, marks: list[_Mark]) -> None:
        super().__init__(model)
        self._marks = marks

    @classmethod
    def of(cls, modules: Modules) -> MarkedAdditions | None:
        """The finder of the model's marked additions, or None if it has none.

        An addition owned by the model itself is named after the model's class.

        Raises:
            ValueError: a ``ResidualAdd(gain=...)`` names no parameter or buffer of its block.
        """
        model = modules.model
        marks = []
        for name, module in modules.named:
            if isinstance(module, ResidualAdd):
                owner = name.rpartition(".")[0]
                gains = _declared_gain(modules.by_name[owner], module)
                marks.append(_Mark(module, owner, owner or type(model).__name__, gains))
        return cls(model, marks) if marks else None

    def owners(self) -> list[str]:
        """The owners of the additions declared ``projection`` (an identity's ``x`` is its
        skip operand)."""
        return [m.owner for m in self._marks if m.add.shortcut is Shortcut.PROJECTION]

    @contextmanager
    def tapping(self, found: FoundBlocks) -> Iterator[None]:
        with ExitStack() as stack:
            for mark in self._marks:
                before, after = _hooks(found, mark)
                stack.enter_context(mark.add.register_forward_pre_hook(before))
                stack.enter_context(mark.add.register_forward_hook(after))
            yield


def _declared_gain(owner: nn.Module, add: ResidualAdd) -> tuple[GainTerm, ...]:
    """The gain a :class:`ResidualAdd` names, as a term for the gain description."""
    if add.gain is None:
        return ()
    tensor: torch.Tensor
    try:
        tensor = owner.get_parameter(add.gain)
    except AttributeError:
        try:
            tensor = owner.get_buffer(add.gain)
        except AttributeError:
            raise ValueError(
                f"ResidualAdd(gain={add.gain!r}) names no parameter or buffer of its block "
                f"{type(owner).__name__}: give the name relative to the block, e.g. 'gain.alpha'"
            ) from None
    return (GainTerm("param", add.gain, tensor),)


def _hooks(found: FoundBlocks, mark: _Mark) -> tuple[Callable[..., None], Callable[..., None]]:
    """Forward pre-hook and hook of a :class:`ResidualAdd`: the operands are reduced before the
    addition, while it is about to read them anyway, and the sum right after it wrote it."""
    running: list[Any] = []  # operands of the calls in progress (a stack, in case of nesting)

    def before(add: nn.Module, args: tuple[Any, ...]) -> None:
        running.append(found.recorder.operands(args[0], args[1], mark.add.channels_last))

    def after(add: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        reduced = found.recorder.output(running.pop(), output)
        found.add(mark.name, mark.add.shortcut, mark.add.channels_last, mark.gains, reduced,
                  tuple(output.shape[1:]))

    return before, after
