"""Sweeps: grids, derived seeds, executors giving identical tables, resume, failures, bad grids."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import ray
from pandas.testing import assert_frame_equal
from typer.testing import CliRunner

import sigprop
from sigprop.sweep import Grid, LocalExecutor, Outcome, RayExecutor, Status, run_sweep
from sigprop_cli.main import app

TINY = {"grid": {"depth": [2, 4], "norm": ["batchnorm", "none"], "width": 4, "image_size": 8,
                 "batch_size": 4}, "seeds": 2}
TINY_ARGS = ["--depth", "2,4", "--width", "4", "--image-size", "8", "--batch-size", "4"]


@pytest.fixture(scope="module")
def inline(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The tiny grid's table, measured in this process."""
    out = tmp_path_factory.mktemp("inline")
    return run_sweep(Grid.from_mapping(TINY), out, LocalExecutor(workers=1, threads=1)).table


def test_points_seeds_and_keys() -> None:
    points = Grid.from_mapping(TINY).points()
    assert len(points) == 8 and len({p.key for p in points}) == 8
    assert len({p.seed for p in points}) == 8  # replicates and configurations differ
    assert [(p.settings["depth"], p.settings["norm"], p.replicate) for p in points[:3]] == [
        (2, "batchnorm", 0), (2, "batchnorm", 1), (2, "none", 0)]
    assert points[0].input_shape == (4, 3, 8, 8) and points[0].settings["bn_mode"] == "train"
    # The seed and key follow the configuration, not its place in the grid: a reordered grid
    # with an extra depth gives the same points the same seeds and keys.
    reordered = Grid.from_mapping({**TINY, "grid": {"norm": ["none", "batchnorm"],
                                                    "depth": [8, 4, 2], "width": 4,
                                                    "image_size": 8, "batch_size": 4}})
    same = {(p.key, p.seed) for p in reordered.points()}
    assert {(p.key, p.seed) for p in points} < same
    other = Grid.from_mapping({**TINY, "seed": 1}).points()
    assert not {p.seed for p in other} & {p.seed for p in points}


def test_table_holds_the_grid_and_the_measured_numbers(inline: pd.DataFrame) -> None:
    # The grid's axes in the order given, then the defaults it filled in.
    assert list(inline.columns) == ["point", "model", "depth", "norm", "width", "image_size",
                                    "batch_size", "bn_mode", "replicate", "seed", "block",
                                    "name", "stage", "direction", "tensor", "stat", "value"]
    assert len(inline) == 2 * 2 * (2 + 4) * 6  # norms x replicates x blocks x (tensor, stat)
    # One point measured independently from its derived seed gives the same numbers.
    point = next(p for p in Grid.from_mapping(TINY).points()
                 if p.settings["depth"] == 4 and p.settings["norm"] == "none" and p.replicate)
    net = sigprop.models.resnet(4, norm="none", width=4, seed=point.seed)
    direct = sigprop.measure(net, sigprop.InputSpec("gaussian", (4, 3, 8, 8), point.seed))
    rows = inline[inline["point"] == point.key]
    assert set(rows["seed"]) == {point.seed} and set(rows["replicate"]) == {1}
    expected = direct.to_frame()["value"].to_numpy()
    assert rows["value"].to_numpy().tolist() == expected.tolist()


def test_two_local_workers_and_ray_give_identical_tables(inline: pd.DataFrame,
                                                         tmp_path: Path) -> None:
    grid = Grid.from_mapping(TINY)
    pooled = run_sweep(grid, tmp_path / "pool", LocalExecutor(workers=2, threads=1))
    assert_frame_equal(pooled.table, inline)
    # A local instance of its own, whatever cluster this machine may know of.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = run_sweep(grid, tmp_path / "ray", RayExecutor())
    finally:
        ray.shutdown()
    assert_frame_equal(on_ray.table, inline)
    assert_frame_equal(on_ray.fits, pooled.fits)
    assert on_ray.index["run"]["executor"] == "ray"


def test_resume_after_an_interruption_measures_only_the_missing_points(
        inline: pd.DataFrame, tmp_path: Path) -> None:
    grid = Grid.from_mapping(TINY)
    seen: list[str] = []

    def interrupt_after_three(outcome: Outcome | None, done: int, total: int) -> None:
        if outcome is not None:
            seen.append(outcome.key)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(grid, tmp_path, LocalExecutor(workers=1, threads=1),
                  progress=interrupt_after_three)
    assert len(list((tmp_path / "points").glob("*.json"))) == 3
    assert not (tmp_path / "sweep.parquet").exists()
    resumed = run_sweep(grid, tmp_path, LocalExecutor(workers=1, threads=1))
    assert len(resumed.computed) == 5 and not set(resumed.computed) & set(seen)
    assert_frame_equal(resumed.table, inline)
    assert_frame_equal(pd.read_parquet(tmp_path / "sweep.parquet"), inline)
    index = json.loads((tmp_path / "sweep.json").read_text())
    assert index["counts"] == {"done": 8, "failed": 0, "computed_now": 5}


