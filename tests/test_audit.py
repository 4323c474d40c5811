"""sigprop audit: checks on healthy, exploding, zero-initialized and eval-mode networks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import sigprop
from sigprop.audit import Status, audit, fresh_batchnorms
from sigprop_cli.main import app
from tests.helpers import synthetic_trace

runner = CliRunner()
SMALL = ["--depth", "32", "--batch-size", "4", "--image-size", "16"]


def findings(args: list[str]) -> tuple[int, dict[str, dict[str, object]]]:
    result = runner.invoke(app, ["audit", *args, "--json"])
    doc = json.loads(result.stdout)
    assert doc["passed"] == (result.exit_code == 0)
    return result.exit_code, {f["id"]: f for f in doc["findings"]}


def test_healthy_bn_resnet_passes() -> None:
    code, found = findings(["resnet", *SMALL])
    assert code == 0
    assert [f["status"] for f in found.values()] == ["pass"] * 5
    assert found["residual_blocks"]["measured"] == 32
    assert found["identity_bias"]["measured"] < 0.1  # ~1/(m2_0 + l) in the deepest blocks


def test_exploding_resnet_fails_with_exit_code_1() -> None:
    code, found = findings(["resnet", *SMALL, "--norm", "none"])
    assert code == 1
    assert found["signal_explosion"]["status"] == "fail"
    assert 1.5 < found["signal_explosion"]["measured"] < 2.5  # x2 per block
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


def test_fresh_batchnorms_counts_untouched_running_statistics() -> None:
    net = nn.Sequential(nn.BatchNorm2d(3), nn.BatchNorm2d(3), nn.BatchNorm2d(3, affine=False))
    with torch.no_grad():
        net[1].running_mean.add_(0.5)
    assert fresh_batchnorms(net) == (3, 2)


def test_short_stages_cannot_be_called_geometric() -> None:
    trace = synthetic_trace([[1.0, 3.0, 9.0]], [[2.0, 6.0, 18.0]])
    explosion = {f.id: f for f in audit(trace)}["signal_explosion"]
    assert explosion.status is Status.INFO and "too few blocks" in explosion.message


def test_overflow_fails_the_explosion_check() -> None:
    skips = [[1.0, 2.0, 4.0, 8.0, float("inf")]]
    explosion = {f.id: f for f in audit(synthetic_trace(skips, skips))}["signal_explosion"]
    assert explosion.status is Status.FAIL and "overflow from block 4" in explosion.message


@pytest.mark.parametrize("threshold", [0.01, 10.0])
def test_dominance_threshold_is_a_parameter(threshold: float) -> None:
    from sigprop.audit import AuditTolerances

    trace = synthetic_trace([[1.0] * 8], [[0.5] * 8])
    bias = {f.id: f for f in audit(trace, tol=AuditTolerances(dominant_ratio=threshold))}
    expected = Status.FAIL if threshold <= 0.5 else Status.PASS
    assert bias["identity_bias"].status is expected


def test_library_audit_of_a_custom_model() -> None:
    from examples.custom_net import build

    net = build()
    trace = sigprop.measure(net, sigprop.InputSpec("gaussian", (4, 3, 32, 32), seed=0))
    by_id = {f.id: f for f in audit(trace, fresh_batchnorms(net))}
    assert by_id["residual_blocks"].measured == 6
    assert by_id["zero_branches"].status is Status.INFO
