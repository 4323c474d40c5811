"""``sigprop figures``: regenerate the paper-style figure set, with captions and data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ._errors import UsageError, reports_usage_errors
from ._files import Writer, check_writable, write_files
from ._options import check_threads

if TYPE_CHECKING:
    from sigprop import paper

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
    check_threads(threads)
    check_writable(out)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from sigprop import paper

    from ._run import use_threads

    config = paper.QUICK if quick else paper.FULL
    specs = paper.figure_specs(config)
    started = time.perf_counter()
    written: list[str] = []
    bar = Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("blocks"), TimeElapsedColumn(), console=Console(stderr=True),
                   transient=True)
    task = bar.add_task("measuring", total=paper.total_blocks(specs, config))
    import matplotlib.pyplot as plt

    with use_threads(threads), bar:
        for result in paper.generate(
                config, specs, progress=lambda name: bar.update(task, advance=1,
                                                                description=name)):
            bar.update(task, description=f"writing {result.name}")
            write_files(out, _writers(result, formats))
            plt.close(result.figure)
            written.append(result.name)
    elapsed = time.perf_counter() - started
    typer.echo(f"wrote {len(written)} figures ({config.name} set) to {out}/ in {elapsed:.0f} s:")
    for name in written:
        typer.echo(f"  {name}.{{{','.join(formats)},txt,csv}}")


def _writers(result: paper.FigureResult, formats: list[str]) -> dict[str, Writer]:
    """The files of one figure: its images, caption (NAME.txt) and data (NAME.csv)."""
    import matplotlib.pyplot as plt

    def image(path: Path) -> None:
        # A fixed salt: SVG element ids are otherwise random on every run.
        with plt.rc_context({"svg.hashsalt": "sigprop"}):
            result.figure.savefig(path, metadata=_METADATA.get(path.suffix.lstrip(".")))

    writers: dict[str, Writer] = {f"{result.name}.{ext}": image for ext in formats}
    writers[f"{result.name}.txt"] = lambda path: path.write_text(result.caption + "\n")
    # Six significant digits: far below the seed-to-seed scatter, half the size.
    writers[f"{result.name}.csv"] = lambda path: result.data.to_csv(
        path, index=False, float_format="%.6g")
    return writers
