"""What a figure of the set is: the networks it needs, how it is drawn, what it gives."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sigprop.paper.config import RunSpec
from sigprop.trace import Trace

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["FigureResult", "FigureSpec", "Rendering", "Traces"]

#: The measured trace of every network a figure needs.
Traces = Mapping[RunSpec, Trace]
#: What a figure's renderer gives: the figure, its data table and its caption.
Rendering = tuple["Figure", "pd.DataFrame", str]


@dataclass(frozen=True, slots=True)
class FigureSpec:
    """One figure of the set: its name, the networks it needs and how to render their traces.

    Attributes:
        name: file stem, e.g. ``sqrt-depth-law``.
        title: a short title for galleries.
        runs: the networks to measure (each once, however many figures need it).
        render: their traces -> the figure, its data and its caption.
    """

    name: str
    title: str
    runs: tuple[RunSpec, ...]
    render: Callable[[Traces], Rendering] = field(repr=False)


@dataclass(frozen=True, slots=True)
class FigureResult:
    """A rendered figure with its data and caption.

    Attributes:
        name: file stem, e.g. ``sqrt-depth-law``.
        title: a short title for galleries.
        figure: the matplotlib figure (close it when written).
        data: tidy long table with :data:`sigprop.paper.COLUMNS`.
        caption: what the figure shows, with sizes, seeds and fitted figures.
    """

    name: str
    title: str
    figure: Figure
    data: pd.DataFrame
    caption: str
