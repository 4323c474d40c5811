"""The command line as people use it: whose error it is, nothing half-done on disk, --blocks,
--threads, a --help that does not import torch, and user files loaded apart."""

from __future__ import annotations

import ast
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import sigprop
from sigprop.sources import ModelSource, Source
from sigprop_cli import main
from sigprop_cli._errors import UsageError
from sigprop_cli._files import write_files
from sigprop_cli.main import app

runner = CliRunner()
SMALL = ["--depth", "2", "--width", "4", "--batch-size", "2", "--image-size", "8"]

MODELS = textwrap.dedent('''
    import torch
    from torch import nn

    import sigprop


    class Flat(nn.Module):  # a ResidualAdd on 1-D activations: sigprop's reducer cannot take it
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 4)
            self.add = sigprop.ResidualAdd()

        def forward(self, x):
            return self.add(x[0], self.linear(x[0]))


    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return x + self.conv(x)


    class Net(nn.Module):
        def __init__(self, fail=False, threads=None):
            super().__init__()
            self.blocks = nn.Sequential(Block(), Block())
            self.fail, self.threads = fail, threads

        def forward(self, x):
            if self.fail:
                raise RuntimeError("the model's own failure")
            if self.threads is not None and torch.get_num_threads() != self.threads:
                raise RuntimeError(f"ran on {torch.get_num_threads()} threads")
            return self.blocks(x)


    def flat():
        return Flat()


    def net(**kwargs):
        return Net(**kwargs)


    def plain():
        return nn.Conv2d(3, 3, 1)


    def bare_assert():
        assert False


    def on_meta():
        return Net().to("meta")
''')


