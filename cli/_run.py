"""Shared steps of every ``analyze`` command: validate, measure with progress, write, summarize."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

import sigprop
from sigprop._validate import check_int, resolve_device
from sigprop.plotting import plot_spp

STATS_JSON, STATS_CSV, SPP_PNG = "stats.json", "stats.csv", "spp.png"


def usage_error(message: str) -> NoReturn:
    """Print one ``error:`` line to stderr and exit with code 2 (bad usage)."""
    # Errors raised by a user's model can span several lines: keep the report on one.
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    typer.echo(f"error: {line}", err=True)
    raise typer.Exit(2)


@dataclass(frozen=True)
class Analysis:
    """What to measure: a builder (seed -> model and its configuration) and its input shape."""

    build: Callable[[int], tuple[nn.Module, dict[str, Any]]]
    input_shape: tuple[int, ...]
    expected_blocks: int | None


def check_positive(option: str, value: int, unit: str) -> None:
    """Exit with a usage error unless ``value`` is an integer >= 1."""
    try:
        check_int(option, value, 1, unit)
    except (ValueError, TypeError) as e:
        usage_error(str(e))


def prepare_out(out: Path) -> Path:
    """Create ``out`` and check it is writable before any work is done."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".sigprop-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        usage_error(f"cannot write to --out {str(out)!r} ({e.strerror or e}): "
                    "choose a writable folder")
    return out


def run(analysis: Analysis, *, seed: int, device: str, bn_mode: sigprop.BNMode,
        out: Path) -> sigprop.Trace:
    """Measure, write stats.json / stats.csv / spp.png into ``out`` and print a summary."""
    try:
        torch_device = resolve_device(device)
    except ValueError as e:
        usage_error(str(e))
    prepare_out(out)
    started = time.perf_counter()
    try:
        model, model_info = analysis.build(seed)
        model.to(torch_device)
    except (ValueError, TypeError) as e:
        usage_error(str(e))
    spec = sigprop.InputSpec("gaussian", analysis.input_shape, seed)
    with _progress(analysis.expected_blocks) as advance:
        try:
            trace = sigprop.measure(model, spec, bn_mode=bn_mode, model_info=model_info,
                                    progress=advance)
        except (sigprop.ForwardError, sigprop.NoResidualBlockError) as e:
            usage_error(str(e))
    elapsed = time.perf_counter() - started
    _write(trace, out)
    _summarize(trace, elapsed, out)
    return trace


class _progress:
    """A Rich progress bar over blocks on stderr; yields the callback for ``measure``."""

    def __init__(self, total: int | None):
        self.bar = Progress(TextColumn("measuring"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("blocks"), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=True)
        self.task = self.bar.add_task("blocks", total=total)

    def __enter__(self) -> Callable[[int], None]:
        self.bar.start()
        return lambda done: self.bar.update(self.task, completed=done)

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def _write(trace: sigprop.Trace, out: Path) -> None:
    trace.to_json(out / STATS_JSON)
    trace.to_frame().to_csv(out / STATS_CSV, index=False)
    import matplotlib.pyplot as plt

    fig = plot_spp(trace)
    fig.savefig(out / SPP_PNG)
    plt.close(fig)


def _summarize(trace: sigprop.Trace, elapsed: float, out: Path) -> None:
    run = trace.runs[0]
    first, last = run.blocks[0], run.blocks[-1]
    table = Table(title="signal propagation at initialization", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("residual blocks", str(trace.n_blocks))
    table.add_row("stages", str(len(trace.by_stage())))
    table.add_row("skip second moment, first block", f"{first.skip.m2:.4g}")
    table.add_row("skip second moment, last block", f"{last.skip.m2:.4g}")
    table.add_row("residual/skip ratio, last block", f"{last.ratio:.4g}")
    gains: dict[str, int] = {}
    for block in run.blocks:
        if block.gain is not None:
            gains[block.gain] = gains.get(block.gain, 0) + 1
    if gains:
        table.add_row("gain on the residual branch",
                      "; ".join(f"{gain} ({n} blocks)" for gain, n in gains.items()))
    overflow = run.first_overflow
    table.add_row("first non-finite block", "none" if overflow is None else str(overflow))
    table.add_row("time (build + measure)", f"{elapsed:.1f} s")
    table.add_row("written", f"{out}/{{{STATS_JSON}, {STATS_CSV}, {SPP_PNG}}}")
    Console().print(table)
