"""Reduce activations to signal-propagation statistics: cheap on the device, exact on the host.

Inside a forward hook every tensor becomes its per-channel sum and sum of squares, written
straight into preallocated device storage by a few vectorized reductions (no temporary tensor
for channels-first activations, no host synchronisation); the float64 arithmetic that turns
sums into variances runs once, on the host, vectorized over all tensors, after the pass.

The squares of float32 activations overflow at ~1e19, long before the activations themselves
(3.4e38). The safe mode scales each tensor by a power of two first (exact: it only shifts
exponents) and keeps the scale with the sums.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

from sigprop.trace import Moments


def reduction_dims(ndim: int, channels_last: bool) -> tuple[int, ...]:
    """Every dimension except the channel one (1 for channels-first, the last otherwise)."""
    if ndim < 2:
        raise ValueError(
            f"activation must have a batch and a channel dimension, got {ndim} dimension(s)"
        )
    channel = ndim - 1 if channels_last else 1
    return tuple(d for d in range(ndim) if d != channel)


class _Scratch:
    """Small reusable buffers for the partial sums of :func:`write_channel_sums`."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[tuple[int, ...], torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
            ) -> torch.Tensor:
        key = (shape, dtype, device)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = torch.empty(shape, dtype=dtype, device=device)
        return buffer


def write_channel_sums(x: torch.Tensor, channels_last: bool, out: torch.Tensor,
                       scale: torch.Tensor | None = None, scratch: _Scratch | None = None,
                       with_sums: bool = True) -> None:
    """Write ``[sum_c, sum_sq_c, s]`` of ``x * s`` into ``out`` (float64, ``2C + 1`` values).

    Without ``scale`` (the fast path) ``x`` is reduced as it is and the last slot of ``out`` is
    left alone (the caller fills it with 1). With a power-of-two ``scale`` (the safe path) ``x``
    is scaled first, exactly, so the squares stay finite while ``x`` is. Sums accumulate in
    float32 (float64 for float64 input), over contiguous rows where the layout allows; the
    batch dimension is summed in float64. ``with_sums=False`` writes the squares only, for a
    caller that knows the sums. No host synchronisation.
    """
    dims = reduction_dims(x.ndim, channels_last)
    channel = x.ndim - 1 if channels_last else 1
    channels = x.shape[channel]
    acc = torch.promote_types(x.dtype, torch.float32)
    if scale is not None:
        x = x.to(acc) * scale.to(acc)
        out[-1:].copy_(scale)
    sums, squares = out[:channels], out[channels : 2 * channels]
    scratch = scratch or _Scratch()
    if channel == 1 and x.ndim > 2 and x.is_contiguous():
        # (N, C, positions): reduce each contiguous row, then the batch.
        rows = x.view(x.shape[0], channels, -1)
        partial = scratch.get(rows.shape[:2], acc, x.device)
        if with_sums:
            torch.sum(rows, -1, dtype=acc, out=partial)
            torch.sum(partial, 0, dtype=torch.float64, out=sums)
        torch.linalg.vector_norm(rows, 2, dim=-1, dtype=acc, out=partial)
        torch.sum(partial.square_(), 0, dtype=torch.float64, out=squares)
        return
    columns = x.movedim(channel, -1)
    if columns.is_contiguous():
        # Channels last in memory (tokens, or the channels_last memory format): reduce columns.
        rows = columns.view(-1, channels)
        partial = scratch.get((channels,), acc, x.device)
        if with_sums:
            sums.copy_(torch.sum(rows, 0, dtype=acc, out=partial))
        squares.copy_(torch.sum(torch.square(rows.to(acc)), 0, out=partial))
        return
    if with_sums:
        torch.sum(x, dims, dtype=torch.float64, out=sums)
    torch.sum(torch.square(x.to(torch.float64)), dims, out=squares)


