"""Discovery of residual additions in models that do not mark them: forms, values, hygiene."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

import pytest
import torch
import torch.fx
from torch import nn

import sigprop
from sigprop import find_blocks, measure
from tests.helpers import assert_unchanged, offset_input, snapshot


def scaled_conv(channels: int, c: float) -> nn.Conv2d:
    """A 1x1 convolution computing ``c * x``."""
    conv = nn.Conv2d(channels, channels, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(c * torch.eye(channels).view(channels, channels, 1, 1))
    return conv


def branch(channels: int = 4) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels),
                         nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1))


class XPlusF(nn.Module):
    def __init__(self, c: float = 0.5) -> None:
        super().__init__()
        self.f = scaled_conv(3, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


class FPlusX(XPlusF):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x) + x


class TorchAdd(XPlusF):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.add(self.f(x), x)


class AddInPlace(XPlusF):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.f(x)
        out.add_(x)
        return out


class Bottleneckish(nn.Module):
    """torchvision style: ``out += identity`` with an optional downsample, ReLU after."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class LoopNet(nn.Module):
    """Blocks compute only the branch; the model adds them in a loop over a ModuleList."""

    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.ModuleList(branch() for _ in range(n))
        self.g = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = x + block(x) if i % 2 == 0 else x + self.g * block(x)
        return x


