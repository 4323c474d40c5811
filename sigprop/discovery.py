"""Find the residual additions of any eager PyTorch model during one forward pass.

How it works (details and limits in ``docs/discovery.md``):

* Forward pre/post hooks on every submodule keep the stack of running module *calls*. The tensor
  arguments of each call become *roots* of that call.
* A :class:`~torch.overrides.TorchFunctionMode` sees every torch operation of the forward. Each
  result gets a small *label*: for every root it derives from, the number of operations on the
  path from that root (``dist``), how many parametrized layers it ran (``weighted``), and
  whether it left the call that owns the root (``escaped``; multiplying by a gain does not count).
  Labels of finished calls are dropped once long and escaped, so they stay small.
* An addition of two floating tensors of the same shape is residual when both operands derive
  from the same root, one by a strictly shorter path than the other: the shorter one is the
  *skip* (``identity`` if it is the root itself, ``projection`` if it is at most
  :data:`SHORT_PATH` operations away), the longer one the *residual* branch, which must run more
  parametrized layers than the skip path and stay inside the root's call. The owner of the
  addition is the module of that call (:func:`_choose` orders the calls when several qualify).

The hooks and the mode only update small dictionaries; they keep no activations and never
synchronize with the device. The operands of a residual addition are handed to the recorder
just before it runs (``out += identity`` overwrites one of them), its sum just after.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from sigprop._gains import GainTerm
from sigprop.finding import BlockFinder, FoundBlocks, NoResidualBlockError
from sigprop.trace import Block, Shortcut

__all__ = ["SHORT_PATH", "Discovery", "NamedBlocks"]

SHORT_PATH = 6
"""Most operations between a block input and a projection skip (e.g. BN, ReLU, pool, conv)."""

V = TypeVar("V")
_T = torch.Tensor
_ADD = frozenset({torch.add, _T.add, _T.add_, _T.__add__, _T.__radd__, _T.__iadd__})
_GAIN_OPS = frozenset({torch.mul, _T.mul, _T.mul_, _T.__mul__, _T.__rmul__, _T.__imul__,
                       torch.div, _T.div, _T.div_, _T.__truediv__, _T.__itruediv__})
# Operations that only change the layout or the dtype: they do not lengthen a path, so
# ``x + f(x.reshape(...)).reshape(...)``-style blocks (Swin, ConvNeXt permutes) stay identities.
_LAYOUT_OPS = frozenset({
    _T.view, _T.view_as, _T.reshape, _T.reshape_as, _T.permute, _T.contiguous, _T.flatten,
    _T.unflatten, _T.transpose, _T.squeeze, _T.unsqueeze, _T.to, _T.float, _T.clone,
    torch.reshape, torch.permute, torch.flatten, torch.transpose, torch.squeeze, torch.unsqueeze,
    torch.clone,
})
_NORMS = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)
_WEIGHTED_OPS = frozenset({torch.conv1d, torch.conv2d, torch.conv3d, nn.functional.linear})
_CHANNELS_FIRST = (nn.modules.conv._ConvNd, _BatchNorm, nn.GroupNorm)


class _TensorMap(Generic[V]):
    """Tensor -> value by identity, without keeping the tensor (an activation) alive."""

    def __init__(self) -> None:
        self._map = WeakIdKeyDictionary()

    def get(self, tensor: torch.Tensor) -> V | None:
        value = self._map.get(tensor)  # type: ignore[no-untyped-call]
        return cast("V | None", value)

    def __setitem__(self, tensor: torch.Tensor, value: V) -> None:
        self._map[tensor] = value

    def __contains__(self, tensor: torch.Tensor) -> bool:
        return tensor in self._map

    def __delitem__(self, tensor: torch.Tensor) -> None:
        del self._map[tensor]


@dataclass(frozen=True, slots=True)
class _Entry:
    """How a tensor derives from one root: path length, parametrized layers on it, left the call."""

    dist: int
    weighted: int
    escaped: bool


@dataclass(eq=False, slots=True)
class _Call:
    """One running (or finished) call of a module."""

    serial: int
    name: str
    module: nn.Module
    active: bool = True
    roots: list[int] = field(default_factory=list)
    pending: list[Any] | None = None  # override mode: the last candidate addition, reduced


class _Engine:
    """The hooks and the function mode of one forward pass, and what they track.

    Args:
        model: the model whose submodules are hooked.
        found: told of each residual addition (its tensors go to ``found.recorder`` at once).
        names: override: qualified names of the modules whose forward returns
            ``skip + residual``; the last addition of two same-shape tensors executed inside each
            call of one of them is its residual addition, and nothing else is recorded.
    """

    def __init__(self, model: nn.Module, found: FoundBlocks,
                 names: frozenset[str] | None = None) -> None:
        self.model = model
        self.found = found
        self.names = names
        self.labels: _TensorMap[dict[int, _Entry]] = _TensorMap()
        self.gains: _TensorMap[tuple[GainTerm, ...]] = _TensorMap()
        self.param_alias: _TensorMap[str] = _TensorMap()
        self.stack: list[_Call] = []
        self.root_call: dict[int, _Call] = {}
        self._serial = itertools.count()
        self._roots = itertools.count()
        self.param_names: dict[int, str] = {}
        for name, tensor in itertools.chain(self.model.named_parameters(),
                                            self.model.named_buffers()):
            self.param_names.setdefault(id(tensor), name)
        self._layout: dict[str, tuple[set[int], set[int]]] = {}

    # ---- hooks -------------------------------------------------------------------------------

    def pre_hook(self, name: str) -> Callable[..., None]:
        """Forward pre-hook of the module called ``name``: push the call, mark its inputs."""

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            call = _Call(next(self._serial), name, module)
            self.stack.append(call)
            for value in itertools.chain(args, kwargs.values()):
                if isinstance(value, torch.Tensor):
                    self._mark_root(call, value)

        return hook

    def post_hook(self, name: str) -> Callable[..., None]:
        """Forward hook of ``name``: pop the call, note norm weights, flush override blocks."""

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                 output: Any) -> None:
            while self.stack:
                call = self.stack.pop()
                call.active = False
                if call.module is module:
                    break
            else:
                return
            weight = getattr(module, "weight", None)
            if (isinstance(module, _NORMS) and isinstance(output, torch.Tensor)
                    and isinstance(weight, torch.Tensor)):
                self.gains[output] = (GainTerm("weight", f"{name}.weight", weight),)
            if call.pending is not None:
                pending, call.pending = call.pending, None
                self.found.add(*pending)

        return hook

    # ---- function mode -----------------------------------------------------------------------

    def handle(self, func: Callable[..., Any], args: Sequence[Any],
               kwargs: dict[str, Any]) -> Any:
        """Run one torch operation, recording it first if it is a residual addition."""
        if func in _ADD and len(args) >= 2:
            done = self._addition(func, args, kwargs)
            if done is not None:
                return done[0]
        out = func(*args, **kwargs)
        self._propagate(func, args, kwargs, out)
        return out

    def _propagate(self, func: Callable[..., Any], args: Sequence[Any],
                   kwargs: dict[str, Any], out: Any) -> None:
        outputs = _tensors(out)
        if not outputs:
            return
        merged: dict[int, _Entry] = {}
        labeled: list[torch.Tensor] = []
        param: str | None = None
        for value in _flat(args, kwargs):
            label = self.labels.get(value)
            if label is not None:
                labeled.append(value)
                for root, entry in label.items():
                    old = merged.get(root)
                    if old is None or entry.dist < old.dist:
                        merged[root] = entry
            elif param is None:
                param = self._param_name(value)
        if not labeled:
            if param is not None:  # e.g. gamma.reshape(1, -1, 1, 1), a standardized weight
                for tensor in outputs:
                    self.param_alias[tensor] = param
            return
        is_gain = func in _GAIN_OPS and len(labeled) == 1
        free = func in _LAYOUT_OPS
        weighted = int(param is not None and not is_gain)
        step = 0 if free else 1
        derived: dict[int, _Entry] = {}
        for root, entry in merged.items():
            call = self.root_call[root]
            new = _Entry(entry.dist + step, entry.weighted + weighted,
                         entry.escaped or not (call.active or is_gain or free))
            if call.active or not new.escaped or new.dist <= SHORT_PATH:
                derived[root] = new
        for tensor in outputs:
            self.labels[tensor] = derived
        if free:
            kept = self.gains.get(labeled[0])
            for tensor in outputs:
                if kept is not None:
                    self.gains[tensor] = kept
                elif tensor in self.gains:
                    del self.gains[tensor]
        elif is_gain:
            term = self._gain_term(args, kwargs, labeled[0])
            previous = self.gains.get(labeled[0]) or ()
            for tensor in outputs:
                self.gains[tensor] = (*previous, term) if term is not None else previous
        elif func in _WEIGHTED_OPS and len(args) > 1 and isinstance(args[1], torch.Tensor):
            # The layer that produced the branch: its weight matters only if it is all zero
            # (e.g. an NF-ResNet's last conv, whose standardized weight has gain 0).
            name = self._param_name(args[1])
            for tensor in outputs:
                if name is None:
                    if tensor in self.gains:
                        del self.gains[tensor]
                else:
                    computed = id(args[1]) not in self.param_names
                    self.gains[tensor] = (GainTerm("weight", name, args[1], computed),)
        else:
            for tensor in outputs:
                if tensor in self.gains:
                    del self.gains[tensor]

    def _param_name(self, value: torch.Tensor) -> str | None:
        name = self.param_names.get(id(value))
        return name if name is not None else self.param_alias.get(value)

    def _gain_term(self, args: Sequence[Any], kwargs: dict[str, Any],
                   branch: torch.Tensor) -> GainTerm | None:
        for value in itertools.chain(args, kwargs.values()):
            if value is branch:
                continue
            if isinstance(value, torch.Tensor):
                name = self._param_name(value)
                return None if name is None else GainTerm("param", name, value)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return GainTerm("constant", "", float(value))
        return None

    # ---- additions ---------------------------------------------------------------------------

    def _addition(self, func: Callable[..., Any], args: Sequence[Any],
                  kwargs: dict[str, Any]) -> tuple[Any] | None:
        a, b = args[0], args[1]
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a is b:
            return None
        if (a.shape != b.shape or a.ndim < 2 or not a.is_floating_point()
                or kwargs.get("alpha", 1) != 1 or len(args) > 2):
            return None
        label_a, label_b = self.labels.get(a), self.labels.get(b)
        if self.names is not None:
            return self._override_addition(func, args, kwargs, label_a or {}, label_b or {})
        if label_a is None or label_b is None:
            return None
        choice = _choose(self.root_call, label_a, label_b)
        if choice is None:
            return None
        call, a_is_skip, shortcut = choice
        skip, residual = (a, b) if a_is_skip else (b, a)
        gains = self.gains.get(residual) or ()
        out, channels_last, reduced = self._run_addition(call.name, func, args, kwargs, skip,
                                                         residual)
        if call.active:
            # The sum is the input of the next addition of the same call (a transformer block
            # adds attention, then an MLP): make it a root, so that one is an identity too.
            self._mark_root(call, out)
        self.found.add(call.name, shortcut, channels_last, gains, reduced)
        return (out,)

    def _run_addition(self, name: str, func: Callable[..., Any], args: Sequence[Any],
                      kwargs: dict[str, Any], skip: torch.Tensor, residual: torch.Tensor
                      ) -> tuple[Any, bool, Any]:
        """Run a residual addition with its tensors reduced by the recorder: the operands
        before (an in-place addition overwrites one), the sum at once (the block may still
        change it in place, e.g. with a ReLU). Returns the sum, its layout and the handle."""
        channels_last = self._channels_last(name, skip)
        operands = self.found.recorder.operands(skip, residual, channels_last)
        out = func(*args, **kwargs)
        self._propagate(func, args, kwargs, out)
        return out, channels_last, self.found.recorder.output(operands, out)

    def _mark_root(self, call: _Call, tensor: torch.Tensor) -> None:
        root = next(self._roots)
        self.root_call[root] = call
        call.roots.append(root)
        label = dict(self.labels.get(tensor) or {})
        label[root] = _Entry(0, 0, False)
        self.labels[tensor] = label

    def _override_addition(self, func: Callable[..., Any], args: Sequence[Any],
                           kwargs: dict[str, Any], label_a: dict[int, _Entry],
                           label_b: dict[int, _Entry]) -> tuple[Any] | None:
        assert self.names is not None
        call = next((c for c in reversed(self.stack) if c.name in self.names), None)
        if call is None:
            return None
        a, b = args[0], args[1]
        roots = call.roots
        far = _Entry(1 << 30, 0, False)
        dist_a = min((label_a.get(r, far).dist for r in roots), default=far.dist)
        dist_b = min((label_b.get(r, far).dist for r in roots), default=far.dist)
        a_is_skip = dist_a <= dist_b
        skip, residual = (a, b) if a_is_skip else (b, a)
        shortcut = Shortcut.IDENTITY if min(dist_a, dist_b) == 0 else Shortcut.PROJECTION
        gains = self.gains.get(residual) or ()
        out, channels_last, reduced = self._run_addition(call.name, func, args, kwargs, skip,
                                                         residual)
        call.pending = [call.name, shortcut, channels_last, gains, reduced]
        return (out,)

    def _channels_last(self, name: str, x: torch.Tensor) -> bool:
        """Channels-first if dim 1 matches a conv/BN/GroupNorm width of the block and the last
        dim matches no Linear/LayerNorm width; channels-last in the opposite case; otherwise
        channels-last for 3-d ``(N, T, C)`` tokens and channels-first for everything else."""
        if name not in self._layout:
            first: set[int] = set()
            last: set[int] = set()
            try:
                owner = self.model.get_submodule(name)
            except AttributeError:
                owner = self.model
            for m in owner.modules():
                if isinstance(m, nn.modules.conv._ConvNd):
                    first.add(m.out_channels)
                elif isinstance(m, _BatchNorm):
                    first.add(m.num_features)
                elif isinstance(m, nn.GroupNorm):
                    first.add(m.num_channels)
                elif isinstance(m, nn.Linear):
                    last.add(m.out_features)
                elif isinstance(m, nn.LayerNorm) and m.normalized_shape:
                    last.add(m.normalized_shape[-1])
            self._layout[name] = (first, last)
        first, last = self._layout[name]
        cf, cl = x.shape[1] in first, x.shape[-1] in last
        if cf != cl:
            return cl
        return x.ndim == 3


def _choose(root_call: dict[int, _Call], label_a: dict[int, _Entry],
            label_b: dict[int, _Entry]) -> tuple[_Call, bool, Shortcut] | None:
    """Pick the call owning the addition of two labeled operands, or None if not residual.

    Preference, most preferred first: an identity skip over a projection; then a finished call
    that is an item of a container (``blocks.3``: the ``x = x + block(x)`` loop) over the running
    calls; then the innermost running call; then the outermost finished call.
    """
    best: tuple[tuple[int, int, int], _Call, bool, Shortcut] | None = None
    for root in label_a.keys() & label_b.keys():
        ea, eb = label_a[root], label_b[root]
        if ea.dist == eb.dist:
            continue
        a_is_skip = ea.dist < eb.dist
        skip, res = (ea, eb) if a_is_skip else (eb, ea)
        if skip.dist > SHORT_PATH or res.weighted <= skip.weighted or res.escaped:
            continue
        call = root_call[root]
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


def _flat(args: Sequence[Any], kwargs: dict[str, Any]) -> Iterator[torch.Tensor]:
    for value in itertools.chain(args, kwargs.values()):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, torch.Tensor):
                    yield item


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, list | tuple):
        return [t for t in out if isinstance(t, torch.Tensor)]
    return []


class _Mode(TorchFunctionMode):
    def __init__(self, engine: _Engine):
        super().__init__()
        self.engine = engine

    def __torch_function__(self, func: Callable[..., Any], types: Any,
                           args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
                           ) -> Any:
        return self.engine.handle(func, args, kwargs or {})


@contextmanager
def _hooked(engine: _Engine) -> Iterator[None]:
    """Hook every submodule and intercept torch operations; undo everything on exit."""
    model = engine.model
    with ExitStack() as stack:
        for name, module in model.named_modules():
            stack.enter_context(module.register_forward_pre_hook(
                engine.pre_hook(name or type(model).__name__), with_kwargs=True))
            stack.enter_context(module.register_forward_hook(
                engine.post_hook(name or type(model).__name__), with_kwargs=True,
                always_call=True))
        stack.enter_context(_Mode(engine))
        yield


class Discovery(BlockFinder):
    """Finds the residual additions of any eager model by provenance (see the module's doc)."""

    def tapping(self, found: FoundBlocks) -> AbstractContextManager[None]:
        return _hooked(_Engine(self.model, found))


class NamedBlocks(BlockFinder):
    """The override ``blocks=[...]``: the residual addition of each call of the named modules.

    In each call of a named module, the last addition of two tensors of the same shape executed
    inside it (not inside a nested named module) is its residual addition; the operand fewer
    operations away from the module's input is the skip (the first operand on a tie).

    Args:
        model: the model.
        names: qualified names of modules of ``model`` whose forward returns ``skip + residual``.

    Raises:
        TypeError: ``names`` is not a list of strings.
        ValueError: a name is not a submodule of ``model`` (the error suggests close ones), or
            there are none.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__(model)
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"blocks must be a list of module names, got {names!r}")
        known = {name for name, _ in model.named_modules()}
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"blocks: {type(model).__name__} has no submodule {name!r}{hint}")
        if not names:
            raise ValueError("blocks must name at least one module, got []")
        self.names = frozenset(names)

    def tapping(self, found: FoundBlocks) -> AbstractContextManager[None]:
        return _hooked(_Engine(self.model, found, self.names))

    def check(self, blocks: Sequence[Block]) -> None:
        """Every named module executed an addition (and so there is a block)."""
        missing = sorted(self.names - {b.name for b in blocks})
        if missing:
            raise NoResidualBlockError(
                f"block {missing[0]!r} executed no addition of two tensors of the same shape: "
                "name modules whose forward returns skip + residual"
            )
        super().check(blocks)
