"""Gradient statistics of every residual block, from one backward pass after the measured forward.

For a block ``y = skip(x) + residual(x)`` four gradients are reduced (:class:`~sigprop.GradRole`):
``output`` = dL/dy, ``skip`` = J_skip^T dL/dy, ``residual`` = J_branch^T dL/dy and ``input`` =
dL/dx. How they are obtained without a second backward pass through any branch:

* ``output``: a hook on the sum ``y``, registered right after the addition (a hook registered
  before an in-place change, such as the ReLU after ``out += identity``, still receives the
  gradient of the value it was registered on).
* ``input``: a hook on ``x``. For an identity shortcut ``x`` is the skip operand itself (hooked
  before the addition, which may overwrite it in place); for a projection, the block module's
  input in that call.
* ``residual`` (and ``skip`` of a projection): captured where autograd forms it, when the
  branch reads ``x`` in one node of its graph (found by walking the graph from the residual
  operand back to ``x``, at :meth:`GradientRecorder.commit`): a hook on that node takes the
  gradient it passes to ``x``, exactly J_branch^T dL/dy. A projection whose shortcut also reads
  ``x`` in one node of its own (torchvision's and timm's downsample) gets its ``skip`` the same
  way, exactly J_proj^T dL/dy.
* ``skip`` otherwise: for an identity shortcut it is ``output`` (no work); for a projection whose
  shortcut shares its reader of ``x`` with the branch (a pre-activation block's first BN), a
  vector-Jacobian product through the shortcut alone, from the skip operand back to ``x``, run in
  the ``output`` hook while that part of the graph is intact.
* ``residual`` otherwise (a branch that reads ``x`` in several places or not at all, or shares
  its reader with the shortcut): ``input - skip``, formed in the ``input`` hook. Autograd forms
  ``input`` as the sum of the two parts, so the difference is exact when one of them is 0
  (SkipInit at ``alpha = 0``) and otherwise within float32 rounding of ``input``.

Hooks reduce each gradient with the same :class:`~sigprop._moments.Reducer` as the forward
statistics (no host synchronisation, float64 moments on the host once at the end); a gradient
asked for twice (the input of a block is the output of the one before in a chain) is reduced
once. A direct capture keeps no gradient alive, so autograd still adds the two parts of ``dL/dx``
in place; a difference keeps the skip part alive until that block's ``input`` arrives.
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Literal

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, Node, get_gradient_edge

from sigprop._accumulators import Accumulator, Addition
from sigprop._modules import Modules
from sigprop._moments import Reduced, Reducer, channel_dim
from sigprop.finding import BlockFinder
from sigprop.trace import Block, Gradients, Moments, Shortcut

__all__ = ["BackwardError", "GradientRecorder", "Loss", "backward", "block_inputs",
           "cotangent_seed", "frozen_parameters"]

Loss = Callable[[Any], torch.Tensor]
"""``loss(model_output) -> scalar tensor``: what is back-propagated instead of a random
cotangent."""

_COTANGENT_STREAM = 0x5EED_CAFE
"""Offset of the cotangent's seed from the run's seed: the input batch is drawn from the run's
seed itself, and the two must be independent draws."""


class BackwardError(RuntimeError):
    """The backward pass of ``measure(..., backward=True)``, or its ``loss``, raised."""


def cotangent_seed(seed: int | None) -> int:
    """The seed of the cotangent of a run with ``seed`` (None counts as 0)."""
    return ((0 if seed is None else seed) + _COTANGENT_STREAM) % 2**63


@contextmanager
def frozen_parameters(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Parameters not requiring grad while the graph is built (so nothing can reach a
    ``.grad`` and no weight gradient is formed); each flag restored on exit.

    ``params`` may list a shared parameter more than once (see
    :attr:`~sigprop._modules.Modules.parameters`).
    """
    flags = list(map(_requires_grad, params))  # thousands of parameters: the loops run in C
    try:
        for p in itertools.compress(params, flags):
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            if p.requires_grad is not flag:
                p.requires_grad_(flag)


_requires_grad = attrgetter("requires_grad")


