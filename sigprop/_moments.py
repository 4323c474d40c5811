"""Reduce activations to signal-propagation statistics: cheap on the device, exact on the host.

Inside a forward hook a tensor costs one reduction per statistic, nothing else: its rows (or
columns) are reduced into the next free row of a reusable buffer of partial sums. When the
buffer is full (up to 256 rows or 1 MiB) and at the end, one reduction sums it over the batch
dimension into preallocated float64 device storage. No device memory is allocated per tensor
(the host keeps a small record of where its sums land) and the host is never waited for. The
float64 arithmetic that turns sums into variances runs once, on the host, vectorized over all
tensors, after the pass.

Operations are few on purpose: between the layers of a forward pass even a tiny operation
costs ~10-25 us (measured), a third of a reduction over a 2 MiB activation.

A tensor reduced after scaling by a power of two (exact: it only shifts exponents) keeps its
scale with its sums (:meth:`Reducer.reduce_scaled`, the one place that scales): the accumulators
and the gradient recorder reduce that way when float32 squares overflowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from sigprop.trace import Moments

__all__ = ["Reduced", "Reducer", "channel_dim", "moments"]


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
                      scale: np.ndarray, channels: np.ndarray, counts: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``var`` and ``sq_mean`` of many tensors from their sums, in float64, all at once.

    Tensor ``k`` has ``channels[k]`` channel sums at ``flat[sum_at[k]:]``, as many sums of
    squares at ``flat[square_at[k]:]``, was reduced as ``x * scale[k]`` and has ``counts[k]``
    elements per channel. Per channel ``mu_c = sum_c / s / count`` and
    ``sigma2_c = sum_sq_c / s^2 / count - mu_c**2`` (population variance); ``var`` and
    ``sq_mean`` average ``sigma2_c`` and ``mu_c**2`` over channels.
    """
    tensor = np.repeat(np.arange(channels.size), channels)
    within = np.arange(tensor.size) - np.repeat(np.cumsum(channels) - channels, channels)
    scales = scale[tensor]
    count = counts[tensor]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        mean = flat[sum_at[tensor] + within] / scales / count
        second = flat[square_at[tensor] + within] / scales / scales / count
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


@dataclass(eq=False, slots=True)
class Reduced:
    """One tensor handed to :meth:`Reducer.reduce`: its size, and where its sums land.

    Attributes:
        channels: number of channels.
        count: elements per channel.
        scale_at: offset in the store of the scale ``s`` the tensor was multiplied by before it
            was reduced; None when it was reduced as it is.
        sum_of: the two reduced tensors this one is the sum of, when its channel sums are
            formed from theirs on the host; None when its own were reduced.
        sum_at: offset in the store of its channel sums, once flushed (stays None with sum_of).
        square_at: offset in the store of its channel sums of squares, once flushed.
    """

    channels: int
    count: int
    scale_at: int | None = None
    sum_of: tuple[Reduced, Reduced] | None = None
    sum_at: int | None = None
    square_at: int | None = None


_Kind = Literal["sums", "squares", "norms"]
"""What a row of partial sums holds: sums, sums of squares, or 2-norms (squared when flushed)."""


