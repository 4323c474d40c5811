"""``sigprop analyze``: measure a network and write stats.json, stats.csv and spp.png."""

from __future__ import annotations

from pathlib import Path

import typer

from ._commands import add_source_commands
from ._errors import UsageError
from ._options import Analysis, RunOptions

DEFAULT_OUT = Path("sigprop-out")

app = typer.Typer(help="Measure a network and write stats.json, stats.csv and spp.png.",
                  no_args_is_help=True)


def analyze(analysis: Analysis, options: RunOptions) -> None:
    """Measure, write the three files, print the summary and the verdicts (or JSON)."""
    from sigprop import NoResidualBlockError

    from ._run import collect, print_json, summarize, write_outputs

    out = options.out if options.out is not None else DEFAULT_OUT
    try:
        collected = collect(analysis, options)
    except NoResidualBlockError as e:
        raise UsageError(str(e)) from e
    write_outputs(collected, out)
    if options.json:
        print_json(collected.document())
    else:
        summarize(collected, out)


add_source_commands(
    app, analyze, group="analyze", verb="Measure", out_default=DEFAULT_OUT,
    out_help="Folder for stats.json, stats.csv and spp.png.",
    json_help="Print the stats.json document on stdout instead of the tables.",
)
