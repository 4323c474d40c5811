"""Plans: discovery once, then replays that give the same statistics, bit for bit, and fall back
to discovery wherever the model's execution differs from the plan."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
import timm
import torch
import torchvision
from rich.console import Console
from torch import nn

import sigprop
from sigprop_cli._run import BlockProgress
from tests.helpers import assert_unchanged, snapshot
from tests.transformer_copies import BertModel, GPT2Model

X = sigprop.InputSpec("gaussian", (2, 3, 32, 32), seed=0)
X64 = sigprop.InputSpec("gaussian", (2, 3, 64, 64), seed=0)


def _encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    return nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)


def _ids() -> torch.Tensor:
    return torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))


_MASK = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])

# Every model of tests/test_discovery_zoo.py, with the inputs it is measured on there.
def _torchvision(name: str) -> Callable[[], nn.Module]:
    return lambda: torchvision.models.get_model(name, weights=None)


ZOO: dict[str, tuple[Callable[[], nn.Module], dict[str, Any]]] = {
    **{name: (_torchvision(name), {"inputs": X})
       for name in ("resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2",
                    "resnext50_32x4d")},
    "resnet18_zero_init": (lambda: torchvision.models.resnet18(zero_init_residual=True),
                           {"inputs": X}),
    "timm_resnet50": (lambda: timm.create_model("resnet50", pretrained=False), {"inputs": X}),
    "resnetv2_50": (lambda: timm.create_model("resnetv2_50", pretrained=False), {"inputs": X}),
    "nf_resnet50": (lambda: timm.create_model("nf_resnet50", pretrained=False), {"inputs": X}),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(weights=None), {"inputs": X64}),
    "convnext_atto": (lambda: timm.create_model("convnext_atto", pretrained=False),
                      {"inputs": X}),
    "post_ln_encoder": (_encoder, {"inputs": torch.randn(4, 7, 16,
                                                         generator=torch.Generator().manual_seed(0))}),
    "gpt2": (lambda: GPT2Model(layers=3), {"inputs": _ids()}),
    "bert": (lambda: BertModel(layers=3), {"inputs": _ids(), "attention_mask": _MASK}),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_a_replayed_plan_gives_the_statistics_of_discovery_bitwise(name: str) -> None:
    build, inputs = ZOO[name]
    torch.manual_seed(0)
    model = build()
    discovered = sigprop.measure(model, **inputs)
    plan = sigprop.Plan()
    recorded = sigprop.measure(model, plan=plan, **inputs)
    before = snapshot(model)
    replayed = sigprop.measure(model, plan=plan, **inputs)
    assert_unchanged(model, before)
    assert (plan.discoveries, plan.replays) == (1, 1)
    assert recorded == discovered
    assert replayed == discovered  # names, stages, shortcuts, gains and every float, bitwise
    # Another instance of the architecture (another seed's weights) replays the plan too.
    torch.manual_seed(1)
    other = build()
    assert sigprop.measure(other, plan=plan, **inputs) == sigprop.measure(other, **inputs)
    assert (plan.discoveries, plan.replays) == (1, 2)


def test_find_blocks_replays_a_plan() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    plan = sigprop.Plan()
    first = sigprop.find_blocks(model, X, plan=plan)
    assert sigprop.find_blocks(model, X, plan=plan) == first == sigprop.find_blocks(model, X)
    assert (plan.discoveries, plan.replays) == (1, 1)
    # A plan recorded by find_blocks serves measure.
    assert sigprop.measure(model, X, plan=plan) == sigprop.measure(model, X)
    assert plan.replays == 2


class Branching(nn.Module):
    """Residual blocks whose branch is chosen by the data: ``a`` or ``b`` (same operations)."""

    def __init__(self, width: int = 8, blocks: int = 3) -> None:
        super().__init__()
        self.a = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.b = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = self.a if bool(x.mean() > 0) else self.b
        for layer in branches:
            x = x + torch.relu(layer(x))
        return x


def test_data_dependent_control_flow_on_another_path_falls_back_to_discovery() -> None:
    torch.manual_seed(0)
    model = Branching()
    positive = torch.randn(16, 8) + 3
    negative = torch.randn(16, 8) - 3
    plan = sigprop.Plan()
    assert [b.name for b in sigprop.measure(model, positive, plan=plan).runs[0].blocks] == \
        ["a.0", "a.1", "a.2"]
    before = snapshot(model)
    other = sigprop.measure(model, negative, plan=plan)  # same operations, other weights
    assert_unchanged(model, before)
    assert (plan.discoveries, plan.replays) == (2, 0)
    assert other == sigprop.measure(model, negative)
    assert [b.name for b in other.runs[0].blocks] == ["b.0", "b.1", "b.2"]
    assert sigprop.measure(model, negative, plan=plan) == other  # the new plan replays
    assert (plan.discoveries, plan.replays) == (2, 1)


class Looping(nn.Module):
    """As many residual blocks as the input's mean says (1 to 3): a data-dependent loop."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        count = 1 if bool(x.mean() < 0) else 3
        for layer in self.layers[:count]:
            x = x + torch.relu(layer(x))
        return x


