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


def _channel_sum(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Per-channel sum; reduces the contiguous positions first, the fastest order on CPUs."""
    if channels_last:
        return t.reshape(-1, t.shape[-1]).sum(0)
    if t.ndim > 2 and t.is_contiguous():
        return t.view(t.shape[0], t.shape[1], -1).sum(-1).sum(0)
    return t.sum(reduction_dims(t.ndim, channels_last))


def _scale_below_peak(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The power of two ``2^-e`` with ``max |x| < 2^e`` (1 when x is 0 or not finite)."""
    low, high = torch.aminmax(x)
    _, exponent = torch.frexp(torch.maximum(high, -low).to(dtype))
    return torch.exp2(-exponent.to(dtype))


def channel_sums(x: torch.Tensor, channels_last: bool = False,
                 scale: torch.Tensor | None = None) -> torch.Tensor:
    """``[sum_c, sum_sq_c, s]`` of ``x * s`` as one flat tensor on ``x``'s device.

    ``s`` is a power of two (``scale``, or by default the one bringing ``max |x|`` below 1), so
    the squares cannot overflow while ``x`` is finite and scaling loses no precision. The sums
    accumulate in float32 (float64 for float64 input). No host synchronisation.
    """
    reduction_dims(x.ndim, channels_last)  # validates the shape
    dtype = torch.promote_types(x.dtype, torch.float32)
    s = _scale_below_peak(x, dtype) if scale is None else scale.to(dtype)
    scaled = x.to(dtype) * s
    sums = _channel_sum(scaled, channels_last)
    squares = _channel_sum(scaled.mul_(scaled), channels_last)
    return torch.cat((sums, squares, s.reshape(1)))


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
    flat = channel_sums(x, channels_last).double().cpu().numpy()
    return moments_from_sums(flat, x.numel() // x.shape[-1 if channels_last else 1])


class BlockAccumulator:
    """Collects the channel sums of skip, residual and output of every block, on the device.

    The skip operand of a block is very often the output of the block before (a chain of
    identity shortcuts); its sums are then reused instead of reduced a second time, as long as
    the tensor has not been modified in place since. The power-of-two scale that keeps squares
    in float32 range comes from the magnitude of the first skip, then follows the RMS of each
    block's output, all on the device: a block would have to grow its signal by more than 1e15
    for the squares to overflow before the activations do.
    """

    def __init__(self) -> None:
        self._sums: list[torch.Tensor] = []
        self._counts: list[int] = []
        self._last_output: tuple[weakref.ref[torch.Tensor], int, torch.Tensor] | None = None
        self._scale: torch.Tensor | None = None

    def add(self, skip: torch.Tensor, residual: torch.Tensor, output: torch.Tensor,
            channels_last: bool) -> None:
        """Reduce the three tensors of one residual addition (no host synchronisation)."""
        last = self._last_output
        if last is not None and last[0]() is skip and skip._version == last[1]:
            skip_sums = last[2]
        else:
            skip_sums = channel_sums(skip, channels_last, self._scale)
            self._scale = skip_sums[-1]
        output_sums = channel_sums(output, channels_last, self._scale)
        self._sums += [skip_sums, channel_sums(residual, channels_last, self._scale),
                       output_sums]
        self._scale = _follow_rms(output_sums, output.numel())
        channel_dim = -1 if channels_last else 1
        self._counts += [t.numel() // t.shape[channel_dim] for t in (skip, residual, output)]
        self._last_output = (weakref.ref(output), output._version, output_sums)

    def results(self) -> list[tuple[Moments, Moments, Moments, float]]:
        """Per block: moments of skip, residual and output, and ``cross = mean(skip*residual)``.

        Copies everything from the device once. ``cross`` follows from
        ``m2(output) = m2(skip) + 2 cross + m2(residual)``.
        """
        if not self._sums:
            return []
        flat = torch.cat(self._sums).double().cpu().numpy()
        sizes = [t.numel() for t in self._sums]
        pieces = np.split(flat, np.cumsum(sizes)[:-1])
        stats = [moments_from_sums(p, n) for p, n in zip(pieces, self._counts, strict=True)]
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
