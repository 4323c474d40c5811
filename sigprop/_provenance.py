"""Provenance labels: how each tensor of a forward pass derives from the inputs of module calls.

Every tensor argument of a module call is a *root* of that call. Each result of a torch
operation gets a *label*: for every root it derives from, an :class:`Entry` with the number of
operations on the path from that root, the parametrized layers on it, and whether the path left
the call that owns the root. An addition of two tensors derived from the same root by paths of
different lengths is residual (:meth:`Provenance.owner`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from sigprop._tensor_map import TensorMap
from sigprop.trace import Shortcut

__all__ = ["SHORT_PATH", "Call", "Entry", "Label", "Provenance"]

SHORT_PATH = 6
"""Most operations between a block input and a projection skip (e.g. BN, ReLU, pool, conv)."""

_UNRELATED = 1 << 30  # the distance of a tensor that does not derive from a root


@dataclass(frozen=True, slots=True)
class Entry:
    """How a tensor derives from one root: path length, parametrized layers on it, left the call."""

    dist: int
    weighted: int
    escaped: bool


Label = dict[int, Entry]
"""Root -> how a tensor derives from it."""


@dataclass(eq=False, slots=True)
class Call:
    """One running (or finished) call of a module, and the roots it owns."""

    serial: int
    name: str
    module: nn.Module
    active: bool = True
    roots: list[int] = field(default_factory=list)


class Provenance:
    """The labels of the tensors of one forward pass (keeping no tensor alive)."""

    def __init__(self) -> None:
        self._labels: TensorMap[Label] = TensorMap()
        self._roots = itertools.count()
        self._root_call: dict[int, Call] = {}

    def label(self, tensor: torch.Tensor) -> Label | None:
        """The label of ``tensor``; None if it derives from no root."""
        return self._labels.get(tensor)

    def mark_root(self, call: Call, tensor: torch.Tensor) -> None:
        """Make ``tensor`` a new root of ``call`` (it keeps the roots it derives from)."""
        root = next(self._roots)
        self._root_call[root] = call
        call.roots.append(root)
        label = dict(self._labels.get(tensor) or {})
        label[root] = Entry(0, 0, False)
        self._labels[tensor] = label

    def derive(self, labels: Sequence[Label], outputs: Sequence[torch.Tensor], step: int,
               weighted: int, stays: bool) -> None:
        """Label the outputs of an operation on tensors with ``labels``.

        Args:
            labels: the labels of its labeled inputs, in argument order.
            outputs: its tensor outputs.
            step: how much it lengthens a path (0 for a layout-only operation).
            weighted: 1 if it runs a parametrized layer, else 0.
            stays: it does not take a path out of a call even after the call finished (a
                layout change, or a gain applied to a block's output by its parent).

        From each root, the shortest path over the inputs is kept. Entries of finished calls
        are dropped once they left the call and are longer than :data:`SHORT_PATH`, so labels
        stay small.
        """
        merged: Label = {}
        for label in labels:
            for root, entry in label.items():
                old = merged.get(root)
                if old is None or entry.dist < old.dist:
                    merged[root] = entry
        derived: Label = {}
        for root, entry in merged.items():
            call = self._root_call[root]
            new = Entry(entry.dist + step, entry.weighted + weighted,
                        entry.escaped or not (call.active or stays))
            if call.active or not new.escaped or new.dist <= SHORT_PATH:
                derived[root] = new
        for tensor in outputs:
            self._labels[tensor] = derived

    def owner(self, label_a: Label, label_b: Label) -> tuple[Call, bool, Shortcut] | None:
        """The call owning the addition of two labeled operands, or None if not residual.

        Returns the call, whether ``a`` is the skip, and the shortcut. The skip derives from a
        root of the call by a strictly shorter path than the residual branch, of at most
        :data:`SHORT_PATH` operations; the branch runs more parametrized layers and stays
        inside the call. Preference, most preferred first: an identity skip over a projection;
        then a finished call that is an item of a container (``blocks.3``: the
        ``x = x + block(x)`` loop) over the running calls; then the innermost running call;
        then the outermost finished call.
        """
        best: tuple[tuple[int, int, int], Call, bool, Shortcut] | None = None
        for root in label_a.keys() & label_b.keys():
            ea, eb = label_a[root], label_b[root]
            if ea.dist == eb.dist:
                continue
            a_is_skip = ea.dist < eb.dist
            skip, res = (ea, eb) if a_is_skip else (eb, ea)
            if skip.dist > SHORT_PATH or res.weighted <= skip.weighted or res.escaped:
                continue
            call = self._root_call[root]
            projection = skip.dist > 0
            indexed = call.name.rpartition(".")[2].isdigit()
            if call.active:
                rank = (int(projection), 1, -call.serial)
            else:
                rank = (int(projection), 0 if indexed else 2, call.serial)
            if best is None or rank < best[0]:
                shortcut = Shortcut.PROJECTION if projection else Shortcut.IDENTITY
                best = (rank, call, a_is_skip, shortcut)
        return None if best is None else best[1:]

    @staticmethod
    def distance(label: Label, call: Call) -> int:
        """Operations on the shortest path from a root of ``call`` (huge if none)."""
        return min((label[r].dist for r in call.roots if r in label), default=_UNRELATED)
