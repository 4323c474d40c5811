"""Record per-block statistics during one forward pass, leaving the model exactly as given."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from sigprop import _backward
from sigprop._accumulators import Accumulator, FastAccumulator, SafeAccumulator
from sigprop._backward import BackwardError
from sigprop._blame import sigprop_raised
from sigprop._modules import Modules
from sigprop._tape import Tape
from sigprop._validate import parse_choice
from sigprop.blocks import MarkedAdditions
from sigprop.config import ResNetConfig
from sigprop.discovery import Discovery, NamedBlocks
from sigprop.finding import BlockFinder, FoundBlocks, Recorder
from sigprop.planning import Plan, planned
from sigprop.trace import BatchNorms, Block, BlockStats, BNMode, InputKind, InputSpec, Run, Trace

_T = TypeVar("_T")

__all__ = [
    "BNMode",
    "BackwardError",
    "ForwardError",
    "MeasurementError",
    "find_blocks",
    "gaussian_input",
    "measure",
    "token_input",
]


class ForwardError(RuntimeError):
    """The model's own forward pass raised; the message says after which block."""


class MeasurementError(RuntimeError):
    """sigprop's own code (hooks, reducers, discovery) or the progress callback raised during
    the forward pass: not the model's fault; the message says after which block."""


def gaussian_input(
    shape: tuple[int, ...], seed: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A unit-variance Gaussian batch drawn from a private generator (global RNG untouched).

    The values are drawn on the CPU and then moved, so a seed gives the same batch on any device.

    >>> gaussian_input((2, 3), seed=0).shape
    torch.Size([2, 3])
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator).to(device)


def token_input(shape: tuple[int, ...], vocab_size: int, seed: int = 0,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Token ids drawn uniformly from ``[0, vocab_size)`` by a private generator (int64).

    Drawn on the CPU and then moved, as :func:`gaussian_input`.

    >>> token_input((2, 3), vocab_size=10, seed=0).dtype
    torch.int64
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be an integer >= 1, got {vocab_size!r}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, shape, generator=generator).to(device)


class _NoStats:
    """A recorder that measures nothing, for :func:`find_blocks`."""

    def operands(self, skip: torch.Tensor, residual: torch.Tensor, channels_last: bool) -> None:
        """Nothing to reduce."""

    def output(self, operands: None, output: torch.Tensor) -> None:
        """Nothing to reduce."""

    def commit(self, reduced: None, block: Block) -> None:
        """Nothing to count."""


@contextmanager
def _measurement_state(modules: Modules, bn_mode: BNMode) -> Iterator[None]:
    """Put the model in measuring mode; restore modes, BN flags and buffers on exit.

    Every module runs in eval mode (no dropout or stochastic depth) except batch norm in
    ``train`` mode, which normalizes with batch statistics without updating its running ones.
    """
    model, every = modules.model, modules.all
    modes = [m.training for m in every]
    batch_norms = modules.batch_norms
    tracking = [bn.track_running_stats for bn in batch_norms]
    # Safety net for custom modules that mutate buffers in forward. Torch's own batch-norm
    # forward writes no buffer in either mode here (tracking is off in train mode), so only
    # the buffers of other modules, and of batch norms with their own forward, are saved.
    # The tests run once per type of module, not once per module.
    types = {type(m) for m in every}
    plain = {t for t in types if issubclass(t, _BatchNorm) and t.forward is _BatchNorm.forward}
    saved = [(b, b.detach().clone()) for m in every if type(m) not in plain
             for b in m._buffers.values() if b is not None]
    overriding = {t for t in types if t.train is not nn.Module.train}
    # An override of train() may do more than set flags (freeze parameters, set attributes):
    # every module's attributes and every requires_grad are put back as they were.
    attributes = [(m, dict(m.__dict__)) for m in every] if overriding else []
    requires_grad = [(p, p.requires_grad) for p in modules.parameters] if overriding else []
    try:
        if overriding:
            model.eval()  # let the overrides run
        else:
            _set_flags(every, "training", [False] * len(every))
        if bn_mode is BNMode.TRAIN:
            for bn in batch_norms:
                if type(bn) in overriding:
                    bn.train()
            plain_train = [bn for bn in batch_norms if type(bn) not in overriding]
            _set_flags(plain_train, "training", [True] * len(plain_train))
            _set_flags(batch_norms, "track_running_stats", [False] * len(batch_norms))
        yield
    finally:
        for module, saved_attributes in attributes:
            module.__dict__.clear()
            module.__dict__.update(saved_attributes)
        for parameter, required in requires_grad:
            parameter.requires_grad_(required)
        _set_flags(every, "training", modes)
        _set_flags(batch_norms, "track_running_stats", tracking)
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _set_flags(modules: Sequence[nn.Module], name: str, values: Sequence[bool]) -> None:
    """``module.<name> = value`` for each module and value, without ``Module.__setattr__``.

    Its type checks cost microseconds per call, which add up over the thousands of modules of a
    deep network; for a plain bool attribute (not a parameter, buffer or module) the effect is
    the same. Where ``train()`` is not overridden, setting ``training`` this way is what it does
    too.
    """
    for module, value in zip(modules, values, strict=True):
        module.__dict__[name] = value


