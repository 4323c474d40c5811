"""``sigprop sweep``: measure a grid of networks, locally or on a Ray cluster, resumably.

torch, pandas and Ray are imported inside the command, so ``sigprop --help`` stays fast.
"""

from __future__ import annotations

import signal
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._errors import INTERRUPTED, UsageError, reports_usage_errors
from ._sources import parse_literal

if TYPE_CHECKING:
    from sigprop.sweep import Executor, Grid, Sweep

DEFAULT_OUT = Path("sweep-out")

# The size axes a summary figure is drawn against, when the grid varies them.
_SIZE_AXES = ("depth", "width", "image_size", "batch_size", "stages")


class ExecutorKind(StrEnum):
    """Who measures the grid points."""

    LOCAL = "local"
    RAY = "ray"


def _axis(help_text: str) -> Any:
    return typer.Option(help=help_text, show_default=False)


@reports_usage_errors
def sweep_command(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        help="TOML file with the grid (model, seeds, seed, input_shape, device and [grid] "
        "axes; see docs/sweeps.md); the options below replace its values.")] = None,
    model: Annotated[str | None, _axis(
        "Model sources: resnet (the default), torchvision:NAME, timm:NAME or "
        "model:FILE.py:CALLABLE.")] = None,
    depth: Annotated[str | None, _axis(
        "ResNet residual blocks d (the paper's depth, NOT layers), e.g. 16,64,256.")] = None,
    variant: Annotated[str | None, _axis("ResNet variants: v2, v1.")] = None,
    norm: Annotated[str | None, _axis(
        "ResNet norms: batchnorm, none, skipinit, sqrt-depth, nf, fixup.")] = None,
    width: Annotated[str | None, _axis("ResNet channels of the first stage.")] = None,
    stages: Annotated[str | None, _axis("ResNet stages.")] = None,
    alpha: Annotated[str | None, _axis(
        "Branch gains (skipinit and nf only; None: their default).")] = None,
    order: Annotated[str | None, _axis("Orders inside v2 BN branches: bn-relu, relu-bn.")] = None,
    padding: Annotated[str | None, _axis("Paddings: zeros, circular.")] = None,
    arg: Annotated[list[str] | None, typer.Option(
        help="KEY=V1,V2: an axis of a keyword argument of model:FILE.py:CALLABLE "
        "(repeatable); values are Python literals, else strings.", show_default=False)] = None,
    batch_size: Annotated[str | None, _axis("Images in the Gaussian input batch [32].")] = None,
    image_size: Annotated[str | None, _axis(
        "Height and width of the input images [32].")] = None,
    bn_mode: Annotated[str | None, _axis("BN modes: train (batch statistics), eval.")] = None,
    input_shape: Annotated[str | None, typer.Option(
        help="Shape of one input without the batch, e.g. 3,32,32 (instead of --image-size).",
        show_default=False)] = None,
    seeds: Annotated[int | None, typer.Option(
        help="Replicates of every configuration, each with its own seed [1].",
        show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(
        help="Sweep seed: each point's seed is derived from it and the point's configuration "
        "[0].", show_default=False)] = None,
    device: Annotated[str | None, typer.Option(
        help="Torch device of every point: cpu, cuda or cuda:N [cpu].",
        show_default=False)] = None,
    backward: Annotated[bool, typer.Option(
        "--backward", help="Also record the gradients of one backward pass at every point "
        "(sigprop analyze --backward).")] = False,
    executor: Annotated[ExecutorKind, typer.Option(
        help="local: a process pool on this machine. ray: a Ray task per point "
        "(pip install 'sigprop[ray]').")] = ExecutorKind.LOCAL,
    workers: Annotated[int | None, typer.Option(
        help="Local processes [one per core]; each gets cores / workers torch threads.",
        show_default=False)] = None,
    threads: Annotated[int | None, typer.Option(
        help="Torch threads of each local worker [cores / workers].",
        show_default=False)] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="Ray cluster to use: auto, HOST:PORT or ray://HOST:PORT [$RAY_ADDRESS, else a "
        "cluster started here by `ray start`, else a new local instance for this sweep].",
        show_default=False)] = None,
    cpus_per_task: Annotated[float, typer.Option(
        help="CPUs each Ray task asks for (and its torch threads).")] = 1.0,
    gpus_per_task: Annotated[float, typer.Option(
        help="GPUs each Ray task asks for (needed with --device cuda).")] = 0.0,
    out: Annotated[Path, typer.Option(
        help="Folder for sweep.parquet, fits.parquet, sweep.json, points/ and the figures; "
        "a re-run skips the points already done there.")] = DEFAULT_OUT,
) -> None:
    """Measure every point of a grid: depth x variant x size x seed.

    Options with comma-separated values (--depth 16,64 --norm batchnorm,none) are the axes of
    the grid: it holds their product, times --seeds replicates. Each point is one measurement
    (weights and input from a seed derived from --seed and the point's configuration), written
    to OUT/points/ as it finishes: an interrupted sweep resumes where it stopped. Exit code 1
    when a point failed (the others complete).

    Example: sigprop sweep --depth 16,64,256,1024 --norm batchnorm,none,skipinit --seeds 3
    """
    axes: dict[str, list[Any]] = {}
    for name, text in (("model", model), ("depth", depth), ("variant", variant),
                       ("norm", norm), ("width", width), ("stages", stages), ("alpha", alpha),
                       ("order", order), ("padding", padding)):
        if text is not None:
            axes[name] = _values(text)
    for pair in arg or []:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--arg {pair!r} must be KEY=V1,V2 with a Python name as key")
        axes[key] = _values(text)
    for name, text in (("batch_size", batch_size), ("image_size", image_size),
                       ("bn_mode", bn_mode)):
        if text is not None:
            axes[name] = _values(text)
    settings = {k: v for k, v in (("seeds", seeds), ("seed", seed), ("input_shape", input_shape),
                                  ("device", device), ("backward", backward or None))
                if v is not None}
    grid = _grid(config, axes, settings)
    runner = _executor(executor, workers, threads, ray_address, cpus_per_task, gpus_per_task, grid)
    from ._files import check_writable

    check_writable(out)
    started = time.perf_counter()
    # `kill` stops a sweep as Ctrl-C does: the executor stops its workers on the way out.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        sweep = _run(grid, out, runner)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: the points done are kept in {out}/points; run the same "
                   "command again to resume", err=True)
        raise typer.Exit(INTERRUPTED) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    figures = _figures(sweep, out)
    _summarize(sweep, out, figures, time.perf_counter() - started)
    if sweep.failed:
        raise typer.Exit(1)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _values(text: str) -> list[Any]:
    return [parse_literal(part.strip()) for part in text.split(",") if part.strip()]


