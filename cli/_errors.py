"""Errors a user can fix: raised anywhere in the CLI, reported once, at the command boundary."""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import ParamSpec, TypeVar

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


def reports_usage_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Run a command; a :class:`UsageError` becomes ``error: MESSAGE`` on stderr and exit 2.

    The command takes its context as ``ctx: typer.Context`` (Typer passes it by name); with
    ``sigprop --debug`` the traceback of the exception behind the error is printed first.
    """
    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except UsageError as e:
            context = kwargs["ctx"]
            cause = e.__cause__ or e.__context__
            if context.find_root().meta.get(DEBUG) and cause is not None:  # type: ignore[attr-defined]
                typer.echo("".join(traceback.format_exception(cause)), err=True, nl=False)
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from e

    return run