def _finder(modules: Modules, blocks: Sequence[str] | None,
            tape: Tape | None = None) -> BlockFinder:
    """How to find ``model``'s blocks: the named ones, else its marked additions, else discovery.

    ``blocks`` (names of block modules) overrides everything; otherwise
    :class:`sigprop.ResidualAdd` modules define the blocks if the model has any. The
    provenance-based finders write their pass to ``tape`` if given (for a plan).
    """
    if blocks is not None:
        return NamedBlocks(modules.model, blocks, tape)
    marked = MarkedAdditions.of(modules)
    return marked if marked is not None else Discovery(modules.model, tape)


@dataclass(frozen=True, slots=True)
class _Batch:
    """The arguments of the model's forward: ``model(*args, **kwargs)``."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


def _forward(modules: Modules, batch: _Batch, finder: BlockFinder, recorder: Recorder,
             bn_mode: BNMode, progress: Callable[[int], None] | None = None,
             then: Callable[[Any], None] | None = None) -> list[Block]:
    """Run the forward pass with the residual additions tapped; returns the blocks found.

    With ``then``, autograd records the pass and ``then(output)`` runs (the backward pass) once
    the additions are no longer tapped, but before the model's state is restored: restoring a
    buffer the graph saved would invalidate it.
    """
    found = FoundBlocks(recorder, progress)
    with ExitStack() as stack, torch.set_grad_enabled(then is not None):
        stack.enter_context(_measurement_state(modules, bn_mode))
        stack.enter_context(_deep_enough(modules.depth))
        with finder.tapping(found):
            try:
                output = modules.model(*batch.args, **batch.kwargs)
            except Exception as e:
                last = found.last
                where = f"after block {last.index} ({last.name})" if last else "before block 0"
                if sigprop_raised(e.__traceback__.tb_next if e.__traceback__ else None):
                    raise MeasurementError(
                        f"sigprop failed while measuring, {where}, in its own code or the "
                        f"progress callback, not in the model: {type(e).__name__}: {e}") from e
                raise ForwardError(
                    f"the model's forward pass failed {where}: {type(e).__name__}: {e}"
                ) from e
        blocks = found.blocks()
        finder.check(blocks)
        if then is not None:
            then(output)
    return blocks


@contextmanager
def _deep_enough(depth: int) -> Iterator[None]:
    """Raise Python's recursion limit for a forward through ``depth`` levels of nested modules.

    Each level of nesting costs a few frames (the module call, its hooks, its forward); 200
    levels exceed the default limit of 1000 once hooked.
    """
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, limit + 12 * depth))
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter or buffer (float32 if none)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


_is_meta = attrgetter("is_meta")


def eager_modules(model: nn.Module) -> Modules:
    """The modules of the eager model sigprop measures: ``model`` itself, or a compiled model's
    original (its one walk for this measurement).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or a TorchScript module.
        ValueError: it has parameters on the meta device, or uninitialized lazy modules.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    original = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(original, nn.Module):
        model = original  # torch.compile: measure the eager module it wraps, never recompile
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            f"model is a TorchScript module ({type(model).__name__}): sigprop needs the eager "
            "nn.Module to hook its calls; measure the model before torch.jit.script/trace"
        )
    modules = Modules(model)
    # Thousands of tensors: the per-tensor test runs in C (map), the type test once per type;
    # a second walk, with names, only to word the error.
    tensors = [*modules.parameters,
               *(b for m in modules.all for b in m._buffers.values() if b is not None)]
    if any(map(_is_meta, tensors)) or any(issubclass(t, nn.parameter.UninitializedParameter)
                                          for t in set(map(type, tensors))):
        _refuse_unmaterialized(model)
    return modules


