"""The figures' data as tidy long tables: one row per value, measured or predicted.

>>> import sigprop
>>> trace = sigprop.measure(sigprop.models.resnet(8, seed=0),
...                         sigprop.InputSpec("gaussian", (4, 3, 8, 8), 0))
>>> frame = tidy([trace], ["BN v2"], {"ratio": lambda b: b.ratio})
>>> sorted(set(frame["source"])), len(frame[frame["source"] == "measured"])
(['measured', 'theory'], 8)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sigprop import stats
from sigprop.plotting import MEASURED, PREDICTED, Quantity, network_depth
from sigprop.theory import predict
from sigprop.trace import Trace

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["COLUMNS", "final_m2", "fitted", "measured", "tidy"]

#: Columns of every figure's data table (one row per value).
COLUMNS = ["series", "source", "seed", "depth", "block", "stage", "quantity", "value"]


def measured(*names: str) -> dict[str, Quantity]:
    """The quantities of :data:`sigprop.plotting.MEASURED` with these names, for :func:`tidy`.

    >>> list(measured("ratio", "cosine"))
    ['ratio', 'cosine']
    """
    return {name: MEASURED[name] for name in names}


def tidy(traces: Sequence[Trace], labels: Sequence[str],
         quantities: Mapping[str, Quantity], theory: bool = True) -> pd.DataFrame:
    """Per-block quantities of several traces as one long table with :data:`COLUMNS`.

    Measured rows have ``source="measured"`` and the run's seed; where
    :func:`sigprop.theory.predict` has a closed form for a quantity (same name as in
    :data:`sigprop.plotting.PREDICTED`) a ``source="theory"`` row follows, with an empty seed.

    Args:
        traces: the traces.
        labels: the ``series`` name of each trace.
        quantities: column name -> function of a block, e.g. ``{"ratio": lambda b: b.ratio}``.
        theory: add the theory rows.

    Returns:
        A pandas DataFrame.
    """
    rows: list[tuple[Any, ...]] = []
    for trace, label in zip(traces, labels, strict=True):
        depth = network_depth(trace)
        for seed, block in trace.blocks():
            for name, quantity in quantities.items():
                rows.append((label, "measured", seed, depth, block.index, block.stage, name,
                             quantity(block)))
        prediction = predict(trace) if theory else None
        if prediction is None:
            continue
        for p in prediction.blocks:
            for name in quantities:
                if name in PREDICTED and math.isfinite(value := PREDICTED[name](p)):
                    rows.append((label, "theory", None, depth, p.index, p.stage, name, value))
    return _frame(rows)


def final_m2(sweeps: Mapping[str, Sequence[Trace]]) -> pd.DataFrame:
    """The depth sweep's table: the skip path's second moment entering the first block,
    ``first_m2``, and after the last block, ``final_m2``.

    One row per run, and one for its closed form where there is one, with :data:`COLUMNS`.

    Args:
        sweeps: series name -> the traces of that variant at several depths.

    Returns:
        A pandas DataFrame.
    """
    rows: list[tuple[Any, ...]] = []
    for label, traces in sweeps.items():
        for trace in traces:
            depth, last = network_depth(trace), trace.runs[0].blocks[-1]
            first = trace.runs[0].blocks[0]
            for run in trace.runs:
                rows.append((label, "measured", run.seed, depth, first.index, first.stage,
                             "first_m2", run.blocks[0].skip.m2))
                rows.append((label, "measured", run.seed, depth, last.index, last.stage,
                             "final_m2", run.blocks[-1].output.m2))
            prediction = predict(trace)
            if prediction is not None:
                rows.append((label, "theory", None, depth, first.index, first.stage, "first_m2",
                             prediction.blocks[0].skip_m2))
                rows.append((label, "theory", None, depth, last.index, last.stage, "final_m2",
                             prediction.blocks[-1].output_m2))
    return _frame(rows)


def fitted(traces: Mapping[str, Trace], fit_ids: Sequence[stats.FitId]) -> pd.DataFrame:
    """Fits of whole traces as a table: the estimate, its 95% interval and the theory's value.

    One ``measured`` row per fit with the estimate, two more with ``quantity`` suffixed
    ``_ci_lo`` and ``_ci_hi``, and a ``theory`` row where the fit has a prediction; ``seed``,
    ``block`` and ``stage`` are empty (a fit pools the runs of stage 0).
    """
    rows: list[tuple[Any, ...]] = []
    for label, trace in traces.items():
        depth = network_depth(trace)
        for fit_id in fit_ids:
            estimate = stats.fit(trace, fit_id)
            name = fit_id.value
            for quantity, value in ((name, estimate.estimate),
                                    (f"{name}_ci_lo", estimate.ci95[0]),
                                    (f"{name}_ci_hi", estimate.ci95[1])):
                rows.append((label, "measured", None, depth, None, None, quantity, value))
            if estimate.predicted is not None:
                rows.append((label, "theory", None, depth, None, None, name, estimate.predicted))
    frame = _frame(rows)
    frame[["block", "stage"]] = frame[["block", "stage"]].astype("Int64")
    return frame


def _frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=COLUMNS)
    # Theory rows have no seed: a nullable integer column, not floats with NaN.
    frame["seed"] = frame["seed"].astype("Int64")
    return frame