def _grid(config: Path | None, axes: dict[str, list[Any]], settings: dict[str, Any]) -> Grid:
    from sigprop.sweep import Grid
    from sigprop.sweep.run import check_parquet

    try:
        check_parquet()
        if config is not None:
            return Grid.from_toml(config, axes | settings)
        return Grid.from_mapping({"grid": axes, **settings})
    except ValueError as e:
        raise UsageError(str(e)) from e


def _executor(kind: ExecutorKind, workers: int | None, threads: int | None,
              address: str | None, cpus: float, gpus: float, grid: Grid) -> Executor:
    from sigprop.sweep import LocalExecutor, RayExecutor

    try:
        if kind is ExecutorKind.LOCAL:
            if address is not None:
                raise ValueError("--ray-address needs --executor ray")
            return LocalExecutor(workers, threads)
        if workers is not None or threads is not None:
            raise ValueError("--workers and --threads are for --executor local; Ray sizes its "
                             "tasks with --cpus-per-task")
        if grid.device.startswith("cuda") and gpus <= 0:
            raise ValueError(f"--device {grid.device} with --executor ray needs "
                             "--gpus-per-task > 0 (Ray hides the GPUs from tasks without one)")
        return RayExecutor(address, cpus, gpus)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from e


def _run(grid: Grid, out: Path, executor: Executor) -> Sweep:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from sigprop.sweep import Outcome, run_sweep

    bar = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("points"),
                   TimeElapsedColumn(), console=Console(stderr=True), transient=True)
    task = bar.add_task("points", total=None)

    def advance(_outcome: Outcome | None, done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        return run_sweep(grid, out, executor, progress=advance)


def _figures(sweep: Sweep, out: Path) -> list[str]:
    """sweep-AXIS.png for every size axis the grid varies."""
    import matplotlib.pyplot as plt

    from sigprop.plotting import plot_sweep

    from ._files import write_files

    written = []
    for axis in _SIZE_AXES:
        if axis in sweep.fits.columns and sweep.fits[axis].nunique() > 1:
            fig = plot_sweep(sweep.fits, axis)
            write_files(out, {f"sweep-{axis}.png": fig.savefig})
            plt.close(fig)
            written.append(f"sweep-{axis}.png")
    return written


def _summarize(sweep: Sweep, out: Path, figures: list[str], elapsed: float) -> None:
    from sigprop.sweep import FITS_PARQUET, SWEEP_JSON, SWEEP_PARQUET

    total, computed, failed = len(sweep.points), len(sweep.computed), sweep.failed
    typer.echo(f"{total} points: {total - len(failed)} done ({computed - len(failed)} measured "
               f"now, {total - computed} found done in {out}), {len(failed)} failed; "
               f"{elapsed:.1f} s")
    for point in failed[:10]:
        settings = ", ".join(f"{k}={v}" for k, v in point.config)
        typer.echo(f"  failed: {settings}, replicate {point.replicate}: "
                   f"{sweep.outcomes[point.key].error}")
    if len(failed) > 10:
        typer.echo(f"  ... and {len(failed) - 10} more, listed in {out}/{SWEEP_JSON}")
    if failed:
        typer.echo("run the same command again to retry the failed points")
    files = ", ".join([SWEEP_PARQUET, FITS_PARQUET, SWEEP_JSON, *figures])
    typer.echo(f"written: {out}/{{{files}}}")
