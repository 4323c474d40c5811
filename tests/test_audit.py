"""sigprop audit: checks on healthy, exploding, zero-initialized and eval-mode networks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import sigprop
from sigprop.audit import AuditTolerances, Status, audit
from sigprop_cli.main import app
from tests.helpers import ProjectedScaledBlock, ScaledBlock, synthetic_trace

runner = CliRunner()
SMALL = ["--depth", "32", "--batch-size", "4", "--image-size", "16"]


def findings(args: list[str]) -> tuple[int, dict[str, dict[str, Any]]]:
    result = runner.invoke(app, ["audit", *args, "--json"])
    doc = json.loads(result.stdout)
    assert doc["passed"] == (result.exit_code == 0)
    return result.exit_code, {f["id"]: f for f in doc["findings"]}


def test_healthy_bn_resnet_passes() -> None:
    code, found = findings(["resnet", *SMALL, "--backward"])
    assert code == 0
    assert [f["status"] for f in found.values()] == ["pass"] * 6
    assert 1 <= found["gradient_propagation"]["measured"] < 1.1  # 1 + rho_l -> 1 with depth
    assert found["residual_blocks"]["measured"] == 32
    assert found["identity_bias"]["measured"] < 0.1  # ~1/(m2_0 + l) in the deepest blocks


def test_exploding_resnet_fails_with_exit_code_1() -> None:
    code, found = findings(["resnet", *SMALL, "--norm", "none", "--backward"])
    assert code == 1
    assert found["signal_explosion"]["status"] == "fail"
    assert found["gradient_propagation"]["status"] == "fail"
    assert "explodes" in str(found["gradient_propagation"]["message"])
    assert 1.5 < found["gradient_propagation"]["measured"] < 2.5  # ~x1.8 per block back
    assert 1.5 < found["signal_explosion"]["measured"] < 2.5  # x1.8-1.9 per block at 16x16
    assert found["identity_bias"]["status"] == "fail"


def test_zero_initialized_branches_are_information_with_their_gain() -> None:
    code, found = findings(["resnet", *SMALL, "--norm", "skipinit"])
    assert code == 0
    zero = found["zero_branches"]
    assert zero["status"] == "info" and zero["measured"] == 32
    assert "alpha" in str(zero["message"])


def test_bn_in_eval_mode_with_fresh_statistics_fails() -> None:
    code, found = findings(["resnet", *SMALL, "--bn-mode", "eval"])
    assert code == 1
    assert found["bn_eval_mode"]["status"] == "fail"
    assert "behaves unnormalized" in str(found["bn_eval_mode"]["message"])


def test_model_without_residual_block_fails_the_first_check(tmp_path: Path) -> None:
    source = tmp_path / "plain.py"
    source.write_text("from torch import nn\n\ndef build():\n"
                      "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())\n")
    code, found = findings(["model", f"{source}:build", "--input-shape", "3,8,8"])
    assert code == 1
    assert list(found) == ["residual_blocks"]
    assert "no residual block found" in str(found["residual_blocks"]["message"])


def test_table_output_and_files_on_request(tmp_path: Path) -> None:
    result = runner.invoke(app, ["audit", "resnet", *SMALL, "--out", str(tmp_path)])
    assert result.exit_code == 0
    assert "signal_explosion" in result.stdout and "pass" in result.stdout
    assert (tmp_path / "stats.json").exists()
    bad = runner.invoke(app, ["audit", "resnet", "--depth", "0"])
    assert bad.exit_code == 2 and "depth must be >= 1" in bad.stderr


def test_trace_records_batch_norm_layers_with_fresh_statistics() -> None:
    net = sigprop.models.resnet(2, seed=0)  # two BN per block and one before the head
    with torch.no_grad():
        net.blocks[1].norm2.running_mean.add_(0.5)
    trace = sigprop.measure(net, sigprop.InputSpec("gaussian", (2, 3, 4, 4), 0))
    assert trace.batchnorms == sigprop.BatchNorms(layers=5, fresh=4)
    assert sigprop.Trace.from_dict(trace.to_dict()).batchnorms == trace.batchnorms
    layers = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    last_var = layers[-1].running_var
    assert last_var is not None
    with torch.no_grad():
        last_var[-1] = 2.0  # one value, at the end of the last layer
    layers[0].track_running_stats = False  # no running statistics: not fresh
    layers[0].running_mean = layers[0].running_var = None
    trace = sigprop.measure(net, sigprop.InputSpec("gaussian", (2, 3, 4, 4), 0))
    assert trace.batchnorms == sigprop.BatchNorms(layers=5, fresh=2)


def test_short_stages_cannot_be_judged() -> None:
    trace = synthetic_trace([[1.0, 3.0, 9.0]], [[2.0, 6.0, 18.0]])
    found = {f.id: f for f in audit(trace)}
    assert found["signal_explosion"].status is Status.INFO
    assert "cannot tell" in found["signal_explosion"].message
    assert found["identity_bias"].status is Status.INFO


def test_overflow_fails_the_explosion_check() -> None:
    skips = [[1.0, 2.0, 4.0, 8.0, float("inf")]]
    explosion = {f.id: f for f in audit(synthetic_trace(skips, skips))}["signal_explosion"]
    assert explosion.status is Status.FAIL and "overflow from block 4" in explosion.message


@pytest.mark.parametrize("threshold", [0.01, 10.0])
def test_dominance_threshold_is_a_parameter(threshold: float) -> None:
    trace = synthetic_trace([[1.0] * 8], [[0.5] * 8])
    bias = {f.id: f for f in audit(trace, tol=AuditTolerances(dominant_ratio=threshold))}
    expected = Status.FAIL if threshold <= 0.5 else Status.PASS
    assert bias["identity_bias"].status is expected


def test_library_audit_of_a_custom_model() -> None:
    from examples.custom_net import build

    net = build()
    trace = sigprop.measure(net, sigprop.InputSpec("gaussian", (4, 3, 32, 32), seed=0))
    by_id = {f.id: f for f in audit(trace)}
    assert by_id["residual_blocks"].measured == 6
    assert by_id["zero_branches"].status is Status.INFO


def test_library_audit_fails_a_bn_network_in_eval_mode() -> None:
    net = sigprop.models.resnet(8, seed=0)
    trace = sigprop.measure(net, sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0), bn_mode="eval")
    found = {f.id: f for f in audit(trace)}
    assert found["bn_eval_mode"].status is Status.FAIL
    assert "no batch-norm layer" not in found["bn_eval_mode"].message


def _zoo(name: str) -> nn.Module:
    import timm
    import torchvision

    library, _, model = name.partition(":")
    if library == "torchvision":
        built: nn.Module = getattr(torchvision.models, model)(weights=None)
        return built
    if model.startswith("vit"):
        vit: nn.Module = timm.create_model(model, pretrained=False, img_size=64)
        return vit
    built = timm.create_model(model, pretrained=False)
    return built


@pytest.mark.parametrize("name", [
    "torchvision:resnet18", "torchvision:resnet50", "torchvision:wide_resnet50_2",
    "torchvision:resnext50_32x4d", "torchvision:mobilenet_v2", "torchvision:regnet_y_400mf",
    "timm:resnet50", "timm:resnetv2_50", "timm:nf_resnet50",
    "timm:convnext_atto", "timm:vit_tiny_patch16_224",
])
def test_stock_architectures_pass(name: str) -> None:
    # Gradients included: no stock architecture may fail gradient_propagation either.
    torch.manual_seed(0)
    trace = sigprop.measure(_zoo(name), sigprop.InputSpec("gaussian", (2, 3, 64, 64), 0),
                            backward=True)
    failed = [f for f in audit(trace) if f.status is Status.FAIL]
    assert not failed, failed


def test_pre_ln_transformer_encoder_passes() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=True)
    encoder = nn.TransformerEncoder(layer, 8, enable_nested_tensor=False)
    trace = sigprop.measure(encoder, sigprop.InputSpec("gaussian", (4, 16, 32), 0))
    assert trace.n_blocks == 16
    assert not [f for f in audit(trace) if f.status is Status.FAIL]


@pytest.mark.parametrize("depth", [1, 8, 64, 512])
@pytest.mark.parametrize("kwargs", [
    {}, {"variant": "v1"}, {"norm": "skipinit"}, {"norm": "sqrt-depth"}, {"norm": "nf"},
    {"norm": "fixup"}, {"norm": "fixup", "variant": "v1"},
], ids=["v2", "v1", "skipinit", "sqrt", "nf", "fixup", "fixup-v1"])
def test_healthy_built_in_networks_pass_at_every_depth(depth: int,
                                                        kwargs: dict[str, object]) -> None:
    net = sigprop.models.resnet(depth, width=8, seed=0, **kwargs)  # type: ignore[arg-type]
    trace = sigprop.measure(net, sigprop.InputSpec("gaussian", (4, 3, 8, 8), 0))
    failed = [f for f in audit(trace) if f.status is Status.FAIL]
    assert not failed, failed


@pytest.mark.parametrize(("args"), [
    ["--depth", "32", "--norm", "none"],
    ["--depth", "256", "--norm", "skipinit", "--alpha", "0.25"],
    ["--depth", "512", "--norm", "skipinit", "--alpha", "0.15"],
], ids=["unnormalized-32", "skipinit-0.25-256", "skipinit-0.15-512"])
def test_exploding_networks_fail_through_the_cli(args: list[str]) -> None:
    code, found = findings(["resnet", *args, "--batch-size", "8", "--image-size", "16"])
    assert code == 1
    assert found["signal_explosion"]["status"] == "fail", found["signal_explosion"]


def test_cli_audit_of_stock_resnets_exits_0() -> None:
    for name in ("resnet18", "resnet50"):
        code, found = findings(["torchvision", name, "--image-size", "64", "--batch-size", "2"])
        assert code == 0, found
        assert found["signal_explosion"]["status"] in ("pass", "info")


# Depths 8 and 512 of both families through the library: test_healthy_built_in_networks_...
@pytest.mark.parametrize(("depth", "args", "zero"), [
    ("512", ["--norm", "nf"], None), ("512", ["--norm", "fixup"], "conv2.weight = 0"),
    ("8", ["--norm", "nf", "--nf-zero-init"], "conv2.gain = 0"),
    ("8", ["--norm", "fixup", "--no-fixup-zero-last"], None),
], ids=["nf-512", "fixup-512", "nf-zero-init-8", "fixup-nonzero-8"])
def test_normalizer_free_networks_pass_the_cli_audit(depth: str, args: list[str],
                                                     zero: str | None) -> None:
    code, found = findings(["resnet", "--depth", depth, *args, "--width", "8", "--batch-size",
                            "2", "--image-size", "8"])
    assert code == 0, found
    assert found["signal_explosion"]["status"] in ("pass", "info")
    assert found["identity_bias"]["status"] == "pass"
    assert found["bn_eval_mode"]["message"] == "no batch-norm layer"
    if zero is None:
        assert found["zero_branches"]["status"] == "pass"
    else:
        assert found["zero_branches"]["measured"] == int(depth)
        assert f"{zero} ({depth})" in str(found["zero_branches"]["message"])


def test_a_trace_without_batch_norm_counts_is_information_not_a_pass() -> None:
    # Traces written before sigprop 0.2 (and hand-built ones) do not record BN layers.
    found = {f.id: f for f in audit(synthetic_trace([[1.0, 2.0, 3.0, 4.0]], [[1.0] * 4]))}
    assert found["bn_eval_mode"].status is Status.INFO
    assert "does not record" in found["bn_eval_mode"].message


def test_gradient_check_fails_a_vanishing_gradient_and_cannot_judge_short_stages() -> None:
    def gradient_finding(blocks: int) -> Any:
        model = nn.Sequential(*(ScaledBlock(3, -0.5) for _ in range(blocks))).double()
        x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        return {f.id: f for f in audit(sigprop.measure(model, x, backward=True))}[
            "gradient_propagation"]

    vanishing = gradient_finding(8)  # each block passes (1 - 0.5)^2 of its output gradient
    assert vanishing.status is Status.FAIL and "vanishes" in vanishing.message
    assert vanishing.measured == pytest.approx(0.25, rel=1e-9)
    short = gradient_finding(3)
    assert short.status is Status.INFO and "too short" in short.message
    # Five blocks give a rate, but too few pairs are left when the jackknife deletes a segment.
    no_interval = gradient_finding(5)
    assert no_interval.status is Status.INFO
    assert "x0.25 per block" in no_interval.message and "measure more seeds" in no_interval.message


def test_gradient_check_names_every_open_stage_and_what_the_others_ruled_out() -> None:
    # Stage 0: 8 blocks passing (1 + 0.05)^2 of their output gradient back, x1.1025^8 = 2.18
    # (within x10: ruled out); stage 1: a projection and 2 identity blocks, too short to fit.
    model = nn.Sequential(*(ScaledBlock(3, 0.05) for _ in range(8)),
                          ProjectedScaledBlock(3, 0.05),
                          *(ScaledBlock(3, 0.05) for _ in range(2))).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    trace = sigprop.measure(model, x, backward=True)
    assert {stage: len(blocks) for stage, blocks in trace.by_stage().items()} == {0: 8, 1: 3}
    found = {f.id: f for f in audit(trace)}["gradient_propagation"]
    assert found.status is Status.INFO
    open_part, ruled_out = found.message.split("; ruled out (within x10 either way) in ")
    assert open_part.startswith("cannot tell: stage 1: too short to fit a growth rate (2 "
                                "identity block(s)")
    assert ruled_out.startswith("stage 0: x1.103 per block towards the input, x2.18 [2.18, 2.18] "
                                "over 8 block(s)")
