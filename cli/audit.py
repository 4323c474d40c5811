"""``sigprop audit``: the checks to run on an architecture before training it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ._commands import add_source_commands
from ._options import Analysis, RunOptions

if TYPE_CHECKING:
    from sigprop.audit import Finding

app = typer.Typer(
    help="Check an architecture at initialization: exit code 0 when no check fails, 1 when one "
    "fails, 2 for bad usage (the model failing included), 3 for an internal error of sigprop.",
    no_args_is_help=True,
)

def run_audit(analysis: Analysis, options: RunOptions) -> None:
    """Measure, run every check, print the findings (or JSON) and exit 1 if one fails."""
    from sigprop import NoResidualBlockError
    from sigprop.audit import Status, audit, no_blocks

    from ._run import collect, print_json, write_outputs

    try:
        collected = collect(analysis, options)
    except NoResidualBlockError as e:
        findings = no_blocks(str(e))
    else:
        findings = audit(collected.trace, result=collected.report)
        if options.out is not None:
            write_outputs(collected, options.out)
    failed = any(f.status is Status.FAIL for f in findings)
    if options.json:
        print_json({"passed": not failed, "findings": [f.to_dict() for f in findings]})
    else:
        _print(findings)
    raise typer.Exit(1 if failed else 0)


def _print(findings: list[Finding]) -> None:
    from rich.console import Console
    from rich.table import Table

    from sigprop.audit import Status

    style = {Status.PASS: "green", Status.FAIL: "bold red", Status.INFO: "yellow"}
    table = Table(title="sigprop audit")
    for column in ("check", "status", "finding"):
        table.add_column(column)
    for f in findings:
        table.add_row(f.id, f"[{style[f.status]}]{f.status.value}[/]", f.message)
    Console(width=max(Console().width, 110)).print(table)


add_source_commands(
    app, run_audit, group="audit", verb="Audit", out_default=None,
    out_help="Also write stats.json, stats.csv and spp.png into this folder.",
    json_help="Print the findings as JSON on stdout (for CI pipelines).",
)
