"""Discover once, measure cheaply: a plan of where a model's residual additions run.

Discovery (:mod:`sigprop.discovery`) hooks every module call and labels every tensor of the
forward pass: a Python bookkeeping step per torch operation. A :class:`Plan` keeps what a first,
discovering pass found, so that later passes over the same architecture only replay it:

* **Recording.** The discovering pass also writes the *signature* of every torch operation
  (:class:`~sigprop._tape.Tape`: the function, and for each argument the model input, parameter
  or buffer name, or earlier result it comes from, with its shape), and for each residual
  addition its *site*: the index of its operation, which operand is the skip, and after which
  operation its block was numbered, with the block's name, shortcut, layout and gain sources.
* **Replaying.** A later pass runs under a :class:`~torch.overrides.TorchFunctionMode` that signs
  each operation and compares it with the recorded one; at a recorded site it hands the operands
  and the sum to the recorder, as discovery did. No module is hooked (with ``backward=True``,
  only the modules whose input a projection block's gradient needs).
* **Validation.** A pass whose operations or data flow differ anywhere from the recorded ones
  (data-dependent control flow taking another branch, another architecture, another input
  shape) is not trusted: its blocks are discarded and the pass runs again with discovery, which
  records a new plan. Statistics never come from a plan that does not match.

Replaying reduces the same tensors in the same order as discovery, so the statistics are
identical, bit for bit (tests/test_planning.py checks the discovery zoo).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from sigprop._blame import runs_model_code
from sigprop._gains import GainTerm, ParamNames
from sigprop._tape import Signature, Site, Tape, tensors
from sigprop.discovery import Discovery, NamedBlocks
from sigprop.finding import BlockFinder, FoundBlocks, Report
from sigprop.trace import Block, Shortcut

__all__ = ["Plan", "planned"]

T = TypeVar("T")


class Plan:
    """Where a model's residual additions run: found once by discovery, then replayed.

    Pass the same plan to :func:`sigprop.measure` or :func:`sigprop.find_blocks` for every
    pass over one architecture (seeds, repeated measurements, audits): the first pass of each
    kind (the inputs' shapes, dtypes and devices, the batch-norm mode, with or without
    gradients) discovers the blocks as usual and records a recipe; later passes of that kind
    replay it, checking every torch operation against it, and fall back to discovery (recording
    the recipe afresh) wherever the model's execution differs. A new model instance of the same
    architecture (another seed's weights) replays the plan. Models with
    :class:`sigprop.ResidualAdd` marks need no plan (it stays unused).

    Attributes:
        discoveries: passes that ran discovery (the first, and every fallback).
        replays: passes that replayed the plan.

    >>> import torch, sigprop
    >>> layer = torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    >>> net = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    >>> plan = sigprop.Plan()
    >>> traces = [sigprop.measure(net, torch.randn(2, 5, 8), plan=plan) for _ in range(3)]
    >>> plan.discoveries, plan.replays, traces[2].n_blocks
    (1, 2, 4)
    """

    def __init__(self) -> None:
        self.discoveries = 0
        self.replays = 0
        # One recipe per kind of pass (model class, inputs' shapes, batch-norm mode, autograd):
        # a forward and a backward measurement, or two input sizes, do not evict each other.
        self._recipes: dict[tuple[Any, ...], _Recipe] = {}

    def __repr__(self) -> str:
        return (f"Plan(recipes={len(self._recipes)}, discoveries={self.discoveries}, "
                f"replays={self.replays})")


def planned(plan: Plan | None, model: nn.Module, finder: Callable[[Tape | None], BlockFinder],
            args: Sequence[Any], kwargs: Mapping[str, Any], context: tuple[Any, ...],
            run: Callable[[BlockFinder], T]) -> T:
    """``run(finder)``: one measured pass, with ``plan`` replayed or recorded where it applies.

    Args:
        plan: the plan, or None (plain discovery).
        model: the model.
        finder: builds the finder the pass would use without a plan, writing to a tape if given.
        args, kwargs: the model's inputs (their shapes, dtypes and devices key the plan).
        context: anything else the operations depend on (batch-norm mode, autograd).
        run: runs one pass with a finder; it must start afresh on each call (a replay that
            does not match is discarded and the pass runs again).
    """
    if plan is None:
        return run(finder(None))
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a sigprop.Plan, got {type(plan).__name__}")
    plain = finder(None)
    if not isinstance(plain, Discovery | NamedBlocks):
        return run(plain)  # marked additions: hooks on the marks, nothing to plan
    key = (type(model), type(plain), getattr(plain, "names", None), context,
           _inputs_key(args, kwargs))
    recipe = plan._recipes.get(key)
    params = ParamNames(model)
    if recipe is not None:
        try:
            result = run(_Replaying(model, recipe, params))
        except _Mismatch:
            pass
        else:
            plan.replays += 1
            return result
    recording = _Recording(model, finder(Tape(params)))
    result = run(recording)
    if recording.recipe is None:
        plan._recipes.pop(key, None)
    else:
        plan._recipes[key] = recording.recipe
    plan.discoveries += 1
    return result


class _Mismatch(Exception):
    """The replayed pass did not match the plan: its blocks are discarded."""


@dataclass(frozen=True, slots=True)
class _Gain:
    """Where a gain term's value is read: a parameter or buffer, a tensor of the pass, or a
    constant."""

    kind: str
    name: str
    derived: bool
    param: str | None = None
    number: int | None = None
    constant: float | None = None


@dataclass(frozen=True, slots=True)
class _Block:
    """A residual block of the plan: its addition's site and what discovery reported."""

    site: Site
    name: str
    shortcut: Shortcut
    channels_last: bool
    gains: tuple[_Gain, ...]
    call: int | None  # blocks of one module call share a number
    branch: str | None


@dataclass(frozen=True, slots=True)
class _Recipe:
    """What a discovering pass recorded (see the module's docstring)."""

    signatures: tuple[Signature, ...]
    blocks: tuple[_Block, ...]
    owners: tuple[str, ...]  # registered names of the modules whose input backward needs

    def additions(self) -> dict[int, _Block]:
        """The blocks by the index of their addition."""
        return {b.site.op: b for b in self.blocks}

    def commits(self) -> dict[int, list[_Block]]:
        """The blocks by the index of the operation after which they are numbered."""
        commits: dict[int, list[_Block]] = {}
        for block in self.blocks:
            commits.setdefault(block.site.commit, []).append(block)
        return commits

    def kept(self) -> frozenset[int]:
        """The numbers of the tensors of the pass that gains read."""
        return frozenset(g.number for b in self.blocks for g in b.gains if g.number is not None)


class _Recording(BlockFinder):
    """Discovery (or ``blocks=[...]``) writing a tape; :attr:`recipe` once the pass is done."""

    def __init__(self, model: nn.Module, inner: BlockFinder) -> None:
        super().__init__(model)
        assert isinstance(inner, Discovery | NamedBlocks) and inner.tape is not None
        self._inner = inner
        self._tape = inner.tape
        self.recipe: _Recipe | None = None

    @contextmanager
    def tapping(self, found: FoundBlocks) -> Iterator[None]:
        with self._inner.tapping(found), _inputs_signed(self.model, self._tape):
            yield
        self.recipe = _recipe(self.model, self._tape, found.reports())

    def check(self, blocks: Sequence[Block]) -> None:
        self._inner.check(blocks)

    def owners(self) -> Sequence[str] | None:
        return self._inner.owners()


def _recipe(model: nn.Module, tape: Tape, reports: list[Report]) -> _Recipe | None:
    """The recipe of a recorded pass; None if a block cannot be replayed (a gain read from a
    tensor that is neither the model's nor made in the pass)."""
    calls: dict[object, int] = {}
    blocks = []
    for report in reports:
        gains = []
        for term in report.gains:
            gain = _gain_source(term, tape)
            if gain is None:
                return None
            gains.append(gain)
        assert isinstance(report.site, Site)
        call = None if report.call is None else calls.setdefault(report.call, len(calls))
        blocks.append(_Block(report.site, report.name, report.shortcut, report.channels_last,
                             tuple(gains), call, report.branch))
    registered = {name or type(model).__name__: name for name, _ in model.named_modules()}
    owners = [registered[b.name] for b in blocks
              if b.shortcut is Shortcut.PROJECTION and b.name in registered]
    return _Recipe(tuple(tape.signatures), tuple(blocks), tuple(dict.fromkeys(owners)))


def _gain_source(term: GainTerm, tape: Tape) -> _Gain | None:
    if not isinstance(term.value, torch.Tensor):
        return _Gain(term.kind, term.name, term.derived, constant=term.value)
    name = tape.params.own.get(id(term.value))
    if name is not None:
        return _Gain(term.kind, term.name, term.derived, param=name)
    number = tape.number(term.value)
    if number is None:
        return None
    return _Gain(term.kind, term.name, term.derived, number=number)


class _Replaying(BlockFinder):
    """Replays a recipe: a function mode signing every operation, tapping the recorded sites.

    :meth:`check` raises :class:`_Mismatch` after a pass that differed from the recipe.
    """

    def __init__(self, model: nn.Module, recipe: _Recipe, params: ParamNames) -> None:
        super().__init__(model)
        self._recipe = recipe
        self._params = params
        self._failed = False

    @contextmanager
    def tapping(self, found: FoundBlocks) -> Iterator[None]:
        tape = Tape(self._params)
        mode = _Replay(self._recipe, tape, found)
        with _inputs_signed(self.model, tape), mode:
            yield
        self._failed = mode.failed or tape.index != len(self._recipe.signatures)

    def check(self, blocks: Sequence[Block]) -> None:
        if self._failed:
            raise _Mismatch
        super().check(blocks)

    def owners(self) -> Sequence[str] | None:
        return self._recipe.owners


class _Replay(TorchFunctionMode):
    """Signs every operation against the recipe and taps its residual additions.

    After the first operation that differs, it only runs the model's operations.
    """

    def __init__(self, recipe: _Recipe, tape: Tape, found: FoundBlocks) -> None:
        super().__init__()
        self.failed = False
        self._signatures = recipe.signatures
        self._additions = recipe.additions()
        self._commits = recipe.commits()
        self._keep = recipe.kept()
        self._tape = tape
        self._found = found
        self._kept: dict[int, torch.Tensor] = {}
        self._reduced: dict[int, tuple[Any, tuple[int, ...]]] = {}  # by addition: handle, shape

    def __torch_function__(self, func: Callable[..., Any], types: Any,
                           args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
                           ) -> Any:
        kwargs = kwargs or {}
        if self.failed:
            return _run(func, args, kwargs)
        tape = self._tape
        index = tape.index
        if (index >= len(self._signatures)
                or tape.signature(func, args, kwargs) != self._signatures[index]):
            self.failed = True
            return _run(func, args, kwargs)
        tape.index = index + 1
        block = self._additions.get(index)
        out = _run(func, args, kwargs) if block is None else \
            self._add(block, func, args, kwargs)
        first = tape.produce(out)
        if self._keep:
            for k, tensor in enumerate(tensors(out)):
                if first + k in self._keep:
                    self._kept[first + k] = tensor
        committed = self._commits.get(index)
        if committed is not None:
            for block in committed:
                self._commit(block)
        return out

    def _add(self, block: _Block, func: Callable[..., Any], args: Sequence[Any],
             kwargs: dict[str, Any]) -> Any:
        """Run a residual addition, its operands reduced before and its sum after."""
        skip, residual = (args[0], args[1]) if block.site.skip_first else (args[1], args[0])
        recorder = self._found.recorder
        operands = recorder.operands(skip, residual, block.channels_last)
        out = _run(func, args, kwargs)
        self._reduced[block.site.op] = (recorder.output(operands, out), tuple(out.shape[1:]))
        return out

    def _commit(self, block: _Block) -> None:
        """Number a block, as discovery did after the same operation."""
        gains = []
        for gain in block.gains:
            value: torch.Tensor | float | None = gain.constant
            if gain.param is not None:
                value = self._tape.params.tensor(gain.param)
            elif gain.number is not None:
                value = self._kept.get(gain.number)
            if value is None:
                self.failed = True
                return
            gains.append(GainTerm(gain.kind, gain.name, value, gain.derived))
        reduced, shape = self._reduced.pop(block.site.op)
        self._found.add(block.name, block.shortcut, block.channels_last, tuple(gains), reduced,
                        shape, call=block.call, branch=block.branch)


@runs_model_code  # its own frame runs the model's operation: errors there are the model's
def _run(func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    return func(*args, **kwargs)


@contextmanager
def _inputs_signed(model: nn.Module, tape: Tape) -> Iterator[None]:
    """The tensors the model is called with become the tape's inputs (before any operation)."""

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if tape.index == 0:
            tape.inputs([*args, *kwargs.values()])

    with model.register_forward_pre_hook(hook, with_kwargs=True, prepend=True):
        yield


def _inputs_key(args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the plan of a pass depends on in its inputs: each tensor's shape, dtype, device and
    layout; other values as they are."""

    def key(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return (value.shape, value.dtype, value.device, value.layout, value.is_contiguous(),
                    value.is_contiguous(memory_format=torch.channels_last))
        return value if isinstance(value, int | float | str | bool | type(None)) else type(value)

    return (*map(key, args), *[(k, key(v)) for k, v in kwargs.items()])
