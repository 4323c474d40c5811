"""Gradient statistics (measure(..., backward=True)): closed forms, an independent computation,
model state."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest
import timm
import torch
import torchvision
from torch import nn

import sigprop
from sigprop import stats
from sigprop._backward import cotangent_seed
from sigprop.stats.verdicts import _gradient_verdict
from sigprop.theory import predict_gradients
from tests.helpers import ProjectedScaledBlock, ScaledBlock, assert_unchanged, snapshot


class PlainScaledBlock(nn.Module):
    """:class:`ScaledBlock` without the marked addition: ``x + c x``, found by discovery."""

    def __init__(self, channels: int, c: float):
        super().__init__()
        self.branch = ScaledBlock(channels, c).branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        out += x  # in place, as torchvision does
        return out


@pytest.mark.parametrize("kind", ["marked", "discovered", "named"])
def test_scaled_chain_gives_exact_gradient_ratios(kind: str) -> None:
    cs = (0.5, -2.0, 3.0)
    if kind == "marked":
        model = nn.Sequential(*(ScaledBlock(3, c) for c in cs)).double()
    else:
        model = nn.Sequential(*(PlainScaledBlock(3, c) for c in cs)).double()
    blocks = ["0", "1", "2"] if kind == "named" else None
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    trace = sigprop.measure(model, x, backward=True, seed=3, blocks=blocks)
    found = trace.runs[0].blocks
    assert [b.name for b in found] == ["0", "1", "2"]
    for block, c in zip(found, cs, strict=True):
        g = block.grad
        assert g is not None
        assert g.skip == g.output  # identity shortcut
        for stat in ("var", "sq_mean"):
            out = getattr(g.output, stat)
            assert getattr(g.residual, stat) == pytest.approx(c**2 * out, rel=1e-12)
            assert getattr(g.input, stat) == pytest.approx((1 + c) ** 2 * out, rel=1e-12)
    for before, after in itertools.pairwise(found):
        assert before.grad is not None and after.grad is not None
        assert before.grad.output == after.grad.input  # the chain: x_{l+1} = y_l
    # The last block's output gradient is the cotangent itself: i.i.d. N(0, 1) from the seed.
    generator = torch.Generator().manual_seed(cotangent_seed(3))
    cotangent = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    assert found[-1].grad is not None
    assert found[-1].grad.output.m2 == pytest.approx(float(cotangent.square().mean()), rel=1e-12)


@pytest.mark.parametrize("kind", ["marked", "discovered"])
def test_a_tiny_branch_gradient_is_captured_exactly_in_float32(kind: str) -> None:
    # y = x + c x with c = 1e-6, as ConvNeXt's layer scale: the residual gradient c dL/dy is
    # taken where the branch hands it to x. Formed as dL/dx - dL/dy in float32 instead, its
    # variance was 0.8% off here (7% on torchvision convnext_tiny).
    c = 1e-6
    block = ScaledBlock if kind == "marked" else PlainScaledBlock
    model = nn.Sequential(block(3, c), block(3, c))
    x = sigprop.gaussian_input((4, 3, 5, 5), seed=0)
    for b in sigprop.measure(model, x, backward=True, seed=3).runs[0].blocks:
        assert b.grad is not None
        ratio = b.grad.residual.var / b.grad.output.var
        assert ratio == pytest.approx(c**2, rel=1e-5, abs=0)  # formed: 0.8% off
        assert b.grad.input.var == pytest.approx((1 + c) ** 2 * b.grad.output.var, rel=1e-7)


def test_a_projection_whose_parts_read_x_apart_gets_both_exactly_in_float32() -> None:
    # y = p x + c x, p = 2 through a projection, c = 1e-6: the shortcut's and the branch's
    # parts are taken where each reads x. Formed as dL/dx minus a product through the shortcut
    # in float32, the branch part's variance was 0.06% off here.
    c, p = 1e-6, 2.0
    model = nn.Sequential(ProjectedScaledBlock(3, c, p), ProjectedScaledBlock(3, c, p))
    x = sigprop.gaussian_input((4, 3, 5, 5), seed=0)
    blocks = sigprop.measure(model, x, backward=True, seed=3).runs[0].blocks
    assert [b.shortcut for b in blocks] == [sigprop.Shortcut.PROJECTION] * 2
    for b in blocks:
        assert b.grad is not None
        out = b.grad.output.var
        assert b.grad.residual.var / out == pytest.approx(c**2, rel=1e-5, abs=0)
        assert b.grad.skip.var / out == pytest.approx(p**2, rel=1e-6)
        assert b.grad.input.var / out == pytest.approx((p + c) ** 2, rel=1e-6)


class TwoReadBlock(nn.Module):
    """``y = x + conv(x) * x``: the branch reads ``x`` in two places."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.add = sigprop.ResidualAdd()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.add(x, self.conv(x) * x)
        return out


