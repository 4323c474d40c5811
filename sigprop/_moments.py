"""Reduce activations to signal-propagation statistics: cheap on the device, exact on the host.

Inside a forward hook a tensor costs one reduction per statistic, nothing else: its rows (or
columns) are reduced into the next free row of a reusable buffer of partial sums. When the
buffer is full (up to 256 rows or 1 MiB) and at the end, one reduction sums it over the batch
dimension into preallocated float64 device storage. Nothing is allocated per tensor and the
host is never waited for. The float64 arithmetic that turns sums into variances runs once, on
the host, vectorized over all tensors, after the pass.

Operations are few on purpose: between the layers of a forward pass even a tiny operation
costs ~10-25 us (measured), a third of a reduction over a 2 MiB activation.

The squares of float32 activations overflow at ~1e19, long before the activations themselves
(3.4e38). The safe mode scales each tensor by a power of two first (exact: it only shifts
exponents) and keeps the scale with the sums.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import numpy as np
import torch

from sigprop.trace import Moments


def channel_dim(ndim: int, channels_last: bool) -> int:
    """The channel dimension: 1 for channels-first activations, the last otherwise."""
    if ndim < 2:
        raise ValueError(
            f"activation must have a batch and a channel dimension, got {ndim} dimension(s)"
        )
    return ndim - 1 if channels_last else 1


def _columns(x: torch.Tensor, channel: int) -> torch.Tensor:
    """``x`` as ``(positions, C)`` columns: a view for channels-last layouts (tokens, or the
    channels_last memory format), a copy for any other layout."""
    return x.movedim(channel, -1).contiguous().view(-1, x.shape[channel])


def moments_from_sums(flat: np.ndarray, sum_at: np.ndarray, square_at: np.ndarray,
                      scale_at: np.ndarray, channels: np.ndarray, counts: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``var`` and ``sq_mean`` of many tensors from their sums, in float64, all at once.

    Tensor ``k`` has ``channels[k]`` channel sums at ``flat[sum_at[k]:]``, as many sums of
    squares at ``flat[square_at[k]:]``, its scale ``s`` at ``flat[scale_at[k]]`` (1 where
    ``scale_at`` is negative) and ``counts[k]`` elements per channel. Per channel
    ``mu_c = sum_c / s / count`` and ``sigma2_c = sum_sq_c / s^2 / count - mu_c**2`` (population
    variance); ``var`` and ``sq_mean`` average ``sigma2_c`` and ``mu_c**2`` over channels.
    """
    tensor = np.repeat(np.arange(channels.size), channels)
    within = np.arange(tensor.size) - np.repeat(np.cumsum(channels) - channels, channels)
    scale = np.where(scale_at >= 0, flat[np.maximum(scale_at, 0)], 1.0)[tensor]
    count = counts[tensor]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        mean = flat[sum_at[tensor] + within] / scale / count
        second = flat[square_at[tensor] + within] / scale / scale / count
        var = np.maximum(second - mean**2, 0.0)
        return (np.bincount(tensor, var, channels.size) / channels,
                np.bincount(tensor, mean**2, channels.size) / channels)


class _DeviceStore:
    """Append-only float64 storage on the device, in large chunks.

    Many small tensors kept alive through a forward pass would sit between the freed activation
    buffers and fragment the heap (seen: +1.3 MB of resident memory per block); results go into
    views of a few preallocated chunks instead.
    """

    CHUNK = 1 << 18

    def __init__(self) -> None:
        self._chunks: list[torch.Tensor] = []
        self._start = 0  # offset of the last chunk in the concatenation of all chunks
        self._used = 0  # elements used in the last chunk

    def allocate(self, rows: int, width: int, device: torch.device) -> tuple[torch.Tensor, int]:
        """A fresh ``(rows, width)`` view and the offset of its first element in :meth:`to_host`."""
        size = rows * width
        last = self._chunks[-1] if self._chunks else None
        if last is None or self._used + size > last.numel() or last.device != device:
            if last is not None:
                self._start += last.numel()
            last = torch.empty(max(self.CHUNK, size), dtype=torch.float64, device=device)
            self._chunks.append(last)
            self._used = 0
        view = last[self._used : self._used + size].view(rows, width)
        offset = self._start + self._used
        self._used += size
        return view, offset

    def to_host(self) -> np.ndarray:
        """All chunks, concatenated, as one numpy array (one copy per chunk)."""
        if not self._chunks:
            return np.zeros(0)
        return np.concatenate([chunk.cpu().numpy() for chunk in self._chunks])


