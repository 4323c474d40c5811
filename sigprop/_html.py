"""HTML tables for Jupyter: how reports and audit findings render in a notebook."""

from __future__ import annotations

import html
from collections.abc import Sequence


def html_table(caption: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain ``<table>`` with a caption, every cell escaped (``_repr_html_`` bodies).

    >>> html_table("c", ["a"], [["<x>"]])
    '<table><caption>c</caption><thead><tr><th>a</th></tr></thead><tbody><tr><td>&lt;x&gt;</td></tr></tbody></table>'
    """
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row)
                   + "</tr>" for row in rows)
    return (f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")
