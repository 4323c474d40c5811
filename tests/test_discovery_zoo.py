"""Discovery on real torchvision and timm models (built without weights, tiny inputs)."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

import sigprop
from tests.helpers import assert_unchanged, snapshot
from tests.transformer_copies import BertModel, GPT2Model

X = sigprop.InputSpec("gaussian", (2, 3, 32, 32), seed=0)


@pytest.mark.parametrize(("name", "count"), [
    ("resnet18", 8), ("resnet34", 16), ("resnet50", 16), ("resnet101", 33),
    ("wide_resnet50_2", 16), ("resnext50_32x4d", 16),
])
def test_torchvision_resnets(name: str, count: int) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    before = snapshot(model)
    blocks = sigprop.find_blocks(model, X)
    assert_unchanged(model, before)
    assert len(blocks) == count
    expected = [(f"layer{s}.{i}", s - 1) for s in range(1, 5)
                for i in range(len(getattr(model, f"layer{s}")))]
    assert [(b.name, b.stage) for b in blocks] == expected
    # Projections exactly where the block has a downsample (the first block of a stage that
    # changes the shape: layer1.0 too for bottlenecks, which widen 64 -> 256).
    projections = [b.name for b in blocks if b.shortcut is sigprop.Shortcut.PROJECTION]
    assert projections == [b.name for b in blocks
                           if model.get_submodule(b.name).downsample is not None]
    assert projections[-3:] == ["layer2.0", "layer3.0", "layer4.0"] and len(projections) <= 4
    assert all(b.gain is None and not b.channels_last for b in blocks)


def test_torchvision_zero_init_residual_is_reported_as_the_gain() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, zero_init_residual=True)
    blocks = sigprop.measure(model, X).runs[0].blocks
    assert {b.gain for b in blocks} == {"bn2.weight = 0"}
    assert all(b.residual.m2 == 0.0 and b.output == b.skip for b in blocks)


def test_timm_resnet50_zero_initialized_last_bn() -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet50", pretrained=False)
    blocks = sigprop.measure(model, X).runs[0].blocks
    assert len(blocks) == 16 and [b.stage for b in blocks] == [0] * 3 + [1] * 4 + [2] * 6 + [3] * 3
    assert {b.gain for b in blocks} == {"bn3.weight = 0"}
    assert all(b.residual.m2 == 0.0 and b.skip.m2 > 0.1 for b in blocks)


@pytest.mark.parametrize(("name", "first", "gain"), [
    ("resnetv2_50", "stages.0.blocks.0", None),
    # NF-ResNets start every branch at 0 through the gain of their last (standardized) conv,
    # then scale it by alpha = 0.2.
    ("nf_resnet50", "stages.0.0", "conv3.weight (effective) = 0 * constant 0.2"),
])
def test_timm_preactivation_and_normalizer_free(name: str, first: str, gain: str | None) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    blocks = sigprop.measure(model, X).runs[0].blocks
    assert len(blocks) == 16 and blocks[0].name == first
    assert [b.stage for b in blocks] == [0] * 3 + [1] * 4 + [2] * 6 + [3] * 3
    projections = [b.index for b in blocks if b.shortcut is sigprop.Shortcut.PROJECTION]
    assert projections == [0, 3, 7, 13]
    assert {b.gain for b in blocks} == {gain}
    if gain is None:  # pre-activation branches start with BN: m2 of order 1
        assert all(0.1 < b.residual.m2 < 10 for b in blocks)
    else:
        assert all(b.residual.m2 == 0.0 and b.skip.m2 > 0 for b in blocks)


def test_a_shape_change_between_blocks_starts_a_stage() -> None:
    # MobileNetV2's inverted residuals: each group's first block (features.2, 4, 7, 11, 14)
    # changes width or resolution and has no residual, so the residual blocks that follow
    # run at a new shape: they start a new stage without any projection shortcut.
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(weights=None)
    blocks = sigprop.measure(net, sigprop.InputSpec("gaussian", (2, 3, 64, 64), 0)).runs[0].blocks
    stages: dict[int, list[str]] = {}
    for block in blocks:
        assert block.shortcut is sigprop.Shortcut.IDENTITY
        stages.setdefault(block.stage, []).append(block.name)
    assert list(stages.values()) == [["features.3"], ["features.5", "features.6"],
                                     ["features.8", "features.9", "features.10"],
                                     ["features.12", "features.13"],
                                     ["features.15", "features.16"]]


def test_timm_convnext_stages_come_from_shape_changes() -> None:
    # ConvNeXt downsamples between its stages, outside the blocks: identity blocks throughout,
    # a new stage at each change of width and resolution; layer scale 1e-6 on every branch.
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False)
    blocks = sigprop.find_blocks(model, X)
    assert [b.name for b in blocks] == [f"stages.{s}.blocks.{i}" for s, n in enumerate((2, 2, 6, 2))
                                        for i in range(n)]
    assert [b.stage for b in blocks] == [0] * 2 + [1] * 2 + [2] * 6 + [3] * 2
    assert all(b.shortcut is sigprop.Shortcut.IDENTITY and not b.channels_last for b in blocks)
    assert {b.gain for b in blocks} == {"gamma: mean |g| = 1e-06"}


def test_post_ln_torch_transformer_encoder_has_one_stage() -> None:
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)  # norm_first=False
    model = torch.nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)
    x = torch.randn(4, 7, 16)
    blocks = sigprop.measure(model, x).runs[0].blocks
    assert [(b.name, b.stage, b.shortcut.value) for b in blocks] == [
        (f"layers.{i}.{branch}", 0, "identity") for i in range(6)
        for branch in ("self_attn", "linear1")]
    # The FFN's skip is the first LayerNorm's output: unit variance per token, mean 0.
    assert all(b.skip.m2 == pytest.approx(1.0, rel=1e-3) for b in blocks[1::2])


def test_gpt2_block_structure_gives_attention_and_mlp_blocks() -> None:
    torch.manual_seed(0)
    model = GPT2Model(layers=3)
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    blocks = sigprop.measure(model, ids).runs[0].blocks
    assert [(b.name, b.stage, b.shortcut.value, b.channels_last) for b in blocks] == [
        (f"h.{i}.{branch}", 0, "identity", True) for i in range(3) for branch in ("attn", "mlp")]
    with torch.no_grad():
        embedded = (model.wte(ids) + model.wpe(torch.arange(6)[None])).double()
    assert blocks[0].skip.m2 == pytest.approx(float((embedded**2).mean()), rel=1e-6)


def test_bert_block_structure_is_post_ln_with_identity_shortcuts() -> None:
    torch.manual_seed(0)
    model = BertModel(layers=3)
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    blocks = sigprop.measure(model, ids, attention_mask=mask).runs[0].blocks
    assert [(b.name, b.stage, b.shortcut.value) for b in blocks] == [
        (f"encoder.layer.{i}{owner}", 0, "identity") for i in range(3)
        for owner in (".attention", "")]
    # Every skip is a LayerNorm output (the embeddings' or a block's): per-token unit variance.
    assert all(b.skip.m2 == pytest.approx(1.0, rel=1e-3) for b in blocks)
