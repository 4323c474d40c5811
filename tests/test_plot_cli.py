"""`sigprop plot`: re-render saved stats.json files; bad or mismatched files exit 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
from matplotlib.figure import Figure
from typer.testing import CliRunner

import sigprop.plotting
from sigprop.plotting import plot_spp
from sigprop_cli.main import app

runner = CliRunner()
SMALL = ["--depth", "6", "--width", "4", "--batch-size", "2", "--image-size", "8"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    runs = {"bn": [], "skipinit": ["--norm", "skipinit", "--seeds", "2"]}
    for name, extra in runs.items():
        result = runner.invoke(app, ["analyze", "resnet", *SMALL, *extra,
                                     "--out", str(root / name)])
        assert result.exit_code == 0, result.stdout
    return {name: root / name / "stats.json" for name in runs}


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures `sigprop plot` draws, to check what they hold."""
    figures: list[Figure] = []

    def spy(*args: Any, **kwargs: Any) -> Figure:
        fig = plot_spp(*args, **kwargs)
        figures.append(fig)
        return fig

    monkeypatch.setattr(sigprop.plotting, "plot_spp", spy)
    return figures


def legend(fig: Figure) -> list[str]:
    drawn = fig.axes[-1].get_legend()  # the SPP's legend panel
    assert drawn is not None
    return [t.get_text().replace("\n", " ") for t in drawn.get_texts()]


def test_one_file(saved: dict[str, Path], drawn: list[Figure], tmp_path: Path) -> None:
    out = tmp_path / "one.png"
    result = runner.invoke(app, ["plot", str(saved["bn"]), "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes()[:4] == b"\x89PNG" and f"wrote {out}" in result.stdout
    (fig,) = drawn
    assert legend(fig)[0] == "ResNet-v2 batchnorm, d=6" and legend(fig)[1].startswith("theory")
    assert len(np.asarray(fig.axes[2].get_lines()[0].get_xdata())) == 6


def test_several_files_overlay_with_labels(saved: dict[str, Path], drawn: list[Figure],
                                           tmp_path: Path) -> None:
    out = tmp_path / "both.svg"
    result = runner.invoke(app, ["plot", str(saved["bn"]), str(saved["skipinit"].parent),
                                 "--label", "BN", "--label", "SkipInit", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert out.read_text().lstrip().startswith("<?xml") and "<dc:date>" not in out.read_text()
    (fig,) = drawn
    assert legend(fig)[:2] == ["BN", "SkipInit (mean of 2 seeds, 95% band)"]
    assert len(fig.axes[1].collections) == 1  # the band of the two-seed SkipInit run


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "missing.json", "no such file"),
    (lambda d: _write(d / "bad.json", "{not json"), "is not valid JSON"),
    (lambda d: _write(d / "list.json", "[1, 2]"), "holds a JSON list, not an object"),
    (lambda d: _write(d / "schema.json", json.dumps({"model": {}})),
     "not a sigprop stats document: it has no 'input' entry"),
    (lambda d: _write(d / "binary.json", b"\xff\xfe\x00\x81"), "cannot read it"),
    (lambda d: _write(d / "empty.json", json.dumps({
        "sigprop_version": "0", "model": {}, "input": {"kind": "gaussian", "shape": [1],
                                                       "seed": 0},
        "bn_mode": "train", "runs": []})), "holds no measured blocks"),
])
def test_bad_json_exits_2_with_one_line(make: Any, message: str, saved: dict[str, Path],
                                        tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    result = runner.invoke(app, ["plot", str(saved["bn"]), str(make(tmp_path)),
                                 "--out", str(out)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not out.exists()


def test_mismatched_runs_and_arguments_exit_2(saved: dict[str, Path], tmp_path: Path) -> None:
    doc = json.loads(saved["skipinit"].read_text())
    doc["runs"][1]["blocks"] = doc["runs"][1]["blocks"][:3]
    ragged = _write(tmp_path / "ragged.json", json.dumps(doc))
    cases = [
        ([str(ragged), "--out", str(tmp_path / "x.png")], "different numbers of blocks"),
        ([str(saved["bn"]), "--label", "a", "--label", "b", "--out", str(tmp_path / "x.png")],
         "got 2 --label for 1 files"),
        ([str(saved["bn"]), "--out", str(tmp_path / "x.gif")], "no image suffix"),
        ([str(saved["bn"]), "--out", str(tmp_path / "no" / "x.png")], "does not exist"),
        ([str(saved["bn"]), "--out", str(saved["bn"] / "x.png")], "is a file, not a folder"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["plot", *args])
        assert result.exit_code == 2, args
        assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
