"""Finding residual blocks: the interface every finder implements, and where blocks are numbered.

A finder taps the residual additions of one forward pass (:meth:`BlockFinder.tapping`): it hands
each addition's tensors to a :class:`Recorder` as the addition runs, and reports the addition to
:class:`FoundBlocks`, which numbers it as the next :class:`~sigprop.trace.Block`. Implementations:
:class:`sigprop.blocks.MarkedAdditions` (:class:`~sigprop.blocks.ResidualAdd` modules),
:class:`sigprop.discovery.Discovery` (any model) and :class:`sigprop.discovery.NamedBlocks`
(``blocks=[...]``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import nn

from sigprop._gains import GainTerm, describe_gains
from sigprop.trace import Block, Shortcut

__all__ = ["BlockFinder", "FoundBlocks", "NoResidualBlockError", "Recorder", "Report"]


class NoResidualBlockError(ValueError):
    """The model executed no residual addition that sigprop can tap."""


class Recorder(Protocol):
    """The measuring side of a forward pass (an accumulator, or nothing for ``find_blocks``)."""

    def operands(self, skip: torch.Tensor, residual: torch.Tensor, channels_last: bool) -> Any:
        """Called just before an addition runs (it may overwrite an operand in place)."""

    def output(self, operands: Any, output: torch.Tensor) -> Any:
        """Called just after, with what :meth:`operands` returned; returns a handle."""

    def commit(self, reduced: Any, block: Block) -> None:
        """Called once per residual block, in call order, with the handle of its addition and
        the block it was numbered as."""


@dataclass(frozen=True, slots=True)
class Report:
    """One addition reported to :meth:`FoundBlocks.add` (its arguments but the tensors)."""

    name: str
    shortcut: Shortcut
    channels_last: bool
    gains: tuple[GainTerm, ...]
    call: object | None
    branch: str | None
    site: object | None


class FoundBlocks:
    """The residual blocks of one forward pass, numbered in call order as finders report them.

    Args:
        recorder: measures each addition; told of each block as it is numbered.
        progress: called with the number of blocks found after each block.
    """

    def __init__(self, recorder: Recorder,
                 progress: Callable[[int], None] | None = None) -> None:
        self.recorder = recorder
        self._progress = progress
        self._blocks: list[Block] = []
        self._gains: list[tuple[GainTerm, ...]] = []  # per block, read after the pass
        self._size: tuple[int, int] | None = None  # (width, positions) of the last block's sum
        # Per block: the module call that owns it and the module its branch runs through.
        self._calls: list[tuple[object | None, str | None]] = []
        self._sites: list[object | None] = []  # per block: where it ran, for a plan

    @property
    def last(self) -> Block | None:
        """The last block found so far (its gain not described yet)."""
        return self._blocks[-1] if self._blocks else None

    def add(self, name: str, shortcut: Shortcut, channels_last: bool,
            gains: tuple[GainTerm, ...], reduced: Any, shape: tuple[int, ...], *,
            call: object | None = None, branch: str | None = None,
            site: object | None = None) -> None:
        """Number an addition, whose tensors ``reduced`` holds, as the next block.

        A new stage starts at a projection shortcut after the first block, and where the sum's
        width (channels) or number of positions differs from the last block's (``shape`` is
        without the batch): resolution or width changed between the blocks (ConvNeXt, Swin and
        MobileNet downsample outside them). A layout change alone, ``(H, W, C)`` to
        ``(H * W, C)`` or windows of tokens, is not a new stage.
        ``call`` identifies the module call that owns the addition and ``branch`` names the
        module its branch runs through: when one call owns several blocks, they are named after
        their branches (see :meth:`blocks`). ``site`` says where the addition ran, for a plan
        (:meth:`reports`).
        """
        last = self.last
        width = shape[-1] if channels_last else shape[0]
        size = (width, math.prod(shape) // max(width, 1))
        new_stage = shortcut is Shortcut.PROJECTION or size != self._size
        stage = 0 if last is None else last.stage + new_stage
        self._size = size
        block = Block(len(self._blocks), name, stage, shortcut, channels_last=channels_last)
        self._blocks.append(block)
        self._gains.append(gains)
        self._calls.append((call, branch))
        self._sites.append(site)
        self.recorder.commit(reduced, block)
        if self._progress is not None:
            self._progress(len(self._blocks))

    def reports(self) -> list[Report]:
        """What :meth:`add` was told of each block, in order (without its tensors)."""
        return [Report(b.name, b.shortcut, b.channels_last, gains, call, branch, site)
                for b, gains, (call, branch), site in zip(self._blocks, self._gains, self._calls,
                                                          self._sites, strict=True)]

    def blocks(self) -> list[Block]:
        """The blocks, each with the description of its gain (one device sync for all).

        Blocks owned by one module call are named after their branches (``layers.3.self_attn``,
        ``layers.3.mlp``), or numbered (``layers.3#0``, ``layers.3#1``) where branches do not
        tell them apart, so two blocks never share a name in one call.
        """
        described = describe_gains([(b.name, g) for b, g in zip(self._blocks, self._gains,
                                                                 strict=True)])
        names = _call_site_names([b.name for b in self._blocks], self._calls)
        # A block whose name and gain stay is kept: a copy per block costs ~1 ms at 512.
        return [b if gain is None and name == b.name else
                replace(b, name=name, gain=b.gain if gain is None else gain)
                for b, gain, name in zip(self._blocks, described, names, strict=True)]


def _call_site_names(names: list[str], calls: list[tuple[object | None, str | None]]
                     ) -> list[str]:
    """``names``, with the blocks of a call that owns several named apart."""
    groups: dict[object, list[int]] = {}  # calls compare by identity (plans: by number)
    for index, (call, _) in enumerate(calls):
        if call is not None:
            groups.setdefault(call, []).append(index)
    named = list(names)
    for indices in groups.values():
        if len(indices) < 2:
            continue
        branches = [calls[i][1] for i in indices]
        distinct = None not in branches and len(set(branches)) == len(branches)
        for k, i in enumerate(indices):
            named[i] = str(branches[k]) if distinct else f"{names[i]}#{k}"
    return named


class BlockFinder(ABC):
    """Finds the residual additions of a model while it runs one forward pass.

    Args:
        model: the model whose additions are found.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @abstractmethod
    def tapping(self, found: FoundBlocks) -> AbstractContextManager[None]:
        """Hooks that report every residual addition of the next forward pass to ``found``.

        Each addition's operands go to ``found.recorder`` just before it runs and its sum just
        after. All hooks are removed on exit, also when the forward raises.
        """

    def owners(self) -> Sequence[str] | None:
        """Registered names of the modules that may own a block (``""`` for the model itself);
        None: any module (a projection block's gradient needs its owner's input)."""
        return None

    def check(self, blocks: Sequence[Block]) -> None:
        """Raise :class:`NoResidualBlockError` unless ``blocks`` (of one pass) are plausible."""
        if not blocks:
            raise NoResidualBlockError(
                f"no residual block found in {type(self.model).__name__}: no addition of a "
                "tensor and a longer computation on it was executed (see docs/discovery.md); "
                "name the block modules with blocks=[...] or mark the additions with "
                "sigprop.ResidualAdd"
            )