def test_a_branch_reading_its_input_twice_gets_both_parts() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(TwoReadBlock(3), TwoReadBlock(3))
    x = sigprop.gaussian_input((4, 3, 5, 5), seed=0)
    trace = sigprop.measure(model, x, backward=True, seed=1)

    def run(inputs: torch.Tensor, records: list[dict[str, torch.Tensor]]) -> Any:
        for block in model:
            records.append({"x": inputs, "skip": inputs})
            records[-1]["residual"] = block.conv(inputs) * inputs
            inputs = records[-1]["y"] = inputs + records[-1]["residual"]
        return inputs

    _compare(trace, _reference(model, x, 1, run))


def test_skipinit_at_zero_passes_the_gradient_exactly() -> None:
    model = sigprop.models.resnet(4, norm="skipinit", seed=0)
    trace = sigprop.measure(model, sigprop.InputSpec("gaussian", (4, 3, 8, 8), 0), backward=True)
    for block in trace.runs[0].blocks:
        assert block.grad is not None
        assert block.grad.residual.m2 == 0.0
        assert block.grad.input == block.grad.output == block.grad.skip
        assert block.grad.output.m2 > 0


def _reference(model: nn.Module, x: torch.Tensor, seed: int,
               capture: Callable[[torch.Tensor, list[dict[str, torch.Tensor]]], Any],
               channel: int = 1) -> list[dict[str, tuple[float, float]]]:
    """Per block, float64 (var, sq_mean) of the four gradients by plain autograd.

    ``capture`` runs the forward pass of a train-mode copy, filling one dict per block with its
    input ``x``, ``skip``, ``residual`` operands and sum ``y`` (out of place), and returns the
    model's output; ``channel`` is the channel dimension of the gradients.
    """
    records: list[dict[str, torch.Tensor]] = []
    x = x.detach().clone().requires_grad_(True)
    output = capture(x, records)
    generator = torch.Generator().manual_seed(cotangent_seed(seed))
    cotangent = torch.randn(output.shape, generator=generator)
    ys = [r["y"] for r in records]
    outputs = torch.autograd.grad(output, ys, cotangent, retain_graph=True)
    inputs = torch.autograd.grad(output, [r["x"] for r in records], cotangent,
                                 retain_graph=True)
    result = []
    for r, g, gx in zip(records, outputs, inputs, strict=True):
        (skip,) = torch.autograd.grad(r["skip"], r["x"], g, retain_graph=True)
        (residual,) = torch.autograd.grad(r["residual"], r["x"], g, retain_graph=True)
        result.append({name: _moments64(t, channel) for name, t in
                       (("output", g), ("skip", skip), ("residual", residual), ("input", gx))})
    return result


def _moments64(t: torch.Tensor, channel: int = 1) -> tuple[float, float]:
    columns = t.double().movedim(channel, 0).reshape(t.shape[channel], -1)
    mean = columns.mean(1)
    var = columns.var(1, correction=0)
    return float(var.mean()), float(mean.square().mean())