def _refuse_unmaterialized(model: nn.Module) -> None:
    """Raise the error for a model with meta-device tensors or uninitialized lazy modules."""
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if tensor.is_meta:
            raise ValueError(
                f"model parameter {name!r} is on the meta device (no values): materialize the "
                "model first, e.g. model.to_empty(device='cpu') and initialize or load weights"
            )
    lazy = [name or type(model).__name__ for name, m in model.named_modules()
            if any(isinstance(p, nn.parameter.UninitializedParameter)
                   for p in m.parameters(recurse=False))]
    if lazy:
        raise ValueError(
            f"model has uninitialized lazy modules ({', '.join(lazy[:3])}): run one forward "
            "pass on an example input (model(x)) to initialize them, then measure"
        )


def _resolve_input(model: nn.Module, inputs: torch.Tensor | InputSpec | None,
                   args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None,
                   forward_kwargs: Mapping[str, Any]) -> tuple[_Batch, InputSpec]:
    """The forward's arguments, and the InputSpec recorded for them.

    ``inputs`` (a tensor, or an InputSpec generated on the model's device and in its dtype) is
    the first positional argument; ``args`` replaces it with several; ``kwargs`` and
    ``forward_kwargs`` are keyword arguments.
    """
    if inputs is not None and args is not None:
        raise ValueError("give the model's inputs either as inputs or as args=(...), not both")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise TypeError(f"kwargs must be a dict of keyword inputs, got {type(kwargs).__name__}")
    overlap = sorted(set(kwargs or {}) & set(forward_kwargs))
    if overlap:
        raise ValueError(f"keyword input {overlap[0]!r} is given twice: in kwargs= and by name")
    keywords = {**(kwargs or {}), **forward_kwargs}
    spec: InputSpec | None = None
    if isinstance(inputs, InputSpec):
        if inputs.kind != InputKind.GAUSSIAN:
            raise ValueError(
                f"input kind {str(inputs.kind)!r} cannot be generated: pass the tensor itself, "
                "or InputSpec('gaussian', shape, seed)"
            )
        if any(d < 1 for d in inputs.shape):
            raise ValueError(f"InputSpec shape must have sizes >= 1 (batch first), got "
                             f"{inputs.shape}")
        seed = 0 if inputs.seed is None else inputs.seed
        x = gaussian_input(inputs.shape, seed, _model_device(model)).to(_model_dtype(model))
        positional: tuple[Any, ...] = (x,)
        spec = inputs
    elif isinstance(inputs, torch.Tensor):
        positional = (inputs,)
    elif inputs is not None:
        raise TypeError(
            f"inputs must be a torch.Tensor or a sigprop.InputSpec, got {type(inputs).__name__}"
            "; pass several inputs as args=(...) and keyword inputs by name or as kwargs={...}"
        )
    elif args is not None:
        if isinstance(args, torch.Tensor) or not isinstance(args, Sequence):
            raise TypeError(f"args must be a tuple of positional inputs, got {type(args).__name__}")
        positional = tuple(args)
    else:
        positional = ()
    tensors = [v for v in (*positional, *keywords.values()) if isinstance(v, torch.Tensor)]
    if not tensors:
        raise ValueError("no input tensor: pass a tensor or InputSpec, args=(...) or keyword "
                         "inputs such as input_ids=...")
    first = tensors[0]
    if first.ndim == 0 or first.shape[0] == 0:
        raise ValueError(f"input batch size must be >= 1 (dimension 0), got shape "
                         f"{tuple(first.shape)}")
    if spec is None:
        spec = InputSpec(InputKind.TENSOR, tuple(first.shape), None)
    return _Batch(positional, keywords), spec


