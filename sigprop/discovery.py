"""Find the residual additions of any eager PyTorch model during one forward pass.

How it works (details and limits in ``docs/discovery.md``):

* Forward pre/post hooks on every submodule keep the stack of running module *calls*. The tensor
  arguments of each call become *roots* of that call.
* A :class:`~torch.overrides.TorchFunctionMode` sees every torch operation of the forward and
  updates two analyses of its results: their provenance labels (:mod:`sigprop._provenance`:
  how far each derives from each root, through how many parametrized layers, and whether it
  left the root's call) and their branch gains (:mod:`sigprop._gains`: the layer that produced
  a tensor and the factors applied to it since).
* :class:`Discovery` judges every addition of two floating tensors of the same shape by the
  labels of its operands (:meth:`~sigprop._provenance.Provenance.owner`); :class:`NamedBlocks`
  (the ``blocks=[...]`` override) takes the last such addition inside each call of a named
  module instead.

The hooks and the mode only update small dictionaries; they keep no activations and never
synchronize with the device. The operands of a residual addition are handed to the recorder
just before it runs (``out += identity`` overwrites one of them), its sum just after.
"""

from __future__ import annotations

import difflib
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from sigprop._blame import runs_model_code
from sigprop._gains import BranchGains, GainTerm, OpKind, ParamNames
from sigprop._provenance import Call, Label, Provenance
from sigprop._tape import Site, Tape, tensors
from sigprop.finding import BlockFinder, FoundBlocks, NoResidualBlockError
from sigprop.trace import Block, Shortcut

__all__ = ["Discovery", "NamedBlocks"]

_T = torch.Tensor
_ADD = frozenset({torch.add, _T.add, _T.add_, _T.__add__, _T.__radd__, _T.__iadd__})
_GAIN_OPS = frozenset({torch.mul, _T.mul, _T.mul_, _T.__mul__, _T.__rmul__, _T.__imul__,
                       torch.div, _T.div, _T.div_, _T.__truediv__, _T.__itruediv__})
# Operations that only change the layout or the dtype: they do not lengthen a path, so
# ``x + f(x.reshape(...)).reshape(...)``-style blocks (Swin, ConvNeXt permutes) stay identities.
_LAYOUT_OPS = frozenset({
    _T.view, _T.view_as, _T.reshape, _T.reshape_as, _T.permute, _T.contiguous, _T.flatten,
    _T.unflatten, _T.transpose, _T.swapaxes, _T.swapdims, _T.moveaxis, _T.movedim, _T.squeeze,
    _T.unsqueeze, _T.to, _T.float, _T.clone,
    torch.reshape, torch.permute, torch.flatten, torch.transpose, torch.swapaxes, torch.swapdims,
    torch.moveaxis, torch.movedim, torch.squeeze, torch.unsqueeze, torch.clone,
})
_NORMS = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)


class Discovery(BlockFinder):
    """Finds the residual additions of any eager model from the provenance of their operands.

    An addition of two tensors of the same shape is residual when one operand (the skip) is the
    input of a module call, or a short transformation of it (a projection), and the other (the
    residual branch) a longer computation on it that runs a parametrized layer; it is owned by
    that module (see ``docs/discovery.md``).

    Args:
        model: the model.
        tape: where to write the signature of every operation and the site of every residual
            addition (for a plan, see :mod:`sigprop.planning`); None: nowhere.
    """

    def __init__(self, model: nn.Module, tape: Tape | None = None) -> None:
        super().__init__(model)
        self.tape = tape

    def tapping(self, found: FoundBlocks) -> AbstractContextManager[None]:
        return _hooked(_Discovering(self.model, found, self.tape))


