"""Reduce an activation to its signal-propagation statistics, on its own device."""

from __future__ import annotations

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


def moments_tensor(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """``[var, sq_mean]`` of ``x`` as a float64 tensor on ``x``'s device (no host sync).

    Per channel: mean ``mu_c`` and population variance ``sigma2_c`` over the batch and every
    position; then ``var = mean_c sigma2_c`` and ``sq_mean = mean_c mu_c**2``. The reduction runs
    in float64 so that squaring large float32 activations cannot overflow before the activations
    themselves do.
    """
    dims = reduction_dims(x.ndim, channels_last)
    var, mean = torch.var_mean(x.to(torch.float64), dim=dims, correction=0)
    return torch.stack((var.mean(), mean.square().mean()))


def block_row(skip: torch.Tensor, residual: torch.Tensor, output: torch.Tensor,
              channels_last: bool = False) -> torch.Tensor:
    """The seven statistics of one residual addition, as a float64 tensor on the device.

    ``[var, sq_mean]`` of skip, residual and output, then ``cross = mean(skip * residual)`` over
    all elements, from which the cosine between the skip operand and the output follows.
    """
    cross = torch.sum(skip.to(torch.float64) * residual.to(torch.float64)) / skip.numel()
    return torch.cat([*(moments_tensor(t, channels_last) for t in (skip, residual, output)),
                      cross.reshape(1)])


def moments(x: torch.Tensor, channels_last: bool = False) -> Moments:
    """The :class:`Moments` of one tensor (synchronises with its device).

    >>> import torch
    >>> moments(torch.tensor([[1.0, 10.0], [3.0, 10.0]]))
    Moments(var=0.5, sq_mean=52.0)
    """
    var, sq_mean = moments_tensor(x, channels_last).tolist()
    return Moments(var, sq_mean)
