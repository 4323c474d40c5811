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

# One colour per network across the figure set (seaborn's colour-blind palette, by index),
# keyed on what the network is: (variant, norm, alpha, several stages).
_PALETTE_INDEX = {("v2", "batchnorm", None, False): 0, ("v2", "none", None, False): 1,
                  ("v2", "skipinit", 0.0, False): 2, ("v2", "skipinit", 0.1, False): 4,
                  ("v2", "sqrt-depth", None, False): 5, ("v1", "batchnorm", None, False): 3,
                  ("v2", "batchnorm", None, True): 6}


def _network(run: RunSpec) -> tuple[str, str, float | None, bool] | None:
    """The key of a built-in ResNet's colour, or None for a real architecture."""
    return None if run.model else (run.variant, run.norm, run.alpha, run.stages > 1)


def skipinit_label(alpha: float) -> str:
    """The series name of a SkipInit network.

    >>> skipinit_label(0.1)
    'SkipInit, alpha = 0.1'
    """
    return f"SkipInit, alpha = {alpha:g}"


def colors_for(runs: Sequence[RunSpec]) -> list[str]:
    """Fixed colours for the built-in networks; the others take the colours left, in order.

    >>> colors_for([RunSpec(8), RunSpec(8, model="timm:resnet50")]) == palette()[0:8:7]
    True
    """
    colors = palette()
    spare = iter([c for k, c in enumerate(colors) if k not in _PALETTE_INDEX.values()]
                 + ["#000000", "#7b3294", "#a6611a"])
    keys = [_network(run) for run in runs]
    return [colors[_PALETTE_INDEX[key]] if key in _PALETTE_INDEX else next(spare, "#444444")
            for key in keys]


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
    fig = plot(ordered, labels, colors=colors_for(list(runs.values())))
    return named, fig, tidy(ordered, labels, measured(*quantities), theory=theory)
