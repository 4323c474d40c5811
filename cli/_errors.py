"""Errors, reported once, at the command boundary: the user's (exit 2) and sigprop's own (exit 3).

A :class:`UsageError` (bad usage, the user's model failing) is one ``error:`` line and exit
code 2. Any other exception is sigprop's own failure (a bug, e.g. in its hooks): one line asking
to report it with the ``--debug`` output, and exit code 3. With ``sigprop --debug`` the
traceback is printed first.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import click
import typer

DEBUG = "sigprop.debug"
"""Key of the ``--debug`` flag in the root context's ``meta``."""

P = ParamSpec("P")
R = TypeVar("R")


class UsageError(Exception):
    """Bad usage, including the user's model failing: one ``error:`` line and exit code 2."""

    def __init__(self, message: str):
        # Errors raised by a user's model can span several lines: keep the report on one.
        super().__init__(" ".join(part.strip() for part in message.splitlines() if part.strip()))


INTERNAL_ERROR = 3
"""Exit code of sigprop's own failures."""
INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT), as shells report it."""


def reports_usage_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Run a command; a :class:`UsageError` becomes ``error: MESSAGE`` on stderr and exit 2,
    any other exception ``internal error: ...`` and exit 3, Ctrl-C exit 130.

    The command takes its context as ``ctx: typer.Context`` (Typer passes it by name); with
    ``sigprop --debug`` the traceback of the exception behind the error is printed first.
    """
    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        debug = kwargs["ctx"].find_root().meta.get(DEBUG)  # type: ignore[attr-defined]
        try:
            return command(*args, **kwargs)
        except UsageError as e:
            cause = e.__cause__ or e.__context__
            if debug and cause is not None:
                typer.echo("".join(traceback.format_exception(cause)), err=True, nl=False)
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from e
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException,
                click.exceptions.Abort):
            raise
        except KeyboardInterrupt as e:  # Click would exit 1, which `audit` keeps for a failure
            typer.echo("interrupted", err=True)
            raise typer.Exit(INTERRUPTED) from e
        except Exception as e:
            if debug:
                typer.echo("".join(traceback.format_exception(e)), err=True, nl=False)
            message = " ".join(str(e).split()) or "(no message)"
            typer.echo(f"internal error: sigprop failed ({type(e).__name__}: {message}); please "
                       "report it with the output of the same command run as `sigprop --debug "
                       "...`", err=True)
            raise typer.Exit(INTERNAL_ERROR) from e

    return run
