"""Reduce activations to signal-propagation statistics: cheap on the device, exact on the host.

Inside a forward hook every tensor becomes its per-channel sum and sum of squares (two fast
vectorized reductions, no host synchronisation); the float64 arithmetic that turns sums into
variances runs once, on the host, after the forward pass. To keep squares from overflowing
float32 before the activations themselves do, each tensor is first scaled by the power of two
``2^-e`` that brings its largest magnitude below 1 (exact: a power of two only shifts exponents),
and ``e`` is kept with the sums.
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


def _channel_sums(t: torch.Tensor, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel sum and sum of squares, in two fused reductions (no temporary tensor).

    The sums of squares are squared 2-norms of contiguous rows, the fastest order on CPUs; they
    accumulate in ``t``'s precision, so they overflow once rows reach ~1e19 in float32.
    """
    if channels_last:
        rows = t.reshape(-1, t.shape[-1])
        return rows.sum(0), torch.linalg.vector_norm(rows, 2, dim=0).square()
    if t.ndim > 2 and t.is_contiguous():
        rows = t.view(t.shape[0], t.shape[1], -1)
        return rows.sum(-1).sum(0), torch.linalg.vector_norm(rows, 2, dim=-1).square().sum(0)
    dims = reduction_dims(t.ndim, channels_last)
    return t.sum(dims), (t * t).sum(dims)


