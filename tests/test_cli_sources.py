"""``sigprop analyze torchvision | timm | model`` through CliRunner: files, exit codes, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sigprop_cli.main import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "custom_net.py")
TINY = ["--batch-size", "2", "--image-size", "32"]


def analyze(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["analyze", *args])
    return result.exit_code, result.stdout, result.stderr


def blocks(out: Path) -> list[dict[str, object]]:
    doc = json.loads((out / "stats.json").read_text())
    found: list[dict[str, object]] = doc["runs"][0]["blocks"]
    return found


def test_torchvision_model(tmp_path: Path) -> None:
    code, stdout, stderr = analyze("torchvision", "resnet18", *TINY, "--out", str(tmp_path))
    assert code == 0, stderr
    doc = json.loads((tmp_path / "stats.json").read_text())
    assert doc["model"] == {"source": "torchvision", "name": "resnet18"}
    assert doc["input"]["shape"] == [2, 3, 32, 32]
    found = blocks(tmp_path)
    assert [b["name"] for b in found] == [f"layer{s}.{i}" for s in range(1, 5) for i in range(2)]
    assert [b["gain"] for b in found] == [None] * 8
    assert (tmp_path / "spp.png").exists() and (tmp_path / "stats.csv").exists()
    assert "residual blocks" in stdout


def test_timm_model_reports_its_zero_initialized_branches(tmp_path: Path) -> None:
    code, stdout, stderr = analyze("timm", "resnet18", *TINY, "--seed", "1",
                                   "--out", str(tmp_path))
    assert code == 0, stderr
    found = blocks(tmp_path)
    assert len(found) == 8 and {b["gain"] for b in found} == {"bn2.weight = 0"}
    assert "bn2.weight = 0 (8 blocks)" in stdout


def test_custom_model_from_a_file_with_arguments(tmp_path: Path) -> None:
    code, _, stderr = analyze("model", f"{EXAMPLE}:build", "--input-shape", "3,16,16",
                              "--arg", "depth=1", "--arg", "width=4", "--batch-size", "2",
                              "--out", str(tmp_path))
    assert code == 0, stderr
    doc = json.loads((tmp_path / "stats.json").read_text())
    assert doc["model"] == {"source": "model", "name": f"{EXAMPLE}:build", "depth": 1, "width": 4}
    found = blocks(tmp_path)
    assert [(b["name"], b["stage"], b["shortcut"], b["gain"]) for b in found] == [
        ("blocks.0", 0, "identity", None), ("blocks.1", 1, "projection", None),
        ("blocks.2", 2, "projection", "alpha = 0")]


def test_custom_model_from_a_module(tmp_path: Path) -> None:
    code, _, stderr = analyze("model", "torchvision.models:resnet18", "--input-shape", "3,32,32",
                              "--batch-size", "2", "--arg", "num_classes=3",
                              "--out", str(tmp_path))
    assert code == 0, stderr
    assert len(blocks(tmp_path)) == 8


def _write(tmp_path: Path, body: str) -> str:
    path = tmp_path / "user_model.py"
    path.write_text("import torch\nfrom torch import nn\n\n" + body)
    return str(path)


@pytest.mark.parametrize(("args", "message"), [
    (["torchvision", "resnet19"], "unknown torchvision classification model 'resnet19'; "
     "did you mean resnet18"),
    (["timm", "resnet_nope"], "unknown timm model 'resnet_nope'"),
    (["model", "missing.py:build", "--input-shape", "3,8,8"],
     "cannot load model 'missing.py:build': no such file 'missing.py'"),
    (["model", f"{EXAMPLE}:nothing", "--input-shape", "3,8,8"], "has no attribute 'nothing'"),
    (["model", "no_such_package.mod:build", "--input-shape", "3,8,8"],
     "cannot import 'no_such_package.mod'"),
    (["model", "build_only", "--input-shape", "3,8,8"], "must be path/to/file.py:callable"),
    (["model", f"{EXAMPLE}:build", "--input-shape", "3,x"],
     "--input-shape '3,x' must be positive integers"),
    (["model", f"{EXAMPLE}:build", "--input-shape", "3,8,8", "--arg", "depth"],
     "--arg 'depth' must be key=value"),
    (["model", f"{EXAMPLE}:build", "--input-shape", "3,8,8", "--arg", "colour=2"],
     "build raised TypeError: "),
    (["model", f"{EXAMPLE}:build", "--input-shape", "5,8,8"],
     "the model's forward pass failed before block 0: RuntimeError: "),
])
def test_bad_input_exits_2_with_one_error_line(args: list[str], message: str,
                                               tmp_path: Path) -> None:
    code, stdout, stderr = analyze(*args, "--batch-size", "2", "--out", str(tmp_path))
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message in lines[0] and "Traceback" not in stderr + stdout


@pytest.mark.parametrize(("body", "message"), [
    ("def build():\n    raise RuntimeError('bad config')\n",
     "build raised RuntimeError: bad config"),
    ("def build():\n    return 3\n", "build returned a value of type int, not a torch.nn.Module"),
    ("def build():\n    return nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())\n",
     "no residual block found in Sequential"),
    ("def build(:\n", "raised SyntaxError"),
    ("build = 3\n", "'build' is not callable"),
    ("def build():\n    assert False\n",
     "build raised AssertionError: (no message; sigprop --debug shows the traceback)"),
])
def test_bad_user_files_exit_2_with_one_error_line(body: str, message: str,
                                                   tmp_path: Path) -> None:
    spec = f"{_write(tmp_path, body)}:build"
    code, stdout, stderr = analyze("model", spec, "--input-shape", "3,8,8", "--batch-size", "2",
                                   "--out", str(tmp_path / "out"))
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert "Traceback" not in stderr + stdout


def test_debug_shows_the_traceback_behind_a_usage_error(tmp_path: Path) -> None:
    source = tmp_path / "broken.py"
    source.write_text("def build():\n    raise RuntimeError('my builder failed')\n")
    args = ["analyze", "model", f"{source}:build", "--input-shape", "3,8,8", "--out",
            str(tmp_path / "out")]
    plain = runner.invoke(app, args)
    debug = runner.invoke(app, ["--debug", *args])
    assert plain.exit_code == debug.exit_code == 2
    assert "my builder failed" in plain.stderr and "Traceback" not in plain.stderr
    assert "Traceback" in debug.stderr and "RuntimeError: my builder failed" in debug.stderr


LANGUAGE_MODEL = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Linear(d, d)

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class LM(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.blocks = nn.Sequential(Block(8), Block(8))

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        if attention_mask is not None:
            h = h * attention_mask[..., None]
        return self.blocks(h)


def build(vocab=20):
    return LM(vocab)
'''


def m2(moments: object) -> float:
    assert isinstance(moments, dict)
    return float(moments["var"]) + float(moments["sq_mean"])


def test_token_ids_and_saved_inputs(tmp_path: Path) -> None:
    import torch

    import sigprop

    lm = tmp_path / "lm.py"
    lm.write_text(LANGUAGE_MODEL)
    code, _, stderr = analyze("model", f"{lm}:build", "--input-shape", "6", "--input-kind",
                              "tokens", "--vocab-size", "20", "--batch-size", "3",
                              "--out", str(tmp_path / "tokens"))
    assert code == 0, stderr
    found = blocks(tmp_path / "tokens")
    torch.manual_seed(0)
    ids = sigprop.token_input((3, 6), vocab_size=20, seed=0)
    assert int(ids.max()) < 20 and ids.dtype == torch.int64
    with torch.no_grad():
        embedded = torch.nn.Embedding(20, 8)(ids).double()  # the model's embedding, seed 0
    assert m2(found[0]["skip"]) == pytest.approx(float((embedded**2).mean()), rel=1e-6)

    saved = tmp_path / "batch.pt"
    mask = torch.tensor([[1.0] * 6, [1.0] * 3 + [0.0] * 3])
    torch.save({"input_ids": ids[:2], "attention_mask": mask}, saved)
    code, _, stderr = analyze("model", f"{lm}:build", "--input", str(saved),
                              "--out", str(tmp_path / "saved"))
    assert code == 0, stderr
    doc = json.loads((tmp_path / "saved" / "stats.json").read_text())
    assert doc["input"]["shape"] == [2, 6]
    masked = embedded[:2] * mask[..., None].double()
    assert m2(blocks(tmp_path / "saved")[0]["skip"]) == pytest.approx(
        float((masked**2).mean()), rel=1e-6)


@pytest.mark.parametrize(("options", "message"), [
    (["--input-kind", "tokens", "--input-shape", "6"], "needs --vocab-size N >= 1"),
    (["--input-shape", "6", "--vocab-size", "5"], "--vocab-size is for --input-kind tokens"),
    ([], "give --input-shape"),
    (["--input", "missing.pt"], "'missing.pt': no such file"),
    (["--input", "{bad}", "--input-shape", "6"], "--input replaces --input-shape"),
    (["--input", "{bad}"], "cannot be loaded with weights_only=True"),
])
def test_bad_input_options_are_usage_errors(tmp_path: Path, options: list[str], message: str
                                            ) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_text("not a tensor file")
    lm = tmp_path / "lm.py"
    lm.write_text(LANGUAGE_MODEL)
    code, _, stderr = analyze("model", f"{lm}:build",
                              *(o.replace("{bad}", str(bad)) for o in options))
    assert code == 2 and message in stderr, stderr