class _Partials:
    """Partial sums of one shape ``(M, C)`` waiting to be summed over ``M``, on the device.

    A row holds per-batch-element sums (``M = N``) or per-channel sums already (``M = 1``).
    ``norms`` rows hold 2-norms, squared when flushed.
    """

    BYTES = 1 << 20

    def __init__(self, shape: tuple[int, int], dtype: torch.dtype, device: torch.device,
                 norms: bool) -> None:
        itemsize = torch.empty((), dtype=dtype).element_size()
        capacity = max(8, min(256, self.BYTES // (shape[0] * shape[1] * itemsize)))
        self.buffer = torch.empty((capacity, *shape), dtype=dtype, device=device)
        self.rows = self.buffer.unbind(0)
        self.norms = norms
        self.waiting: list[tuple[list[int], int]] = []  # per used row: where its offset goes


class _Reducer:
    """Reduces tensors to channel sums in few device operations; moments on the host at the end.

    Per tensor it keeps where its channel sums, sums of squares and scale will be in the store
    (-1: derived sums, scale 1), its channel count and its elements per channel, in flat lists
    of integers (nothing for the garbage collector to track).
    """

    def __init__(self) -> None:
        self._store = _DeviceStore()
        self._partials: dict[tuple[object, ...], _Partials] = {}
        self._sum_at: list[int] = []
        self._square_at: list[int] = []
        self._scale_at: list[int] = []
        self._channels: list[int] = []
        self._counts: list[int] = []

    def _row(self, norms: bool, shape: tuple[int, int], dtype: torch.dtype,
             device: torch.device, offsets: list[int], tensor: int) -> torch.Tensor:
        """The next free row of partial sums, whose place in the store goes to
        ``offsets[tensor]``."""
        key = (norms, shape, dtype, device)
        partials = self._partials.get(key)
        if partials is None:
            partials = self._partials[key] = _Partials(shape, dtype, device, norms)
        elif len(partials.waiting) == len(partials.rows):
            self._flush(partials)
        partials.waiting.append((offsets, tensor))
        return partials.rows[len(partials.waiting) - 1]

    def _flush(self, partials: _Partials) -> None:
        """Sum the waiting rows over the batch dimension, into the store (one operation)."""
        used = len(partials.waiting)
        channels = partials.buffer.shape[-1]
        block = partials.buffer[:used]
        if partials.norms:
            block.square_()
        out, offset = self._store.allocate(used, channels, block.device)
        torch.sum(block, 1, dtype=torch.float64, out=out)
        for k, (offsets, tensor) in enumerate(partials.waiting):
            offsets[tensor] = offset + k * channels
        partials.waiting.clear()

    def tensor(self, x: torch.Tensor, channel: int, with_sum: bool = True,
               scale: torch.Tensor | None = None) -> int:
        """Reduce ``x`` (already multiplied by ``scale``, if given); returns its index.

        Sums accumulate in float32 (float64 for float64 input) over rows or columns, then in
        float64 over the batch dimension. ``with_sum=False`` reduces the squares only, for a
        caller that derives the sums. No host synchronisation.
        """
        rows = channel == 1 and x.ndim > 2 and x.is_contiguous()  # (N, C, positions...)
        channels = x.shape[channel]
        index = len(self._channels)
        self._channels.append(channels)
        self._counts.append(x.numel() // channels)
        self._sum_at.append(-1)
        self._square_at.append(-1)
        self._scale_at.append(-1)
        if scale is not None:
            slot, self._scale_at[index] = self._store.allocate(1, 1, x.device)
            slot.copy_(scale.reshape(1, 1))
        acc = torch.promote_types(x.dtype, torch.float32)
        if rows:  # reduce the positions of each (sample, channel), contiguous in memory
            shape, positions = (x.shape[0], channels), tuple(range(2, x.ndim))
            if with_sum:
                sums = self._row(False, shape, acc, x.device, self._sum_at, index)
                torch.sum(x, positions, dtype=acc, out=sums)
            norms = self._row(True, shape, acc, x.device, self._square_at, index)
            torch.linalg.vector_norm(x, 2, positions, dtype=acc, out=norms)
        else:
            shape, columns = (1, channels), _columns(x, channel)
            if with_sum:
                sums = self._row(False, shape, acc, x.device, self._sum_at, index)
                torch.sum(columns, 0, keepdim=True, dtype=acc, out=sums)
            squares = self._row(False, shape, acc, x.device, self._square_at, index)
            torch.sum(torch.square(columns.to(acc)), 0, keepdim=True, out=squares)
        return index

    def moments(self, derived: dict[int, tuple[int, int]]) -> list[Moments]:
        """The moments of every reduced tensor, after one copy from the device.

        ``derived`` maps a tensor reduced without its sums to the two tensors it is the sum of.
        """
        for partials in self._partials.values():
            if partials.waiting:
                self._flush(partials)
        if not self._channels:
            return []
        stored = self._store.to_host()
        sum_at, square_at, scale_at, channels, counts = (
            np.array(column) for column in (self._sum_at, self._square_at, self._scale_at,
                                            self._channels, self._counts))
        sums: dict[int, np.ndarray] = {}

        def sums_of(t: int) -> np.ndarray:
            found = sums.get(t)
            return stored[sum_at[t] : sum_at[t] + channels[t]] if found is None else found

        end = stored.size
        with np.errstate(over="ignore", invalid="ignore"):  # overflowed sums stay non-finite
            for total, (a, b) in sorted(derived.items()):  # operands come first
                sums[total] = sums_of(a) + sums_of(b)
                sum_at[total] = end
                end += channels[total]
        flat = np.concatenate([stored, *sums.values()])
        var, sq_mean = moments_from_sums(flat, sum_at, square_at, scale_at, channels, counts)
        return [Moments(float(v), float(s)) for v, s in zip(var, sq_mean, strict=True)]


def _scale_below_peak(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The power of two ``2^-e`` with ``max |x| < 2^e`` (1 when x is 0 or not finite)."""
    low, high = torch.aminmax(x)
    _, exponent = torch.frexp(torch.maximum(high, -low).to(dtype))
    return torch.exp2(-exponent.to(dtype))


def moments(x: torch.Tensor, channels_last: bool = False) -> Moments:
    """The :class:`Moments` of one tensor (synchronises with its device).

    >>> import torch
    >>> moments(torch.tensor([[1.0, 10.0], [3.0, 10.0]]))
    Moments(var=0.5, sq_mean=52.0)
    """
    channel = channel_dim(x.ndim, channels_last)
    scale = _scale_below_peak(x, torch.promote_types(x.dtype, torch.float32))
    reducer = _Reducer()
    reducer.tensor(x.to(scale.dtype) * scale, channel, scale=scale)
    return reducer.moments({})[0]


def _version(t: torch.Tensor) -> int | None:
    """The in-place modification counter of ``t`` (None for inference tensors: untracked)."""
    return None if t.is_inference() else t._version


Reduced = tuple[int, int, int]
"""Indices of the skip, residual and output of one addition among the reduced tensors."""


class Operands(NamedTuple):
    """The reduced operands of an addition about to run."""

    skip: int
    residual: int
    channel: int
    shape: torch.Size | None  # the shape of both operands; None if they differ
    scale: torch.Tensor | None  # safe mode: the scale they were reduced with


class BlockAccumulator:
    """Collects the channel sums of skip, residual and output of every block, on the device.

    Two shortcuts spare work. The skip operand of a block is very often the output of the block
    before (a chain of identity shortcuts); its sums are then reused, as long as the tensor has
    not been modified in place since. And the channel sums of the output are those of skip and
    residual added (``output = skip + residual``), formed on the host: only its squares need a
    pass. A block in a chain costs three reductions.

    Args:
        safe: scale every tensor by a power of two before squaring it. The scale comes from the
            magnitude of the first skip, then follows the RMS of each block's output, all on the
            device: a block would have to grow its signal by more than 1e15 for the squares to
            overflow before the activations do. Slower (the scaling and one more pass per tensor,
            output sums reduced too); used only when the fast path overflowed.
    """

    def __init__(self, safe: bool = False) -> None:
        self.safe = safe
        self._reducer = _Reducer()
        self._derived: dict[int, tuple[int, int]] = {}  # output -> (skip, residual)
        self._committed: list[Reduced] = []
        self._last_output: tuple[weakref.ref[torch.Tensor], int | None, int] | None = None
        self._scale: torch.Tensor | None = None

    def _reused(self, skip: torch.Tensor) -> int | None:
        last = self._last_output
        if last is None or last[0]() is not skip or last[1] is None:
            return None
        return last[2] if _version(skip) == last[1] else None

    def operands(self, skip: torch.Tensor, residual: torch.Tensor, channels_last: bool
                 ) -> Operands:
        """Reduce the operands of an addition, before it runs (it may overwrite one in place).

        No host synchronisation; :meth:`output` completes the reduction once it has run.
        """
        channel = channel_dim(skip.ndim, channels_last)
        shape = skip.shape if skip.shape == residual.shape else None
        if self.safe:
            dtype = torch.promote_types(skip.dtype, torch.float32)
            if self._scale is None:
                self._scale = _scale_below_peak(skip, dtype)
            scale = self._scale.clone()
            skip_index, residual_index = (
                self._reducer.tensor(t.to(dtype) * scale, channel, scale=scale)
                for t in (skip, residual))
            return Operands(skip_index, residual_index, channel, shape, scale)
        reused = self._reused(skip)
        skip_index = self._reducer.tensor(skip, channel) if reused is None else reused
        return Operands(skip_index, self._reducer.tensor(residual, channel), channel, shape, None)

    def output(self, operands: Operands, output: torch.Tensor) -> Reduced:
        """Reduce the sum of an addition whose :meth:`operands` were reduced."""
        if operands.scale is not None:
            scaled = output.to(operands.scale.dtype) * operands.scale
            index = self._reducer.tensor(scaled, operands.channel, scale=operands.scale)
            assert self._scale is not None
            self._scale.copy_(_follow_rms(operands.scale, scaled))
        else:
            linear = operands.shape == output.shape
            index = self._reducer.tensor(output, operands.channel, with_sum=not linear)
            if linear:
                self._derived[index] = (operands.skip, operands.residual)
        self._last_output = (weakref.ref(output), _version(output), index)
        return operands.skip, operands.residual, index

    def commit(self, reduced: Reduced) -> None:
        """Count a reduced addition (:meth:`output`'s result) as the next block.

        It may come later than the reduction: with ``blocks=[...]`` an addition is only known
        to be the residual one when its block returns.
        """
        self._committed.append(reduced)

    def add(self, skip: torch.Tensor, residual: torch.Tensor, output: torch.Tensor,
            channels_last: bool) -> None:
        """Reduce an addition that ran without changing its operands; count it as a block."""
        self.commit(self.output(self.operands(skip, residual, channels_last), output))

    def results(self) -> list[tuple[Moments, Moments, Moments, float]]:
        """Per block: moments of skip, residual and output, and ``cross = mean(skip*residual)``.

        Copies everything from the device once. ``cross`` follows from
        ``m2(output) = m2(skip) + 2 cross + m2(residual)``.
        """
        if not self._committed:
            return []
        stats = self._reducer.moments(self._derived)
        return [(stats[s], stats[r], stats[o], (stats[o].m2 - stats[s].m2 - stats[r].m2) / 2)
                for s, r, o in self._committed]


_SCALE_RANGE = (2.0**-120, 2.0**120)


def _follow_rms(scale: torch.Tensor, scaled: torch.Tensor) -> torch.Tensor:
    """``scale`` times the power of two that brings the RMS of ``scaled`` (x * scale) near 1."""
    mean_square = torch.linalg.vector_norm(scaled).square() / scaled.numel()
    _, exponent = torch.frexp(mean_square)  # 0 for 0, inf and NaN: the scale stays
    step = torch.exp2(-torch.div(exponent, 2, rounding_mode="floor").to(scale.dtype))
    return torch.clamp(scale * step, *_SCALE_RANGE)
