"""The sigprop command through CliRunner: files, schema, summary, exit codes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sigprop
from sigprop_cli.main import app

runner = CliRunner()
SMALL = ["--depth", "6", "--width", "4", "--batch-size", "2", "--image-size", "8"]


def analyze(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["analyze", "resnet", *args])
    return result.exit_code, result.stdout, result.stderr


def test_version_and_help() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"sigprop {sigprop.__version__}"
    help_text = runner.invoke(app, ["analyze", "resnet", "--help"]).stdout
    assert "Number of residual blocks d" in help_text and "NOT layers" in help_text


def test_analyze_writes_json_csv_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, stdout, _ = analyze(*SMALL, "--stages", "2", "--seed", "3", "--out", str(out))
    assert code == 0, stdout
    doc = json.loads((out / "stats.json").read_text())
    assert set(doc) >= {"sigprop_version", "model", "input", "bn_mode", "runs"}
    assert doc["model"]["depth"] == 6 and doc["model"]["norm"] == "batchnorm"
    assert doc["input"] == {"kind": "gaussian", "shape": [2, 3, 8, 8], "seed": 3}
    assert doc["bn_mode"] == "train"
    (run,) = doc["runs"]
    assert run["seed"] == 3 and len(run["blocks"]) == 6
    block = run["blocks"][3]
    assert set(block) == {"index", "name", "stage", "shortcut", "channels_last", "skip",
                          "residual", "output", "cross", "gain", "grad"}
    assert block["grad"] is None  # no --backward
    assert block["gain"] is None  # batch norm, no gain on the branch
    assert block["channels_last"] is False  # (N, C, H, W) activations
    assert (block["index"], block["name"], block["stage"], block["shortcut"]) == (
        3, "blocks.3", 1, "projection")
    assert set(block["residual"]) == {"var", "sq_mean"}
    # The file agrees with the library run on the same seed.
    net = sigprop.models.resnet(6, width=4, stages=2, seed=3)
    direct = sigprop.measure(net, sigprop.InputSpec("gaussian", (2, 3, 8, 8), 3))
    assert block["skip"]["var"] == direct.runs[0].blocks[3].skip.var
    csv = (out / "stats.csv").read_text().splitlines()
    assert csv[0] == "seed,block,name,stage,direction,tensor,stat,value"
    assert len(csv) == 1 + 6 * 6
    assert (out / "spp.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "spp-backward.png").exists()
    assert "residual blocks" in stdout and "skip second moment, last block" in stdout


def test_backward_writes_gradients_plot_summary_and_verdicts(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, stdout, _ = analyze(*SMALL, "--seed", "2", "--backward", "--out", str(out))
    assert code == 0, stdout
    doc = json.loads((out / "stats.json").read_text())
    net = sigprop.models.resnet(6, width=4, seed=2)
    direct = sigprop.measure(net, sigprop.InputSpec("gaussian", (2, 3, 8, 8), 2), backward=True)
    for saved, measured in zip(doc["runs"][0]["blocks"], direct.runs[0].blocks, strict=True):
        assert measured.grad is not None
        assert saved["grad"]["residual"]["var"] == measured.grad.residual.var
        assert saved["grad"]["input"]["sq_mean"] == measured.grad.input.sq_mean
    assert {f["id"] for f in doc["fits"]} >= {"grad_growth_rate", "grad_ratio_exponent"}
    assert "gradient_propagation" in {v["id"] for v in doc["verdicts"]}
    csv = (out / "stats.csv").read_text().splitlines()
    assert len(csv) == 1 + 6 * (3 + 4) * 2 and sum(",backward," in row for row in csv) == 48
    assert (out / "spp-backward.png").read_bytes()[:4] == b"\x89PNG"
    growth = direct.runs[0].blocks[0].grad.input.m2 / direct.runs[0].blocks[-1].grad.output.m2
    assert re.search(rf"gradient growth, last block to first\s*│\s*x{growth:.4g}\s*│", stdout)
    assert "gradient_propagation" in stdout
    replot = runner.invoke(app, ["plot", str(out), "--backward", "--out", str(tmp_path / "b.png")])
    assert replot.exit_code == 0 and (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    forward_only = tmp_path / "forward.json"
    sigprop.measure(net, sigprop.InputSpec("gaussian", (2, 3, 8, 8), 2)).to_json(forward_only)
    refused = runner.invoke(app, ["plot", str(forward_only), "--backward", "--out",
                                  str(tmp_path / "c.png")])
    assert refused.exit_code == 2 and "has no gradient statistics" in refused.stderr


def test_unnormalized_overflow_is_reported(tmp_path: Path) -> None:
    # A branch gain of 100 multiplies the skip's second moment by ~1e4 per block: float32
    # overflows within 40 blocks, as an unnormalized network does within a few hundred.
    code, stdout, _ = analyze("--depth", "40", "--norm", "skipinit", "--alpha", "100",
                              "--width", "8", "--batch-size", "2", "--image-size", "8",
                              "--out", str(tmp_path))
    assert code == 0
    first = json.loads((tmp_path / "stats.json").read_text())["runs"][0]["first_overflow"]
    assert isinstance(first, int)
    assert re.search(rf"first non-finite block\s*│\s*{first}\s*│", stdout)


@pytest.mark.parametrize(("args", "message"), [
    (["--depth", "0"], "error: depth must be >= 1 residual block, got 0"),
    (["--width", "0"], "error: width must be >= 1 channel, got 0"),
    (["--batch-size", "0"], "error: --batch-size must be >= 1 image, got 0"),
    (["--alpha", "0.5"], "error: alpha applies only to norm='skipinit'"),
    (["--device", "cuda:7"], "error: device 'cuda:7'"),
    (["--device", "tpu"], "error: unknown device 'tpu'"),
    (["--norm", "layernorm"],
     "'layernorm' is not one of 'batchnorm', 'none', 'skipinit', 'sqrt-depth', 'nf', 'fixup'"),
    (["--nf-zero-init"], "error: nf_zero_init=True applies only to norm='nf'"),
    (["--norm", "nf", "--no-fixup-zero-last"],
     "error: fixup_zero_last=False applies only to norm='fixup', got norm='nf'"),
    (["--norm", "nf", "--variant", "v1"], "error: norm='nf' is built on the pre-activation"),
])
def test_bad_input_exits_2_with_one_clear_line(args: list[str], message: str,
                                               tmp_path: Path) -> None:
    code, stdout, stderr = analyze(*SMALL, "--out", str(tmp_path), *args)
    assert code == 2
    assert message in stderr
    assert "Traceback" not in stdout + stderr
    assert not (tmp_path / "stats.json").exists()


def test_unwritable_out_exits_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, stderr = analyze(*SMALL, "--out", str(blocker / "sub"))
    assert code == 2 and "error: cannot write to --out" in stderr and "writable folder" in stderr
    if os.geteuid() != 0:  # root can write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, stderr = analyze(*SMALL, "--out", str(locked))
        assert code == 2 and "Permission denied" in stderr


def test_allocator_pinning_succeeds_on_glibc() -> None:
    import platform

    from sigprop_cli._allocator import pin_glibc_allocator

    expected = platform.libc_ver()[0] == "glibc"
    assert pin_glibc_allocator() is expected
