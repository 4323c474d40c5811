"""Provenance labels: how each tensor of a forward pass derives from the inputs of module calls.

Every tensor argument of a module call is a *root* of that call. Each result of a torch
operation gets a *label*: for every root it derives from, an :class:`Entry` with the number of
operations on the shortest path from that root, the most parametrized layers on any path from
it, and whether the path left the call that owns the root. An addition of two tensors derived
from the same root by paths of different lengths is residual (:meth:`Provenance.owner`).
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

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
    """How a tensor derives from one root.

    Attributes:
        dist: operations on the shortest path from the root.
        weighted: parametrized layers on the path from the root that runs the most of them (a
            branch made of inner residual blocks is short through their skips, yet runs layers).
        escaped: the path left the call that owns the root after that call returned.
        crossed: every path from the root runs through the sum of a residual block.
    """

    dist: int
    weighted: int
    escaped: bool
    crossed: bool = False


Label = dict[int, Entry]
"""Root -> how a tensor derives from it."""


@dataclass(eq=False, slots=True)
class Call:
    """One running (or finished) call of a module, and the roots it owns."""

    serial: int
    name: str
    module: nn.Module
    parent: Call | None = None  # the call running when this one started
    active: bool = True
    roots: list[int] = field(default_factory=list)
    children: list[Call] = field(default_factory=list)  # calls started while it ran on top
    outputs: frozenset[int] = frozenset()  # ids of the tensors it returned, once finished


class Provenance:
    """The labels of the tensors of one forward pass (keeping no tensor alive)."""

    def __init__(self) -> None:
        self._labels: TensorMap[Label] = TensorMap()
        self._roots = itertools.count()
        self._root_call: dict[int, Call] = {}
        self._root_tensor: dict[int, weakref.ref[torch.Tensor]] = {}
        self._root_since: dict[int, int] = {}  # serial of the first call that may use the root

    def label(self, tensor: torch.Tensor) -> Label | None:
        """The label of ``tensor``; None if it derives from no root."""
        return self._labels.get(tensor)

    def mark_root(self, call: Call, tensor: torch.Tensor, since: int) -> None:
        """Make ``tensor`` a new root of ``call`` (it keeps the roots it derives from).

        ``since``: the serial of the first module call that may take part in a branch from it.
        """
        root = next(self._roots)
        self._root_call[root] = call
        self._root_tensor[root] = weakref.ref(tensor)
        self._root_since[root] = since
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

        From each root, the shortest path and the most parametrized layers over the inputs are
        kept. Entries of finished calls are dropped once they left the call and are longer than
        :data:`SHORT_PATH`, so labels stay small, unless the root tensor is still alive while
        the call's parent runs: it may still be added to a branch it started (a post-LN FFN).
        """
        merged: Label = {}
        for label in labels:
            for root, entry in label.items():
                old = merged.get(root)
                if old is None:
                    merged[root] = entry
                elif entry != old:
                    merged[root] = Entry(min(old.dist, entry.dist),
                                         max(old.weighted, entry.weighted),
                                         old.escaped if old.dist <= entry.dist else entry.escaped,
                                         old.crossed and entry.crossed)
        derived: Label = {}
        for root, entry in merged.items():
            call = self._root_call[root]
            new = Entry(entry.dist + step, entry.weighted + weighted,
                        entry.escaped or not (call.active or stays), entry.crossed)
            if (call.active or not new.escaped or new.dist <= SHORT_PATH
                    or self._started_in_running_parent(root, call)):
                derived[root] = new
        for tensor in outputs:
            self._labels[tensor] = derived

    def crossed(self, tensor: torch.Tensor) -> None:
        """``tensor`` is the sum of a residual block: paths through it cross that block."""
        label = self._labels.get(tensor)
        if label is not None:
            self._labels[tensor] = {root: replace(entry, crossed=True)
                                    for root, entry in label.items()}

    def owner(self, label_a: Label, label_b: Label
              ) -> tuple[Call, bool, Shortcut, int] | None:
        """The call owning the addition of two labeled operands, or None if not residual.

        Returns the call, whether ``a`` is the skip, the shortcut, and the serial of the first
        module call that may be on the branch (the ``since`` of the skip's root). The skip
        derives from a root of the call by a strictly shorter path than the residual branch, of
        at most :data:`SHORT_PATH` operations; the branch runs more parametrized layers and stays
        inside the call. A skip that is the very tensor a finished call started from, added to
        a branch through that call inside the still running parent, is an identity shortcut of
        the parent (``y + linear2(act(linear1(y)))`` in a layer's forward), unless every path of
        the branch runs through the sum of a residual block (T5's position bias, passed from
        layer to layer, is added to attention scores computed from a later layer's input).
        Preference, most preferred first: an identity skip over a projection; then a finished
        call that is an item of a container (``blocks.3``: the ``x = x + block(x)`` loop) over
        the running calls; then the innermost running call; then the outermost finished call;
        then the root closest to the skip.
        """
        best: tuple[tuple[int, int, int, int], Call, bool, Shortcut, int] | None = None
        for root in label_a.keys() & label_b.keys():
            ea, eb = label_a[root], label_b[root]
            if ea.dist == eb.dist:
                continue
            a_is_skip = ea.dist < eb.dist
            skip, res = (ea, eb) if a_is_skip else (eb, ea)
            if skip.dist > SHORT_PATH or res.weighted <= skip.weighted:
                continue
            call = self._root_call[root]
            if res.escaped:
                parent = call.parent
                if skip.dist > 0 or res.crossed or parent is None or not parent.active:
                    continue
                call = parent
            projection = skip.dist > 0
            indexed = call.name.rpartition(".")[2].isdigit()
            if call.active:
                rank = (int(projection), 1, -call.serial, skip.dist)
            else:
                rank = (int(projection), 0 if indexed else 2, call.serial, skip.dist)
            if best is None or rank < best[0]:
                shortcut = Shortcut.PROJECTION if projection else Shortcut.IDENTITY
                best = (rank, call, a_is_skip, shortcut, self._root_since[root])
        return None if best is None else best[1:]

    def _started_in_running_parent(self, root: int, call: Call) -> bool:
        """Whether the root tensor is alive and the parent of its finished call still runs."""
        parent = call.parent
        return parent is not None and parent.active and self._root_tensor[root]() is not None

    @staticmethod
    def distance(label: Label, call: Call) -> int:
        """Operations on the shortest path from a root of ``call`` (huge if none)."""
        return min((label[r].dist for r in call.roots if r in label), default=_UNRELATED)
