"""The paper ResNets: structure, initialization, configuration errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sigprop
from sigprop.models import PostActBlock, PreActBlock, ResNetConfig, resnet, stage_sizes


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
        "num_classes": 10,
    }
    assert ResNetConfig.from_dict(config.to_dict()) == config
    assert hash(config) == hash(ResNetConfig.from_dict(config.to_dict()))


def test_config_is_read_back_from_a_trace_model() -> None:
    trace = sigprop.measure(resnet(2, seed=0), sigprop.InputSpec("gaussian", (2, 3, 4, 4), 0))
    assert ResNetConfig.of(trace.model) == ResNetConfig(2)
    older = {k: v for k, v in trace.model.items() if k != "padding"}  # before --padding
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
    ({"depth": 2, "alpha": 0.5}, "alpha applies only to norm='skipinit'"),
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