def measure(
    model: nn.Module,
    inputs: torch.Tensor | InputSpec | None = None,
    *,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    bn_mode: BNMode | str = BNMode.TRAIN,
    seed: int | None = None,
    model_info: Mapping[str, Any] | ResNetConfig | None = None,
    progress: Callable[[int], None] | None = None,
    blocks: Sequence[str] | None = None,
    backward: bool = False,
    loss: _backward.Loss | None = None,
    plan: Plan | None = None,
    **forward_kwargs: Any,
) -> Trace:
    """Measure skip, residual and output statistics of every residual block in one forward pass.

    Runs under ``torch.no_grad()``; hooks reduce each tensor to statistics at once and keep no
    activations; results are copied from the device once, at the end. The model comes back
    exactly as given (parameters, buffers, training flags, hooks), also when its forward raises.

    Residual additions are found by discovery (see :func:`find_blocks` and docs/discovery.md);
    :class:`sigprop.ResidualAdd` modules, if the model has any, or ``blocks`` override it.

    Args:
        model: any eager PyTorch network with residual additions; a ``torch.compile``d model
            is measured through its eager module. TorchScript, meta-device and uninitialized
            lazy models are refused with the fix.
        inputs: the model's input, a batch on the model's device, or an :class:`InputSpec` to
            generate one (``InputSpec("gaussian", shape, seed)``: unit-variance, private
            generator, on the model's device and in its dtype). The batch size must be >= 1.
        args: several positional inputs instead: ``model(*args, **kwargs)``.
        kwargs: keyword inputs (``{"attention_mask": mask}``); also accepted by name as
            ``**forward_kwargs`` (``measure(model, ids, attention_mask=mask)``).
        bn_mode: ``train`` normalizes with batch statistics (the paper's setting) without
            touching the running statistics; ``eval`` uses the running statistics. All other
            modules run in eval mode, so dropout and stochastic depth are off.
        seed: the seed recorded for this run (default: the InputSpec's seed, else None).
        model_info: configuration recorded in the trace: plain values, or a built-in
            ResNet's :class:`~sigprop.config.ResNetConfig` (default: the model's ``config``
            when it is one, which enables the theory, else the model's class name).
        progress: called with the number of blocks done after each block.
        blocks: override discovery: qualified names of the modules whose forward returns
            ``skip + residual`` (e.g. ``["layer1.0", "layer1.1"]``). In each call of one of them,
            the last addition of two tensors of the same shape is the residual addition; the
            operand fewer operations away from the module's input is the skip (the first operand
            on a tie).
        backward: also run one backward pass and record, per block, the moments of four
            gradients (:class:`~sigprop.Gradients`: ``output`` dL/dy, its ``skip`` and
            ``residual`` parts back at the block input, and ``input`` dL/dx). The cotangent at
            the model's output is i.i.d. standard normal, drawn from the run's seed (in a stream
            apart from the input's); batch norm in train mode back-propagates through its batch
            statistics. No ``.grad`` is written: parameters do not require grad during the pass
            (their flags are restored) and only the hooked tensors' gradients are formed. The
            forward statistics are those of a forward-only measurement.
        loss: with ``backward``, back-propagate ``loss(output)`` (a scalar) instead of a random
            cotangent.
        plan: a :class:`~sigprop.Plan` to reuse across passes over the same architecture
            (seeds, repeated measurements): the first pass discovers the blocks and records
            it, later ones replay it at the cost of about one forward pass, checking every
            operation and falling back to discovery where the model's execution differs. The
            statistics are those of discovery, bit for bit.

    Returns:
        A :class:`Trace` with one run. Non-finite statistics (overflow) are kept as they are;
        ``trace.runs[0].first_overflow`` names the first block that overflowed.

    Raises:
        ForwardError: the model's forward pass raised.
        BackwardError: the backward pass (or ``loss``) raised.

    >>> import sigprop
    >>> net = sigprop.models.resnet(3, seed=0)
    >>> trace = measure(net, InputSpec("gaussian", (4, 3, 32, 32), seed=0))
    >>> [round(b.residual.m2) for b in trace.runs[0].blocks]  # BN branches: m2 ~ 1
    [1, 1, 1]
    """
    mode = parse_choice(BNMode, bn_mode, "bn_mode")
    if loss is not None and not backward:
        raise ValueError("loss is back-propagated only with backward=True: pass both, or neither")
    if loss is not None and not callable(loss):
        raise TypeError(f"loss must be a callable(output) -> scalar tensor, got {loss!r}")
    modules = eager_modules(model)
    model = modules.model
    batch, spec = _resolve_input(model, inputs, args, kwargs, forward_kwargs)
    run_seed = seed if seed is not None else spec.seed
    batchnorms = _batchnorms(modules)

    def finder(tape: Tape | None) -> BlockFinder:
        return _finder(modules, blocks, tape)

    def passed(measured: Callable[[BlockFinder], _T], grad: bool) -> _T:
        return planned(plan, model, finder, batch.args, batch.kwargs, (mode, grad), measured)

    if backward:
        stats, overflowed = passed(lambda f: _measured_backward(
            modules, batch, f, mode, progress, run_seed, loss), True)
        if overflowed:
            # Float32 squares of large gradients overflow long before the gradients do: the
            # backward pass again, every gradient reduced scaled by its own power of two.
            stats, _ = passed(lambda f: _measured_backward(
                modules, batch, f, mode, None, run_seed, loss, safe=True), True)
    else:
        stats = passed(lambda f: _measured(modules, batch, f, FastAccumulator(), mode, progress),
                       False)
    if not all(b.finite for b in stats):
        # The fast statistics overflow long before float32 activations do: measure again with
        # every tensor scaled, so the first non-finite block is where the network overflows.
        safe = passed(lambda f: _measured(modules, batch, f, SafeAccumulator(), mode, None),
                      False)
        stats = tuple(replace(b, grad=m.grad) for b, m in zip(safe, stats, strict=True))
    if isinstance(model_info, ResNetConfig):
        info = model_info.to_dict()
    elif model_info is not None:
        info = dict(model_info)
    else:
        config = getattr(model, "config", None)
        info = config.to_dict() if isinstance(config, ResNetConfig) else \
            {"name": type(model).__name__}
    run = Run(run_seed, stats)
    return Trace(model=info, input=spec, bn_mode=mode.value, runs=(run,), batchnorms=batchnorms)


