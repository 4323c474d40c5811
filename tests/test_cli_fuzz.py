"""Property-based tests of every command: valid random options run and leave torch's global state
as it was; fuzzed options (negative, zero, huge, non-numeric, unknown names, odd paths) exit 0, 1
or 2, never with a traceback, and leave no file behind when they exit 2.

Examples are bounded and derandomized (the same ones on every run). Values that would make a
valid run long on purpose (a huge --depth or --seeds, a valid zoo model, the full figure set)
are not drawn.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sigprop_cli.main import app
from tests.helpers import assert_unchanged, global_state

runner = CliRunner()
BOUNDED = settings(derandomize=True, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow])

MODEL_FILE = '''
from torch import nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


def net(depth=2, width=3, fail=False):
    if fail:
        raise ValueError("asked to fail")
    return nn.Sequential(*(Block(width) for _ in range(depth)))
'''


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A model file, a stats.json, a JSON that is not one, a plain file: read, never written."""
    root = tmp_path_factory.mktemp("assets")
    (root / "models.py").write_text(MODEL_FILE)
    (root / "other.json").write_text(json.dumps({"runs": []}))
    (root / "file").write_text("a file")
    result = runner.invoke(app, ["analyze", "resnet", "--depth", "2", "--width", "2",
                                 "--batch-size", "2", "--image-size", "4", "--out",
                                 str(root / "run")])
    assert result.exit_code == 0, result.stderr
    yield root


def listing(*roots: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for root in roots for p in root.rglob("*")}


def run(argv: list[str], assets: Path) -> tuple[int, str, set[str]]:
    """Run ``sigprop argv`` in a fresh working folder; the exit code, the output, new files."""
    before_state = global_state()
    before = listing(assets)
    with tempfile.TemporaryDirectory() as cwd:
        here = os.getcwd()
        os.chdir(cwd)
        try:
            result = runner.invoke(app, argv)
        finally:
            os.chdir(here)
        created = set(listing(assets, Path(cwd))) - set(before)
        changed = {p for p, t in listing(assets).items() if before.get(p, t) != t}
    assert_unchanged(None, before_state)
    return result.exit_code, result.stdout + result.stderr, created | changed


# ----------------------------------------------------------------- valid random runs

@settings(BOUNDED, max_examples=3)
@given(group=st.sampled_from(["analyze", "audit"]), depth=st.integers(1, 3),
       width=st.integers(1, 3), seeds=st.integers(1, 2), stages=st.integers(1, 2),
       norm=st.sampled_from(["batchnorm", "none", "skipinit", "fixup"]),
       bn_mode=st.sampled_from(["train", "eval"]), source=st.sampled_from(["resnet", "model"]))
def test_valid_runs_write_one_complete_set(assets: Path, group: str, depth: int, width: int,
                                           seeds: int, stages: int, norm: str, bn_mode: str,
                                           source: str) -> None:
    if source == "resnet":
        argv = ["resnet", "--depth", str(depth), "--width", str(width), "--norm", norm,
                "--stages", str(min(stages, depth)), "--batch-size", "2", "--image-size", "4"]
    else:
        argv = ["model", f"{assets}/models.py:net", "--arg", f"depth={depth}", "--arg",
                f"width={width}", "--input-shape", f"{width},4,4", "--batch-size", "2"]
    with tempfile.TemporaryDirectory() as out:
        code, output, _ = run([group, *argv, "--seeds", str(seeds), "--bn-mode", bn_mode,
                               "--out", out], assets)
        assert code in ((0,) if group == "analyze" else (0, 1)), output
        assert sorted(os.listdir(out)) == ["spp.png", "stats.csv", "stats.json"]
        doc = json.loads(Path(out, "stats.json").read_text())
        assert [len(r["blocks"]) for r in doc["runs"]] == [depth] * seeds


# ----------------------------------------------------------------- fuzzed options

INTS = ["-1", "0", "1", "2", "3", str(2**63), str(10**30), "-99999999999", "abc", "", "1.5"]
SMALL_INTS = ["-1", "0", "1", "2", "abc", "", "1.5"]  # --depth, --seeds: huge would run long
FLOATS = ["nan", "inf", "-1", "0", "0.5", "abc", "1e308", ""]
NAMES = ["nope", "", "RESNET", "../x", "a:b", "-", " "]


