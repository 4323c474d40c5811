"""What can be measured: several and keyword inputs, dtypes, and the kinds of model objects."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch import nn

import sigprop
from tests.helpers import assert_unchanged, snapshot


class Block(nn.Module):
    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.f = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


class EncoderDecoder(nn.Module):
    """T5-like: two positional token inputs and a keyword attention mask; inputs_embeds too."""

    def __init__(self, vocab: int = 11, dim: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.encoder = Block(dim)
        self.decoder = Block(dim)

    def forward(self, input_ids: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if attention_mask is not None:
            h = h * attention_mask[..., None]
        memory = self.encoder(h)
        assert decoder_input_ids is not None
        out: torch.Tensor = self.decoder(self.embed(decoder_input_ids) + memory.mean(1, True))
        return out


def test_several_positional_and_keyword_inputs() -> None:
    torch.manual_seed(0)
    model = EncoderDecoder()
    g = torch.Generator().manual_seed(1)
    ids, dec = torch.randint(0, 11, (3, 5), generator=g), torch.randint(0, 11, (3, 2), generator=g)
    mask = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2, [1.0] * 4 + [0.0]])
    named = sigprop.measure(model, ids, decoder_input_ids=dec, attention_mask=mask)
    explicit = sigprop.measure(model, args=(ids, dec), kwargs={"attention_mask": mask})
    assert named.runs == explicit.runs
    assert named.input == sigprop.InputSpec("tensor", (3, 5), None)
    blocks = named.runs[0].blocks
    assert [b.name for b in blocks] == ["encoder", "decoder"]
    with torch.no_grad():
        skip = (model.embed(ids) * mask[..., None]).double()
    assert blocks[0].skip.m2 == pytest.approx(float((skip**2).mean()), rel=1e-6)
    embeds = model.embed(ids).detach()
    by_embeds = sigprop.measure(model, inputs_embeds=embeds, decoder_input_ids=dec)
    assert by_embeds.runs == sigprop.measure(model, ids, decoder_input_ids=dec).runs
    with pytest.raises(ValueError, match="either as inputs or as args"):
        sigprop.measure(model, ids, args=(ids, dec))
    with pytest.raises(ValueError, match="'attention_mask' is given twice"):
        sigprop.measure(model, args=(ids, dec), kwargs={"attention_mask": mask},
                        attention_mask=mask)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_generated_input_follows_the_model_dtype(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Block(), Block()).to(dtype)
    trace = sigprop.measure(model, sigprop.InputSpec("gaussian", (64, 4), seed=3))
    x = sigprop.gaussian_input((64, 4), seed=3).to(dtype).double()
    assert trace.runs[0].blocks[0].skip.m2 == pytest.approx(float((x**2).mean()), rel=1e-6)


def test_a_batch_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match=r"batch size must be >= 1 .*got shape \(0, 4\)"):
        sigprop.measure(Block(), torch.zeros(0, 4))
    with pytest.raises(ValueError, match="sizes >= 1"):
        sigprop.find_blocks(Block(), sigprop.InputSpec("gaussian", (0, 4), seed=0))


def test_a_compiled_model_is_measured_through_its_eager_module() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Block(), Block())
    compiled = torch.compile(model)
    assert isinstance(compiled, nn.Module)  # an OptimizedModule wrapping model, not compiled yet
    x = torch.randn(8, 4)
    before = snapshot(model)
    trace = sigprop.measure(compiled, x)
    assert trace.runs == sigprop.measure(model, x).runs
    assert [b.name for b in trace.runs[0].blocks] == ["0", "1"]
    assert trace.model == {"name": "Sequential"}
    assert_unchanged(model, before)


def test_models_that_cannot_be_hooked_are_refused_with_the_fix() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated
        scripted = torch.jit.trace(Block(), torch.randn(2, 4))  # type: ignore[no-untyped-call]
    with pytest.raises(TypeError, match=r"TorchScript .* measure the model before torch\.jit"):
        sigprop.measure(scripted, torch.randn(2, 4))
    with torch.device("meta"):
        on_meta = Block()
    with pytest.raises(ValueError, match=r"'f.weight' is on the meta device .*to_empty"):
        sigprop.find_blocks(on_meta, torch.randn(2, 4))
    lazy = nn.Sequential(nn.LazyLinear(4), Block())
    with pytest.raises(ValueError, match=r"uninitialized lazy modules \(0\): run one forward"):
        sigprop.measure(lazy, torch.randn(2, 3))
    with pytest.raises(TypeError, match=r"must be a torch\.nn\.Module, got function"):
        sigprop.measure(lambda x: x, torch.randn(2, 4))  # type: ignore[arg-type]


class Wrap(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(x)
        return out


def test_two_hundred_nested_levels_are_measured() -> None:
    model: nn.Module = Block()
    for _ in range(200):
        model = Wrap(model)
    limit = sys.getrecursionlimit()
    (block,) = sigprop.find_blocks(model, torch.randn(2, 4))
    assert block.name == ".".join(["inner"] * 200)
    assert sys.getrecursionlimit() == limit
