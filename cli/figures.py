"""``sigprop figures``: regenerate the paper-style figure set, with captions and data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sigprop import paper

from ._errors import UsageError, reports_usage_errors
from ._run import prepare_out

FORMATS = ("png", "svg", "pdf")
# Without these, SVG and PDF files carry the date they were written: not reproducible.
_METADATA: dict[str, dict[str, None]] = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}


def parse_formats(value: str) -> list[str]:
    """``png,svg`` -> ``["png", "svg"]``; a usage error names an unknown format."""
    formats = [f.strip().lower().lstrip(".") for f in value.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UsageError(f"unknown --format {', '.join(bad) or repr(value)}: use a comma-separated "
                         f"list of {', '.join(FORMATS)}, e.g. --format png,pdf")
    return list(dict.fromkeys(formats))


@reports_usage_errors
def figures_command(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(
        help="Folder for the figures (NAME.png ...), their captions (NAME.txt) and data "
        "(NAME.csv).")] = Path("figures"),
    quick: Annotated[bool, typer.Option(
        "--quick", help="Small networks, 3 seeds: the same figures in seconds (for CI).")
    ] = False,
    fmt: Annotated[str, typer.Option(
        "--format", help="Comma-separated image formats: png, svg, pdf.")] = "png",
    threads: Annotated[int, typer.Option(
        help="Torch CPU threads while measuring; these small networks run fastest on one.")
    ] = 1,
) -> None:
    """Regenerate the figure set deterministically (fixed seeds).

    Example: sigprop figures --out figures --format png,pdf
    """
    formats = parse_formats(fmt)
    if threads < 1:
        raise UsageError(f"--threads must be >= 1 thread, got {threads}")
    prepare_out(out)
    config = paper.QUICK if quick else paper.FULL
    specs = paper.figure_specs(config)
    started = time.perf_counter()
    written: list[str] = []
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    bar = Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("blocks"), TimeElapsedColumn(), console=Console(stderr=True),
                   transient=True)
    task = bar.add_task("measuring", total=paper.total_blocks(specs, config))
    try:
        import matplotlib.pyplot as plt

        with bar:
            for result in paper.generate(
                    config, specs, progress=lambda name: bar.update(task, advance=1,
                                                                    description=name)):
                bar.update(task, description=f"writing {result.name}")
                # A fixed salt: SVG element ids are otherwise random on every run.
                with plt.rc_context({"svg.hashsalt": "sigprop"}):
                    for ext in formats:
                        result.figure.savefig(out / f"{result.name}.{ext}",
                                              metadata=_METADATA.get(ext))
                plt.close(result.figure)
                (out / f"{result.name}.txt").write_text(result.caption + "\n")
                # Six significant digits: far below the seed-to-seed scatter, half the size.
                result.data.to_csv(out / f"{result.name}.csv", index=False, float_format="%.6g")
                written.append(result.name)
    finally:
        torch.set_num_threads(previous_threads)
    elapsed = time.perf_counter() - started
    typer.echo(f"wrote {len(written)} figures ({config.name} set) to {out}/ in {elapsed:.0f} s:")
    for name in written:
        typer.echo(f"  {name}.{{{','.join(formats)},txt,csv}}")