class NamedBlocks(BlockFinder):
    """The override ``blocks=[...]``: the residual addition of each call of the named modules.

    In each call of a named module, the last addition of two tensors of the same shape executed
    inside it (not inside a nested named module) is its residual addition; the operand fewer
    operations away from the module's input is the skip (the first operand on a tie).

    Args:
        model: the model.
        names: qualified names of modules of ``model`` whose forward returns ``skip + residual``.
        tape: as for :class:`Discovery`.

    Raises:
        TypeError: ``names`` is not a list of strings.
        ValueError: a name is not a submodule of ``model`` (the error suggests close ones), or
            there are none.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], tape: Tape | None = None) -> None:
        super().__init__(model)
        self.tape = tape
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
        return _hooked(_Naming(self.model, found, self.names, self.tape))

    def owners(self) -> Sequence[str] | None:
        return sorted(self.names)

    def check(self, blocks: Sequence[Block]) -> None:
        """Every named module executed an addition (and so there is a block)."""
        missing = sorted(self.names - {b.name for b in blocks})
        if missing:
            raise NoResidualBlockError(
                f"block {missing[0]!r} executed no addition of two tensors of the same shape: "
                "name modules whose forward returns skip + residual"
            )
        super().check(blocks)


class _Engine(ABC):
    """The hooks and the function mode of one forward pass: module calls, provenance, gains.

    Subclasses decide which additions are residual (:meth:`_residual`).

    Args:
        model: the model whose submodules are hooked.
        found: told of each residual addition (its tensors go to ``found.recorder`` at once).
        tape: signs every operation, if given (see :class:`Discovery`).
    """

    def __init__(self, model: nn.Module, found: FoundBlocks, tape: Tape | None) -> None:
        self.model = model
        self._found = found
        self._tape = tape
        self._calls: list[Call] = []  # the running calls, innermost last
        self._started = 0  # module calls started so far: the serial of the next one
        # (parent module, child module) -> the child's attribute name, to name each call
        # after where it is called from (a module may be registered in several places).
        self._attributes: dict[tuple[int, int], str] = {}
        for parent in model.modules():
            for attribute, child in parent.named_children():
                self._attributes.setdefault((id(parent), id(child)), attribute)
        self._sizes: dict[int, int] = {}  # module -> number of parameters, when asked for
        self._provenance = Provenance()
        self._params = ParamNames(model) if tape is None else tape.params
        self._gains = BranchGains(self._params)
        self._layouts = _Layouts()

    def pre_hook(self, name: str) -> Callable[..., None]:
        """Forward pre-hook of the module registered as ``name``: push the call, mark its inputs.

        The call is named after where it is called from: the calling module's call name and the
        attribute under which it holds this module, else the registered name.
        """

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            parent = self._calls[-1] if self._calls else None
            call_name = name
            if parent is not None:
                attribute = self._attributes.get((id(parent.module), id(module)))
                if attribute is not None:
                    call_name = (attribute if parent.module is self.model
                                 else f"{parent.name}.{attribute}")
            call = Call(self._started, call_name, module, parent)
            self._started += 1
            if parent is not None:
                parent.children.append(call)
            self._calls.append(call)
            for value in itertools.chain(args, kwargs.values()):
                if isinstance(value, torch.Tensor):
                    self._provenance.mark_root(call, value, call.serial)

        return hook

    def branch_name(self, owner: Call, since: int, skip: torch.Tensor) -> str | None:
        """The module a residual branch of ``owner`` runs through, to tell its blocks apart.

        Of the modules called from ``owner``'s forward since the branch started (serial
        ``since``), except those that returned the skip (``self.shortcut(x) + ...``): the
        longest common qualified prefix of the parametrized ones if it lies inside ``owner``
        (an fx GraphModule calls ``layer1.0.conv1`` ... directly: ``layer1.0``), else the first
        that is not a normalization (``self_attn``, ``mlp``; not ``norm1``). None if none.
        """
        called = [c for c in owner.children if c.serial >= since and id(skip) not in c.outputs]
        parts = [c.name.split(".") for c in called if self._size(c.module)]
        common = []
        for level in zip(*parts, strict=False):
            if any(p != level[0] for p in level):
                break
            common.append(level[0])
        prefix = ".".join(common)
        if prefix and not (owner.name + ".").startswith(prefix + "."):
            return prefix
        return next((c.name for c in called
                     if "norm" not in type(c.module).__name__.lower()), None)

    def _size(self, module: nn.Module) -> int:
        size = self._sizes.get(id(module))
        if size is None:
            size = self._sizes[id(module)] = sum(p.numel() for p in module.parameters())
        return size

    def post_hook(self, name: str) -> Callable[..., None]:
        """Forward hook of ``name``: pop the call, note a normalization's weight."""

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                 output: Any) -> None:
            while self._calls:
                call = self._calls.pop()
                call.active = False
                if call.module is module:
                    break
            else:
                return
            call.outputs = frozenset(id(t) for t in tensors(output))
            weight = getattr(module, "weight", None)
            if (isinstance(module, _NORMS) and isinstance(output, torch.Tensor)
                    and isinstance(weight, torch.Tensor)):
                self._gains.normalized(output, f"{name}.weight", weight)
            self._finished(call)

        return hook

    @runs_model_code  # its own frame runs the model's operation: errors there are the model's
    def handle(self, func: Callable[..., Any], args: Sequence[Any],
               kwargs: dict[str, Any]) -> Any:
        """Run one torch operation, recording it first if it is a residual addition."""
        tape = self._tape
        if tape is not None:
            tape.signatures.append(tape.signature(func, args, kwargs))
            tape.index += 1
        done = None
        if func in _ADD and len(args) >= 2 and _same_shape_addition(args, kwargs):
            done = self._residual(func, args, kwargs)
        if done is not None:
            out = done[0]
        else:
            out = func(*args, **kwargs)
            self._propagate(func, args, kwargs, out)
        if tape is not None:
            tape.produce(out)
        return out

    @abstractmethod
    def _residual(self, func: Callable[..., Any], args: Sequence[Any],
                  kwargs: dict[str, Any]) -> tuple[Any] | None:
        """Run the addition ``args[0] + args[1]`` if it is residual and return ``(sum,)``.

        None if it is not: it then runs as any other operation.
        """

    @abstractmethod
    def _finished(self, call: Call) -> None:
        """Called when a module call returns."""

    def _propagate(self, func: Callable[..., Any], args: Sequence[Any],
                   kwargs: dict[str, Any], out: Any) -> None:
        """Update both analyses with the results of one operation."""
        outputs = tensors(out)
        if not outputs:
            return
        labels: list[Label] = []
        labeled: list[torch.Tensor] = []
        param: str | None = None  # the first unlabeled input that is a parameter
        for value in _flat(args, kwargs):
            label = self._provenance.label(value)
            if label is not None:
                labels.append(label)
                labeled.append(value)
            elif param is None:
                param = self._params.of(value)
        if not labeled:
            if param is not None:  # e.g. gamma.reshape(1, -1, 1, 1), a standardized weight
                self._params.alias(outputs, param)
            return
        kind: OpKind = ("layout" if func in _LAYOUT_OPS
                        else "gain" if func in _GAIN_OPS and len(labeled) == 1 else "other")
        self._provenance.derive(labels, outputs, step=0 if kind == "layout" else 1,
                                weighted=int(param is not None and kind != "gain"),
                                stays=kind != "other")
        self._gains.derive(kind, func, args, kwargs, labeled[0], outputs)

    @runs_model_code  # its own frame runs the model's addition
    def _run(self, call: Call, func: Callable[..., Any], args: Sequence[Any],
             kwargs: dict[str, Any], skip: torch.Tensor, residual: torch.Tensor
             ) -> tuple[Any, bool, Any, Site | None]:
        """Run a residual addition owned by ``call``, its tensors reduced by the recorder.

        The operands are reduced before (an in-place addition overwrites one), the sum at once
        (the block may still change it in place, e.g. with a ReLU). Returns the sum, whether it
        is channels-last, the recorder's handle, and the addition's site on the tape (if any).
        """
        channels_last = self._layouts.channels_last(call.module, skip)
        operands = self._found.recorder.operands(skip, residual, channels_last)
        out = func(*args, **kwargs)
        self._propagate(func, args, kwargs, out)
        tape = self._tape  # the addition was signed last: its index is tape.index - 1
        site = None if tape is None else Site(tape.index - 1, skip is args[0], tape.index - 1)
        return out, channels_last, self._found.recorder.output(operands, out), site


