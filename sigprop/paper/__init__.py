"""The paper-style figure set of ``sigprop figures``: what to measure, tidy data, captions.

Each figure is a :class:`FigureSpec`: the built-in ResNets (or real architectures) it measures
(:class:`RunSpec`) and a renderer that draws their traces with :mod:`sigprop.plotting`, tabulates
them (:func:`tidy`, columns :data:`COLUMNS`) and writes the caption. :func:`generate` measures
and renders the whole set for a :class:`FigureConfig` (:data:`FULL` or :data:`QUICK`), one
:class:`FigureResult` at a time, measuring a network once however many figures need it.
matplotlib and pandas are imported when a figure or table is made.

>>> from sigprop import paper
>>> trace = paper.measure_run(paper.RunSpec(4), paper.QUICK)  # seeds 0-2, merged
>>> frame = paper.tidy([trace], ["BN v2"], {"ratio": lambda b: b.ratio})
>>> sorted(frame["seed"].dropna().unique().tolist())
[0, 1, 2]
"""

from sigprop.paper.config import FULL, QUICK, FigureConfig, RunSpec
from sigprop.paper.figure_set import figure_specs, generate, total_blocks
from sigprop.paper.runs import measure_run
from sigprop.paper.spec import FigureResult, FigureSpec
from sigprop.paper.tables import COLUMNS, tidy

__all__ = [
    "COLUMNS",
    "FULL",
    "QUICK",
    "FigureConfig",
    "FigureResult",
    "FigureSpec",
    "RunSpec",
    "figure_specs",
    "generate",
    "measure_run",
    "tidy",
    "total_blocks",
]