def _measured(modules: Modules, batch: _Batch, finder: BlockFinder,
              accumulator: Accumulator, bn_mode: BNMode,
              progress: Callable[[int], None] | None) -> tuple[BlockStats, ...]:
    """One forward pass: every block found, with the statistics the accumulator gathered."""
    blocks = _forward(modules, batch, finder, accumulator, bn_mode, progress)
    return tuple(BlockStats.of(block, *stats)
                 for block, stats in zip(blocks, accumulator.results(), strict=True))


def _measured_backward(modules: Modules, batch: _Batch, finder: BlockFinder,
                       bn_mode: BNMode, progress: Callable[[int], None] | None,
                       seed: int | None, loss: _backward.Loss | None, safe: bool = False
                       ) -> tuple[tuple[BlockStats, ...], bool]:
    """One forward pass recorded by autograd, then one backward pass: blocks with gradients,
    and whether a gradient statistic overflowed (``safe``: gradients reduced scaled)."""
    accumulator = FastAccumulator()
    # Every floating-point input becomes a fresh leaf (the caller's tensors are not touched),
    # entered through a copy so that a model may still change its input in place.
    leaves: list[torch.Tensor] = []

    def lift(value: Any) -> Any:
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            return value
        leaves.append(value.detach().requires_grad_(True))
        return leaves[-1].clone()

    lifted = _Batch(tuple(lift(a) for a in batch.args),
                    {name: lift(value) for name, value in batch.kwargs.items()})
    if not leaves:
        raise ValueError("backward=True differentiates towards a floating-point input, and this "
                         "model's inputs have none (token ids?): measure without backward")
    with ExitStack() as stack:
        stack.enter_context(_backward.frozen_parameters(modules.parameters))
        inputs = stack.enter_context(_backward.block_inputs(modules, finder))
        recorder = _backward.GradientRecorder(accumulator, inputs, safe)
        blocks = _forward(modules, lifted, finder, recorder, bn_mode, progress,
                          then=lambda output: _backward.backward(output, leaves, seed, loss))
    stats = tuple(BlockStats.of(block, *stats, grad=grad)
                  for block, stats, grad in zip(blocks, accumulator.results(),
                                                recorder.gradients(), strict=True))
    return stats, recorder.overflowed