@dataclass(eq=False, slots=True)
class _Slot:
    """One addition's forward handle and, once its block is known, its gradients' records."""

    forward: Addition
    channel: int
    skip_edge: GradientEdge | None = None  # the skip operand, for a projection's product
    residual_edge: GradientEdge | None = None  # the residual operand, before the addition
    block: Block | None = None
    direct: bool = False  # the parts arrive from the nodes that read x (no difference)
    input_edge: GradientEdge | None = None  # x, for a projection
    output: Reduced | None = None
    skip: Reduced | None = None
    residual: Reduced | None = None
    input: Reduced | None = None
    pending: torch.Tensor | None = None  # the skip part, until the input's gradient arrives


class GradientRecorder:
    """A recorder for the forward pass that also reduces each block's gradients in the backward.

    The forward statistics go to ``forward`` (an accumulator, run without autograd); the
    gradients are reduced by hooks this recorder registers on the block's tensors.

    Args:
        forward: the accumulator of the forward statistics.
        inputs: the block inputs seen so far, by block name (see :func:`block_inputs`).
        safe: reduce every gradient scaled by its own power of two
            (:meth:`~sigprop._moments.Reducer.reduce_scaled`): slower, and finite wherever the
            gradient is, even where its float32 squares overflow; used after a fast pass
            reported :attr:`overflowed`.
    """

    def __init__(self, forward: Accumulator, inputs: dict[str, weakref.ref[torch.Tensor]],
                 safe: bool = False):
        self.forward = forward
        self._inputs = inputs
        self._reducer = Reducer()
        self._reduce_one = self._reducer.reduce_scaled if safe else self._reducer.reduce
        self.overflowed = False  # set by gradients(): a reduced statistic is not finite
        self._scratch: torch.Tensor | None = None  # reused for each block's branch part
        self._slots: list[_Slot] = []
        self._last: tuple[torch.Tensor, Reduced] | None = None  # the last gradient reduced
        self._nested = False  # inside a projection's own product: the hooks stand aside

    def operands(self, skip: torch.Tensor, residual: torch.Tensor, channels_last: bool
                 ) -> _Slot:
        """Reduce the operands' statistics; hook the skip operand (``x`` if identity)."""
        with torch.no_grad():
            forward = self.forward.operands(skip, residual, channels_last)
        slot = _Slot(forward, channel_dim(skip.ndim, channels_last))
        if skip.requires_grad:
            slot.skip_edge = get_gradient_edge(skip)
            _hook(skip, lambda grad: self._on_skip_operand(slot, grad))
        if residual.requires_grad:  # its node, before an in-place addition replaces it
            slot.residual_edge = get_gradient_edge(residual)
        return slot

    def output(self, slot: _Slot, output: torch.Tensor) -> _Slot:
        """Reduce the sum's statistics; hook the sum for ``dL/dy``."""
        with torch.no_grad():
            slot.forward = self.forward.output(slot.forward, output)
        if output.requires_grad:
            _hook(output, lambda grad: self._on_output(slot, grad))
        return slot

    def commit(self, slot: _Slot, block: Block) -> None:
        """Count the addition as ``block``; hook where its branch reads ``x`` (identity) or the
        block's input (projection)."""
        self.forward.commit(slot.forward, block)
        slot.block = block
        self._slots.append(slot)
        residual, slot.residual_edge = slot.residual_edge, None
        if block.shortcut is Shortcut.IDENTITY:
            if residual is not None and slot.skip_edge is not None:
                reader = _sole_reader(residual.node, slot.skip_edge)
                if reader is not None:
                    self._capture(slot, reader, "residual")
                    slot.direct = True
            slot.skip_edge = None  # a node of the graph whose hooks hold the slot: let it go
        else:
            ref = self._inputs.get(block.name)
            x = None if ref is None else ref()
            if x is not None and x.requires_grad:
                slot.input_edge = get_gradient_edge(x)
                slot.direct = self._hook_readers(slot, residual, slot.input_edge)
                if slot.direct:
                    slot.skip_edge = slot.input_edge = None
                _hook(x, lambda grad: self._on_input(slot, grad))

    def _hook_readers(self, slot: _Slot, residual: GradientEdge | None, x: GradientEdge
                      ) -> bool:
        """Hook the nodes where a projection block's branch and shortcut each read ``x``, if
        each reads it in one node of its own: both parts are then taken where autograd forms
        them. False (nothing hooked) when a node is shared, as in a pre-activation block whose
        shortcut and branch both start from its first BN."""
        skip = slot.skip_edge
        if residual is None or skip is None:
            return False
        branch_reader, skip_reader = _sole_reader(residual.node, x), _sole_reader(skip.node, x)
        if branch_reader is None or skip_reader is None or branch_reader[0] is skip_reader[0]:
            return False
        self._capture(slot, branch_reader, "residual")
        self._capture(slot, skip_reader, "skip")
        return True

    def _capture(self, slot: _Slot, reader: tuple[Node, int],
                 part: Literal["residual", "skip"]) -> None:
        """Hook ``reader``'s node: the gradient it passes to ``x`` is ``slot``'s ``part``.

        Reduced through :meth:`_reduce`, which lets go of the output's gradient: autograd then
        adds this part to it in place, as in a bare backward pass.
        """
        node, k = reader

        def hook(grads: tuple[torch.Tensor | None, ...], _: object) -> None:
            grad = grads[k]
            if not self._nested and slot.output is not None and grad is not None:
                setattr(slot, part, self._reduce(grad, slot.channel))

        node.register_hook(hook)

    def _reduce(self, grad: torch.Tensor, channel: int) -> Reduced:
        last = self._last
        if last is not None and last[0] is grad:
            return last[1]
        with torch.no_grad():
            reduced = self._reduce_one(grad, channel)
        self._last = (grad, reduced)
        return reduced

    def _on_output(self, slot: _Slot, grad: torch.Tensor) -> None:
        if self._nested or slot.block is None:
            return
        slot.output = self._reduce(grad, slot.channel)
        if slot.block.shortcut is Shortcut.IDENTITY:
            slot.skip = slot.output
            if not slot.direct:
                slot.pending = grad
        elif not slot.direct and slot.input_edge is not None and slot.skip_edge is not None:
            self._nested = True
            try:
                (part,) = torch.autograd.grad(slot.skip_edge, slot.input_edge, grad,
                                              retain_graph=True)
            finally:
                self._nested = False
                slot.skip_edge = slot.input_edge = None
            slot.skip, slot.pending = self._reduce(part, slot.channel), part

    def _on_skip_operand(self, slot: _Slot, grad: torch.Tensor) -> None:
        if slot.block is not None and slot.block.shortcut is Shortcut.IDENTITY:
            self._on_input(slot, grad)

    def _on_input(self, slot: _Slot, grad: torch.Tensor) -> None:
        if self._nested:
            return
        if slot.direct:
            if slot.output is not None:
                slot.input = self._reduce(grad, slot.channel)
            return
        if slot.pending is None:
            return
        slot.input = self._reduce(grad, slot.channel)
        with torch.no_grad():
            slot.residual = self._reduce_one(self._difference(grad, slot.pending), slot.channel)
        slot.pending = None

    def _difference(self, grad: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        """``grad - part``, written into one scratch tensor reused by every block of its shape
        and layout (reduced before the next block's overwrites it: the device runs them in
        order), instead of a fresh one per block."""
        scratch = self._scratch
        if not (scratch is not None and scratch.shape == grad.shape
                and scratch.dtype == grad.dtype and scratch.device == grad.device
                and scratch.stride() == grad.stride() == part.stride()):
            scratch = torch.empty_like(grad)
            if not scratch.stride() == grad.stride() == part.stride():
                return grad - part  # mixed or overlapping layouts: torch picks the result's
            self._scratch = scratch
        return torch.sub(grad, part, out=scratch)

    def gradients(self) -> list[Gradients]:
        """Per committed block, the moments of its four gradients (NaN where none arrived).

        Sets :attr:`overflowed` when a gradient that arrived has a non-finite statistic.
        """
        self._last = self._scratch = None
        stats = self._reducer.moments()
        self.overflowed = not all(m.finite for m in stats.values())
        missing = Moments(math.nan, math.nan)

        def get(reduced: Reduced | None) -> Moments:
            return missing if reduced is None else stats[reduced]

        return [Gradients(get(s.output), get(s.skip), get(s.residual), get(s.input))
                for s in self._slots]


_LEAF = 2**64 - 1
"""The sequence number of a leaf's gradient accumulator (the largest: it runs first)."""


def _sole_reader(start: Node, target: GradientEdge) -> tuple[Node, int] | None:
    """The one node of the graph from ``start`` back to ``target`` that reads ``target``, and
    the index of ``target`` among that node's inputs; None if none or several do.

    Only nodes created after ``target``'s are walked: autograd numbers the nodes a thread
    creates in order, and an older node cannot read a newer tensor (nor can its inputs).
    """
    source, output = target.node, target.output_nr
    oldest = source._sequence_nr()
    oldest = -1 if oldest == _LEAF else oldest
    if start._sequence_nr() <= oldest:
        return None
    readers: list[tuple[Node, int]] = []
    seen, todo = {start}, [start]
    while todo:
        node = todo.pop()
        for k, (parent, parent_output) in enumerate(node.next_functions):
            if parent is source:
                if parent_output == output:
                    readers.append((node, k))
            elif parent is not None and parent not in seen and parent._sequence_nr() > oldest:
                seen.add(parent)
                todo.append(parent)
    return readers[0] if len(readers) == 1 else None


def _hook(tensor: torch.Tensor, hook: Callable[[torch.Tensor], None]) -> None:
    """Register ``hook`` on ``tensor``'s gradient (it dies with the graph)."""
    tensor.register_hook(hook)  # type: ignore[no-untyped-call]


@contextmanager
def block_inputs(modules: Modules, finder: BlockFinder
                 ) -> Iterator[dict[str, weakref.ref[torch.Tensor]]]:
    """The first tensor argument of the latest call of every module that may own a block.

    Names follow the finders' (the model itself is named after its class). A projection's
    ``x`` is its block's input, and only the modules that can own a projection are hooked (see
    :meth:`~sigprop.finding.BlockFinder.owners`; all of them for discovery).
    """
    model = modules.model
    owners = finder.owners()
    module: Callable[[str], nn.Module] = model.get_submodule
    if owners is None:
        owners = [name for name, _ in modules.named]
        module = modules.by_name.__getitem__
    inputs: dict[str, weakref.ref[torch.Tensor]] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if x is not None:
                inputs[name] = weakref.ref(x)
        return record

    with ExitStack() as stack:
        for name in dict.fromkeys(owners):
            stack.enter_context(module(name).register_forward_pre_hook(
                hook(name or type(model).__name__)))
        yield inputs


def backward(output: Any, leaves: Sequence[torch.Tensor], seed: int | None,
             loss: Loss | None) -> None:
    """Back-propagate from the model's output to ``leaves`` (the inputs), firing the hooks.

    Without ``loss`` the cotangent of every floating output tensor is i.i.d. standard normal,
    drawn on the CPU from :func:`cotangent_seed` and moved to the tensor's device.
    """
    cotangents: list[torch.Tensor | None]
    if loss is not None:
        try:
            value = loss(output)
        except Exception as e:
            raise BackwardError(f"loss(output) raised {type(e).__name__}: {e}") from e
        if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.requires_grad:
            raise ValueError(f"loss must return a scalar tensor that depends on the model's "
                             f"output, got {_describe(value)}")
        outputs, cotangents = [value.reshape(())], [None]
    else:
        outputs = [t for t in _flat(output) if t.is_floating_point() and t.requires_grad]
        if not outputs:
            raise ValueError(
                f"the model's output ({_describe(output)}) holds no floating tensor that "
                "depends on the input: pass loss=callable(output) -> scalar")
        generator = torch.Generator().manual_seed(cotangent_seed(seed))
        cotangents = [torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)
                      for t in outputs]
    try:
        torch.autograd.grad(outputs, list(leaves), cotangents, allow_unused=True)
    except Exception as e:
        raise BackwardError(f"the backward pass failed: {type(e).__name__}: {e}") from e


def _flat(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _flat(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _flat(item)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"