def test_the_cli_progress_counts_a_pass_that_falls_back_once() -> None:
    # The replay of a 3-block plan on a 1-block pass reports its first block before the
    # mismatch shows; the discovery that replaces it reports it again: 3 + 1 blocks, not 5.
    torch.manual_seed(0)
    model = Looping()
    plan = sigprop.Plan()
    progress = BlockProgress(None, Console(file=io.StringIO()))
    with progress:
        for mean in (3.0, -3.0):
            trace = sigprop.measure(model, torch.randn(16, 8) + mean, plan=plan,
                                    progress=progress)
            progress.measured(trace.n_blocks)
        completed = progress.bar.tasks[0].completed
    assert (plan.discoveries, plan.replays) == (2, 0)
    assert completed == 4


@pytest.mark.parametrize(("first", "then"), [(-3.0, 3.0), (3.0, -3.0)])
def test_a_pass_with_more_or_fewer_blocks_than_the_plan_falls_back(first: float,
                                                                   then: float) -> None:
    torch.manual_seed(0)
    model = Looping()
    x, y = torch.randn(16, 8) + first, torch.randn(16, 8) + then
    plan = sigprop.Plan()
    sigprop.measure(model, x, plan=plan)
    trace = sigprop.measure(model, y, plan=plan)
    assert (plan.discoveries, plan.replays) == (2, 0)
    assert trace == sigprop.measure(model, y)


def test_another_model_with_the_same_plan_is_discovered() -> None:
    torch.manual_seed(0)
    plan = sigprop.Plan()
    small = torchvision.models.resnet18(weights=None)
    large = torchvision.models.resnet34(weights=None)
    sigprop.measure(small, X, plan=plan)
    assert sigprop.measure(large, X, plan=plan) == sigprop.measure(large, X)
    assert (plan.discoveries, plan.replays) == (2, 0)
    # Same class, another width: the same operations on other shapes.
    narrow, wide = Branching(width=8), Branching(width=12)
    sigprop.measure(narrow, torch.randn(4, 8) + 3, plan=plan)
    x = torch.randn(4, 12) + 3
    assert sigprop.measure(wide, x, plan=plan) == sigprop.measure(wide, x)
    assert (plan.discoveries, plan.replays) == (4, 0)


def test_a_changed_input_shape_or_rank_is_discovered() -> None:
    torch.manual_seed(0)
    model = Branching()
    plan = sigprop.Plan()
    sigprop.measure(model, torch.randn(16, 8) + 3, plan=plan)
    for x in (torch.randn(4, 8) + 3, torch.randn(4, 5, 8) + 3):  # batch, then rank
        assert sigprop.measure(model, x, plan=plan) == sigprop.measure(model, x)
    assert (plan.discoveries, plan.replays) == (3, 0)
    image = torchvision.models.resnet18(weights=None)
    sigprop.measure(image, X, plan=plan)
    assert sigprop.measure(image, X64, plan=plan) == sigprop.measure(image, X64)
    assert (plan.discoveries, plan.replays) == (5, 0)


def test_backward_with_a_plan_gives_the_gradients_of_discovery() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)  # projections: their inputs are hooked
    plan = sigprop.Plan()
    discovered = sigprop.measure(model, X, backward=True)
    assert sigprop.measure(model, X, backward=True, plan=plan) == discovered
    before = snapshot(model)
    replayed = sigprop.measure(model, X, backward=True, plan=plan)
    assert_unchanged(model, before)
    assert replayed == discovered
    assert (plan.discoveries, plan.replays) == (1, 1)
    grads = [b.grad for b in replayed.runs[0].blocks]
    assert all(g is not None and g.input.m2 > 0 and g.skip.m2 > 0 for g in grads)
    # A plan recorded without autograd is recorded again with it, then replayed.
    forward = sigprop.Plan()
    sigprop.measure(model, X, plan=forward)
    assert sigprop.measure(model, X, backward=True, plan=forward) == discovered
    assert sigprop.measure(model, X, backward=True, plan=forward) == discovered
    assert (forward.discoveries, forward.replays) == (2, 1)