def paths(assets: Path) -> list[str]:
    return ["", "/", "/dev/null", "/dev/null/x", f"{assets}/file", f"{assets}/file/x",
            "new/deep/dir", "nonexistent.py", "-", "a b", f"{assets}/run", "x.png",
            f"{assets}/file/x.png", "out.svg", f"{assets}/other.json", f"{assets}/run/stats.json"]


def options(draw: st.DrawFn, pools: dict[str, list[str]]) -> list[str]:
    """One or two options of the command, each with a value from its pool: one odd value at a
    time reaches the check of that option (the first bad one stops a command)."""
    pairs: list[tuple[str, str | None]] = [
        (option, value) for option in sorted(pools)
        for value in ([*pools[option]] if pools[option] else [None])]
    argv: list[str] = []
    for option, value in draw(st.lists(st.sampled_from(pairs), min_size=1, max_size=2)):
        argv += [option] if value is None else [option, value]
    return argv


@st.composite
def command_lines(draw: st.DrawFn, assets: Path) -> list[str]:
    odd = paths(assets)
    common = {"--seed": INTS, "--seeds": SMALL_INTS, "--threads": INTS, "--out": odd,
              "--device": ["cpu", "cuda", "tpu", "cuda:99", ""], "--json": [],
              "--bn-mode": ["train", "eval", "nope"], "--blocks": ["", ",", "nope", "blocks.0",
                                                                   "0,9", "0"]}
    command = draw(st.sampled_from(["resnet", "model", "torchvision", "timm", "plot",
                                    "figures", "nope"]))
    if command == "resnet":
        pools = common | {"--depth": SMALL_INTS, "--width": INTS, "--batch-size": INTS,
                          "--image-size": INTS, "--stages": SMALL_INTS, "--alpha": FLOATS,
                          "--norm": ["none", "nf", "skipinit", "layernorm", ""],
                          "--variant": ["v1", "v3"], "--order": ["relu-bn", "x"],
                          "--padding": ["circular", "x"], "--nf-zero-init": [],
                          "--no-fixup-zero-last": []}
        # A small default network, so that valid draws run in well under a second.
        base = ["resnet", "--depth", "2", "--width", "2", "--batch-size", "2",
                "--image-size", "4"]
        return [draw(st.sampled_from(["analyze", "audit"])), *base, *options(draw, pools)]
    if command == "model":
        spec = draw(st.sampled_from([f"{assets}/models.py:net", f"{assets}/models.py:nope",
                                     f"{assets}/file:net", "os:getcwd", "nope:x", "math:pi",
                                     *odd]))
        pools = common | {"--input-shape": ["3,4,4", "32,32", "", "0", "-1,2", "a,b", "3",
                                            "3,4,4,4"],
                          "--arg": ["fail=True", "x", "=1", "depth=0", "width=2", "1=2",
                                    "depth='a'"],
                          "--batch-size": INTS}
        return [draw(st.sampled_from(["analyze", "audit"])), "model", spec,
                "--input-shape", "3,4,4", "--batch-size", "2", *options(draw, pools)]
    if command in ("torchvision", "timm"):  # never a real model name: those take seconds
        pools = common | {"--batch-size": INTS, "--image-size": INTS}
        return [draw(st.sampled_from(["analyze", "audit"])), command,
                draw(st.sampled_from(NAMES)), *options(draw, pools)]
    if command == "plot":
        files = draw(st.lists(st.sampled_from(odd), min_size=0, max_size=2))
        pools = {"--out": odd, "--label": ["a", ""], "--no-theory": []}
        return ["plot", *files, *options(draw, pools)]
    if command == "figures":  # one option always invalid: a valid draw would take minutes
        bad = draw(st.sampled_from(["--format", "--threads", "--out"]))
        argv = ["figures", "--quick", "--format", "bmp" if bad == "--format" else "png",
                "--threads", "0" if bad == "--threads" else "1"]
        return [*argv, "--out", f"{assets}/file/x" if bad == "--out" else "figs"]
    return [command, *options(draw, common)]


@settings(BOUNDED, max_examples=60)
@given(data=st.data())
def test_fuzzed_command_lines_exit_cleanly(assets: Path, data: st.DataObject) -> None:
    argv = data.draw(command_lines(assets))
    code, output, touched = run(argv, assets)
    event(f"{' '.join(argv[:2]) if argv[0] in ('analyze', 'audit') else argv[0]}: exit {code}")
    assert code in (0, 1, 2), (argv, output)
    assert "Traceback" not in output, (argv, output)
    assert not any(".partial-" in p for p in touched), (argv, touched)
    if code == 2:
        assert not touched, (argv, touched)
