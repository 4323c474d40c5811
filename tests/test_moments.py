"""The statistic definitions of THEORY.md against a direct numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sigprop
from sigprop import moments
from sigprop._moments import channel_dim
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
        channel_dim(1, channels_last=False)


@pytest.mark.parametrize("norm", ["batchnorm", "none"])
def test_measure_is_within_1e_5_of_a_float64_reference_of_the_same_activations(norm: str) -> None:
    net = sigprop.models.resnet(32, norm=norm, stages=2, seed=0)
    reference: list[list[tuple[float, float]]] = []

    def capture(module: torch.nn.Module, args: tuple[torch.Tensor, ...],
                output: torch.Tensor) -> None:
        reference.append([numpy_moments(t.double().numpy(), channel_axis=1)
                          for t in (args[0], args[1], output)])

    adds = [m for m in net.modules() if isinstance(m, sigprop.ResidualAdd)]
    handles = [m.register_forward_hook(capture) for m in adds]
    try:
        trace = sigprop.measure(net, sigprop.InputSpec("gaussian", (8, 3, 16, 16), seed=0))
    finally:
        for handle in handles:
            handle.remove()
    assert len(reference) == trace.n_blocks == 32
    for block, expected in zip(trace.runs[0].blocks, reference, strict=True):
        for measured, (var, sq_mean) in zip((block.skip, block.residual, block.output), expected,
                                            strict=True):
            assert measured.var == pytest.approx(var, rel=1e-5)
            assert measured.sq_mean == pytest.approx(sq_mean, rel=1e-5)


def test_each_skip_is_measured_as_it_is_when_added() -> None:
    from sigprop._accumulators import FastAccumulator

    x = offset_input((2, 3, 4, 4), seed=4, dtype=torch.float32)
    r = torch.ones_like(x)
    acc = FastAccumulator()

    def add(skip: torch.Tensor, residual: torch.Tensor, output: torch.Tensor) -> None:
        block = sigprop.Block(0, "b", 0, sigprop.Shortcut.IDENTITY)
        acc.commit(acc.output(acc.operands(skip, residual, channels_last=False), output), block)

    out = x + r
    add(x, r, out)
    add(out, r, out + r)  # skip is the previous output, unchanged
    out.mul_(2.0)  # modified in place
    add(out, r, out + r)
    (_, _, first_out, _), (second_skip, _, _, _), (third_skip, _, _, _) = acc.results()
    assert second_skip.m2 == pytest.approx(first_out.m2, rel=1e-6)
    assert third_skip.m2 == pytest.approx(4 * first_out.m2, rel=1e-6)
    assert third_skip == sigprop.moments(out)


def test_float32_columns_are_accurate_over_many_rows() -> None:
    # 2^17 tokens per channel: a column-wise float32 norm would drift by ~2e-5 here.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 2**15, 8, generator=g) * torch.linspace(0.5, 3.0, 8) + torch.arange(8.0)
    var, sq_mean = numpy_moments(x.double().numpy(), channel_axis=-1)
    m = moments(x, channels_last=True)
    assert (m.var, m.sq_mean) == pytest.approx((var, sq_mean), rel=1e-6)


def test_channels_last_memory_format_gives_the_same_statistics() -> None:
    x = offset_input((4, 6, 5, 7), seed=6, dtype=torch.float32)
    strided = x.contiguous(memory_format=torch.channels_last)
    assert not strided.is_contiguous()
    expected = (moments(x).var, moments(x).sq_mean)
    for layout in (strided, x.transpose(2, 3)):  # columns view; any other layout (a copy)
        m = moments(layout)
        assert (m.var, m.sq_mean) == pytest.approx(expected, rel=1e-6)


def test_partial_sums_flushed_mid_pass_land_in_the_right_place(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sigprop._moments import _Partials

    net = sigprop.models.resnet(12, norm="none", stages=2, seed=0)
    spec = sigprop.InputSpec("gaussian", (2, 3, 8, 8), seed=0)
    roomy = measure_blocks(net, spec)
    monkeypatch.setattr(_Partials, "BYTES", 1)  # 8 rows: flushed every few blocks
    assert measure_blocks(net, spec) == pytest.approx(roomy, rel=1e-12)


def measure_blocks(net: torch.nn.Module, spec: sigprop.InputSpec) -> list[float]:
    blocks = sigprop.measure(net, spec).runs[0].blocks
    return [v for b in blocks for m in (b.skip, b.residual, b.output) for v in (m.var, m.sq_mean)]


def branch_tensors(model: torch.nn.Module, x: torch.Tensor, module: torch.nn.Module
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Input and output of the one call of ``module`` in ``model(x)``, as float64 copies."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def capture(m: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        seen.append((args[0].double().clone(), out.double().clone()))

    handle = module.register_forward_hook(capture)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    (only,) = seen
    return only


class WrittenThroughData(torch.nn.Module):
    """A write through ``.data`` between two blocks: it bypasses the version counter."""

    def __init__(self) -> None:
        super().__init__()
        self.f = torch.nn.Linear(8, 8)
        self.g = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.f(x)
        x.data.mul_(2.0)
        return x + self.g(x)


def test_a_write_through_data_between_blocks_is_measured_not_stale() -> None:
    torch.manual_seed(0)
    model, x = WrittenThroughData(), torch.randn(64, 8)
    skip, residual = branch_tensors(model, x, model.g)
    second = sigprop.measure(model, x).runs[0].blocks[1]
    assert second.skip.m2 == pytest.approx(float((skip**2).mean()), rel=1e-6)
    assert second.output.m2 == pytest.approx(float(((skip + residual)**2).mean()), rel=1e-6)


class Conv1dWithLength(torch.nn.Module):
    """``(N, C, L)`` activations: a Conv1d and BatchNorm1d over C, a Linear along L."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm1d(4)
        self.along = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.along(self.bn(self.conv(x)))