class _Doubling(nn.Module):
    """``x + I x`` with a 1x1 identity convolution, unmarked (found by discovery)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.branch.weight.copy_(torch.eye(3).view(3, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


def test_the_scaled_rerun_of_overflowing_gradients_replays_the_plan() -> None:
    # The signal doubles in each of 70 blocks, forwards and backwards: float32 squares overflow
    # (4^69), so each measure runs the backward pass again scaled, and a scaled forward pass
    # (without autograd: a second recipe). With a plan only the first pass of each kind
    # discovers; a backward recipe and a forward one do not evict each other.
    model = nn.Sequential(*(_Doubling() for _ in range(70)))
    x = sigprop.gaussian_input((2, 3, 4, 4), seed=0)
    discovered = sigprop.measure(model, x, backward=True)
    plan = sigprop.Plan()
    assert sigprop.measure(model, x, backward=True, plan=plan) == discovered
    assert sigprop.measure(model, x, backward=True, plan=plan) == discovered
    assert (plan.discoveries, plan.replays) == (2, 4)
    first = discovered.runs[0].blocks[0].grad
    assert first is not None and first.finite and first.input.m2 > 2.0**128


def test_named_blocks_replay_and_marked_models_need_no_plan() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    names = ["layer1.0", "layer2.0", "layer4.1"]
    plan = sigprop.Plan()
    named = sigprop.measure(model, X, blocks=names)
    assert sigprop.measure(model, X, blocks=names, plan=plan) == named
    assert sigprop.measure(model, X, blocks=names, plan=plan) == named
    assert (plan.discoveries, plan.replays) == (1, 1)
    # The same plan for discovery: other blocks, discovered afresh.
    assert sigprop.measure(model, X, plan=plan) == sigprop.measure(model, X)
    assert (plan.discoveries, plan.replays) == (2, 1)
    marked = sigprop.models.resnet(4, seed=0)
    unused = sigprop.Plan()
    assert sigprop.measure(marked, X, plan=unused) == sigprop.measure(marked, X)
    assert (unused.discoveries, unused.replays) == (0, 0)


class Exploding(nn.Module):
    """Two residual blocks; the second raises once ``explode`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(8, 8)
        self.second = nn.Linear(8, 8)
        self.explode = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.first(x)
        if self.explode:
            raise RuntimeError("boom")
        return x + self.second(x)


def test_the_model_is_restored_when_its_forward_raises_during_a_replay() -> None:
    torch.manual_seed(0)
    model = Exploding()
    x = torch.randn(4, 8)
    plan = sigprop.Plan()
    sigprop.measure(model, x, plan=plan)
    model.explode = True
    before = snapshot(model)
    with pytest.raises(sigprop.ForwardError, match=r"after block 0 .*RuntimeError: boom"):
        sigprop.measure(model, x, plan=plan)
    assert_unchanged(model, before)
    model.explode = False
    assert sigprop.measure(model, x, plan=plan) == sigprop.measure(model, x)
    assert (plan.discoveries, plan.replays) == (1, 1)


def test_plan_must_be_a_plan() -> None:
    with pytest.raises(TypeError, match=r"plan must be a sigprop\.Plan, got dict"):
        sigprop.measure(Exploding(), torch.randn(2, 8), plan={})  # type: ignore[arg-type]


def test_sweep_replicates_of_a_configuration_share_a_plan() -> None:
    from sigprop.sweep import Grid
    from sigprop.sweep.point import _plan, run_point

    grid = Grid.from_mapping({"model": "torchvision:resnet18", "seeds": 2,
                              "grid": {"image_size": 16, "batch_size": 2}})
    first, second = grid.points()
    assert run_point(first).status.value == run_point(second).status.value == "done"
    plan = _plan(first)
    assert plan is _plan(second)
    assert (plan.discoveries, plan.replays) == (1, 1)
