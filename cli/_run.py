"""Shared steps of every ``analyze`` command: validate, measure with progress, write, summarize."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

import sigprop
from sigprop import stats
from sigprop._validate import resolve_device
from sigprop.plotting import MEASURED, plot_spp, plot_spp_backward

from ._errors import UsageError
from ._files import write_files
from ._options import (
    SPP_BACKWARD_PNG,
    SPP_PNG,
    STATS_CSV,
    STATS_JSON,
    Analysis,
    ModelInputs,
    RunOptions,
)


@dataclass(frozen=True)
class Collected:
    """What one command measured: the merged trace, its statistics, and what else it needs."""

    trace: sigprop.Trace
    report: stats.Report
    elapsed: float

    def document(self) -> dict[str, Any]:
        """The stats.json document: the trace with its fits and verdicts."""
        return self.trace.to_dict() | self.report.to_dict()


def collect(analysis: Analysis, options: RunOptions) -> Collected:
    """Measure ``options.seeds`` runs (seeds ``seed, seed + 1, ...``: weights and input).

    Bad usage, and the model failing, raise a :class:`UsageError`; a model without residual
    blocks raises ``sigprop.NoResidualBlockError`` (its message names ``--blocks``), for the
    caller to judge (bad usage or a failed check). Anything else is sigprop's own failure.
    """
    try:
        device = resolve_device(options.device)
    except ValueError as e:
        raise UsageError(str(e)) from e
    started = time.perf_counter()
    traces = []
    plan = sigprop.Plan()  # every seed builds the same architecture: discovered once
    total = analysis.expected_blocks * options.seeds if analysis.expected_blocks else None
    with use_threads(options.threads), BlockProgress(total) as advance:
        for k in range(options.seeds):
            model, model_info = _build(analysis, options.seed + k, device)
            spec = sigprop.InputSpec("gaussian", analysis.input_shape, options.seed + k)
            try:
                inputs = (None if analysis.inputs is None
                          else analysis.inputs(options.seed + k, device))
            except ValueError as e:
                raise UsageError(str(e)) from e
            traces.append(_measure(analysis, options, model, spec, model_info, advance, plan,
                                   inputs))
            advance.measured(traces[-1].n_blocks)
    trace = reduce(sigprop.Trace.merge, traces)
    return Collected(trace, stats.report(trace), time.perf_counter() - started)


def _measure(analysis: Analysis, options: RunOptions, model: nn.Module, spec: sigprop.InputSpec,
             model_info: dict[str, Any], advance: Callable[[int], None], plan: sigprop.Plan,
             inputs: ModelInputs | None = None) -> sigprop.Trace:
    """Measure on the Gaussian ``spec``, or on ``inputs`` (positional, keyword) when given."""
    try:
        if inputs is not None:
            return sigprop.measure(model, args=inputs[0], kwargs=inputs[1],
                                   seed=options.seed, bn_mode=options.bn_mode,
                                   model_info=model_info, progress=advance,
                                   blocks=analysis.blocks, backward=options.backward,
                                   plan=plan)
        return sigprop.measure(model, spec, bn_mode=options.bn_mode, model_info=model_info,
                               progress=advance, blocks=analysis.blocks,
                               backward=options.backward, plan=plan)
    except sigprop.BackwardError as e:
        raise UsageError(str(e)) from e
    except sigprop.ForwardError as e:
        note = ""
        if analysis.shape_option:
            note = (f" (the input batch had shape {tuple(spec.shape)}: --input-shape is the "
                    "shape of one input, without the batch, e.g. 3,32,32 for RGB images)")
        raise UsageError(f"{e}{note}") from e
    except sigprop.NoResidualBlockError as e:
        raise sigprop.NoResidualBlockError(
            str(e).replace("blocks=[...]", "--blocks NAME[,NAME...]")) from e
    except (ValueError, TypeError) as e:  # the library's checks of the model and its input
        raise UsageError(str(e)) from e
    except (RuntimeError, MemoryError) as e:
        if _too_big(e) and not isinstance(e, sigprop.MeasurementError):
            raise UsageError(f"the input batch of shape {tuple(spec.shape)} does not fit in "
                             f"memory ({_first_line(e)}): use a smaller --batch-size or input "
                             "size") from e
        raise


@contextmanager
def use_threads(threads: int) -> Iterator[None]:
    """Torch's intra-op thread count set to ``threads`` for a while, then restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _build(analysis: Analysis, seed: int, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    try:
        model, model_info = analysis.build(seed)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from e
    except (RuntimeError, MemoryError) as e:
        if _too_big(e):
            raise UsageError(f"the model does not fit in memory ({_first_line(e)}): build a "
                             "smaller one") from e
        raise
    try:
        model.to(device)
    except Exception as e:  # e.g. a model on the meta device: the model's, not sigprop's
        raise UsageError(f"cannot move the model to {device}: {type(e).__name__}: "
                         f"{_first_line(e)}") from e
    return model, model_info


def _too_big(e: BaseException) -> bool:
    """An allocation that cannot succeed: out of memory, or sizes beyond what torch indexes."""
    return isinstance(e, MemoryError | torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and ("can't allocate memory" in str(e)
                                         or "size calculation overflowed" in str(e)))


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def print_json(doc: Any) -> None:
    """Strict JSON (no NaN) on stdout."""
    typer.echo(json.dumps(doc, indent=1, allow_nan=False))