def test_conv1d_activations_are_channels_first_even_with_a_linear_along_the_length() -> None:
    torch.manual_seed(0)
    x = offset_input((8, 4, 16), seed=1, dtype=torch.float32)
    block = sigprop.measure(Conv1dWithLength(), x).runs[0].blocks[0]
    assert not block.channels_last
    var, sq_mean = numpy_moments(x.double().numpy(), channel_axis=1)
    assert (block.skip.var, block.skip.sq_mean) == pytest.approx((var, sq_mean), rel=1e-6)


class HugeSkip(torch.nn.Module):
    """A skip of order ``size`` next to a residual of order 0.3."""

    def __init__(self, size: float) -> None:
        super().__init__()
        self.f = torch.nn.Linear(8, 8)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x / self.size)


@pytest.mark.parametrize("size", [1e20, 1e25])
def test_overflow_fallback_scales_each_tensor_by_its_own_power_of_two(size: float) -> None:
    torch.manual_seed(0)
    model, x = HugeSkip(size), torch.randn(64, 8) * size  # float32 squares of x overflow
    _, residual = branch_tensors(model, x, model.f)
    block = sigprop.measure(model, x).runs[0].blocks[0]
    var, sq_mean = numpy_moments(residual.numpy(), channel_axis=1)
    assert (block.residual.var, block.residual.sq_mean) == pytest.approx((var, sq_mean), rel=1e-7)
    assert block.skip.m2 == pytest.approx(float((x.double()**2).mean()), rel=1e-6)


class HalfBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_output_statistics_are_those_of_the_rounded_output(dtype: torch.dtype
                                                                        ) -> None:
    torch.manual_seed(0)
    model = HalfBlock().to(dtype)
    x = offset_input((256, 16), seed=2, dtype=torch.float32).to(dtype)
    with torch.no_grad():
        out = (x + model.f(x)).double()
    block = sigprop.measure(model, x).runs[0].blocks[0]
    var, sq_mean = numpy_moments(out.numpy(), channel_axis=1)
    assert (block.output.var, block.output.sq_mean) == pytest.approx((var, sq_mean), rel=1e-6)