def _compare(trace: sigprop.Trace, reference: list[dict[str, tuple[float, float]]]) -> None:
    assert trace.n_blocks == len(reference)
    for block, expected in zip(trace.runs[0].blocks, reference, strict=True):
        assert block.grad is not None
        for role in sigprop.GradRole:
            m = block.grad.moments(role)
            var, sq_mean = expected[role.value]
            assert m.var == pytest.approx(var, rel=1e-5), (block.index, role)
            assert m.sq_mean == pytest.approx(sq_mean, rel=1e-5, abs=1e-7 * (var + sq_mean)), \
                (block.index, role)


def _capture_marked(model: nn.Module) -> Callable[..., Any]:
    """Capture through the ResidualAdd modules of a built-in ResNet (out-of-place sums)."""

    def run(x: torch.Tensor, records: list[dict[str, torch.Tensor]]) -> Any:
        handles = []
        for block in model.blocks:
            def before(module: nn.Module, args: tuple[Any, ...]) -> None:
                records.append({"x": args[0]})

            def after(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
                records[-1].update(skip=args[0], residual=args[1], y=out)

            handles += [block.register_forward_pre_hook(before),
                        block.add.register_forward_hook(after)]
        try:
            return model(x)
        finally:
            for h in handles:
                h.remove()

    return run


@pytest.mark.parametrize("norm,stages", [("batchnorm", 2), ("none", 1)])
def test_gradients_match_plain_autograd_on_builtin_resnets(norm: str, stages: int) -> None:
    import copy

    model = sigprop.models.resnet(6, norm=norm, stages=stages, seed=1)
    x = sigprop.gaussian_input((8, 3, 8, 8), seed=1)
    trace = sigprop.measure(model, x, backward=True, seed=1)
    assert any(b.shortcut is sigprop.Shortcut.PROJECTION for b in trace.runs[0].blocks) == \
        (stages > 1)
    reference_model = copy.deepcopy(model)
    for m in reference_model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False  # batch statistics, as measure's train mode
    _compare(trace, _reference(reference_model, x, 1, _capture_marked(reference_model)))


def _basic_block_forward(block: Any, records: list[dict[str, torch.Tensor]]
                         ) -> Callable[[torch.Tensor], torch.Tensor]:
    """torchvision's BasicBlock.forward with an out-of-place sum that is recorded."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        skip = x if block.downsample is None else block.downsample(x)
        residual = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
        y = skip + residual
        records.append({"x": x, "skip": skip, "residual": residual, "y": y})
        return torch.relu(y)

    return forward


def test_gradients_match_plain_autograd_on_torchvision_resnet18() -> None:
    import copy

    model = torchvision.models.resnet18(num_classes=10)
    x = sigprop.gaussian_input((4, 3, 32, 32), seed=2)
    before = snapshot(model)
    trace = sigprop.measure(model, x, backward=True, seed=2)
    assert_unchanged(model, before)
    reference_model = copy.deepcopy(model)

    def run(inputs: torch.Tensor, records: list[dict[str, torch.Tensor]]) -> Any:
        for m in reference_model.modules():
            if isinstance(m, torchvision.models.resnet.BasicBlock):
                m.forward = _basic_block_forward(m, records)
            if isinstance(m, nn.BatchNorm2d):
                m.track_running_stats = False
        return reference_model(inputs)

    _compare(trace, _reference(reference_model, x, 2, run))
    named = sigprop.measure(model, x, backward=True, seed=2,
                            blocks=[b.name for b in trace.runs[0].blocks])
    assert [b.grad for b in named.runs[0].blocks] == [b.grad for b in trace.runs[0].blocks]


def _replaced_forwards(model: nn.Module, block_type: type[nn.Module],
                       forward: Callable[[Any, list[dict[str, torch.Tensor]]], Any]
                       ) -> Callable[[torch.Tensor, list[dict[str, torch.Tensor]]], Any]:
    """A capture for :func:`_reference`: every ``block_type`` module of ``model`` runs
    ``forward(block, records)`` instead of its own."""

    def run(inputs: torch.Tensor, records: list[dict[str, torch.Tensor]]) -> Any:
        for m in model.modules():
            if isinstance(m, block_type):
                m.forward = forward(m, records)
        return model(inputs)

    return run


def _preact_bottleneck_forward(block: Any, records: list[dict[str, torch.Tensor]]
                               ) -> Callable[[torch.Tensor], torch.Tensor]:
    """timm's PreActBottleneck.forward, its sum recorded: the shortcut's projection and the
    branch both read the first norm's output."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        preact = block.norm1(x)
        skip = x if block.downsample is None else block.downsample(preact)
        residual = block.drop_path(block.conv3(block.norm3(block.conv2(block.norm2(
            block.conv1(preact))))))
        y = residual + skip
        records.append({"x": x, "skip": skip, "residual": residual, "y": y})
        return y

    return forward


def _vit_block_forward(block: Any, records: list[dict[str, torch.Tensor]]
                       ) -> Callable[..., torch.Tensor]:
    """timm's vision transformer Block.forward, both of its sums recorded."""

    def add(x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        y = x + residual
        records.append({"x": x, "skip": x, "residual": residual, "y": y})
        return y

    def forward(x: torch.Tensor, attn_mask: Any = None, is_causal: bool = False) -> torch.Tensor:
        x = add(x, block.drop_path1(block.ls1(block.attn(block.norm1(x), attn_mask=attn_mask,
                                                         is_causal=is_causal))))
        return add(x, block.drop_path2(block.ls2(block.mlp(block.norm2(x)))))

    return forward


def test_gradients_match_plain_autograd_on_timm_preactivation_resnet_and_vit() -> None:
    """Models written elsewhere: pre-activation projections (no node of their own to read x
    from) and a transformer's token layout (channels last, two blocks per module)."""
    import copy

    from timm.models.resnetv2 import PreActBottleneck, ResNetV2
    from timm.models.vision_transformer import Block, VisionTransformer

    torch.manual_seed(3)
    resnet = ResNetV2(layers=[1, 1], channels=(128, 256), stem_chs=32, num_classes=10)
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                            num_classes=10)
    for model, block_type, forward, shape, channel, projections in (
            (resnet, PreActBottleneck, _preact_bottleneck_forward, (2, 3, 32, 32), 1, 2),
            (vit, Block, _vit_block_forward, (2, 3, 16, 16), -1, 0)):
        x = sigprop.gaussian_input(shape, seed=3)
        before = snapshot(model)
        trace = sigprop.measure(model, x, backward=True, seed=3)
        assert_unchanged(model, before)
        assert sum(b.shortcut is sigprop.Shortcut.PROJECTION
                   for b in trace.runs[0].blocks) == projections
        reference_model = copy.deepcopy(model).eval()
        capture = _replaced_forwards(reference_model, block_type, forward)
        _compare(trace, _reference(reference_model, x, 3, capture, channel))


def test_forward_statistics_equal_a_forward_only_measurement_and_state_is_unchanged() -> None:
    model = sigprop.models.resnet(5, stages=2, seed=0)
    model.head.weight.requires_grad_(False)  # a flag that must come back as it was
    spec = sigprop.InputSpec("gaussian", (4, 3, 8, 8), 0)
    before = snapshot(model)
    with_grad = sigprop.measure(model, spec, backward=True)
    assert_unchanged(model, before)
    assert all(p.grad is None for p in model.parameters())
    forward = sigprop.measure(model, spec)
    strip = [b.__class__.of(b, b.skip, b.residual, b.output, b.cross)
             for b in with_grad.runs[0].blocks]
    assert tuple(strip) == forward.runs[0].blocks
    assert all(b.grad is None for b in forward.runs[0].blocks)


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no gradient here")


def test_state_is_restored_and_no_grad_written_when_backward_raises() -> None:
    model = nn.Sequential(sigprop.models.resnet(3, seed=0))
    model.register_forward_hook(lambda m, a, out: _FailingBackward.apply(out))
    before = snapshot(model)
    with pytest.raises(sigprop.BackwardError, match="no gradient here"):
        sigprop.measure(model, sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0), backward=True)
    assert_unchanged(model, before)
    assert all(p.grad is None for p in model.parameters())