class _Discovering(_Engine):
    """An addition is residual when its operands' labels say so; reported as it runs."""

    def _residual(self, func: Callable[..., Any], args: Sequence[Any],
                  kwargs: dict[str, Any]) -> tuple[Any] | None:
        a, b = args[0], args[1]
        label_a, label_b = self._provenance.label(a), self._provenance.label(b)
        if label_a is None or label_b is None:
            return None
        choice = self._provenance.owner(label_a, label_b)
        if choice is None:
            return None
        call, a_is_skip, shortcut, since = choice
        skip, residual = (a, b) if a_is_skip else (b, a)
        gains = self._gains.of(residual)
        out, channels_last, reduced, site = self._run(call, func, args, kwargs, skip, residual)
        self._provenance.crossed(out)
        if call.active:
            # The sum is the input of the next addition of the same call (a transformer block
            # adds attention, then an MLP): make it a root, so that one is an identity too.
            self._provenance.mark_root(call, out, self._started)
        self._found.add(call.name, shortcut, channels_last, gains, reduced,
                        tuple(out.shape[1:]), call=call,
                        branch=self.branch_name(call, since, skip), site=site)
        return (out,)

    def _finished(self, call: Call) -> None:
        """Nothing to do: additions are reported as they run."""


class _Naming(_Engine):
    """The last addition inside each call of a named module is residual.

    It is reported when the call returns: only then is it known to be the last.
    """

    def __init__(self, model: nn.Module, found: FoundBlocks, names: frozenset[str],
                 tape: Tape | None) -> None:
        super().__init__(model, found, tape)
        self._names = names
        # Per running named call: its last addition so far, reduced, as FoundBlocks.add's args,
        # and its site on the tape.
        self._pending: dict[Call, tuple[tuple[str, Shortcut, bool, tuple[GainTerm, ...], Any,
                                              tuple[int, ...]], Site | None]] = {}

    def _residual(self, func: Callable[..., Any], args: Sequence[Any],
                  kwargs: dict[str, Any]) -> tuple[Any] | None:
        call = next((c for c in reversed(self._calls) if c.name in self._names), None)
        if call is None:
            return None
        a, b = args[0], args[1]
        dist_a = self._provenance.distance(self._provenance.label(a) or {}, call)
        dist_b = self._provenance.distance(self._provenance.label(b) or {}, call)
        a_is_skip = dist_a <= dist_b
        skip, residual = (a, b) if a_is_skip else (b, a)
        shortcut = Shortcut.IDENTITY if min(dist_a, dist_b) == 0 else Shortcut.PROJECTION
        gains = self._gains.of(residual)
        out, channels_last, reduced, site = self._run(call, func, args, kwargs, skip, residual)
        self._pending[call] = ((call.name, shortcut, channels_last, gains, reduced,
                                tuple(out.shape[1:])), site)
        return (out,)

    def _finished(self, call: Call) -> None:
        pending = self._pending.pop(call, None)
        if pending is not None:
            found, site = pending
            if site is not None and self._tape is not None:  # numbered now, not at the addition
                site = Site(site.op, site.skip_first, self._tape.index - 1)
            self._found.add(*found, site=site)