def _scale_below_peak(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The power of two ``2^-e`` with ``max |x| < 2^e`` (1 when x is 0 or not finite)."""
    low, high = torch.aminmax(x)
    _, exponent = torch.frexp(torch.maximum(high, -low).to(dtype))
    return torch.exp2(-exponent.to(dtype))


def channel_sums(x: torch.Tensor, channels_last: bool = False,
                 scale: torch.Tensor | None = None) -> torch.Tensor:
    """``[sum_c, sum_sq_c, s]`` of ``x * s`` as one flat tensor on ``x``'s device.

    Without ``scale`` (the fast path) ``s = 1``: no copy of ``x``, but the squares overflow
    float32 once activations reach ~1e19, long before the activations themselves do. With a
    power-of-two ``scale`` (the safe path) ``x`` is scaled first, exactly, so the squares stay in
    range while ``x`` is finite. The sums accumulate in float32 (float64 for float64 input).
    No host synchronisation.
    """
    reduction_dims(x.ndim, channels_last)  # validates the shape
    dtype = torch.promote_types(x.dtype, torch.float32)
    if scale is None:
        s = torch.ones(1, dtype=dtype, device=x.device)
        sums, squares = _channel_sums(x.to(dtype), channels_last)
    else:
        s = scale.to(dtype).reshape(1)
        sums, squares = _channel_sums(x.to(dtype) * s, channels_last)
    return torch.cat((sums, squares, s))


def moments_from_sums(flat: np.ndarray, count: int) -> Moments:
    """The :class:`Moments` of a tensor from its :func:`channel_sums` (float64, on the host).

    ``count`` is the number of elements per channel. Per channel ``mu_c = sum_c / count`` and
    ``sigma2_c = sum_sq_c / count - mu_c**2`` (population variance), undoing the scale ``s``.
    """
    channels = (flat.size - 1) // 2
    scale = float(flat[-1])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        mean = flat[:channels] / scale / count
        second = flat[channels:-1] / scale / scale / count
        var = np.maximum(second - mean**2, 0.0)
        return Moments(float(var.mean()), float((mean**2).mean()))


def moments(x: torch.Tensor, channels_last: bool = False) -> Moments:
    """The :class:`Moments` of one tensor (synchronises with its device).

    >>> import torch
    >>> moments(torch.tensor([[1.0, 10.0], [3.0, 10.0]]))
    Moments(var=0.5, sq_mean=52.0)
    """
    scale = _scale_below_peak(x, torch.promote_types(x.dtype, torch.float32))
    flat = channel_sums(x, channels_last, scale).double().cpu().numpy()
    return moments_from_sums(flat, x.numel() // x.shape[-1 if channels_last else 1])


class _DeviceStore:
    """Append-only float64 storage on one device, in large chunks.

    Many small tensors kept alive through a forward pass would sit between the freed activation
    buffers and fragment the heap (seen: +1.3 MB of resident memory per block); writing every
    result into a few large preallocated chunks keeps memory flat.
    """

    CHUNK = 1 << 18

    def __init__(self) -> None:
        self._chunks: list[torch.Tensor] = []
        self._used = 0  # elements used in the last chunk

    def append(self, values: torch.Tensor) -> tuple[int, int]:
        """Copy ``values`` (1-D) in; returns ``(chunk, offset)`` to find them again."""
        size = values.numel()
        if not self._chunks or self._used + size > self._chunks[-1].numel():
            self._chunks.append(torch.empty(max(self.CHUNK, size), dtype=torch.float64,
                                            device=values.device))
            self._used = 0
        where = (len(self._chunks) - 1, self._used)
        self._chunks[-1][self._used : self._used + size].copy_(values)
        self._used += size
        return where

    def to_host(self) -> list[np.ndarray]:
        """Every chunk as a numpy array (one copy from the device for all of them)."""
        if not self._chunks:
            return []
        sizes = [c.numel() for c in self._chunks]
        flat = torch.cat(self._chunks).cpu().numpy()
        return np.split(flat, np.cumsum(sizes)[:-1])


class BlockAccumulator:
    """Collects the channel sums of skip, residual and output of every block, on the device.

    The skip operand of a block is very often the output of the block before (a chain of
    identity shortcuts); its sums are then reused instead of reduced a second time, as long as
    the tensor has not been modified in place since.

    Args:
        safe: scale every tensor by a power of two before squaring it. The scale comes from the
            magnitude of the first skip, then follows the RMS of each block's output, all on the
            device: a block would have to grow its signal by more than 1e15 for the squares to
            overflow before the activations do. Slower (one more pass over each tensor); used
            only when the fast path overflowed.
    """

    def __init__(self, safe: bool = False) -> None:
        self.safe = safe
        self._store = _DeviceStore()
        # Per tensor: (chunk, offset, size, elements per channel), host-side integers.
        self._entries: list[tuple[int, int, int, int]] = []
        self._last_output: tuple[weakref.ref[torch.Tensor], int,
                                 tuple[int, int, int, int]] | None = None
        self._scale: torch.Tensor | None = None

    def _reduce(self, x: torch.Tensor, channels_last: bool) -> tuple[torch.Tensor,
                                                                       tuple[int, int, int, int]]:
        if self.safe and self._scale is None:
            self._scale = _scale_below_peak(x, torch.promote_types(x.dtype, torch.float32))
        sums = channel_sums(x, channels_last, self._scale)
        chunk, offset = self._store.append(sums)
        count = x.numel() // x.shape[-1 if channels_last else 1]
        return sums, (chunk, offset, sums.numel(), count)

    def add(self, skip: torch.Tensor, residual: torch.Tensor, output: torch.Tensor,
            channels_last: bool) -> None:
        """Reduce the three tensors of one residual addition (no host synchronisation)."""
        last = self._last_output
        if last is not None and last[0]() is skip and skip._version == last[1]:
            skip_entry = last[2]
        else:
            _, skip_entry = self._reduce(skip, channels_last)
        _, residual_entry = self._reduce(residual, channels_last)
        output_sums, output_entry = self._reduce(output, channels_last)
        self._entries += [skip_entry, residual_entry, output_entry]
        if self._scale is not None:
            self._scale.copy_(_follow_rms(output_sums, output.numel()))
        self._last_output = (weakref.ref(output), output._version, output_entry)

    def results(self) -> list[tuple[Moments, Moments, Moments, float]]:
        """Per block: moments of skip, residual and output, and ``cross = mean(skip*residual)``.

        Copies everything from the device once. ``cross`` follows from
        ``m2(output) = m2(skip) + 2 cross + m2(residual)``.
        """
        chunks = self._store.to_host()
        stats = [moments_from_sums(chunks[c][o : o + n], count)
                 for c, o, n, count in self._entries]
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