def test_loss_is_back_propagated_and_bad_losses_are_named() -> None:
    model = nn.Sequential(ScaledBlock(3, 0.5), ScaledBlock(3, 1.0)).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    trace = sigprop.measure(model, x, backward=True, loss=lambda out: out.sum())
    last = trace.runs[0].blocks[-1].grad
    assert last is not None
    assert (last.output.var, last.output.sq_mean) == (0.0, 1.0)  # dL/dy = 1 everywhere
    with pytest.raises(ValueError, match="loss must return a scalar"):
        sigprop.measure(model, x, backward=True, loss=lambda out: out)
    with pytest.raises(ValueError, match="backward=True"):
        sigprop.measure(model, x, loss=lambda out: out.sum())
    def failing(out: torch.Tensor) -> torch.Tensor:
        raise ZeroDivisionError("no loss")

    with pytest.raises(sigprop.BackwardError, match="ZeroDivisionError: no loss"):
        sigprop.measure(model, x, backward=True, loss=failing)


def _seeds(kwargs: dict[str, Any], seeds: int = 4, depth: int = 12, width: int = 16,
           head: bool = False) -> sigprop.Trace:
    """Independent seeds of a built-in ResNet, merged; ``head`` redraws a zero classification
    layer (Fixup's) so that gradients flow."""
    traces = []
    for s in range(seeds):
        model = sigprop.models.resnet(depth, width=width, seed=s, **kwargs)
        if head:
            with torch.no_grad():
                model.head.weight.normal_(0.0, width**-0.5,
                                          generator=torch.Generator().manual_seed(s))
        traces.append(sigprop.measure(model, sigprop.InputSpec("gaussian", (8, 3, 8, 8), s),
                                      backward=True))
    return functools.reduce(sigprop.Trace.merge, traces)