class _Layouts:
    """Guesses, once per block module, whether its activations are channels-last."""

    def __init__(self) -> None:
        self._widths: dict[int, tuple[set[int], set[int]]] = {}

    def channels_last(self, block: nn.Module, x: torch.Tensor) -> bool:
        """Whether ``x``, an operand of a block owned by ``block``, is channels-last.

        Channels-first if dim 1 matches a conv/BN/GroupNorm width of the block (a Conv1d
        network may also run a Linear along the length); else channels-last if the last dim
        matches a Linear/LayerNorm width; otherwise channels-last for 3-d ``(N, T, C)`` tokens
        and channels-first for the rest.
        """
        widths = self._widths.get(id(block))
        if widths is None:
            widths = self._widths[id(block)] = _block_widths(block)
        first, last = widths
        if x.shape[1] in first:
            return False
        return x.shape[-1] in last or x.ndim == 3


def _block_widths(block: nn.Module) -> tuple[set[int], set[int]]:
    """The channel widths of the block's channels-first and channels-last layers."""
    first: set[int] = set()
    last: set[int] = set()
    for m in block.modules():
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
    return first, last


def _same_shape_addition(args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    """Whether the addition is a candidate residual one: ``args[0] + args[1]``, nothing more.

    Both operands are distinct floating tensors of the same shape with a batch and a channel
    dimension.
    """
    a, b = args[0], args[1]
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a is b:
        return False
    return (a.shape == b.shape and a.ndim >= 2 and a.is_floating_point()
            and kwargs.get("alpha", 1) == 1 and len(args) == 2)


def _flat(args: Sequence[Any], kwargs: dict[str, Any]) -> Iterator[torch.Tensor]:
    for value in itertools.chain(args, kwargs.values()):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, torch.Tensor):
                    yield item


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
