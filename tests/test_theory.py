"""Closed-form predictions: the recursions of THEORY.md, anchored per stage, on finite images."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch

import sigprop
from sigprop import InputSpec, Trace, measure, stats
from sigprop.theory import (
    BN_BRANCH_SQ_MEAN,
    BN_BRANCH_VAR,
    _Image,
    _relu_variance,
    channel_mean_factor,
    predict,
    predict_gradients,
)


def traced(depth: int, padding: str = "circular", **kwargs: object) -> Trace:
    """Circular padding by default: the infinite-image closed forms hold exactly."""
    net = sigprop.models.resnet(depth, width=8, padding=padding, seed=0,
                                **kwargs)  # type: ignore[arg-type]
    return measure(net, InputSpec("gaussian", (2, 3, 8, 8), seed=0), model_info=net.config)


def test_relu_constants() -> None:
    # E[relu(z)] = 1/sqrt(2 pi) for z ~ N(0, 1); a He conv doubles its square into mu_c**2.
    assert BN_BRANCH_SQ_MEAN == pytest.approx(2 * (1 / math.sqrt(2 * math.pi)) ** 2)
    assert BN_BRANCH_VAR + BN_BRANCH_SQ_MEAN == 1.0


@pytest.mark.parametrize("size", [4, 16, 32])
def test_channel_mean_factor_counts_the_relu_means_that_land_on_the_map(size: int) -> None:
    # One axis, computed position by position: the last conv's input has variance 2/3 at the
    # border (conv1 saw 2 of 3 taps there), renormalized to mean 1 by BN; its ReLU means are
    # the square roots. Each tap offset of the last conv averages the means that land on the
    # map; E[mu^2] sums their squares over the 3 offsets (i.i.d. weights), relative to 3 on an
    # infinite image.
    variance = np.ones(size)
    variance[[0, -1]] = 2 / 3
    relu_mean = np.sqrt(variance / variance.mean())
    offsets = [relu_mean.mean(), relu_mean[1:].sum() / size, relu_mean[:-1].sum() / size]
    per_axis = sum(o**2 for o in offsets) / 3
    assert channel_mean_factor(size) == pytest.approx(per_axis**2)
    assert channel_mean_factor(size, 2 * size) == pytest.approx(
        per_axis * channel_mean_factor(2 * size) ** 0.5)
    assert channel_mean_factor(size, circular=True) == 1.0


@pytest.mark.parametrize("size", [4, 8, 16, 32])
def test_zero_padding_lowers_the_bn_branch_by_the_border_factor(size: int) -> None:
    trace = measure(sigprop.models.resnet(3, width=4, seed=0),
                    InputSpec("gaussian", (2, 3, size, size), seed=0))
    p = predict(trace)
    assert p is not None
    # Per axis, conv1's border outputs see 2 of 3 taps; BN rescales; conv2 averages the taps
    # that land on the map: (9H - 10) / (3 (3H - 2)). The channel means lose their factor.
    factor = ((9 * size - 10) / (3 * (3 * size - 2))) ** 2
    assert [b.residual_m2 for b in p.blocks] == pytest.approx([factor] * 3)
    sq_step = p.blocks[1].skip_sq_mean - p.blocks[0].skip_sq_mean
    assert sq_step == pytest.approx(channel_mean_factor(size) / math.pi)
    assert f"f = {factor:.3f} (zero padding" in p.rule


@pytest.mark.parametrize(("size", "padding"), [(4, "zeros"), (8, "zeros"), (16, "zeros"),
                                               (32, "zeros"), (8, "circular")])
def test_padding_corrected_theory_matches_the_measured_slope(size: int, padding: str) -> None:
    merged = None
    for seed in range(4):
        net = sigprop.models.resnet(16, width=32, padding=padding, seed=seed)
        trace = measure(net, InputSpec("gaussian", (4, 3, size, size), seed=seed))
        merged = trace if merged is None else merged.merge(trace)
    assert merged is not None
    slope = stats.fit(merged, stats.FitId.SKIP_M2_SLOPE)
    sq_slope = stats.fit(merged, stats.FitId.SKIP_SQ_MEAN_SLOPE)
    assert slope.predicted is not None and sq_slope.predicted is not None
    assert slope.contains(slope.predicted), (slope.estimate, slope.ci95, slope.predicted)
    assert sq_slope.contains(sq_slope.predicted)


@pytest.mark.parametrize("circular", [False, True])
def test_variance_of_a_conv_of_relu_counts_the_means_each_tap_reads(circular: bool) -> None:
    # Position by position on a 5x4 map with an uneven second-moment map s: the conv's mean
    # second moment averages, over outputs, s at the taps that land; its channel mean sums, per
    # tap offset, the ReLU means sqrt(s / (2 pi)) the tap reads (i.i.d. weights of variance
    # 2 / (9 C)): E[mu^2] = (2/9) sum_offsets (sum / positions)^2 / (2 pi).
    rng = np.random.default_rng(0)
    second = rng.uniform(0.5, 1.5, (5, 4))
    height, width = second.shape
    landed, reads = 0.0, np.zeros((3, 3))
    for y, x, dy, dx in itertools.product(range(height), range(width), (-1, 0, 1), (-1, 0, 1)):
        q, r = y + dy, x + dx
        if circular or (0 <= q < height and 0 <= r < width):
            landed += second[q % height, r % width] / 9
            reads[dy + 1, dx + 1] += math.sqrt(second[q % height, r % width])
    sq_mean = 2 / 9 * ((reads / second.size) ** 2).sum() / (2 * math.pi)
    # E[mu_c(p) mu_c]: the mean at p times the map's mean share the same weights, tap by tap.
    cross = np.zeros_like(second)
    for y, x, dy, dx in itertools.product(range(height), range(width), (-1, 0, 1), (-1, 0, 1)):
        q, r = y + dy, x + dx
        if circular or (0 <= q < height and 0 <= r < width):
            cross[y, x] += 2 / 9 * math.sqrt(second[q % height, r % width]) \
                * reads[dy + 1, dx + 1] / second.size / (2 * math.pi)
    image = _Image.of(height, width, circular)
    assert image.relu_conv_sq_mean(second) == pytest.approx(sq_mean)
    assert image.relu_conv_mean_cross(second) == pytest.approx(cross)
    assert cross.mean() == pytest.approx(sq_mean)
    assert image.relu_conv_variance(second) == pytest.approx(landed / second.size - sq_mean)
    uniform = np.ones_like(second)
    if circular:  # the infinite image: second moment 1, squared mean 1/pi
        assert image.relu_conv_variance(uniform) == pytest.approx(BN_BRANCH_VAR)
    # relu(z): second moment s/2, mean sqrt(s / (2 pi)) per position.
    assert _relu_variance(second) == pytest.approx(
        second.mean() / 2 - np.sqrt(second / (2 * math.pi)).mean() ** 2)
    assert _relu_variance(uniform) == pytest.approx(BN_BRANCH_VAR / 2)


@pytest.mark.parametrize(("size", "batch"), [(16, 8), (32, 4)])
def test_zero_padding_leaves_the_bn_gradient_ratio_as_close_as_circular_padding(
        size: int, batch: int) -> None:
    # rho_l, the branch's share of the gradient, measured over predicted (BN v2, 8 blocks,
    # width 16, seeds 0-3), with zero padding over the same with circular padding (same weights
    # and inputs: the excess that finite width and batch give either way, about +7% here,
    # cancels): 1.003 at 16x16, 1.002 at 32x32. The former rule, BN dividing by (1 - 1/pi) m
    # (m the padded convolution's mean second moment), gave 0.940 and 0.969: the channel mean
    # that the second BN subtracts is that of border and interior together, and BN's input is
    # the skip path's own map about its channel means, larger in the interior (without the
    # channel means' share of that map: 1.010 and 1.006).
    measured = {}
    for padding in ("zeros", "circular"):
        ratios = []
        for seed in range(4):
            net = sigprop.models.resnet(8, width=16, padding=padding, seed=seed)
            trace = measure(net, InputSpec("gaussian", (batch, 3, size, size), seed=seed),
                            backward=True)
            prediction = predict_gradients(trace)
            assert prediction is not None and prediction.exact
            ratios += [b.grad.ratio / p for b, p in zip(trace.runs[0].blocks, prediction.ratio,
                                                         strict=True) if b.grad]
        measured[padding] = float(np.mean(ratios))
    assert measured["zeros"] / measured["circular"] == pytest.approx(1.0, abs=0.015)


def test_bn_v2_is_linear_within_each_stage() -> None:
    trace = traced(6, stages=2)
    p = predict(trace)
    assert p is not None and p.family == "bn-v2" and p.exact
    blocks = trace.runs[0].blocks
    for start, stop in ((0, 3), (3, 6)):
        m0 = blocks[start].skip.m2
        for l, pred in enumerate(p.blocks[start:stop]):
            assert pred.skip_m2 == pytest.approx(m0 + l)
            assert pred.ratio == pytest.approx(1 / (m0 + l))
            assert pred.skip_var == pytest.approx(blocks[start].skip.var + l * BN_BRANCH_VAR)
            assert pred.skip_sq_mean == pytest.approx(
                blocks[start].skip.sq_mean + l * BN_BRANCH_SQ_MEAN)


def test_relu_bn_ordering_adds_two_per_block_without_mean() -> None:
    trace = traced(4, order="relu-bn")
    p = predict(trace)
    assert p is not None and p.family == "bn-v2-relu-bn"
    first = trace.runs[0].blocks[0].skip
    assert [b.skip_m2 for b in p.blocks] == pytest.approx([first.m2 + 2 * l for l in range(4)])
    assert [b.skip_sq_mean for b in p.blocks] == pytest.approx([first.sq_mean] * 4)


@pytest.mark.parametrize(("kwargs", "family", "growth"), [
    ({"norm": "none"}, "unnormalized", 2.0),
    ({"norm": "skipinit", "alpha": 0.5}, "skipinit", 1.25),
    ({"norm": "sqrt-depth"}, "sqrt-depth", 1.25),  # d = 4 blocks
])
def test_geometric_families(kwargs: dict[str, Any], family: str, growth: float) -> None:
    trace = traced(4, **kwargs)
    p = predict(trace)
    assert p is not None and p.family == family
    m0 = trace.runs[0].blocks[0].skip.m2
    assert [b.skip_m2 for b in p.blocks] == pytest.approx([m0 * growth**l for l in range(4)])
    assert p.blocks[3].output_m2 == pytest.approx(m0 * growth**4)


def test_v1_is_flagged_approximate_and_other_models_have_no_prediction() -> None:
    p = predict(traced(3, variant="v1"))
    assert p is not None and not p.exact and "approximately" in p.rule
    net = sigprop.models.resnet(2, seed=0)
    plain = measure(net, InputSpec("gaussian", (2, 3, 8, 8), 0), model_info={"name": "mine"})
    assert predict(plain) is None


def toy_network(norm: str, depth: int, alpha: float = 0.0, width: int = 512, batch: int = 512,
                seed: int = 0) -> Trace:
    """An independent numpy simulation: a residual MLP with v2 branches, He-initialized.

    Branch: [BN] - ReLU - Linear - [BN] - ReLU - Linear - gain, BN over the batch per feature.
    Features play the role of channels, so the closed forms apply unchanged.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, width))

    def bn(h: np.ndarray) -> np.ndarray:
        return (h - h.mean(0)) / h.std(0) if norm == "batchnorm" else h

    def he(h: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.maximum(h, 0.0) @ rng.normal(0.0, math.sqrt(2 / width),
                                                          (width, width))
        return out

    gain = {"skipinit": alpha, "sqrt-depth": 1 / math.sqrt(depth)}.get(norm, 1.0)
    skips, residuals = [], []
    for _ in range(depth):
        r = gain * he(bn(he(bn(x))))
        skips.append(sigprop.moments(torch.from_numpy(x)))
        residuals.append(sigprop.moments(torch.from_numpy(r)))
        x = x + r
    blocks = tuple(
        sigprop.BlockStats(l, f"blocks.{l}", 0, sigprop.Shortcut.IDENTITY, s, r,
                           sigprop.Moments(math.nan, math.nan), 0.0)
        for l, (s, r) in enumerate(zip(skips, residuals, strict=True)))
    config = {"name": "resnet", "depth": depth, "variant": "v2", "norm": norm,
              "alpha": alpha if norm == "skipinit" else None}
    return Trace(config, InputSpec("gaussian", (batch, width), seed), "train",
                 (sigprop.Run(seed, blocks),))


def test_bn_v2_prediction_matches_a_numpy_simulation() -> None:
    toy = toy_network("batchnorm", 24)
    p = predict(toy)
    assert p is not None
    for block, pred in zip(toy.runs[0].blocks, p.blocks, strict=True):
        assert block.skip.m2 == pytest.approx(pred.skip_m2, rel=0.05)
        assert block.residual.m2 == pytest.approx(pred.residual_m2, rel=0.05)
        assert block.residual.var == pytest.approx(BN_BRANCH_VAR, rel=0.1)
        assert block.residual.sq_mean == pytest.approx(BN_BRANCH_SQ_MEAN, rel=0.2)
        assert block.skip.var == pytest.approx(pred.skip_var, rel=0.1)


@pytest.mark.parametrize(("norm", "alpha"), [("none", 0.0), ("skipinit", 0.5),
                                             ("sqrt-depth", 0.0)])
def test_geometric_predictions_match_a_numpy_simulation(norm: str, alpha: float) -> None:
    toy = toy_network(norm, 12, alpha=alpha)
    p = predict(toy)
    assert p is not None and p.growth is not None
    m2 = np.array([b.skip.m2 for b in toy.runs[0].blocks])
    assert np.mean(m2[1:] / m2[:-1]) == pytest.approx(p.growth, rel=0.05)
    residual = np.array([b.residual.m2 for b in toy.runs[0].blocks])
    predicted = np.array([b.residual_m2 for b in p.blocks])
    assert residual == pytest.approx(predicted, rel=0.25)


def test_unnormalized_growth_follows_the_padding_theory_up_to_finite_width() -> None:
    # Width 64, 16x16: the theory (zero padding, infinite width) gives 1.94 per block; width
    # 64 takes about 1.5% off it (docs/theory.md, "Finite width"), width 16 about 3%.
    merged = None
    for seed in range(4):
        net = sigprop.models.resnet(32, norm="none", width=64, seed=seed)
        trace = measure(net, InputSpec("gaussian", (8, 3, 16, 16), seed=seed))
        merged = trace if merged is None else merged.merge(trace)
    assert merged is not None
    growth = stats.fit(merged, stats.FitId.GROWTH_RATE)
    assert growth.predicted == pytest.approx(1.94, abs=0.01)
    assert growth.predicted - 0.1 < growth.estimate < growth.predicted + 0.02


def merged_seeds(depth: int, size: int, padding: str, seeds: int, width: int = 32,
                 **kwargs: object) -> Trace:
    merged = None
    for seed in range(seeds):
        net = sigprop.models.resnet(depth, width=width, padding=padding, seed=seed,
                                    **kwargs)  # type: ignore[arg-type]
        trace = measure(net, InputSpec("gaussian", (8, 3, size, size), seed=seed))
        merged = trace if merged is None else merged.merge(trace)
    assert merged is not None
    return merged


def test_nf_closed_form_on_an_infinite_image() -> None:
    alpha = 0.5
    trace = traced(8, norm="nf", alpha=alpha, stages=2)
    p = predict(trace)
    assert p is not None and p.family == "nf" and p.exact and p.growth is None
    assert "f = 1.000 at the first block (circular padding)" in p.rule
    blocks = trace.runs[0].blocks
    for start in (0, 4):
        m0 = blocks[start].skip.m2
        for l, pred in enumerate(p.blocks[start:start + 4]):
            # beta_l^2 = 1 + l alpha^2 tracks the skip variance: m2_l = m2_0 (1 + l alpha^2),
            # and the branch adds alpha^2 m2_0, no channel mean, every block.
            assert pred.skip_m2 == pytest.approx(m0 * (1 + l * alpha**2))
            assert pred.residual_m2 == pytest.approx(alpha**2 * m0)
            assert pred.ratio == pytest.approx(alpha**2 / (1 + l * alpha**2))
            assert pred.skip_sq_mean == pytest.approx(blocks[start].skip.sq_mean)


# Width 64 at 16x16: at width 32 finite width adds ~2% to the second stage's slope there (40
# seeds: 0.0300 [0.0297, 0.0304] against 0.0293), 0.5% at width 64 (docs/theory.md).
@pytest.mark.parametrize(("size", "padding", "width"), [(8, "zeros", 32), (16, "zeros", 64),
                                                        (8, "circular", 32)])
def test_nf_skip_grows_by_alpha_squared_per_block_and_restarts_at_transitions(
        size: int, padding: str, width: int) -> None:
    depth, alpha = 24, 0.2
    trace = merged_seeds(depth, size, padding, 6, width, norm="nf", stages=2)
    for stage in (0, 1):
        slope = stats.fit(trace, stats.FitId.SKIP_M2_SLOPE, stage)
        assert slope.predicted is not None
        assert slope.contains(slope.predicted), (stage, slope.estimate, slope.ci95,
                                                 slope.predicted)
        start = trace.by_stage()[stage][0].index
        m0 = np.mean([run.blocks[start].skip.m2 for run in trace.runs])
        # alpha^2 m2_0 per block on an infinite image; zero padding takes its border factor off.
        infinite = alpha**2 * m0
        assert (slope.predicted == pytest.approx(infinite, rel=1e-9) if padding == "circular"
                else 0.6 * infinite < slope.predicted < 0.95 * infinite)
    # The transition's 1x1 WS shortcut of act(x / beta) restarts the skip path at the variance
    # of x / beta, beta^2 = 1 + 12 alpha^2 the previous stage's expected variance: at 1 on an
    # infinite image; zero padding keeps the previous stage's deficit (x / beta below 1).
    start = trace.by_stage()[1][0].index
    restarted = [run.blocks[start].skip.m2 / (run.blocks[start - 1].output.m2
                                              / (1 + 12 * alpha**2)) for run in trace.runs]
    assert np.mean(restarted) == pytest.approx(1.0, abs=0.05)
    level = np.mean([run.blocks[start].skip.m2 for run in trace.runs])
    assert level == pytest.approx(1.0, abs=0.05) if padding == "circular" else 0.7 < level < 0.95
    verdict = stats.report(trace).verdict("skip_linear_growth", 0)
    assert verdict.predicted is not None  # NF is a linear theory, held to its slope


def test_fixup_with_zero_last_layers_predicts_the_identity() -> None:
    trace = merged_seeds(12, 8, "zeros", 2, width=8, norm="fixup")
    p = predict(trace)
    assert p is not None and p.family == "fixup" and p.exact and p.growth == 1.0
    m0 = trace.runs[0].blocks[0].skip.m2
    assert all(b.residual_m2 == 0 and b.ratio == 0 for b in p.blocks)
    assert np.mean([run.blocks[0].skip.m2 for run in trace.runs]) == pytest.approx(
        p.blocks[-1].skip_m2)
    assert all(run.blocks[-1].skip.m2 == run.blocks[0].skip.m2 for run in trace.runs)
    assert m0 > 0
    result = stats.report(trace)
    assert result.verdict("identity_at_init").outcome is stats.Outcome.CONSISTENT
    assert result.verdict("skip_linear_growth").measured == 0.0


@pytest.mark.parametrize(("size", "padding"), [(16, "zeros"), (8, "circular")])
def test_fixup_without_zero_last_layers_grows_by_one_over_depth(size: int, padding: str) -> None:
    depth = 32
    trace = merged_seeds(depth, size, padding, 6, norm="fixup", fixup_zero_last=False)
    p = predict(trace)
    assert p is not None and p.family == "fixup-nonzero" and p.growth == 1 + 1 / depth
    growth = stats.fit(trace, stats.FitId.GROWTH_RATE)
    assert growth.predicted is not None and growth.contains(growth.predicted), (
        growth.estimate, growth.ci95, growth.predicted)
    if padding == "circular":  # (1 + 1/d) per block, ~e over the network
        assert growth.predicted == pytest.approx(1 + 1 / depth)
    v1 = predict(merged_seeds(8, 8, padding, 1, width=8, norm="fixup", variant="v1",
                              fixup_zero_last=False))
    assert v1 is not None and not v1.exact and v1.growth == 1 + 2 / 8


@pytest.mark.parametrize(("kwargs", "proportional"), [
    ({}, False), ({"order": "relu-bn"}, False), ({"variant": "v1"}, False),
    ({"norm": "none"}, True), ({"norm": "skipinit", "alpha": 0.5}, True),
    ({"norm": "skipinit", "alpha": 0.0}, False), ({"norm": "sqrt-depth"}, True),
    ({"norm": "nf"}, True), ({"norm": "nf", "nf_zero_init": True}, False),
    ({"norm": "fixup"}, False), ({"norm": "fixup", "fixup_zero_last": False}, True),
])
def test_branches_without_normalization_are_proportional_to_their_skip_path(
        kwargs: dict[str, Any], proportional: bool) -> None:
    # The flag the fits use to pick the skip slopes' interval, against the network itself: on
    # twice the input (the first block's skip path exactly doubled), a proportional branch's
    # second moment is 4x larger, a BN branch's does not change, a zero branch stays 0.
    net = sigprop.models.resnet(2, width=8, padding="circular", seed=0,
                                **kwargs)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    once, twice = (measure(net, scale * x, model_info=net.config) for scale in (1.0, 2.0))
    a, b = once.runs[0].blocks[0].residual.m2, twice.runs[0].blocks[0].residual.m2
    assert b == pytest.approx(4 * a, rel=1e-5) if proportional else \
        a == 0 == b or b == pytest.approx(a, rel=1e-4)
    p = predict(once)
    assert p is not None and p.proportional is proportional


def test_branch_and_output_statistics_continue_the_skip_path() -> None:
    # The block's output is the next block's skip path, and on an infinite image (circular
    # padding) the BN branch splits into 1 - 1/pi of variance and 1/pi of squared mean.
    p = predict(traced(4))
    assert p is not None
    for block, following in itertools.pairwise(p.blocks):
        assert block.output_var == pytest.approx(following.skip_var)
        assert block.output_sq_mean == pytest.approx(following.skip_sq_mean)
    assert [b.residual_var for b in p.blocks] == pytest.approx([1 - 1 / math.pi] * 4)
    assert [b.residual_sq_mean for b in p.blocks] == pytest.approx([1 / math.pi] * 4)