@pytest.mark.parametrize("kwargs", [
    {}, {"order": "relu-bn"}, {"norm": "none"}, {"norm": "skipinit", "alpha": 0.25},
    {"norm": "sqrt-depth"}, {"variant": "v1"}, {"norm": "nf"},
    {"norm": "fixup", "fixup_zero_last": False},
], ids=["bn-v2", "relu-bn", "unnormalized", "skipinit-0.25", "sqrt-depth", "bn-v1", "nf",
        "fixup-nonzero-last"])
def test_gradient_closed_forms_lie_in_the_fits_intervals_over_seeds(kwargs: dict[str, Any]
                                                                   ) -> None:
    trace = _seeds(kwargs, head=kwargs.get("norm") == "fixup")
    for fit_id in stats.GRADIENT_FITS:
        estimate = stats.fit(trace, fit_id)
        assert estimate.predicted is not None and estimate.n_runs == 4
        assert estimate.contains(estimate.predicted), (fit_id, estimate)


def test_bn_branch_gradient_ratio_is_one_over_the_normalized_variance() -> None:
    # rho_l = 1/((1 - 1/pi) var_l) on a circular map: per block, within 15% over 4 seeds.
    trace = _seeds({"padding": "circular"}, depth=8, width=16)
    prediction = predict_gradients(trace)
    assert prediction is not None and prediction.family == "bn-v2"
    measured = stats.band(trace, lambda b: b.grad.ratio if b.grad else math.nan).mean
    for block, (m, p) in enumerate(zip(measured, prediction.ratio, strict=True)):
        assert m == pytest.approx(p, rel=0.15), block


def _shares(output: list[float], inputs: list[float]) -> list[float]:
    """``G_out,l / G_in,l+1``: the share the ReLU after block ``l``'s addition passes."""
    return [o / i for o, i in zip(output[:-1], inputs[1:], strict=True)]


