"""The figure set's networks: names, fixed colours, and several overlaid in one figure."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from sigprop.paper.config import RunSpec
from sigprop.paper.spec import Traces
from sigprop.paper.tables import measured, tidy
from sigprop.plotting import palette
from sigprop.trace import Trace

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["colors_for", "overlay", "skipinit_label"]

# One colour per network across the figure set (seaborn's colour-blind palette, by index).
_PALETTE_INDEX = {"BN v2": 0, "unnormalized": 1, "SkipInit, alpha = 0": 2,
                  "SkipInit, alpha = 0.1": 4, "branch / sqrt(d)": 5, "BN v1": 3,
                  "BN v2, 3 stages": 6}


def skipinit_label(alpha: float) -> str:
    """The series name of a SkipInit network.

    >>> skipinit_label(0.1)
    'SkipInit, alpha = 0.1'
    """
    return f"SkipInit, alpha = {alpha:g}"


def colors_for(labels: Sequence[str]) -> list[str]:
    """Fixed colours for the built-in networks; the others take the colours left, in order.

    >>> colors_for(["BN v2", "mine"]) == [palette()[0], palette()[7]]
    True
    """
    colors = palette()
    spare = iter([c for k, c in enumerate(colors) if k not in _PALETTE_INDEX.values()]
                 + ["#000000", "#7b3294", "#a6611a"])
    return [colors[_PALETTE_INDEX[label]] if label in _PALETTE_INDEX else next(spare, "#444444")
            for label in labels]


def overlay(plot: Callable[..., Figure], traces: Traces, runs: Mapping[str, RunSpec],
            quantities: Sequence[str], theory: bool = True
            ) -> tuple[dict[str, Trace], Figure, pd.DataFrame]:
    """Draw several networks of the set in one figure, in their colours, with their table.

    Args:
        plot: a plot function of :mod:`sigprop.plotting` taking traces, labels and colors.
        traces: the measured traces.
        runs: the series to draw, in legend order.
        quantities: names in :data:`sigprop.plotting.MEASURED` for the table.
        theory: add theory rows to the table.

    Returns:
        The traces by series name, the figure and its table.
    """
    named = {label: traces[run] for label, run in runs.items()}
    labels, ordered = list(named), list(named.values())
    fig = plot(ordered, labels, colors=colors_for(labels))
    return named, fig, tidy(ordered, labels, measured(*quantities), theory=theory)