def moments_from_sums(flat: np.ndarray, offsets: np.ndarray, channels: np.ndarray,
                      counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``var`` and ``sq_mean`` of many tensors from their sums, in float64, all at once.

    Tensor ``k`` has its :func:`write_channel_sums` at ``flat[offsets[k]:]``, ``channels[k]``
    channels and ``counts[k]`` elements per channel. Per channel ``mu_c = sum_c / count`` and
    ``sigma2_c = sum_sq_c / count - mu_c**2`` (population variance), undoing the scale ``s``;
    ``var`` and ``sq_mean`` average ``sigma2_c`` and ``mu_c**2`` over channels.
    """
    tensor = np.repeat(np.arange(offsets.size), channels)
    first = np.cumsum(channels) - channels  # position of each tensor's first channel
    sum_at = np.repeat(offsets - first, channels) + np.arange(tensor.size)
    width = np.repeat(channels, channels)
    scale = np.repeat(flat[offsets + 2 * channels], channels)
    count = np.repeat(counts, channels)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        mean = flat[sum_at] / scale / count
        second = flat[sum_at + width] / scale / scale / count
        var = np.maximum(second - mean**2, 0.0)
        return (np.bincount(tensor, var, offsets.size) / channels,
                np.bincount(tensor, mean**2, offsets.size) / channels)


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
    channels = x.shape[-1 if channels_last else 1] if x.ndim >= 2 else 0
    out = torch.empty(2 * channels + 1, dtype=torch.float64, device=x.device)
    scale = _scale_below_peak(x, torch.promote_types(x.dtype, torch.float32))
    write_channel_sums(x, channels_last, out, scale)
    var, sq_mean = moments_from_sums(out.cpu().numpy(), np.array([0]), np.array([channels]),
                                     np.array([x.numel() // channels]))
    return Moments(float(var[0]), float(sq_mean[0]))


class _DeviceStore:
    """Append-only float64 storage on the device, in large chunks that start as ones.

    Many small tensors kept alive through a forward pass would sit between the freed activation
    buffers and fragment the heap (seen: +1.3 MB of resident memory per block), and allocating
    them costs time in every hook; reductions write into views of a few preallocated chunks.
    """

    CHUNK = 1 << 18

    def __init__(self) -> None:
        self._chunks: list[torch.Tensor] = []
        self._start = 0  # offset of the last chunk in the concatenation of all chunks
        self._used = 0  # elements used in the last chunk

    def allocate(self, size: int, device: torch.device) -> tuple[torch.Tensor, int]:
        """A view of ``size`` fresh elements and its offset in :meth:`to_host`'s array."""
        last = self._chunks[-1] if self._chunks else None
        if last is None or self._used + size > last.numel() or last.device != device:
            if last is not None:
                self._start += last.numel()
            last = torch.ones(max(self.CHUNK, size), dtype=torch.float64, device=device)
            self._chunks.append(last)
            self._used = 0
        view = last[self._used : self._used + size]
        offset = self._start + self._used
        self._used += size
        return view, offset

    def to_host(self) -> np.ndarray:
        """All chunks, concatenated, as one numpy array (one copy per chunk)."""
        if not self._chunks:
            return np.zeros(0)
        return np.concatenate([chunk.cpu().numpy() for chunk in self._chunks])


def _version(t: torch.Tensor) -> int | None:
    """The in-place modification counter of ``t`` (None for inference tensors: untracked)."""
    return None if t.is_inference() else t._version


_Entry = tuple[int, int, int]  # offset in the store, channels, elements per channel
Reduced = tuple[_Entry, _Entry, _Entry]
"""The stored sums of the skip, residual and output of one addition."""


class BlockAccumulator:
    """Collects the channel sums of skip, residual and output of every block, on the device.

    Each tensor is reduced once, with two shortcuts. The skip operand of a block is very often
    the output of the block before (a chain of identity shortcuts); its sums are then reused,
    as long as the tensor has not been modified in place since. And the channel sums of the
    output are those of skip and residual added (``output = skip + residual``): only its squares
    need a pass. So a block in a chain costs three passes over an activation, not six.

    Args:
        safe: scale every tensor by a power of two before squaring it. The scale comes from the
            magnitude of the first skip, then follows the RMS of each block's output, all on the
            device: a block would have to grow its signal by more than 1e15 for the squares to
            overflow before the activations do. Slower (one more pass over each tensor, no
            shortcut); used only when the fast path overflowed.
    """

    def __init__(self, safe: bool = False) -> None:
        self.safe = safe
        self._store = _DeviceStore()
        self._scratch = _Scratch()
        self._committed: list[Reduced] = []
        self._last_output: tuple[weakref.ref[torch.Tensor], int | None, _Entry,
                                 torch.Tensor] | None = None
        self._scale: torch.Tensor | None = None

    def _reduce(self, x: torch.Tensor, channels_last: bool, with_sums: bool = True
                ) -> tuple[torch.Tensor, _Entry]:
        channels = x.shape[-1 if channels_last else 1]
        out, offset = self._store.allocate(2 * channels + 1, x.device)
        if self.safe and self._scale is None:
            self._scale = _scale_below_peak(x, torch.promote_types(x.dtype, torch.float32))
        write_channel_sums(x, channels_last, out, self._scale, self._scratch, with_sums)
        return out, (offset, channels, x.numel() // channels)

    def reduce(self, skip: torch.Tensor, residual: torch.Tensor, output: torch.Tensor,
               channels_last: bool) -> Reduced:
        """Reduce the three tensors of one addition now (no host synchronisation).

        The result counts once passed to :meth:`commit`, which may come later (a block whose
        addition is only known to be the residual one when the block returns).
        """
        last = self._last_output
        if last is not None and last[0]() is skip and last[1] is not None \
                and _version(skip) == last[1]:
            skip_sums, skip_entry = last[3], last[2]
        else:
            skip_sums, skip_entry = self._reduce(skip, channels_last)
        residual_sums, residual_entry = self._reduce(residual, channels_last)
        linear = not self.safe and skip.shape == residual.shape == output.shape
        output_sums, output_entry = self._reduce(output, channels_last, with_sums=not linear)
        if linear:
            channels = output_entry[1]
            torch.add(skip_sums[:channels], residual_sums[:channels], out=output_sums[:channels])
        if self._scale is not None:
            self._scale.copy_(_follow_rms(output_sums, output.numel()))
        self._last_output = (weakref.ref(output), _version(output), output_entry, output_sums)
        return skip_entry, residual_entry, output_entry

    def commit(self, reduced: Reduced) -> None:
        """Count one :meth:`reduce`'d addition as the next block."""
        self._committed.append(reduced)

    def add(self, skip: torch.Tensor, residual: torch.Tensor, output: torch.Tensor,
            channels_last: bool) -> None:
        """Reduce the three tensors of one addition and count it as the next block."""
        self.commit(self.reduce(skip, residual, output, channels_last))

    def results(self) -> list[tuple[Moments, Moments, Moments, float]]:
        """Per block: moments of skip, residual and output, and ``cross = mean(skip*residual)``.

        Copies everything from the device once. ``cross`` follows from
        ``m2(output) = m2(skip) + 2 cross + m2(residual)``.
        """
        if not self._committed:
            return []
        entries = [entry for reduced in self._committed for entry in reduced]
        offsets, channels, counts = (np.array(column) for column in zip(*entries, strict=True))
        var, sq_mean = moments_from_sums(self._store.to_host(), offsets, channels, counts)
        stats = [Moments(float(v), float(s)) for v, s in zip(var, sq_mean, strict=True)]
        out = []
        for k in range(0, len(stats), 3):
            skip, residual, output = stats[k : k + 3]
            cross = (output.m2 - skip.m2 - residual.m2) / 2
            out.append((skip, residual, output, cross))
        return out


_SCALE_RANGE = (2.0**-120, 2.0**120)


def _follow_rms(sums: torch.Tensor, numel: int) -> torch.Tensor:
    """The power of two that brings the RMS of the tensor behind ``sums`` near 1."""
    channels = (sums.numel() - 1) // 2
    scale = sums[-1]
    mean_square = sums[channels:-1].sum() / numel  # mean of (x * scale)^2
    _, exponent = torch.frexp(mean_square)  # 0 for 0, inf and NaN: the scale stays
    step = torch.exp2(-torch.div(exponent, 2, rounding_mode="floor").to(scale.dtype))
    return torch.clamp(scale * step, *_SCALE_RANGE)