def test_bn_v1_relu_passes_the_walks_share_of_the_gradient() -> None:
    # The ReLU after each addition passes 1 - P(x = 0) G(0) / E[G]: the gradient is smaller
    # where the skip path sits at 0 (the reflected walk), so the share is above the pass rate
    # P(y > 0) and, in the first blocks, above the share of the variance (the former rule,
    # 4.7x low over 63 blocks at 64 blocks). Per block within 5% over 4 seeds, their product
    # within 15%.
    trace = _seeds({"variant": "v1"}, depth=16, width=16)
    prediction = predict_gradients(trace)
    assert prediction is not None and not prediction.exact

    def mean(value: Callable[[Any], float]) -> list[float]:
        return list(stats.band(trace, value).mean)

    measured = _shares(mean(lambda b: b.grad.output.m2 if b.grad else math.nan),
                       mean(lambda b: b.grad.input.m2 if b.grad else math.nan))
    predicted = _shares(list(prediction.output), list(prediction.input))
    for block, (m, p) in enumerate(zip(measured, predicted, strict=True)):
        assert m == pytest.approx(p, rel=0.05), block
    assert math.prod(measured) == pytest.approx(math.prod(predicted), rel=0.15)
    # The former rule: the share of the sum's channel variance the ReLU passes on.
    variance_shares = [1 / s for s in _shares(mean(lambda b: b.output.var),
                                              mean(lambda b: b.skip.var))]
    assert math.prod(variance_shares) < 0.7 * math.prod(measured)


def test_bn_v1_relu_share_after_a_projection_starts_a_new_walk() -> None:
    # A projection's BN restarts the skip path: the first sum is N(0, 2), half of it is
    # clipped, and the walk starts again from relu(N(0, 2)) (measured 0.544 after it).
    trace = _seeds({"variant": "v1", "stages": 2}, depth=16)
    prediction = predict_gradients(trace)
    assert prediction is not None
    measured = _shares(list(stats.band(trace, lambda b: b.grad.output.m2 if b.grad
                                       else math.nan).mean),
                       list(stats.band(trace, lambda b: b.grad.input.m2 if b.grad
                                       else math.nan).mean))
    predicted = _shares(list(prediction.output), list(prediction.input))
    projection = next(b.index for b in trace.runs[0].blocks if b.stage == 1)
    assert math.isnan(predicted[projection - 1])  # the projection's input: no closed form
    assert measured[projection] < 0.6
    for block, (m, p) in enumerate(zip(measured, predicted, strict=True)):
        if block != projection - 1:
            assert m == pytest.approx(p, rel=0.05), block


@pytest.mark.parametrize("kwargs", [
    {"norm": "nf", "nf_zero_init": True}, {"norm": "fixup"}, {"norm": "fixup", "variant": "v1"},
], ids=["nf-zero-init", "fixup", "fixup-v1"])
def test_zero_initialized_branches_pass_the_gradient_on_exactly(kwargs: dict[str, Any]) -> None:
    # A zero last layer (Fixup; NF's zero gain): the branch's Jacobian is 0, so the residual
    # gradient is exactly 0 and every block's input gradient is its output gradient (Fixup v1:
    # the ReLU after each addition repeats the mask the gradient already carries).
    trace = _seeds(kwargs, seeds=1, depth=6, head=kwargs["norm"] == "fixup")
    prediction = predict_gradients(trace)
    assert prediction is not None and prediction.exact
    last = trace.runs[0].blocks[-1].grad
    assert last is not None and last.output.m2 > 0
    for block, p in zip(trace.runs[0].blocks, prediction.input, strict=True):
        assert block.grad is not None
        assert block.grad.residual.m2 == 0.0
        assert block.grad.input == block.grad.output == block.grad.skip == last.output
        assert p == last.output.m2


def test_fixup_zero_classifier_makes_every_gradient_zero() -> None:
    # Fixup zero-initializes the classification layer: nothing flows back at initialization,
    # and the theory anchored on the last block says so.
    trace = _seeds({"norm": "fixup", "fixup_zero_last": False}, seeds=1, depth=4)
    prediction = predict_gradients(trace)
    assert prediction is not None
    for block in trace.runs[0].blocks:
        assert block.grad is not None and block.grad.input.m2 == block.grad.residual.m2 == 0.0
    assert set(prediction.input) == set(prediction.residual) == {0.0}
    # Nothing to judge: the verdict says why, instead of calling 4 blocks too few.
    verdict, = [v for v in stats.verdicts(trace) if v.id is stats.VerdictId.GRADIENT_PROPAGATION]
    assert verdict.outcome is stats.Outcome.INCONCLUSIVE and "exactly 0" in verdict.detail