class _Partials:
    """Partial sums of one kind and shape ``(M, C)`` waiting to be summed over ``M``, on the device.

    A row holds per-batch-element sums (``M = N``) or per-channel sums already (``M = 1``).
    """

    BYTES = 1 << 20

    def __init__(self, kind: _Kind, shape: tuple[int, int], dtype: torch.dtype,
                 device: torch.device) -> None:
        itemsize = torch.empty((), dtype=dtype).element_size()
        capacity = max(8, min(256, self.BYTES // (shape[0] * shape[1] * itemsize)))
        self.buffer = torch.empty((capacity, *shape), dtype=dtype, device=device)
        self.rows = self.buffer.unbind(0)
        self.kind = kind
        self.waiting: list[Reduced] = []  # the tensor of each used row


_ACCUMULATE = {dtype: torch.promote_types(dtype, torch.float32)
               for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)}
"""The dtype sums of each common dtype accumulate in (a lookup: ~0.5 us less per tensor)."""


class Reducer:
    """Reduces tensors to channel sums in few device operations; moments on the host at the end.

    Each tensor gets a :class:`Reduced` record; its sums are written into rows of reusable
    buffers of partial sums, flushed into the store when full and at the end.
    """

    def __init__(self) -> None:
        self._store = _DeviceStore()
        self._partials: dict[tuple[object, ...], _Partials] = {}
        self._tensors: list[Reduced] = []

    def _row(self, kind: _Kind, shape: tuple[int, int], dtype: torch.dtype,
             device: torch.device, tensor: Reduced) -> torch.Tensor:
        """The next free row of partial sums of ``kind`` for ``tensor``."""
        key = (kind, shape, dtype, device)
        partials = self._partials.get(key)
        if partials is None:
            partials = self._partials[key] = _Partials(kind, shape, dtype, device)
        waiting = partials.waiting
        used = len(waiting)
        if used == len(partials.rows):
            self._flush(partials)
            used = 0
        waiting.append(tensor)
        return partials.rows[used]

    def _flush(self, partials: _Partials) -> None:
        """Sum the waiting rows over the batch dimension, into the store (one operation)."""
        used = len(partials.waiting)
        channels = partials.buffer.shape[-1]
        block = partials.buffer[:used]
        if partials.kind == "norms":
            block.square_()
        out, offset = self._store.allocate(used, channels, block.device)
        torch.sum(block, 1, dtype=torch.float64, out=out)
        for k, tensor in enumerate(partials.waiting):
            if partials.kind == "sums":
                tensor.sum_at = offset + k * channels
            else:
                tensor.square_at = offset + k * channels
        partials.waiting.clear()

    def reduce(self, x: torch.Tensor, channel: int, scale: torch.Tensor | None = None,
               sum_of: tuple[Reduced, Reduced] | None = None) -> Reduced:
        """Reduce ``x`` (already multiplied by ``scale``, if given) over all but ``channel``.

        Sums accumulate in float32 (float64 for float64 input) over rows or columns, then in
        float64 over the batch dimension. With ``sum_of``, ``x`` is the sum of those two tensors
        and only its squares are reduced. No host synchronisation.
        """
        rows = channel == 1 and x.ndim > 2 and x.is_contiguous()  # (N, C, positions...)
        channels = x.shape[channel]
        tensor = Reduced(channels, x.numel() // channels, None, sum_of)  # positional: hot path
        self._tensors.append(tensor)
        if scale is not None:
            slot, tensor.scale_at = self._store.allocate(1, 1, x.device)
            slot.copy_(scale.reshape(1, 1))
        acc = _ACCUMULATE.get(x.dtype) or torch.promote_types(x.dtype, torch.float32)
        if rows:  # reduce the positions of each (sample, channel), contiguous in memory
            shape, positions = (x.shape[0], channels), tuple(range(2, x.ndim))
            if sum_of is None:
                sums = self._row("sums", shape, acc, x.device, tensor)
                torch.sum(x, positions, dtype=acc, out=sums)
            norms = self._row("norms", shape, acc, x.device, tensor)
            torch.linalg.vector_norm(x, 2, positions, dtype=acc, out=norms)
        else:
            shape, columns = (1, channels), _columns(x, channel)
            if sum_of is None:
                sums = self._row("sums", shape, acc, x.device, tensor)
                torch.sum(columns, 0, keepdim=True, dtype=acc, out=sums)
            squares = self._row("squares", shape, acc, x.device, tensor)
            torch.sum(torch.square(columns.to(acc)), 0, keepdim=True, out=squares)
        return tensor

    def reduce_scaled(self, x: torch.Tensor, channel: int) -> Reduced:
        """Reduce ``x`` multiplied by its own power of two, so its float32 squares cannot overflow.

        ``x`` is scaled by ``2^-e`` with ``max |x| < 2^e`` (exact: only exponents shift) and its
        sums are unscaled in float64 on the host, so a tensor whose squares exceed float32 keeps
        finite statistics. A peak, a scaling and one more pass than :meth:`reduce`.
        """
        dtype = torch.promote_types(x.dtype, torch.float32)
        scale = _scale_below_peak(x, dtype)
        return self.reduce(x.to(dtype) * scale, channel, scale=scale)

    def moments(self) -> dict[Reduced, Moments]:
        """The moments of every reduced tensor, after one copy from the device."""
        for partials in self._partials.values():
            if partials.waiting:
                self._flush(partials)
        if not self._tensors:
            return {}
        stored = self._store.to_host()
        formed: dict[Reduced, np.ndarray] = {}  # channel sums of the sum_of tensors, in order

        def sums(t: Reduced) -> np.ndarray:
            found = formed.get(t)
            if found is not None:
                return found
            assert t.sum_at is not None  # flushed above
            return stored[t.sum_at : t.sum_at + t.channels]

        sum_at: list[int] = []
        end = stored.size
        with np.errstate(over="ignore", invalid="ignore"):  # overflowed sums stay non-finite
            for t in self._tensors:  # operands are reduced before their sum
                if t.sum_of is None:
                    assert t.sum_at is not None
                    sum_at.append(t.sum_at)
                else:
                    formed[t] = sums(t.sum_of[0]) + sums(t.sum_of[1])
                    sum_at.append(end)
                    end += t.channels
        flat = np.concatenate([stored, *formed.values()])
        scale = np.array([1.0 if t.scale_at is None else stored[t.scale_at]
                          for t in self._tensors])
        square_at, channels, counts = (
            np.array(column) for column in zip(*((t.square_at, t.channels, t.count)
                                                 for t in self._tensors), strict=True))
        var, sq_mean = moments_from_sums(flat, np.array(sum_at), square_at, scale, channels,
                                         counts)
        return {t: Moments(v, s)  # tolist(): the Python floats of float() per element, at once
                for t, v, s in zip(self._tensors, var.tolist(), sq_mean.tolist(), strict=True)}


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
    reducer = Reducer()
    tensor = reducer.reduce_scaled(x, channel_dim(x.ndim, channels_last))
    return reducer.moments()[tensor]
