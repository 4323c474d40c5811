"""The paper ResNets: structure, initialization, configuration errors."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pytest
import torch
from torch import nn

import sigprop
from sigprop.models import (
    NF_GAMMA,
    FixupBasicBlock,
    FixupPreActBlock,
    NFBlock,
    Norm,
    PostActBlock,
    PreActBlock,
    ResNetConfig,
    ScaledReLU,
    Variant,
    WSConv2d,
    nf_betas,
    resnet,
    stage_sizes,
)


@pytest.mark.parametrize(("depth", "stages", "sizes"),
                         [(1, 1, [1]), (10, 3, [4, 3, 3]), (9, 3, [3, 3, 3]), (5, 5, [1] * 5)])
def test_stage_sizes_split_evenly(depth: int, stages: int, sizes: list[int]) -> None:
    assert stage_sizes(depth, stages) == sizes


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_blocks_stages_and_shortcuts(variant: str) -> None:
    net = resnet(7, variant=variant, stages=3, width=4, seed=0)
    blocks = sigprop.find_blocks(net, sigprop.InputSpec("gaussian", (2, 3, 16, 16), 0))
    assert [(b.name, b.stage, b.shortcut.value) for b in blocks] == [
        ("blocks.0", 0, "identity"), ("blocks.1", 0, "identity"), ("blocks.2", 0, "identity"),
        ("blocks.3", 1, "projection"), ("blocks.4", 1, "identity"),
        ("blocks.5", 2, "projection"), ("blocks.6", 2, "identity"),
    ]
    block_type = PreActBlock if variant == "v2" else PostActBlock
    assert all(isinstance(b, block_type) for b in net.blocks)
    assert [b.conv2.out_channels for b in net.blocks] == [4, 4, 4, 8, 8, 16, 16]
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, 10)


def test_v2_projection_acts_on_the_normalized_input() -> None:
    net = resnet(2, stages=2, width=4, seed=0)
    block = net.blocks[1]
    seen: list[torch.Tensor] = []
    block.shortcut.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(2, 4, 8, 8) * 5 + 3
    block(x)
    expected = torch.relu(block.norm1(x))
    assert torch.equal(seen[0], expected)


def test_convolutions_are_he_initialized() -> None:
    net = resnet(64, width=32, seed=0)
    weights = torch.cat([b.conv1.weight.flatten() for b in net.blocks])
    fan_in = 32 * 9
    assert weights.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.01)
    assert weights.mean().item() == pytest.approx(0.0, abs=1e-3)


def test_norm_variants_have_the_right_gains() -> None:
    skipinit = resnet(9, norm="skipinit", seed=0)
    assert all(isinstance(b.gain.alpha, nn.Parameter) and b.gain.alpha.item() == 0.0
               for b in skipinit.blocks)
    assert resnet(9, norm="skipinit", alpha=0.25).blocks[4].gain.alpha.item() == 0.25
    fixed = resnet(9, norm="sqrt-depth", seed=0)
    assert all(b.gain.alpha.item() == pytest.approx(1 / 3) for b in fixed.blocks)
    assert "blocks.0.gain.alpha" in dict(fixed.named_buffers())  # fixed, not learnable
    assert not any("gain" in name for name, _ in fixed.named_parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fixed.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in resnet(3).modules()) == 3 * 2 + 1


def test_seed_makes_weights_reproducible_without_touching_global_rng() -> None:
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a, b = resnet(3, seed=4), resnet(3, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    other = resnet(3, seed=5).state_dict()["stem.weight"]
    assert not torch.equal(a.state_dict()["stem.weight"], other)


def test_config_records_the_builder_arguments() -> None:
    config = resnet(5, norm="skipinit", alpha=0.1, stages=2).config
    assert config.to_dict() == {
        "name": "resnet", "depth": 5, "variant": "v2", "norm": "skipinit", "width": 16,
        "stages": 2, "alpha": 0.1, "order": "bn-relu", "padding": "zeros", "in_channels": 3,
        "num_classes": 10, "nf_zero_init": False, "fixup_zero_last": True,
    }
    assert ResNetConfig.from_dict(config.to_dict()) == config
    assert hash(config) == hash(ResNetConfig.from_dict(config.to_dict()))


def test_config_is_read_back_from_a_trace_model() -> None:
    trace = sigprop.measure(resnet(2, seed=0), sigprop.InputSpec("gaussian", (2, 3, 4, 4), 0))
    assert ResNetConfig.of(trace.model) == ResNetConfig(2)
    older = {k: v for k, v in trace.model.items()  # before --padding and the NF/Fixup flags
             if k not in ("padding", "nf_zero_init", "fixup_zero_last")}
    assert ResNetConfig.of(older) == ResNetConfig(2)
    assert ResNetConfig.of({"name": "Sequential"}) is None
    with pytest.raises(ValueError, match="unknown norm 'layer'"):
        ResNetConfig.of({**trace.model, "norm": "layer"})
    with pytest.raises(ValueError, match="not a built-in ResNet configuration"):
        ResNetConfig.from_dict({"name": "resnet"})  # no depth


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"depth": 0}, "depth must be >= 1 residual block, got 0"),
    ({"depth": 4, "width": 0}, "width must be >= 1 channel, got 0"),
    ({"depth": 4, "norm": "layernorm"}, "unknown norm 'layernorm': choose one of 'batchnorm'"),
    ({"depth": 4, "variant": "v3"}, "unknown variant 'v3'"),
    ({"depth": 2, "stages": 3}, "stages must be <= depth"),
    ({"depth": 2, "alpha": 0.5}, "alpha applies only to norm='skipinit' or norm='nf'"),
    ({"depth": 2, "norm": "fixup", "alpha": 0.5}, "alpha applies only to norm='skipinit'"),
    ({"depth": 2, "norm": "nf", "variant": "v1"}, "norm='nf' is built on the pre-activation"),
    ({"depth": 2, "nf_zero_init": True}, "nf_zero_init=True applies only to norm='nf'"),
    ({"depth": 2, "norm": "nf", "fixup_zero_last": False},
     "fixup_zero_last=False applies only to norm='fixup', got norm='nf'"),
    ({"depth": 2, "norm": "skipinit", "alpha": math.nan}, "alpha must be a finite number"),
    ({"depth": 2, "order": "relu-bn", "norm": "none"},
     "order 'relu-bn' applies only to variant='v2' with norm='batchnorm'"),
])
def test_bad_configurations_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        resnet(**kwargs)  # type: ignore[arg-type]


def test_non_integer_depth_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"depth must be an integer, got 2\.5"):
        resnet(2.5)  # type: ignore[arg-type]


def test_skipinit_with_alpha_zero_is_exactly_the_identity() -> None:
    net = resnet(32, norm="skipinit", seed=0)
    run = sigprop.measure(net, sigprop.InputSpec("gaussian", (4, 3, 8, 8), seed=0)).runs[0]
    assert all(b.residual.var == 0.0 and b.residual.sq_mean == 0.0 for b in run.blocks)
    assert all(b.skip == run.blocks[0].skip == b.output for b in run.blocks)


def test_nf_and_fixup_configurations() -> None:
    assert ResNetConfig(4, norm=Norm.NF).alpha == 0.2
    assert ResNetConfig(4, norm=Norm.NF, alpha=0.5).alpha == 0.5
    assert ResNetConfig(4, norm=Norm.FIXUP).alpha is None
    config = ResNetConfig(4, norm=Norm.FIXUP, variant=Variant.V1, fixup_zero_last=False)
    assert ResNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(TypeError, match="nf_zero_init must be True or False, got 1"):
        ResNetConfig(4, norm=Norm.NF, nf_zero_init=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_scaled_weight_standardization_matches_a_direct_computation(
        padding: Literal["zeros", "circular"]) -> None:
    torch.manual_seed(0)
    conv = WSConv2d(5, 7, 3, stride=2)
    conv.padding_mode = padding
    with torch.no_grad():
        conv.gain.copy_(torch.linspace(0.5, 2.0, 7).view(7, 1, 1, 1))
    raw = conv.weight.detach().double().numpy().reshape(7, -1)
    fan_in = 5 * 9
    # Per output channel: subtract the mean over the fan-in, divide by the population std and
    # by sqrt(fan-in), times the channel's gain.
    expected = np.stack([g * (row - row.mean()) / (row.std() * math.sqrt(fan_in))
                         for g, row in zip(np.linspace(0.5, 2.0, 7), raw, strict=True)])
    weight = conv.standardized_weight().detach().double().numpy().reshape(7, -1)
    assert weight == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert weight.sum(axis=1) == pytest.approx(np.zeros(7), abs=1e-6)  # a shared mean is removed
    assert (weight**2).sum(axis=1) == pytest.approx(np.linspace(0.5, 2.0, 7) ** 2, rel=1e-5)
    x = torch.randn(2, 5, 9, 9)
    direct = nn.functional.conv2d(
        nn.functional.pad(x, (1, 1, 1, 1), mode="circular") if padding == "circular" else x,
        torch.from_numpy(expected).float().view(7, 5, 3, 3), stride=2,
        padding=0 if padding == "circular" else 1)
    assert torch.allclose(conv(x), direct, atol=1e-5)
    # A shift shared by the inputs is removed wherever all taps land on the map: everywhere with
    # circular padding, in the interior with zero padding (the border misses taps: it leaks).
    shifted = conv(x + 3.0)
    inside = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert torch.allclose(shifted[inside], direct[inside], atol=1e-4)
    assert torch.allclose(shifted, direct, atol=1e-4) == (padding == "circular")


def test_scaled_relu_has_unit_variance_on_a_unit_gaussian() -> None:
    assert NF_GAMMA == pytest.approx(1.71286, abs=1e-5)
    # Var[relu(z)] = 1/2 - 1/(2 pi) for z ~ N(0, 1).
    assert NF_GAMMA**2 * (0.5 - 1 / (2 * math.pi)) == pytest.approx(1.0)
    z = torch.randn(10**6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert ScaledReLU()(z).var().item() == pytest.approx(1.0, abs=0.01)


def test_nf_resnet_structure_and_betas() -> None:
    net = resnet(7, norm="nf", stages=2, seed=0)
    assert all(isinstance(b, NFBlock) for b in net.blocks)
    assert isinstance(net.stem, WSConv2d) and not any(
        isinstance(m, nn.BatchNorm2d) for m in net.modules())
    # Within a stage the expected input variance is 1 + l alpha^2; the transition (block 4)
    # sees the previous stage's 1 + 4 alpha^2 and restarts the skip path at 1.
    assert [b.beta**2 for b in net.blocks] == pytest.approx(
        [1.0, 1.04, 1.08, 1.12, 1.16, 1.04, 1.08])
    assert nf_betas(7, 2, 0.2) == [b.beta for b in net.blocks]
    assert [b.gain.alpha.item() for b in net.blocks] == pytest.approx([0.2] * 7)
    blocks = [b for b in net.blocks if isinstance(b, NFBlock)]
    assert len(blocks) == 7 and all(torch.equal(b.conv2.gain, torch.ones_like(b.conv2.gain))
                                    for b in blocks)
    assert isinstance(net.blocks[4].shortcut, WSConv2d)
    zero = resnet(3, norm="nf", nf_zero_init=True, seed=0)
    assert all((b.conv2.gain == 0).all() for b in zero.blocks)


def test_nf_branches_report_their_gain_and_zero_init_gives_the_identity() -> None:
    inputs = sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0)
    visible = sigprop.measure(resnet(3, norm="nf", seed=0), inputs).runs[0].blocks
    assert [b.gain for b in visible] == ["gain.alpha = 0.2"] * 3
    assert all(b.residual.m2 > 0 for b in visible)
    zero = sigprop.measure(resnet(3, norm="nf", nf_zero_init=True, seed=0), inputs).runs[0]
    assert [b.gain for b in zero.blocks] == ["conv2.gain = 0"] * 3
    assert all(b.residual.m2 == 0 and b.skip == zero.blocks[0].skip for b in zero.blocks)


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_fixup_initialization(variant: str) -> None:
    depth = 16
    net = resnet(depth, norm="fixup", variant=variant, width=32, seed=0)
    block_type = FixupPreActBlock if variant == "v2" else FixupBasicBlock
    assert all(isinstance(b, block_type) for b in net.blocks)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    first = torch.cat([b.conv1.weight.flatten() for b in net.blocks])
    # He init (2 / fan_in) scaled by L^(-1/(2m - 2)) = depth^(-1/2) for m = 2 layers per branch.
    assert first.std().item() == pytest.approx(math.sqrt(2 / (32 * 9) / depth), rel=0.01)
    assert all((b.conv2.weight == 0).all() for b in net.blocks)
    assert (net.head.weight == 0).all()
    biases = [p for name, p in net.named_parameters() if name.endswith(".bias")
              and not name.startswith("head")]
    assert len(biases) == 4 * depth + (variant == "v1") and all(p.item() == 0 for p in biases)
    assert [b.gain.alpha.item() for b in net.blocks] == [1.0] * depth
    nonzero = resnet(depth, norm="fixup", variant=variant, width=32, fixup_zero_last=False,
                     seed=0)
    last = torch.cat([b.conv2.weight.flatten() for b in nonzero.blocks])
    assert last.std().item() == pytest.approx(math.sqrt(2 / (32 * 9)), rel=0.01)


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_fixup_with_zero_last_layers_is_exactly_the_identity(variant: str) -> None:
    net = resnet(12, norm="fixup", variant=variant, stages=2, seed=0)
    run = sigprop.measure(net, sigprop.InputSpec("gaussian", (4, 3, 8, 8), seed=0)).runs[0]
    assert all(b.residual.var == 0.0 and b.residual.sq_mean == 0.0 for b in run.blocks)
    assert all(b.skip == b.output for b in run.blocks)
    assert {b.gain for b in run.blocks} == {"conv2.weight = 0"}
    # v2: the skip path does not move within a stage. v1: the ReLU after the addition keeps
    # the (non-negative) skip path, and rectifies a transition's projection once.
    for stage, blocks in sigprop.Trace.by_stage(
            sigprop.Trace({}, sigprop.InputSpec("tensor", (1,), None), "train", (run,))).items():
        steady = blocks[1:] if variant == "v1" and stage > 0 else blocks
        assert all(b.skip == steady[0].skip for b in steady)


def test_fixup_non_zero_v2_is_the_branch_divided_by_sqrt_depth() -> None:
    # conv1 scaled by depth^(-1/2) and positively homogeneous ReLUs: the same function as
    # dividing the branch by sqrt(depth), draw for draw.
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    fixup = resnet(6, norm="fixup", fixup_zero_last=False, seed=3)
    scaled = resnet(6, norm="sqrt-depth", seed=3)
    assert torch.allclose(fixup.blocks(fixup.stem(x)), scaled.blocks(scaled.stem(x)), rtol=1e-4,
                          atol=1e-5)
