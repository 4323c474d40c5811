"""measure(): values against closed form, call records, and model-state hygiene."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sigprop
from sigprop import InputSpec, measure
from tests.helpers import ScaledBlock, assert_unchanged, offset_input, snapshot


def test_scaled_blocks_give_closed_form_statistics(scaled_model: nn.Module) -> None:
    x = offset_input((4, 3, 5, 5), seed=0)
    base = sigprop.moments(x)
    trace = measure(scaled_model, x)
    first, second = trace.runs[0].blocks
    # Block 0: skip = x, residual = 0.5 x, output = 1.5 x.  Block 1: skip = 1.5 x,
    # residual = -2 * 1.5 x = -3 x, output = -1.5 x.
    for block, (s, r, o) in ((first, (1.0, 0.5, 1.5)), (second, (1.5, -3.0, -1.5))):
        for moments, factor in ((block.skip, s), (block.residual, r), (block.output, o)):
            assert moments.var == pytest.approx(factor**2 * base.var, rel=1e-12)
            assert moments.sq_mean == pytest.approx(factor**2 * base.sq_mean, rel=1e-12)
    assert second.ratio == pytest.approx(4.0, rel=1e-12)
    # cross = mean(skip * residual): 0.5 E[x^2], then 1.5 * (-3) E[x^2].
    assert first.cross == pytest.approx(0.5 * base.m2, rel=1e-12)
    assert second.cross == pytest.approx(-4.5 * base.m2, rel=1e-12)
    # Output = 1.5 x is parallel to skip = x; output = -1.5 x is anti-parallel to skip = 1.5 x.
    assert first.cosine == pytest.approx(1.0, rel=1e-12)
    assert second.cosine == pytest.approx(-1.0, rel=1e-12)
    assert second.correlation == pytest.approx(-1.0, rel=1e-12)
    assert second.branch_norm_ratio == pytest.approx(2.0, rel=1e-12)
    assert [b.name for b in trace.runs[0].blocks] == ["0", "1"]
    assert trace.input == InputSpec("tensor", (4, 3, 5, 5), None)


def test_each_call_is_recorded_and_stages_follow_projections() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = ScaledBlock(3, 1.0)
            self.proj = nn.Conv2d(3, 3, 1, bias=False)
            self.add = sigprop.ResidualAdd("projection")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.block(self.block(x))
            out: torch.Tensor = self.block(self.add(self.proj(x), x))
            return out

    x = offset_input((2, 3, 4, 4), dtype=torch.float32)
    blocks = sigprop.find_blocks(Twice(), x)
    assert [(b.index, b.name, b.stage, b.shortcut.value) for b in blocks] == [
        (0, "block", 0, "identity"), (1, "block", 0, "identity"),
        (2, "Twice", 1, "projection"), (3, "block", 1, "identity"),
    ]
    trace = measure(Twice(), x)
    # The second call sees the doubled input of the first: skip m2 grows by 4.
    one, two = trace.runs[0].blocks[:2]
    assert two.skip.m2 == pytest.approx(4 * one.skip.m2, rel=1e-5)


def test_gaussian_input_is_reproducible_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = sigprop.gaussian_input((3, 4), seed=7)
    net = sigprop.models.resnet(3, seed=1)
    trace = measure(net, InputSpec("gaussian", (2, 3, 8, 8), seed=5))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, sigprop.gaussian_input((3, 4), seed=7))
    assert not torch.equal(a, sigprop.gaussian_input((3, 4), seed=8))
    assert trace.runs[0].seed == 5 and trace.input.seed == 5


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_model_state_is_bitwise_unchanged(bn_mode: str) -> None:
    net = sigprop.models.resnet(4, stages=2, seed=0)
    net.blocks[1].train(False)  # a mixed-mode model must come back mixed
    net.blocks[0].norm1.track_running_stats = True
    user_hook = net.blocks[0].register_forward_hook(lambda *args: None)
    before = snapshot(net)
    trace = measure(net, InputSpec("gaussian", (4, 3, 8, 8), seed=0), bn_mode=bn_mode)
    assert trace.n_blocks == 4 and trace.bn_mode == bn_mode
    assert_unchanged(net, before)
    assert net.state_dict()["blocks.0.norm1.num_batches_tracked"].item() == 0
    user_hook.remove()


def test_a_train_override_runs_when_measuring_switches_to_eval_mode() -> None:
    class CountsModes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.modes: list[bool] = []

        def train(self, mode: bool = True) -> CountsModes:
            self.modes.append(mode)
            return super().train(mode)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert not self.training
            return x

    net = sigprop.models.resnet(2, seed=0)
    counter = net.blocks[0].gain = CountsModes()  # in place of an identity
    before = snapshot(net)
    assert measure(net, InputSpec("gaussian", (2, 3, 8, 8), seed=0)).n_blocks == 2
    assert counter.modes == [False]
    assert_unchanged(net, before)


def test_the_side_effects_of_a_train_override_are_undone() -> None:
    class FreezesWhenEval(nn.Module):  # as some backbones freeze parts of themselves
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(16, 16, 1)
            self.frozen = False

        def train(self, mode: bool = True) -> FreezesWhenEval:
            super().train(mode)
            self.frozen = not mode
            self.conv.requires_grad_(mode)
            self.conv.training = True  # keeps one child in train mode
            return self

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 0 * self.conv(x)

    net = sigprop.models.resnet(2, seed=0)
    freezer = net.blocks[0].gain = FreezesWhenEval()
    before = snapshot(net)
    assert measure(net, InputSpec("gaussian", (2, 3, 8, 8), seed=0)).n_blocks == 2
    assert freezer.frozen is False and freezer.conv.weight.requires_grad
    assert_unchanged(net, before)


def test_model_state_is_restored_when_forward_raises() -> None:
    net = sigprop.models.resnet(4, seed=0)

    def fail(module: nn.Module, args: object) -> None:
        raise RuntimeError("boom")

    failing = net.blocks[2].register_forward_pre_hook(fail)
    before = snapshot(net)
    expected = r"after block 1 \(blocks\.1\): RuntimeError: boom"
    with pytest.raises(sigprop.ForwardError, match=expected):
        measure(net, InputSpec("gaussian", (2, 3, 8, 8), seed=0))
    assert_unchanged(net, before)
    failing.remove()
    assert measure(net, InputSpec("gaussian", (2, 3, 8, 8), seed=0)).n_blocks == 4


def test_train_mode_uses_batch_statistics_and_eval_mode_running_ones() -> None:
    net = sigprop.models.resnet(16, seed=0)
    spec = InputSpec("gaussian", (8, 3, 8, 8), seed=0)
    train = measure(net, spec, bn_mode="train").runs[0].blocks
    evaluated = measure(net, spec, bn_mode="eval").runs[0].blocks
    # Batch statistics: every branch has second moment ~1. Fresh running statistics make BN the
    # identity, so the network behaves unnormalized and the branch grows with the skip path.
    assert all(0.5 < b.residual.m2 < 1.5 for b in train)
    assert evaluated[-1].skip.m2 > 100 * train[-1].skip.m2


def test_overflow_is_kept_and_reported() -> None:
    # A branch gain of 100: x1e4 per block, float32 overflows in ~20 blocks.
    net = sigprop.models.resnet(40, norm="skipinit", alpha=100.0, width=8, seed=0)
    trace = measure(net, InputSpec("gaussian", (2, 3, 8, 8), seed=0))
    run = trace.runs[0]
    assert run.first_overflow is not None and 10 < run.first_overflow < 40
    before = run.blocks[run.first_overflow - 1]
    assert before.finite and before.skip.m2 > 1e60  # float64 statistics of float32 activations
    assert not run.blocks[run.first_overflow].finite
    assert not math.isfinite(run.blocks[-1].skip.m2)


def test_model_without_marked_addition_is_rejected() -> None:
    with pytest.raises(sigprop.NoResidualBlockError, match="no residual block found in Sequential"):
        measure(nn.Sequential(nn.Linear(3, 3)), torch.ones(2, 3))


def test_bad_arguments_are_rejected_before_any_forward() -> None:
    net = sigprop.models.resnet(2, seed=0)
    with pytest.raises(ValueError, match="unknown bn_mode 'batch': choose one of 'train', 'eval'"):
        measure(net, torch.ones(1, 3, 4, 4), bn_mode="batch")
    with pytest.raises(TypeError, match=r"inputs must be a torch\.Tensor or a sigprop\.InputSpec"):
        measure(net, [1, 2, 3])  # type: ignore[arg-type]


def test_declared_gain_is_reported_and_a_wrong_name_is_a_clear_error() -> None:
    net = sigprop.models.resnet(3, norm="skipinit", alpha=0.25, seed=0)
    trace = measure(net, InputSpec("gaussian", (2, 3, 8, 8), seed=0))
    assert [b.gain for b in trace.runs[0].blocks] == ["gain.alpha = 0.25"] * 3
    block = ScaledBlock(3, 1.0)
    block.add = sigprop.ResidualAdd(gain="branch.scale")
    with pytest.raises(ValueError, match=r"ResidualAdd\(gain='branch.scale'\) names no parameter"):
        measure(block, offset_input((2, 3, 4, 4), dtype=torch.float32))
