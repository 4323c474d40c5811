"""Scaling laws of THEORY.md on the built-in ResNets, with stated tolerances (CPU, small sizes)."""

from __future__ import annotations

import numpy as np

import sigprop
from sigprop import InputSpec, measure


def skip_m2(trace: sigprop.Trace) -> np.ndarray:
    return np.array([b.skip.m2 for b in trace.runs[0].blocks])


def test_bn_v2_skip_grows_by_one_per_block_and_branch_stays_at_one() -> None:
    slopes = []
    for seed in range(4):
        trace = measure(sigprop.models.resnet(64, seed=seed),
                        InputSpec("gaussian", (16, 3, 16, 16), seed=seed))
        slopes.append(np.polyfit(np.arange(64), skip_m2(trace), 1)[0])
        residual = np.array([b.residual.m2 for b in trace.runs[0].blocks])
        # Zero padding lowers a 3x3 branch's gain a little below 1 on a 16x16 image.
        assert 0.8 <= residual.mean() <= 1.2
        ratio = np.array([b.ratio for b in trace.runs[0].blocks])
        assert ratio[-1] < ratio[0] / 10
    # At width 16 one seed's slope scatters (0.78..1.24 seen over 8 seeds); four average out.
    assert 0.8 <= np.mean(slopes) <= 1.2
    assert all(0.6 <= s <= 1.4 for s in slopes)


def test_unnormalized_second_moment_doubles_per_block() -> None:
    # Width 64: at width 16 a few channels with large means scatter the growth widely.
    growth = []
    for seed in range(4):
        net = sigprop.models.resnet(32, norm="none", width=64, seed=seed)
        m2 = skip_m2(measure(net, InputSpec("gaussian", (8, 3, 16, 16), seed=seed)))
        growth.append(np.mean(m2[1:] / m2[:-1]))
    assert 1.8 <= np.mean(growth) <= 2.2


def test_skipinit_with_alpha_zero_is_the_identity() -> None:
    net = sigprop.models.resnet(32, norm="skipinit", seed=0)
    run = measure(net, InputSpec("gaussian", (4, 3, 8, 8), seed=0)).runs[0]
    assert all(b.residual.var == 0.0 and b.residual.sq_mean == 0.0 for b in run.blocks)
    assert all(b.skip == run.blocks[0].skip == b.output for b in run.blocks)
