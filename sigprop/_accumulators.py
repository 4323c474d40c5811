"""Sums of the skip, residual and output of every residual block of one forward pass.

Two accumulators with one interface: :class:`FastAccumulator`, used first, and
:class:`SafeAccumulator`, which scales every tensor so that its squares cannot overflow and is
used only when the fast one reported a non-finite statistic. A finder hands each addition to
:meth:`~Accumulator.operands` just before it runs, to :meth:`~Accumulator.output` just after,
and to :meth:`~Accumulator.commit` once it is known to be a residual block.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from sigprop._moments import Reduced, Reducer, channel_dim, scale_below_peak
from sigprop.trace import Block, Moments

__all__ = ["Accumulator", "Addition", "FastAccumulator", "SafeAccumulator"]


@dataclass(eq=False, slots=True)
class Addition:
    """The reduced tensors of one addition ``output = skip + residual``.

    Attributes:
        skip, residual: the operands, reduced before the addition ran.
        channel: the channel dimension of all three tensors.
        shape: fast accumulator: the shape of both operands (None if they differ); when the
            output has it too, its channel sums are those of the operands added.
        scale: safe accumulator: the scale every tensor of the addition is reduced with.
        output: the sum, reduced right after; None until then.
    """

    skip: Reduced
    residual: Reduced
    channel: int
    shape: torch.Size | None = None
    scale: torch.Tensor | None = None
    output: Reduced | None = None


class Accumulator(ABC):
    """Reduces the tensors of residual additions on the device; moments after the pass."""

    def __init__(self) -> None:
        self._reducer = Reducer()
        self._committed: list[Addition] = []

    @abstractmethod
    def operands(self, skip: torch.Tensor, residual: torch.Tensor, channels_last: bool
                 ) -> Addition:
        """Reduce the operands of an addition, before it runs (it may overwrite one in place).

        No host synchronisation; :meth:`output` completes the reduction once it has run.
        """

    @abstractmethod
    def output(self, addition: Addition, output: torch.Tensor) -> Addition:
        """Reduce the sum of an addition whose :meth:`operands` were reduced."""

    def commit(self, addition: Addition, block: Block) -> None:
        """Count a reduced addition (what :meth:`output` returned) as the next block.

        It may come later than the reduction: with ``blocks=[...]`` an addition is only known
        to be the residual one when its block returns.
        """
        self._committed.append(addition)

    def results(self) -> list[tuple[Moments, Moments, Moments, float]]:
        """Per block: moments of skip, residual and output, and ``cross = mean(skip*residual)``.

        Copies everything from the device once. ``cross`` follows from
        ``m2(output) = m2(skip) + 2 cross + m2(residual)``.
        """
        if not self._committed:
            return []
        stats = self._reducer.moments()
        results = []
        for addition in self._committed:
            assert addition.output is not None  # committed: output() has run
            s, r, o = stats[addition.skip], stats[addition.residual], stats[addition.output]
            results.append((s, r, o, (o.m2 - s.m2 - r.m2) / 2))
        return results


def _version(t: torch.Tensor) -> int | None:
    """The in-place modification counter of ``t`` (None for inference tensors: untracked)."""
    return None if t.is_inference() else t._version


class FastAccumulator(Accumulator):
    """Reduces each tensor as it is; three reductions per block in a chain.

    Two shortcuts spare work. The skip operand of a block is very often the output of the block
    before (a chain of identity shortcuts); its sums are then reused, as long as the tensor has
    not been modified in place since. And the channel sums of the output are those of skip and
    residual added (``output = skip + residual``), formed on the host: only its squares need a
    pass. A block in a chain costs three reductions.
    """

    def __init__(self) -> None:
        super().__init__()
        # The last output reduced: the tensor, its version counter then, and its sums.
        self._last: tuple[weakref.ref[torch.Tensor], int | None, Reduced] | None = None

    def _reused(self, skip: torch.Tensor) -> Reduced | None:
        last = self._last
        if last is None or last[0]() is not skip or last[1] is None:
            return None
        return last[2] if _version(skip) == last[1] else None

    def operands(self, skip: torch.Tensor, residual: torch.Tensor, channels_last: bool
                 ) -> Addition:
        channel = channel_dim(skip.ndim, channels_last)
        shape = skip.shape if skip.shape == residual.shape else None
        reused = self._reused(skip)
        reduced_skip = self._reducer.reduce(skip, channel) if reused is None else reused
        return Addition(reduced_skip, self._reducer.reduce(residual, channel), channel, shape)

    def output(self, addition: Addition, output: torch.Tensor) -> Addition:
        sum_of = (addition.skip, addition.residual) if addition.shape == output.shape else None
        addition.output = self._reducer.reduce(output, addition.channel, sum_of=sum_of)
        self._last = (weakref.ref(output), _version(output), addition.output)
        return addition


class SafeAccumulator(Accumulator):
    """Reduces every tensor scaled by a power of two, so that its float32 squares cannot overflow.

    The scale comes from the magnitude of the first skip, then follows the RMS of each block's
    output, all on the device: a block would have to grow its signal by more than 1e15 for the
    squares to overflow before the activations do. Slower than :class:`FastAccumulator` (the
    scaling and one more pass per tensor: no sums are reused or formed on the host).
    """

    def __init__(self) -> None:
        super().__init__()
        self._scale: torch.Tensor | None = None  # the scale of the next addition

    def operands(self, skip: torch.Tensor, residual: torch.Tensor, channels_last: bool
                 ) -> Addition:
        channel = channel_dim(skip.ndim, channels_last)
        dtype = torch.promote_types(skip.dtype, torch.float32)
        if self._scale is None:
            self._scale = scale_below_peak(skip, dtype)
        scale = self._scale.clone()
        reduced_skip, reduced_residual = (
            self._reducer.reduce(t.to(dtype) * scale, channel, scale=scale)
            for t in (skip, residual))
        return Addition(reduced_skip, reduced_residual, channel, scale=scale)

    def output(self, addition: Addition, output: torch.Tensor) -> Addition:
        scale, following = addition.scale, self._scale
        assert scale is not None and following is not None  # set by operands()
        scaled = output.to(scale.dtype) * scale
        addition.output = self._reducer.reduce(scaled, addition.channel, scale=scale)
        following.copy_(_follow_rms(scale, scaled))
        return addition


_SCALE_RANGE = (2.0**-120, 2.0**120)


def _follow_rms(scale: torch.Tensor, scaled: torch.Tensor) -> torch.Tensor:
    """``scale`` times the power of two that brings the RMS of ``scaled`` (x * scale) near 1."""
    mean_square = torch.linalg.vector_norm(scaled).square() / scaled.numel()
    _, exponent = torch.frexp(mean_square)  # 0 for 0, inf and NaN: the scale stays
    step = torch.exp2(-torch.div(exponent, 2, rounding_mode="floor").to(scale.dtype))
    return torch.clamp(scale * step, *_SCALE_RANGE)