class BlockProgress:
    """A Rich progress bar over blocks on stderr; called as ``measure``'s progress callback.

    The bar shows the blocks of the finished measurements plus the current pass's count, so a
    pass that starts again (a plan that did not match, replaced by discovery) sets it back
    instead of counting its blocks twice.
    """

    def __init__(self, total: int | None, console: Console | None = None):
        self.bar = Progress(TextColumn("measuring"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("blocks"), TimeElapsedColumn(),
                            console=console or Console(stderr=True), transient=True)
        self.task = self.bar.add_task("blocks", total=total)
        self.finished = 0

    def __call__(self, done: int) -> None:
        """``done`` blocks of the current pass are recorded."""
        self.bar.update(self.task, completed=self.finished + done)

    def measured(self, blocks: int) -> None:
        """A measurement of ``blocks`` blocks is complete."""
        self.finished += blocks
        self(0)

    def __enter__(self) -> BlockProgress:
        """Start the bar."""
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def written(trace: sigprop.Trace) -> tuple[str, ...]:
    """The files :func:`write_outputs` writes for ``trace``."""
    return (STATS_JSON, STATS_CSV, SPP_PNG) + ((SPP_BACKWARD_PNG,) if trace.has_gradients else ())


def write_outputs(collected: Collected, out: Path) -> None:
    """stats.json (trace, fits, verdicts), stats.csv (long format) and spp.png into ``out``,
    and spp-backward.png when the trace has gradients: all of them or none
    (:func:`write_files`)."""
    import matplotlib.pyplot as plt

    trace = collected.trace

    def plot(draw: Callable[[sigprop.Trace], Any]) -> Callable[[Path], None]:
        def write_plot(path: Path) -> None:
            fig = draw(trace)
            try:
                fig.savefig(path)
            finally:
                plt.close(fig)
        return write_plot

    writers: dict[str, Callable[[Path], object]] = {
        STATS_JSON: lambda path: path.write_text(
            json.dumps(collected.document(), indent=1, allow_nan=False) + "\n"),
        STATS_CSV: lambda path: trace.to_frame().to_csv(path, index=False),
        SPP_PNG: plot(plot_spp),
    }
    if trace.has_gradients:
        writers[SPP_BACKWARD_PNG] = plot(plot_spp_backward)
    write_files(out, writers)


def summarize(collected: Collected, out: Path) -> None:
    """The summary table and the verdict table on stdout."""
    trace, result, elapsed = collected.trace, collected.report, collected.elapsed
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
    gains = Counter(block.gain for _, block in trace.blocks() if block.gain is not None)
    if gains:
        runs = f" over {len(trace.runs)} runs" if several else ""
        table.add_row("gain on the residual branch", "; ".join(
            f"{gain} ({n} blocks{runs})" for gain, n in gains.items()))
    overflow = trace.first_overflow
    table.add_row("first non-finite block", "none" if overflow is None else str(overflow))
    table.add_row("effective depth (branch >= 0.1 x skip in norm)", str(result.effective_depth))
    table.add_row("time (build + measure)", f"{elapsed:.1f} s")
    if trace.has_gradients:
        grad_in, grad_out, grad_ratio = (stats.band(trace, MEASURED[name]).mean for name in
                                         ("grad_input_m2", "grad_output_m2", "grad_ratio"))
        table.add_row("gradient second moment, last block output", f"{grad_out[-1]:.4g}")
        table.add_row("gradient second moment, first block input", f"{grad_in[0]:.4g}")
        table.add_row("gradient growth, last block to first", f"x{grad_in[0] / grad_out[-1]:.4g}")
        table.add_row("residual/skip gradient ratio, last block", f"{grad_ratio[-1]:.4g}")
    table.add_row("written", f"{out}/{{{', '.join(written(trace))}}}")
    # Piped output gets 80 columns by default, too narrow for the verdict table.
    console = Console(width=max(Console().width, 110))
    console.print(table)
    console.print(_verdict_table(result))
    for v in result.verdicts:
        console.print(f"  {_where(v)}, {v.claim}: {v.detail}", highlight=False)


def _where(verdict: stats.Verdict) -> str:
    return "network" if verdict.stage is None else f"stage {verdict.stage}"


_OUTCOME_STYLE = {stats.Outcome.CONSISTENT: "green", stats.Outcome.INCONSISTENT: "red",
                  stats.Outcome.INCONCLUSIVE: "yellow"}


def _verdict_table(result: stats.Report) -> Table:
    table = Table(title="theory vs measurement (95% intervals; consistent: the whole interval lies "
                  "in the tolerance band)")
    for column in ("verdict", "where", "runs x blocks", "measured [95% CI]", "claim predicts",
                   "outcome"):
        table.add_column(column, justify="left" if column in ("verdict", "where") else "right")
    for v in result.verdicts:
        predicted = "-" if v.predicted is None else f"{v.predicted:.4g}"
        interval = "" if not math.isfinite(v.interval[0]) else \
            f" [{v.interval[0]:.4g}, {v.interval[1]:.4g}]"
        table.add_row(v.id.value, _where(v), f"{v.n_runs} x {v.n_blocks}",
                      f"{v.measured:.4g}{interval}", predicted,
                      f"[{_OUTCOME_STYLE[v.outcome]}]{v.outcome.value}[/]")
    return table