@pytest.fixture
def models(tmp_path: Path) -> str:
    path = tmp_path / "models.py"
    path.write_text(MODELS)
    return str(path)


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.mark.parametrize("group", ["analyze", "audit"])
def test_sigprops_own_failure_exits_3_asking_for_a_report(group: str, models: str,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = invoke(group, "model", f"{models}:flat", "--input-shape", "4",
                                  "--out", str(out))
    assert code == 3, stdout + stderr
    line = one_line(stderr)
    assert line.startswith("internal error: sigprop failed") and "sigprop --debug" in line
    assert "not in the model" in line
    assert not out.exists()
    code, _, stderr = invoke("--debug", group, "model", f"{models}:flat", "--input-shape", "4")
    assert code == 3 and "Traceback" in stderr


def test_the_models_failure_exits_2_with_its_message(models: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _, stderr = invoke("analyze", "model", f"{models}:net", "--arg", "fail=True",
                             "--input-shape", "3,8,8", "--out", str(out))
    assert code == 2
    assert one_line(stderr).startswith("error: the model's forward pass failed before block 0: "
                                       "RuntimeError: the model's own failure")
    assert not out.exists()


def test_a_progress_callback_that_raises_is_not_the_models_error() -> None:
    net = sigprop.models.resnet(2, width=4, seed=0)

    def progress(done: int) -> None:
        raise ZeroDivisionError("in the callback")

    with pytest.raises(sigprop.MeasurementError, match=r"after block 0 .*progress callback.*"
                       "ZeroDivisionError: in the callback"):
        sigprop.measure(net, sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0), progress=progress)


def test_an_operation_of_the_model_that_fails_under_discovery_is_the_models() -> None:
    class Mismatch(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.conv(x)
            return x + torch.ones(2, 2)  # runs inside discovery's function mode

    with pytest.raises(sigprop.ForwardError, match=r"after block 0 .*must match the size"):
        sigprop.measure(Mismatch(), torch.randn(2, 3, 4, 4))


@pytest.mark.parametrize("case", ["builder raises", "forward fails", "no block", "depth 0",
                                  "meta device"])
def test_a_failing_run_leaves_no_folder(case: str, models: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = {
        "builder raises": ["model", f"{models}:bare_assert", "--input-shape", "3,8,8"],
        "forward fails": ["model", f"{models}:net", "--arg", "fail=True", "--input-shape",
                          "3,8,8"],
        "no block": ["model", f"{models}:plain", "--input-shape", "3,8,8"],
        "depth 0": ["resnet", *SMALL, "--depth", "0"],
        "meta device": ["model", f"{models}:on_meta", "--input-shape", "3,8,8"],
    }[case]
    for out in ([], ["--out", "new/sub"]):
        code, _, stderr = invoke("analyze", *source, *out)
        assert code == 2, stderr
        assert sorted(os.listdir(tmp_path)) == ["models.py"]


def test_no_block_found_names_the_blocks_option(models: str) -> None:
    code, _, stderr = invoke("analyze", "model", f"{models}:plain", "--input-shape", "3,8,8")
    assert code == 2 and "name the block modules with --blocks NAME[,NAME...]" in stderr
    code, stdout, _ = invoke("audit", "model", f"{models}:plain", "--input-shape", "3,8,8")
    assert code == 1 and "--blocks NAME[,NAME...]" in stdout


def test_blocks_names_the_block_modules(models: str, tmp_path: Path) -> None:
    code, stdout, stderr = invoke("analyze", "model", f"{models}:net", "--input-shape", "3,8,8",
                                  "--blocks", "blocks.1", "--json", "--out", str(tmp_path))
    assert code == 0, stderr
    (run,) = json.loads(stdout)["runs"]
    assert [b["name"] for b in run["blocks"]] == ["blocks.1"]
    code, _, stderr = invoke("audit", "resnet", *SMALL, "--blocks", "blocks.0,nope")
    assert code == 2 and "'nope'" in stderr
    code, _, stderr = invoke("analyze", "resnet", *SMALL, "--blocks", " , ")
    assert code == 2 and "--blocks ' , ' names no module" in stderr


def test_input_shape_without_the_batch_is_explained(models: str) -> None:
    code, _, stderr = invoke("analyze", "model", f"{models}:net", "--input-shape", "32,32")
    assert code == 2
    line = one_line(stderr)
    assert "the input batch had shape (8, 32, 32)" in line and "without the batch" in line


def test_threads_run_the_measurement_and_are_restored(models: str, tmp_path: Path) -> None:
    before, threads = torch.get_num_threads(), min(2, os.cpu_count() or 1)
    code, _, stderr = invoke("audit", "model", f"{models}:net", "--arg", f"threads={threads}",
                             "--input-shape", "3,8,8", "--threads", str(threads))
    assert code in (0, 1), stderr  # the model raises (exit 2) on another thread count
    assert torch.get_num_threads() == before
    code, _, stderr = invoke("audit", "resnet", *SMALL, "--threads", "0")
    assert code == 2 and "--threads must be >= 1 thread, got 0" in stderr
    code, _, stderr = invoke("audit", "resnet", *SMALL, "--threads", str(10**15))
    assert code == 2 and "more than this machine's" in stderr


def test_write_files_leaves_the_previous_set_or_the_new_one(tmp_path: Path) -> None:
    write_files(tmp_path, {"a.txt": lambda p: p.write_text("old"),
                           "b.txt": lambda p: p.write_text("old")})

    def interrupted(path: Path) -> None:
        path.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_files(tmp_path, {"a.txt": lambda p: p.write_text("new"), "b.txt": interrupted})
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a.txt": "old",
                                                                    "b.txt": "old"}
    fresh = tmp_path / "x" / "y"
    with pytest.raises(UsageError):
        write_files(fresh, {"a.txt": lambda p: p.parent.joinpath("no", "a").write_text("")})
    assert not (tmp_path / "x").exists()


def test_sigterm_while_writing_leaves_the_previous_set(tmp_path: Path) -> None:
    write_files(tmp_path, {"a.txt": lambda p: p.write_text("old")})

    def terminated(path: Path) -> None:
        path.write_text("half")
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, main._terminated)  # as the console script does
    try:
        with pytest.raises(SystemExit) as exited:
            write_files(tmp_path, {"a.txt": terminated})
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exited.value.code == 128 + signal.SIGTERM
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "old"


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--seed", str(10**30), "every seed must lie in"),
    ("--batch-size", str(10**15), "the input batch of shape (1000000000000000, 3, 8, 8) does "
     "not fit in memory"),
    ("--image-size", str(10**15), "does not fit in memory"),
    ("--width", str(10**15), "the model does not fit in memory"),
])
def test_huge_values_are_usage_errors(option: str, value: str, message: str,
                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _, stderr = invoke("analyze", "resnet", *SMALL, option, value, "--out", str(out))
    assert code == 2 and message in one_line(stderr)
    assert not out.exists()


def test_help_and_version_do_not_import_torch() -> None:
    script = textwrap.dedent('''
        import sys
        from typer.testing import CliRunner
        from sigprop_cli.main import app
        runner = CliRunner()
        for args in (["--help"], ["--version"], ["analyze", "--help"], ["audit", "--help"],
                     ["analyze", "model", "--help"], ["audit", "timm", "--help"],
                     ["plot", "--help"], ["figures", "--help"]):
            assert runner.invoke(app, args).exit_code == 0, args
        print(sorted(m for m in ("torch", "numpy", "matplotlib", "pandas") if m in sys.modules))
    ''')
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_files_with_the_same_stem_are_two_modules(tmp_path: Path) -> None:
    for width in (2, 3):
        folder = tmp_path / f"w{width}"
        folder.mkdir()
        (folder / "net.py").write_text(textwrap.dedent(f'''
            from torch import nn

            class Net(nn.Conv2d):
                def __init__(self):
                    super().__init__({width}, {width}, 1)

            def build():
                return Net()
        '''))
    built = [ModelSource(Source.MODEL, f"{tmp_path}/w{w}/net.py:build").builder()(0)[0]
             for w in (2, 3)]
    for net, width in zip(built, (2, 3), strict=True):
        # Pickling finds each class through its module's name: one module per file.
        assert sys.modules[type(net).__module__].Net is type(net)
        assert pickle.loads(pickle.dumps(net)).in_channels == width


def test_help_says_a_model_file_runs() -> None:
    code, stdout, _ = invoke("analyze", "model", "--help")
    assert code == 0 and "only run code you trust" in " ".join(stdout.split())


def test_ctrl_c_exits_130_not_audits_failure(models: str, tmp_path: Path) -> None:
    (tmp_path / "stop.py").write_text("def build():\n    raise KeyboardInterrupt\n")
    code, _, stderr = invoke("audit", "model", f"{tmp_path}/stop.py:build", "--input-shape", "3")
    assert code == 130 and stderr.strip() == "interrupted"


def test_files_are_loaded_without_running_code() -> None:
    # torch.load unpickles (runs code) unless weights_only=True: every call must say it.
    root = Path(__file__).resolve().parent.parent
    for path in [*root.glob("sigprop/**/*.py"), *root.glob("cli/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in (
                    "torch.load", "pickle.load", "pickle.loads"):
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                           and k.value.value is True for k in node.keywords)
                assert safe, f"{path}:{node.lineno}: {ast.unparse(node)}"
