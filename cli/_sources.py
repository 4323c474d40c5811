"""Parsing the command line's model options: ``--arg key=value`` and literal values.

Models are built by the library's one registry, :class:`sigprop.sources.ModelSource`. Every
failure a user can fix becomes a ``ValueError`` with one readable line, which the command turns
into an ``error:`` line and exit code 2.
"""

from __future__ import annotations

import ast
from typing import Any

__all__ = ["parse_kwargs", "parse_literal"]


def parse_kwargs(pairs: list[str]) -> dict[str, Any]:
    """``["depth=3", "name=x"]`` -> ``{"depth": 3, "name": "x"}`` (Python literals, else text)."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--arg {pair!r} must be key=value with a Python name as key")
        kwargs[key] = parse_literal(text)
    return kwargs


def parse_literal(text: str) -> Any:
    """A Python literal (``3``, ``0.5``, ``None``, ``True``), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text