def _alternating_chain(blocks: int, small: float, large: float) -> sigprop.Trace:
    """A float64 chain of scaled blocks alternating ``c = small, large``: exact factors
    ``(1 + c)^2`` forwards (the skip's variance) and backwards (``G_l / G_{l+1}``)."""
    cs = [small if k % 2 == 0 else large for k in range(blocks)]
    model = nn.Sequential(*(ScaledBlock(3, c) for c in cs)).double()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return sigprop.measure(model, x, backward=True)


def test_a_level_too_flat_to_separate_gives_the_measured_geometric_factors() -> None:
    # c = 0.005, 0.01: the skip's variance grows 25% over 16 blocks, so 1 / var_l varies by
    # 6.5% (coefficient of variation): too little to tell a / var_l from a constant. The factor
    # is taken as constant, its geometric mean (the former two-term fit: 1.0121).
    trace = _alternating_chain(16, 0.005, 0.01)
    factors = [(1 + c) ** 2 for c in [0.005, 0.01] * 7 + [0.005]]  # G_l / G_{l+1}, l = 0..14
    estimate = stats.fit(trace, "grad_growth_rate")
    assert estimate.estimate == pytest.approx(math.prod(factors) ** (1 / 15), rel=1e-9)
    assert 1.005**2 < estimate.ci95[0] < estimate.ci95[1] < 1.01**2
    # A real case: ConvNeXt's layer scale (1e-6) keeps the skip path constant to 1e-7 and
    # passes the gradient on unchanged. The two-term fits made that a gradient growing x2.1
    # [-8.3, 12.5] per block and a skip path shrinking x0.64 [0.28, 0.99] per block (64x64).
    net = timm.create_model("convnext_atto", pretrained=False)
    convnext = sigprop.measure(net, sigprop.InputSpec("gaussian", (2, 3, 32, 32), 0),
                               backward=True)
    stage, = [s for s, blocks in convnext.by_stage().items() if len(blocks) > 4]
    for fit_id in ("grad_growth_rate", "growth_rate"):
        rate = stats.fit(convnext, fit_id, stage)
        assert rate.estimate == pytest.approx(1.0, abs=1e-6), fit_id
        assert 1 - 1e-6 < rate.ci95[0] < rate.ci95[1] < 1 + 1e-6, fit_id


def test_a_negative_growth_rate_is_a_misfit_not_a_projection() -> None:
    trace = _alternating_chain(8, 0.1, 0.3)
    rate, exponent = (stats.fit(trace, fit_id) for fit_id in stats.GRADIENT_FITS)
    misfit = dataclasses.replace(rate, estimate=-2.0, ci95=(-5.0, 1.0))
    verdict = _gradient_verdict(trace, misfit, exponent, stats.Tolerances())
    assert verdict.outcome is stats.Outcome.INCONCLUSIVE
    assert verdict.detail.startswith("the fit G_l / G_l+1 = g + a / var_l gives g = -2 < 0 over "
                                     "8 identity block(s)")


def test_v1_without_batch_norm_has_no_gradient_closed_form() -> None:
    # The branch's channel means move whole channels off and onto the ReLU's kink, which the
    # reflected walk leaves out (measured 1.2-1.5x the walk's growth for Fixup v1).
    trace = _seeds({"norm": "fixup", "variant": "v1", "fixup_zero_last": False}, seeds=1,
                   depth=4, head=True)
    assert predict_gradients(trace) is None