def test_a_failing_point_is_reported_and_the_others_complete(tmp_path: Path) -> None:
    model = tmp_path / "net.py"
    model.write_text(
        "import sigprop\n\n\n"
        "def build(depth):\n"
        "    if depth == 3:\n"
        "        raise RuntimeError('depth 3 is broken')\n"
        "    return sigprop.models.resnet(depth, width=4)\n")
    out = tmp_path / "out"
    args = ["sweep", "--model", f"model:{model}:build", "--arg", "depth=2,3,4",
            "--image-size", "8", "--batch-size", "4", "--workers", "1", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "3 points: 2 done (2 measured now, 0 found done" in result.stdout
    assert "depth=3, batch_size=4" in result.stdout
    assert "RuntimeError: depth 3 is broken" in result.stdout
    index = json.loads((out / "sweep.json").read_text())
    assert [p["status"] for p in index["points"]] == ["done", "failed", "done"]
    assert "depth 3 is broken" in index["points"][1]["error"]
    table = pd.read_parquet(out / "sweep.parquet")
    assert sorted(set(table["depth"])) == [2, 4] and len(table) == (2 + 4) * 6
    assert (out / "sweep-depth.png").read_bytes()[:4] == b"\x89PNG"
    again = CliRunner().invoke(app, args)  # retries only the failed point
    assert again.exit_code == 1 and "(0 measured now, 2 found done" in again.stdout


def test_toml_grid_with_two_products_and_command_line_overrides(tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text('seeds = 2\n\n[[grid]]\nnorm = "batchnorm"\ndepth = [2, 4]\n\n'
                    '[[grid]]\nnorm = "skipinit"\nalpha = [0.0, 0.5]\ndepth = 2\n')
    grid = Grid.from_toml(path)
    configs = [(p.settings["norm"], p.settings["depth"], p.settings.get("alpha"))
               for p in grid.points() if p.replicate == 0]
    assert configs == [("batchnorm", 2, None), ("batchnorm", 4, None),
                       ("skipinit", 2, 0.0), ("skipinit", 2, 0.5)]
    overridden = Grid.from_toml(path, {"depth": [8], "seeds": 1}).points()
    assert len(overridden) == 3 and {p.settings["depth"] for p in overridden} == {8}


@pytest.mark.parametrize(("args", "toml", "message"), [
    (["--depth", ""], None, "grid axis 'depth' is empty"),
    (["--depth", "2", "--variant", "v3"], None, "unknown variant 'v3'"),
    (["--depth", "2", "--alpha", "0.5"], None, "alpha applies only to norm='skipinit'"),
    ([], "depth = [2,\n", "is not valid TOML"),
    ([], "[grid]\ndeth = [2]\n", "unknown grid axis 'deth' (did you mean 'depth'?)"),
    (["--depth", "2", "--workers", "0"], None, "workers must be >= 1"),
])
def test_bad_grids_fail_before_any_work(tmp_path: Path, args: list[str], toml: str | None,
                                        message: str) -> None:
    if toml is not None:
        (tmp_path / "grid.toml").write_text(toml)
        args = [*args, "--config", str(tmp_path / "grid.toml")]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sweep", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ") and not out.exists()


def test_outcome_errors_are_one_line() -> None:
    outcome = Outcome.failed("k", ValueError("two\nlines"))
    assert outcome.status is Status.FAILED and outcome.error == "ValueError: two lines"


def test_backward_sweeps_record_the_gradients_under_their_own_keys(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["sweep", *TINY_ARGS[2:], "--depth", "3", "--backward",
                                      "--workers", "1", "--threads", "1", "--out",
                                      str(tmp_path)])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "sweep.parquet")
    backward = table[table["direction"] == "backward"]
    assert set(backward["tensor"]) == {"output", "skip", "residual", "input"}
    # The same point as a library measurement with backward=True: the same gradients.
    (point,) = Grid.from_mapping({"grid": {"depth": 3, "width": 4, "image_size": 8,
                                           "batch_size": 4}, "backward": True}).points()
    net = sigprop.models.resnet(3, width=4, seed=point.seed)
    direct = sigprop.measure(net, sigprop.InputSpec("gaussian", (4, 3, 8, 8), point.seed),
                             backward=True)
    grad = direct.runs[0].blocks[1].grad
    assert grad is not None
    row = backward[(backward["block"] == 1) & (backward["tensor"] == "residual")
                   & (backward["stat"] == "var")]
    assert row["value"].item() == pytest.approx(grad.residual.var)
    forward_only = Grid.from_mapping({"grid": {"depth": 3, "width": 4, "image_size": 8,
                                               "batch_size": 4}}).points()[0]
    assert forward_only.key != point.key and forward_only.seed == point.seed
