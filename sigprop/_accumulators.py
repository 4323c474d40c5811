"""Sums of the skip, residual and output of every residual block of one forward pass.

Two accumulators with one interface: :class:`FastAccumulator`, used first, and
:class:`SafeAccumulator`, which scales every tensor so that its squares cannot overflow and is
used only when the fast one reported a non-finite statistic. A finder hands each addition to
:meth:`~Accumulator.operands` just before it runs, to :meth:`~Accumulator.output` just after,
and to :meth:`~Accumulator.commit` once it is known to be a residual block.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from sigprop._moments import Reduced, Reducer, channel_dim
from sigprop.trace import Block, Moments

__all__ = ["Accumulator", "Addition", "FastAccumulator", "SafeAccumulator"]


@dataclass(eq=False, slots=True)
class Addition:
    """The reduced tensors of one addition ``output = skip + residual``.

    Attributes:
        skip, residual: the operands, reduced before the addition ran.
        channel: the channel dimension of all three tensors.
        shape: fast accumulator: the shape of both operands (None if they differ); when the
            output has it too, and a float32 or float64 dtype, its channel sums are those of
            the operands added.
        output: the sum, reduced right after; None until then.
    """

    skip: Reduced
    residual: Reduced
    channel: int
    shape: torch.Size | None = None
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


class FastAccumulator(Accumulator):
    """Reduces each tensor as it is; five reductions per block.

    The channel sums of the output are those of skip and residual added (``output = skip +
    residual``), formed on the host: only its squares need a pass (not for bfloat16/float16
    sums, rounded more than their float32 sums). The skip is reduced even when it is the
    output of the block before, unchanged as far as its version counter can tell: a write
    through ``.data`` or a kernel of its own bypasses that counter, so reusing the earlier sums
    cannot be proven safe (see docs/performance.md).
    """

    def operands(self, skip: torch.Tensor, residual: torch.Tensor, channels_last: bool
                 ) -> Addition:
        channel = channel_dim(skip.ndim, channels_last)
        shape = skip.shape if skip.shape == residual.shape else None
        return Addition(self._reducer.reduce(skip, channel),
                        self._reducer.reduce(residual, channel), channel, shape)

    def output(self, addition: Addition, output: torch.Tensor) -> Addition:
        # A bfloat16/float16 sum is rounded far more than its float32 channel sums: measure
        # what the network computed, not the exact sum of the operands.
        exact = addition.shape == output.shape and output.element_size() >= 4
        sum_of = (addition.skip, addition.residual) if exact else None
        addition.output = self._reducer.reduce(output, addition.channel, sum_of=sum_of)
        return addition


class SafeAccumulator(Accumulator):
    """Reduces every tensor scaled by its own power of two, so its float32 squares cannot overflow.

    Each tensor (skip, residual, output) is multiplied by ``2^-e`` with ``max |x| < 2^e`` before
    it is reduced, so a small residual next to a huge skip keeps all its digits. Slower than
    :class:`FastAccumulator` (a peak, a scaling and one more pass per tensor; no sums formed on
    the host), and used only after it overflowed.
    """

    def operands(self, skip: torch.Tensor, residual: torch.Tensor, channels_last: bool
                 ) -> Addition:
        channel = channel_dim(skip.ndim, channels_last)
        return Addition(self._reducer.reduce_scaled(skip, channel),
                        self._reducer.reduce_scaled(residual, channel), channel)

    def output(self, addition: Addition, output: torch.Tensor) -> Addition:
        addition.output = self._reducer.reduce_scaled(output, addition.channel)
        return addition
