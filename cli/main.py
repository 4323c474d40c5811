"""Entry point of the ``sigprop`` command."""

from __future__ import annotations

import signal
from typing import NoReturn

import typer

from sigprop._version import __version__

from ._allocator import pin_glibc_allocator
from ._errors import DEBUG
from .analyze import app as analyze_app
from .audit import app as audit_app
from .figures import figures_command
from .plot import plot_command

app = typer.Typer(
    name="sigprop",
    help="Measure signal propagation at initialization in PyTorch residual networks.",
    # Plain Click errors: one readable 'Error: ...' line instead of a boxed, wrapped panel.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(analyze_app, name="analyze")
app.add_typer(audit_app, name="audit")
app.command("figures")(figures_command)
app.command("plot")(plot_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sigprop {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    context: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="On an error, also print the Python traceback behind it (include it "
        "when you report an internal error)."
    ),
) -> None:
    """Measure signal propagation at initialization in PyTorch residual networks."""
    context.meta[DEBUG] = debug


def run() -> None:
    """The ``sigprop`` console script: the allocator is pinned for this process, then the app.

    SIGTERM exits like Ctrl-C does, through every ``finally``: temporary files are removed.
    """
    pin_glibc_allocator()
    signal.signal(signal.SIGTERM, _terminated)
    app()


def _terminated(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)