def _batchnorms(modules: Modules) -> BatchNorms:
    """Count the batch-norm layers, and those with fresh running statistics (mean 0, var 1)."""
    layers = modules.batch_norms
    buffers = [(m._buffers.get("running_mean"), m._buffers.get("running_var")) for m in layers]
    tracked = [(mean, var) for mean, var in buffers if mean is not None and var is not None]
    if not tracked:
        return BatchNorms(len(layers), 0)
    # Two comparisons and one copy from the device for all layers, not two of each per layer.
    device = tracked[0][0].device
    means = torch.cat([mean.to(device) for mean, _ in tracked])  # 1-d, one per channel
    variances = torch.cat([var.to(device) for _, var in tracked])
    stale = torch.stack(((means != 0), (variances != 1))).cpu().numpy()
    starts = np.cumsum([0] + [mean.numel() for mean, _ in tracked[:-1]])
    fresh = int(np.count_nonzero(np.add.reduceat(stale.sum(0), starts) == 0))
    return BatchNorms(len(layers), fresh)


def find_blocks(model: nn.Module, example_input: torch.Tensor | InputSpec | None = None,
                *, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                bn_mode: BNMode | str = BNMode.TRAIN, blocks: Sequence[str] | None = None,
                plan: Plan | None = None, **forward_kwargs: Any) -> list[Block]:
    """Every residual addition executed in one forward pass, in call order.

    An addition of two tensors of the same shape is residual when one operand (the skip) is the
    input of a module call, or a short transformation of it (a projection), and the other (the
    residual branch) a longer computation on it that runs a parametrized layer; it is owned by
    that module (see docs/discovery.md). Additions of biases, embeddings, constants or unrelated
    tensors are not reported. A module called twice gives two blocks. :class:`ResidualAdd`
    modules, if the model has any, define the blocks instead. The model is left exactly as given.

    Args:
        model: any eager PyTorch network.
        example_input: a batch on the model's device, or an :class:`InputSpec`.
        args, kwargs, forward_kwargs: several positional inputs, keyword inputs (see
            :func:`measure`).
        bn_mode: ``train`` or ``eval`` (see :func:`measure`).
        blocks: override discovery with the names of the block modules (see :func:`measure`).
        plan: a :class:`~sigprop.Plan` recorded by the first call and replayed by later ones
            (see :func:`measure`).

    Returns:
        The blocks in call order, with the gain seen on each residual branch.

    >>> import sigprop
    >>> net = sigprop.models.resnet(4, stages=2)
    >>> blocks = find_blocks(net, InputSpec("gaussian", (2, 3, 8, 8), seed=0))
    >>> [(b.name, b.stage, b.shortcut.value) for b in blocks]  # doctest: +NORMALIZE_WHITESPACE
    [('blocks.0', 0, 'identity'), ('blocks.1', 0, 'identity'),
     ('blocks.2', 1, 'projection'), ('blocks.3', 1, 'identity')]
    """
    mode = parse_choice(BNMode, bn_mode, "bn_mode")
    modules = eager_modules(model)
    model = modules.model
    batch, _ = _resolve_input(model, example_input, args, kwargs, forward_kwargs)
    return planned(plan, model, lambda tape: _finder(modules, blocks, tape), batch.args,
                   batch.kwargs, (mode, False),
                   lambda finder: _forward(modules, batch, finder, _NoStats(), mode))
