"""Property-based tests: random small residual models through ``measure``, ``find_blocks`` and
``audit``, every one leaving the model (and torch's global state) exactly as it was.

Each generated model is a chain of residual blocks ``x + branch(x)`` whose branches vary (norm,
BN momentum None, frozen BN, a branch in eval mode inside a train-mode model), with user hooks of
several kinds, a block whose ``train()`` override has side effects, and optionally a forward that
raises in block k or a hook that raises KeyboardInterrupt. The examples are bounded and
derandomized: CI runs the same ones every time.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import sigprop
from sigprop.audit import Finding, audit
from tests.helpers import assert_unchanged, snapshot

EXAMPLES = settings(max_examples=40, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Spec:
    """One random model: its blocks, and what the user did to it."""

    norms: tuple[str, ...]  # per block: batchnorm, batchnorm-no-momentum, frozen, none, layer
    width: int
    eval_block: int | None  # this block's branch in eval mode inside a train-mode model
    train_mode: bool
    hooks: tuple[str, ...]  # forward, pre, tensor, full-backward
    raise_in: int | None  # the forward raises in this block
    interrupt_in: int | None  # a user hook raises KeyboardInterrupt in this block
    seed: int
    freezer_in: int | None = None  # this block's train() override freezes its branch


class Branch(nn.Module):
    def __init__(self, norm: str, width: int):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1, bias=False)
        if norm.startswith("batchnorm") or norm == "frozen":
            self.norm: nn.Module = nn.BatchNorm2d(
                width, momentum=None if norm == "batchnorm-no-momentum" else 0.1)
            if norm == "frozen":
                self.norm.eval()
                self.norm.requires_grad_(False)
        elif norm == "layer":
            self.norm = nn.GroupNorm(1, width)
        else:
            self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.norm(x)))


class Block(nn.Module):
    def __init__(self, norm: str, width: int, fails: bool = False):
        super().__init__()
        self.branch = Branch(norm, width)
        self.fails = fails


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fails:
            raise RuntimeError("block fails")
        return x + self.branch(x)


class FreezingBlock(Block):
    """A train() override with side effects: in eval mode its branch is frozen."""

    def train(self, mode: bool = True) -> FreezingBlock:
        super().train(mode)
        self.branch.requires_grad_(mode)
        self.frozen = not mode
        return self


def build(spec: Spec) -> nn.Sequential:
    torch.manual_seed(spec.seed)
    net = nn.Sequential(*((FreezingBlock if k == spec.freezer_in else Block)(
        norm, spec.width, fails=k == spec.raise_in) for k, norm in enumerate(spec.norms)))
    for kind in spec.hooks:
        conv = net[0].branch.conv
        if kind == "forward":
            conv.register_forward_hook(lambda module, args, out: None)
        elif kind == "pre":
            conv.register_forward_pre_hook(lambda module, args: None)
        elif kind == "tensor":
            conv.weight.register_hook(lambda grad: grad)
        else:
            conv.register_full_backward_hook(lambda module, gin, gout: None)
    if spec.interrupt_in is not None:
        def interrupt(module: nn.Module, args: object) -> None:
            raise KeyboardInterrupt

        net[spec.interrupt_in].register_forward_pre_hook(interrupt)
    net.train(spec.train_mode)  # after the hooks: a frozen branch takes no tensor hook
    if spec.eval_block is not None:
        net[spec.eval_block].branch.eval()
    return net


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    depth = draw(st.integers(1, 3))
    norms = tuple(draw(st.lists(st.sampled_from(
        ["batchnorm", "batchnorm-no-momentum", "frozen", "none", "layer"]),
        min_size=depth, max_size=depth)))
    maybe_block = st.none() | st.integers(0, depth - 1)
    failure = draw(st.sampled_from(["none", "raise", "interrupt"]))
    return Spec(norms, draw(st.integers(2, 3)), draw(maybe_block), draw(st.booleans()),
                tuple(draw(st.lists(st.sampled_from(["forward", "pre", "tensor", "backward"]),
                                    max_size=2))),
                draw(st.integers(0, depth - 1)) if failure == "raise" else None,
                draw(st.integers(0, depth - 1)) if failure == "interrupt" else None,
                draw(st.integers(0, 2**16)), draw(maybe_block))


def expected_moments(net: nn.Sequential, x: torch.Tensor, bn_mode: str
                     ) -> list[tuple[float, float]]:
    """Skip and residual second moments of each block, by running the blocks one by one on a
    float64 copy in the state sigprop measures in (BN batch statistics in train mode)."""
    twin = copy.deepcopy(net).double().eval()
    for module in twin.modules():
        if isinstance(module, nn.BatchNorm2d) and bn_mode == "train":
            module.train()
            module.track_running_stats = False
    moments = []
    h = x.double()
    with torch.no_grad():
        for block in twin:
            residual = block.branch(h)
            moments.append((float((h ** 2).mean()), float((residual ** 2).mean())))
            h = h + residual
    return moments


@EXAMPLES
@given(spec=specs(), bn_mode=st.sampled_from(["train", "eval"]),
       api=st.sampled_from(["measure", "find_blocks", "audit"]))
def test_random_models_are_measured_and_come_back_as_given(spec: Spec, bn_mode: str,
                                                           api: str) -> None:
    net = build(spec)
    x = torch.randn(4, spec.width, 5, 5, generator=torch.Generator().manual_seed(spec.seed))
    before = snapshot(net)
    try:
        if api == "find_blocks":
            blocks = sigprop.find_blocks(net, x, bn_mode=bn_mode)
            trace = None
        else:
            trace = sigprop.measure(net, x, bn_mode=bn_mode)
            blocks = [b for _, b in trace.blocks()]
            findings: list[Finding] = audit(trace) if api == "audit" else []
    except sigprop.ForwardError as e:
        assert spec.raise_in is not None and (spec.interrupt_in is None
                                              or spec.raise_in < spec.interrupt_in)
        assert "RuntimeError: block fails" in str(e)
    except KeyboardInterrupt:
        assert spec.interrupt_in is not None and (spec.raise_in is None
                                                  or spec.interrupt_in <= spec.raise_in)
    else:
        assert spec.raise_in is None and spec.interrupt_in is None
        assert [b.name for b in blocks] == [str(k) for k in range(len(spec.norms))]
        if trace is not None:
            expected = expected_moments(net, x, bn_mode)
            for block, (skip, residual) in zip(trace.runs[0].blocks, expected, strict=True):
                assert abs(block.skip.m2 - skip) <= 1e-4 * skip
                assert abs(block.residual.m2 - residual) <= 1e-4 * residual + 1e-12
        if api == "audit":
            assert {f.id for f in findings} >= {"residual_blocks", "zero_branches"}
    assert_unchanged(net, before)
