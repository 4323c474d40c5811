"""The statistic definitions of THEORY.md against a direct numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sigprop import moments
from sigprop._moments import reduction_dims
from tests.helpers import offset_input


def numpy_moments(x: np.ndarray, channel_axis: int) -> tuple[float, float]:
    per_channel = np.moveaxis(x, channel_axis, 0).reshape(x.shape[channel_axis], -1)
    mu = per_channel.mean(axis=1)
    sigma2 = ((per_channel - mu[:, None]) ** 2).mean(axis=1)  # population variance
    return float(sigma2.mean()), float((mu**2).mean())


@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 7), (4, 5, 6, 7), (2, 5, 3, 4, 2)])
def test_channels_first_matches_numpy(shape: tuple[int, ...]) -> None:
    x = offset_input(shape, seed=1)
    var, sq_mean = numpy_moments(x.numpy(), channel_axis=1)
    m = moments(x)
    assert m.var == pytest.approx(var, rel=1e-12)
    assert m.sq_mean == pytest.approx(sq_mean, rel=1e-12)
    assert m.m2 == pytest.approx(float((x.numpy() ** 2).mean()), rel=1e-12)


def test_channels_last_tokens_match_numpy() -> None:
    x = offset_input((3, 6, 10), seed=2).transpose(1, 2)  # (N, T, C) with C = 6
    var, sq_mean = numpy_moments(x.numpy(), channel_axis=-1)
    m = moments(x, channels_last=True)
    assert (m.var, m.sq_mean) == pytest.approx((var, sq_mean), rel=1e-12)
    # Reading the same tokens as channels-first would average over the wrong axis.
    assert moments(x).sq_mean != pytest.approx(sq_mean, rel=1e-3)


def test_float32_input_is_reduced_in_float64() -> None:
    x = offset_input((8, 4, 16, 16), seed=3)
    exact = moments(x)
    approx = moments(x.float())
    assert approx.var == pytest.approx(exact.var, rel=1e-6)
    assert approx.sq_mean == pytest.approx(exact.sq_mean, rel=1e-6)


def test_large_float32_values_do_not_overflow_when_squared() -> None:
    x = torch.full((2, 3, 4), 1e30, dtype=torch.float32)  # x**2 = 1e60 overflows float32
    x[0] = -1e30
    m = moments(x)
    assert m.var == pytest.approx(1e60, rel=1e-6)
    assert m.sq_mean == 0.0


def test_non_finite_activations_give_non_finite_statistics() -> None:
    x = torch.ones(2, 3, 4)
    x[0, 0, 0] = float("inf")
    assert not moments(x).finite


def test_activation_without_channel_dimension_is_rejected() -> None:
    with pytest.raises(ValueError, match="batch and a channel dimension, got 1"):
        reduction_dims(1, channels_last=False)