def test_overflowing_gradients_are_kept_non_finite_and_judged_explosive(tmp_path: Any) -> None:
    net = sigprop.models.resnet(30, norm="skipinit", alpha=100.0, width=4, seed=0)
    trace = sigprop.measure(net, sigprop.InputSpec("gaussian", (2, 3, 4, 4), 0), backward=True)
    assert trace.first_overflow is not None  # the forward statistics: from the safe pass
    first = trace.runs[0].blocks[0].grad
    assert first is not None and not first.finite
    trace.to_json(tmp_path / "stats.json")  # strict JSON: null for the non-finite values
    assert sigprop.Trace.from_json(tmp_path / "stats.json").has_gradients
    verdict = stats.report(trace).verdict("gradient_propagation")
    assert verdict.outcome is stats.Outcome.CONSISTENT and "non-finite" in verdict.detail


def test_gradients_whose_float32_squares_overflow_are_measured_scaled() -> None:
    # The cotangent times 2^76: every gradient is finite in float32 (|g| ~ 2^80) but its squares
    # (~2^160) are not; the statistics are those of the unscaled gradients times 2^152, exactly.
    import copy

    model = sigprop.models.resnet(6, norm="none", stages=2, seed=1)
    x = sigprop.gaussian_input((8, 3, 8, 8), seed=1)
    scale = 2.0**76
    generator = torch.Generator().manual_seed(cotangent_seed(1))
    cotangent = torch.randn(model(x).shape, generator=generator)
    trace = sigprop.measure(model, x, backward=True, seed=1,
                            loss=lambda output: (output * cotangent).sum() * scale)
    reference_model = copy.deepcopy(model)
    reference = _reference(reference_model, x, 1, _capture_marked(reference_model))
    scaled = [{role: (var * scale**2, sq_mean * scale**2)
               for role, (var, sq_mean) in block.items()} for block in reference]
    _compare(trace, scaled)
    float32_max = float(torch.finfo(torch.float32).max)
    assert all(b.grad is not None and b.grad.output.m2 > float32_max
               for b in trace.runs[0].blocks)


def test_a_doubling_chain_beyond_float32_squares_has_exact_gradient_moments() -> None:
    # y = x + x: dL/dx = 2 dL/dy exactly, so the gradient at the output of block l of n is
    # 2^(n-1-l) times the cotangent: m2 x4 per block, up to 4^69 ~ 2^138 > float32's 2^128.
    n = 70
    model = nn.Sequential(*(ScaledBlock(3, 1.0) for _ in range(n)))
    x = sigprop.gaussian_input((4, 3, 5, 5), seed=0)
    blocks = sigprop.measure(model, x, backward=True, seed=5).runs[0].blocks
    generator = torch.Generator().manual_seed(cotangent_seed(5))
    cotangent = torch.randn(x.shape, generator=generator).double()
    last = blocks[-1].grad
    assert last is not None
    assert last.output.m2 == pytest.approx(float(cotangent.square().mean()), rel=1e-6)
    for block in blocks:
        g = block.grad
        assert g is not None and g.finite
        factor = 4.0 ** (n - 1 - block.index)
        for stat in ("var", "sq_mean"):
            out = getattr(last.output, stat) * factor
            assert getattr(g.output, stat) == pytest.approx(out, rel=1e-12)
            assert getattr(g.skip, stat) == getattr(g.output, stat)
            assert getattr(g.residual, stat) == pytest.approx(out, rel=1e-12)
            assert getattr(g.input, stat) == pytest.approx(4 * out, rel=1e-12)
    assert blocks[0].grad is not None
    assert blocks[0].grad.input.m2 > float(torch.finfo(torch.float32).max)


def test_a_shared_layer_keeps_its_flags_and_gets_no_grad() -> None:
    # A layer registered in two blocks lists its parameters twice when they are frozen for the
    # pass; a frozen parameter elsewhere must stay frozen.
    model = sigprop.models.resnet(3, seed=0)
    model.blocks[2].conv1 = model.blocks[0].conv1
    model.blocks[1].conv2.weight.requires_grad_(False)
    before = snapshot(model)
    trace = sigprop.measure(model, sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0), backward=True)
    assert_unchanged(model, before)
    assert model.blocks[0].conv1.weight.requires_grad
    assert not model.blocks[1].conv2.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(math.isfinite(b.grad.input.m2) for b in trace.runs[0].blocks if b.grad)
