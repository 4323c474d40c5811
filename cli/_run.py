"""Shared steps of every ``analyze`` command: validate, measure with progress, write, summarize."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any, NoReturn

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

import sigprop
from sigprop import stats
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
        out: Path, seeds: int = 1) -> sigprop.Trace:
    """Measure ``seeds`` runs (seeds ``seed, seed + 1, ...``: weights and input), write
    stats.json / stats.csv / spp.png into ``out`` and print the summary and the verdicts."""
    check_positive("--seeds", seeds, "run")
    try:
        torch_device = resolve_device(device)
    except ValueError as e:
        usage_error(str(e))
    prepare_out(out)
    started = time.perf_counter()
    traces = []
    total = analysis.expected_blocks * seeds if analysis.expected_blocks else None
    with _progress(total) as advance:
        for k in range(seeds):
            traces.append(_measure_one(analysis, seed + k, torch_device, bn_mode, advance))
    trace = reduce(sigprop.Trace.merge, traces)
    elapsed = time.perf_counter() - started
    result = stats.report(trace)
    _write(trace, result, out)
    _summarize(trace, result, elapsed, out)
    return trace


def _measure_one(analysis: Analysis, seed: int, device: torch.device, bn_mode: sigprop.BNMode,
                 progress: Callable[[int], None]) -> sigprop.Trace:
    try:
        model, model_info = analysis.build(seed)
        model.to(device)
    except (ValueError, TypeError) as e:
        usage_error(str(e))
    spec = sigprop.InputSpec("gaussian", analysis.input_shape, seed)
    try:
        return sigprop.measure(model, spec, bn_mode=bn_mode, model_info=model_info,
                               progress=progress)
    except (sigprop.ForwardError, sigprop.NoResidualBlockError) as e:
        usage_error(str(e))


class _progress:
    """A Rich progress bar over blocks on stderr; yields the callback for ``measure``."""

    def __init__(self, total: int | None):
        self.bar = Progress(TextColumn("measuring"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("blocks"), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=True)
        self.task = self.bar.add_task("blocks", total=total)

    def __enter__(self) -> Callable[[int], None]:
        """Start; the callback, called once per recorded block, advances the bar by one."""
        self.bar.start()
        return lambda _done: self.bar.advance(self.task)

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def _write(trace: sigprop.Trace, result: stats.Report, out: Path) -> None:
    doc = trace.to_dict() | result.to_dict()
    (out / STATS_JSON).write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    trace.to_frame().to_csv(out / STATS_CSV, index=False)
    import matplotlib.pyplot as plt

    fig = plot_spp(trace)
    fig.savefig(out / SPP_PNG)
    plt.close(fig)


def _summarize(trace: sigprop.Trace, result: stats.Report, elapsed: float, out: Path) -> None:
    skip = stats.band(trace, lambda b: b.skip.m2).mean
    ratio = stats.band(trace, lambda b: b.ratio).mean
    several = len(trace.runs) > 1
    table = Table(title="signal propagation at initialization"
                  + (f" (mean of {len(trace.runs)} seeds)" if several else ""), show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("residual blocks", str(trace.n_blocks))
    table.add_row("stages", str(len(trace.by_stage())))
    table.add_row("skip second moment, first block", f"{skip[0]:.4g}")
    table.add_row("skip second moment, last block", f"{skip[-1]:.4g}")
    table.add_row("residual/skip ratio, last block", f"{ratio[-1]:.4g}")
    gains: dict[str, int] = {}
    for _, block in trace.blocks():
        if block.gain is not None:
            gains[block.gain] = gains.get(block.gain, 0) + 1
    if gains:
        runs = f" over {len(trace.runs)} runs" if several else ""
        table.add_row("gain on the residual branch", "; ".join(
            f"{gain} ({n} blocks{runs})" for gain, n in gains.items()))
    overflow = [r.first_overflow for r in trace.runs if r.first_overflow is not None]
    table.add_row("first non-finite block", str(min(overflow)) if overflow else "none")
    table.add_row("effective depth (branch >= 0.1 x skip in norm)", str(result.effective_depth))
    table.add_row("time (build + measure)", f"{elapsed:.1f} s")
    table.add_row("written", f"{out}/{{{STATS_JSON}, {STATS_CSV}, {SPP_PNG}}}")
    # Piped output gets 80 columns by default, too narrow for the verdict table.
    console = Console(width=max(Console().width, 110))
    console.print(table)
    console.print(_verdict_table(result))
    for v in result.verdicts:
        console.print(f"  {v.claim}: {v.detail}", highlight=False)


def _verdict_table(result: stats.Report) -> Table:
    table = Table(title="theory vs measurement (95% intervals)")
    for column in ("claim", "measured", "predicted", "interval", "verdict"):
        table.add_column(column, justify="left" if column == "claim" else "right")
    for v in result.verdicts:
        predicted = "-" if v.predicted is None else f"{v.predicted:.4g}"
        interval = "-" if math.isnan(v.interval[0]) else \
            f"[{v.interval[0]:.4g}, {v.interval[1]:.4g}]"
        table.add_row(v.claim, f"{v.measured:.4g}", predicted, interval,
                      "holds" if v.consistent else "does not hold")
    return table
