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

# One colour per network across the figure set, keyed on what the network is: (variant, norm,
# alpha, several stages, NF zero-init, Fixup zero last). seaborn's colour-blind palette by
# index, then fixed colours of Paul Tol's muted scheme for the normalizer-free family.
_Key = tuple[str, str, float | None, bool, bool, bool]


def _key(variant: str, norm: str, alpha: float | None = None, stages: bool = False,
         nf_zero_init: bool = False, fixup_zero_last: bool = True) -> _Key:
    return (variant, norm, alpha, stages, nf_zero_init, fixup_zero_last)


_PALETTE_INDEX = {_key("v2", "batchnorm"): 0, _key("v2", "none"): 1,
                  _key("v2", "skipinit", 0.0): 2, _key("v2", "skipinit", 0.1): 4,
                  _key("v2", "sqrt-depth"): 5, _key("v1", "batchnorm"): 3,
                  _key("v2", "batchnorm", stages=True): 6}
_FIXED = {_key("v2", "nf", 0.2): "#882255", _key("v2", "fixup"): "#44aa99",
          _key("v2", "fixup", fixup_zero_last=False): "#332288",
          _key("v2", "skipinit", 0.2): "#999933", _key("v2", "skipinit", 0.25): "#aa4499"}


def _network(run: RunSpec) -> _Key | None:
    """The key of a built-in ResNet's colour, or None for a real architecture."""
    return None if run.model else _key(run.variant, run.norm, run.alpha, run.stages > 1,
                                       run.nf_zero_init, run.fixup_zero_last)


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
    chosen = []
    for key in (_network(run) for run in runs):
        if key is not None and key in _PALETTE_INDEX:
            chosen.append(colors[_PALETTE_INDEX[key]])
        elif key is not None and key in _FIXED:
            chosen.append(_FIXED[key])
        else:
            chosen.append(next(spare, "#444444"))
    return chosen


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