class DataDependent(nn.Module):
    """Control flow on tensor values (torch.fx cannot trace it) and a block called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.block = Bottleneckish(4, 4)
        self.other = Bottleneckish(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.block(x)
        for _ in range(int(x.mean() > -1e9)):  # one more call, known only at run time
            x = self.block(x)
        if float(x.std()) < 0:
            x = self.other(x)
        return x


class Nested(nn.Module):
    """An outer residual block whose branch holds two inner residual blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(Bottleneckish(4, 4), Bottleneckish(4, 4), nn.Conv2d(4, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TokenBlock(nn.Module):
    """A pre-norm transformer-style block on ``(N, T, C)`` tokens: two additions."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mix = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mix(self.norm1(x))
        x = x.reshape(x.shape[0], -1, x.shape[-1])  # layout only (Swin does this): still identity
        return x + self.mlp(self.norm2(x))


class Tokens(nn.Module):
    """Tokens with a positional embedding (not residual) and two blocks."""

    def __init__(self, dim: int = 8, tokens: int = 5) -> None:
        super().__init__()
        self.embed = nn.Linear(3, dim)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim))
        self.blocks = nn.Sequential(TokenBlock(dim), TokenBlock(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.blocks(self.embed(x) + self.pos)
        return out


class NotResidual(nn.Module):
    """Additions of biases, a constant, the tensor itself, a cubic term, an unrelated tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 1)
        self.b = nn.Conv2d(3, 3, 3, padding=1)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.full_bias = nn.Parameter(torch.zeros(1, 3, 4, 4))
        self.register_buffer("noise", torch.randn(2, 3, 4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x) + self.bias + self.full_bias + 1.0
        y = y + y
        y = y + 0.044715 * y**3  # tanh-GELU style: no parametrized layer on the longer path
        return self.a(y) + self.b(self.noise)  # unrelated: one is not computed from the input


class Gained(nn.Module):
    """SkipInit scalar and per-channel layer scale on the branch."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.f = branch()
        self.alpha = nn.Parameter(torch.zeros(()))
        self.g = branch()
        self.gamma = nn.Parameter(torch.full((4,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.alpha * self.f(x)
        return x + self.g(x).mul(self.gamma.view(1, -1, 1, 1))


def names(model: nn.Module, x: torch.Tensor) -> list[tuple[str, int, str]]:
    return [(b.name, b.stage, b.shortcut.value) for b in find_blocks(model, x)]


X = offset_input((2, 3, 4, 4), seed=0, dtype=torch.float32)


@pytest.mark.parametrize("form", [XPlusF, FPlusX, TorchAdd, AddInPlace])
def test_each_form_of_addition_attributes_skip_and_residual_by_value(form: type[nn.Module]
                                                                     ) -> None:
    model = nn.Sequential(form(0.5), form(-2.0)).double()
    x = offset_input((4, 3, 5, 5), seed=1)
    base = sigprop.moments(x)
    blocks = measure(model, x).runs[0].blocks
    assert [(b.name, b.shortcut.value) for b in blocks] == [("0", "identity"), ("1", "identity")]
    # Block 0: skip x, residual 0.5 x, output 1.5 x; block 1: skip 1.5 x, residual -3 x.
    for block, factors in zip(blocks, ((1.0, 0.5, 1.5), (1.5, -3.0, -1.5)), strict=True):
        for moments, factor in zip((block.skip, block.residual, block.output), factors,
                                   strict=True):
            assert moments.var == pytest.approx(factor**2 * base.var, rel=1e-12)
            assert moments.sq_mean == pytest.approx(factor**2 * base.sq_mean, rel=1e-12)


def test_projection_skip_is_told_apart_by_value() -> None:
    class Projected(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shortcut = scaled_conv(3, 3.0)
            self.body = nn.Sequential(scaled_conv(3, 0.5), scaled_conv(3, 0.5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.body(x)
            out += self.shortcut(x)  # in place: the residual is read before it is overwritten
            return torch.relu(out)

    x = offset_input((4, 3, 5, 5), seed=2)
    base = sigprop.moments(x)
    (block,) = measure(Projected().double(), x).runs[0].blocks
    assert (block.name, block.shortcut.value) == ("Projected", "projection")
    for moments, factor in ((block.skip, 3.0), (block.residual, 0.25), (block.output, 3.25)):
        assert moments.m2 == pytest.approx(factor**2 * base.m2, rel=1e-12)


def test_torchvision_style_blocks_with_relu_after_the_addition() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), Bottleneckish(4, 4), Bottleneckish(4, 8, 2),
                          Bottleneckish(8, 8))
    assert names(model, X) == [("1", 0, "identity"), ("2", 1, "projection"), ("3", 1, "identity")]
    # The output statistics are those of the sum, before the ReLU: it has negative values.
    block = measure(model, X).runs[0].blocks[0]
    assert block.output.sq_mean < block.output.m2 and block.output.var > 0
    # Naming the blocks reads the same sum, not the tensor the in-place ReLU left behind.
    named = measure(model, X, blocks=["1", "2", "3"]).runs[0].blocks
    assert named == measure(model, X).runs[0].blocks
    for b in named:
        assert b.output.m2 == pytest.approx(b.skip.m2 + 2 * b.cross + b.residual.m2, rel=1e-6)


def test_module_list_loop_names_the_branch_modules() -> None:
    blocks = find_blocks(LoopNet(), X)
    assert [(b.name, b.shortcut.value, b.gain) for b in blocks] == [
        ("blocks.0", "identity", None), ("blocks.1", "identity", "g = 0.5"),
        ("blocks.2", "identity", None)]


def test_data_dependent_flow_and_a_block_called_twice_give_one_record_per_call() -> None:
    assert names(DataDependent(), X) == [("block", 0, "identity"), ("block", 0, "identity")]


def test_nested_blocks_are_recorded_inner_first() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), Nested())
    assert names(model, X) == [("1.body.0", 0, "identity"), ("1.body.1", 0, "identity"),
                               ("1", 0, "identity")]


def test_tokens_are_channels_last_and_the_positional_embedding_is_not_a_block() -> None:
    x = torch.randn(1, 5, 3)  # batch 1: the embedding has exactly the activations' shape
    blocks = find_blocks(Tokens(), x)
    assert [(b.name, b.shortcut.value, b.channels_last) for b in blocks] == [
        ("blocks.0.mix", "identity", True), ("blocks.0.mlp", "identity", True),
        ("blocks.1.mix", "identity", True), ("blocks.1.mlp", "identity", True)]
    assert all(not b.channels_last for b in find_blocks(LoopNet(), X))


def test_additions_that_are_not_residual_are_not_reported() -> None:
    with pytest.raises(sigprop.NoResidualBlockError, match="no residual block found in "
                       "NotResidual"):
        find_blocks(NotResidual(), X)
    model = nn.Sequential(NotResidual(), nn.Conv2d(3, 4, 1), Bottleneckish(4, 4))
    assert names(model, X) == [("2", 0, "identity")]


def test_a_model_without_additions_gives_a_clear_error() -> None:
    with pytest.raises(sigprop.NoResidualBlockError, match=r"blocks=\[\.\.\.\]"):
        measure(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()), X)


def test_gains_on_the_branch_are_reported() -> None:
    trace = measure(Gained(), X)
    first, second = trace.runs[0].blocks
    assert (first.gain, second.gain) == ("alpha = 0", "gamma: mean |g| = 1e-06")
    assert first.residual.m2 == 0.0 and 0 < second.residual.m2 < 1e-9
    assert sigprop.Trace.from_dict(trace.to_dict()).runs[0].blocks == (first, second)
    assert all(b.gain is None for b in find_blocks(nn.Sequential(nn.Conv2d(3, 4, 1), Nested()), X))


def test_override_names_blocks_discovery_cannot_handle() -> None:
    class LongSkip(nn.Module):
        """The skip path is as long as a branch: discovery cannot tell them apart."""

        def __init__(self) -> None:
            super().__init__()
            self.skip = nn.Sequential(*(scaled_conv(3, 1.0) for _ in range(8)))
            self.body = nn.Sequential(*(scaled_conv(3, 0.5) for _ in range(9)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x) + self.skip(x)

    model = nn.Sequential(LongSkip(), LongSkip())
    with pytest.raises(sigprop.NoResidualBlockError):
        find_blocks(model, X)
    blocks = measure(model, X, blocks=["0", "1"]).runs[0].blocks
    assert [(b.name, b.stage, b.shortcut.value) for b in blocks] == [
        ("0", 0, "projection"), ("1", 1, "projection")]
    assert blocks[0].residual.m2 == pytest.approx(0.5**18 * blocks[0].skip.m2, rel=1e-4)
    with pytest.raises(ValueError, match=r"no submodule '0\.bod'; did you mean '0\.body'"):
        find_blocks(model, X, blocks=["0.bod"])
    with pytest.raises(sigprop.NoResidualBlockError, match=r"block '0\.skip' executed no addition"):
        find_blocks(model, X, blocks=["0", "0.skip"])


def test_model_state_is_unchanged_after_discovery_and_after_a_raising_forward() -> None:
    model = DataDependent()
    model.block.train(False)
    before = snapshot(model)
    assert len(measure(model, X).runs[0].blocks) == 2
    assert_unchanged(model, before)

    def fail(module: nn.Module, args: object) -> None:
        raise RuntimeError("boom")

    handle = model.other.register_forward_pre_hook(fail)
    model.forward = lambda x: model.other(model.block(model.stem(x)))  # type: ignore[method-assign]
    before = snapshot(model)
    with pytest.raises(sigprop.ForwardError, match=r"after block 0 \(block\): RuntimeError: boom"):
        measure(model, X)
    assert_unchanged(model, before)
    assert torch._C._len_torch_function_stack() == 0  # no function mode left active
    handle.remove()


def test_token_statistics_are_per_feature_over_batch_and_tokens() -> None:
    class LinearTokens(nn.Module):
        def __init__(self, dim: int, c: float) -> None:
            super().__init__()
            self.lin = nn.Linear(dim, dim, bias=False)
            with torch.no_grad():
                self.lin.weight.copy_(c * torch.eye(dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) + x

    # Features are the last dimension: give each one its own mean and scale.
    x = offset_input((3, 4, 6), seed=3).transpose(1, 2).contiguous()  # (N, T=6, C=4)
    (block,) = measure(LinearTokens(4, 2.0).double(), x).runs[0].blocks
    base = sigprop.moments(x, channels_last=True)
    assert base.sq_mean > 1.0  # per-feature means: a channels-first reduction would differ
    for moments, factor in ((block.skip, 1.0), (block.residual, 2.0), (block.output, 3.0)):
        assert moments.var == pytest.approx(factor**2 * base.var, rel=1e-12)
        assert moments.sq_mean == pytest.approx(factor**2 * base.sq_mean, rel=1e-12)


@pytest.mark.parametrize(("model", "x", "named"), [
    (Gained(), X, None),  # discovered, with gains
    (nn.Sequential(nn.Conv2d(3, 4, 1), Bottleneckish(4, 4), Bottleneckish(4, 8, 2)), X, ["1", "2"]),
    (Tokens(), torch.randn(1, 5, 3), None),  # channels-last
])
def test_the_trace_carries_the_blocks_as_found(model: nn.Module, x: torch.Tensor,
                                               named: list[str] | None) -> None:
    def described(blocks: Sequence[sigprop.Block]) -> list[tuple[object, ...]]:
        return [tuple(getattr(b, f.name) for f in fields(sigprop.Block)) for b in blocks]

    found = find_blocks(model, x, blocks=named)
    measured = measure(model, x, blocks=named).runs[0].blocks
    assert described(measured) == described(found) and len(found) >= 2


def test_post_ln_transformer_ffn_addition_is_an_identity_block() -> None:
    # y = LN(x + attn(x)); z = LN(y + ffn(y)): the FFN's skip is the tensor its branch starts
    # from. Two identity blocks per layer, one stage, named after their branches.
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    assert names(model, torch.randn(2, 5, 8)) == [
        (f"layers.{i}.{branch}", 0, "identity") for i in range(2)
        for branch in ("self_attn", "linear1")]


class Stack(nn.Module):
    """A residual connection around two residual blocks, and nothing else on its branch."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(Bottleneckish(4, 4), Bottleneckish(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def test_an_addition_around_residual_blocks_alone_is_found_after_them() -> None:
    # The shortest path through the branch runs through the inner skips (no layer on it).
    model = nn.Sequential(nn.Conv2d(3, 4, 1), Stack(), Stack())
    assert names(model, X) == [(f"{k}{inner}", 0, "identity") for k in (1, 2)
                               for inner in (".body.0", ".body.1", "")]


class Swapped(nn.Module):
    """Blocks on ``(N, L, C)`` built with swapaxes, movedim, moveaxis and swapdims."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Linear(4, 4)
        self.g = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.swapaxes(1, 2)
        y = y + self.f(y)
        z = torch.movedim(y, 2, 1)
        return z + self.g(z.moveaxis(1, 2)).swapdims(1, 2)


def test_swapaxes_and_movedim_are_layout_only() -> None:
    assert [(b.name, b.shortcut.value) for b in find_blocks(Swapped(), torch.randn(2, 4, 6))] \
        == [("f", "identity"), ("g", "identity")]


def test_a_module_used_in_two_places_is_named_after_each_call_site() -> None:
    shared = Bottleneckish(4, 4)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(shared), nn.Sequential(shared))
    assert names(model, X) == [("1.0", 0, "identity"), ("2.0", 0, "identity")]


def test_an_fx_graph_module_gives_the_blocks_of_the_eager_model() -> None:
    eager = nn.Sequential(nn.Conv2d(3, 4, 1), Bottleneckish(4, 4), Bottleneckish(4, 8, 2),
                          Bottleneckish(8, 8))
    traced = torch.fx.symbolic_trace(eager)
    assert names(traced, X) == names(eager, X) == [
        ("1", 0, "identity"), ("2", 1, "projection"), ("3", 1, "identity")]


def test_a_layout_change_between_blocks_is_not_a_new_stage() -> None:
    # Swin (timm): attention added on (N, H, W, C), the MLP on (N, H * W, C).
    blocks = find_blocks(TokenBlock(8), torch.randn(2, 3, 4, 8))
    assert [(b.name, b.stage, b.channels_last) for b in blocks] == [
        ("mix", 0, True), ("mlp", 0, True)]


class MetaFormerBlock(nn.Module):
    """timm MetaFormer/CoAtNet style: a parameter-free token mixer, the skip through a module."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.res_scale1 = nn.Identity()
        self.norm1 = nn.GroupNorm(1, dim)
        self.token_mixer = nn.AvgPool2d(3, 1, 1)
        self.layer_scale1 = scaled_conv(dim, 0.5)
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = branch(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_scale1(x) + self.layer_scale1(self.token_mixer(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


def test_blocks_of_one_call_are_named_after_their_branch_not_the_skip_or_a_norm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), MetaFormerBlock())
    assert names(model, X) == [("1.token_mixer", 0, "identity"), ("1.mlp", 0, "identity")]


class BiasLayer(nn.Module):
    """T5-like: a bias passed to every layer is added to scores computed from the layer input."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(4, 4)
        self.f = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) + bias
        return x + self.f(scores)


class PassedBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.randn(1, 4))
        self.layers = nn.ModuleList(BiasLayer() for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.expand(x.shape[0], -1)  # computed from a parameter only
        for layer in self.layers:
            x = layer(x, bias)
        return x


def test_a_bias_passed_from_layer_to_layer_is_not_a_skip() -> None:
    # The scores of layer 1 derive from the bias through layer 0's residual sum only.
    blocks = find_blocks(PassedBias(), torch.randn(2, 4))
    assert [(b.name, b.shortcut.value) for b in blocks] == [
        (f"layers.{i}", "identity") for i in range(3)]
