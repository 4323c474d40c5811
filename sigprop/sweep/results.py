"""A sweep's results on disk: one file per point, the tidy tables and the index built from them.

Every point's outcome is written to ``points/KEY.json`` as soon as it arrives, atomically (a
temporary file renamed over the target), so an interrupted sweep loses nothing that finished and
a re-run finds what is done. The tables are built from these files, in grid order, so they do
not depend on who computed the points or in which order they finished.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sigprop import stats
from sigprop._files import write_atomic
from sigprop.sweep.grid import Point
from sigprop.sweep.point import Outcome, Status
from sigprop.trace import Trace

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["POINTS_DIR", "fit_table", "load_outcome", "point_table", "save_outcome"]

POINTS_DIR = "points"


def _point_path(out: Path, key: str) -> Path:
    return out / POINTS_DIR / f"{key}.json"


def save_outcome(out: Path, point: Point, outcome: Outcome) -> None:
    """``points/KEY.json``: the point's configuration, seed, status, error, time and results."""
    doc = {"key": point.key, "config": point.settings, "replicate": point.replicate,
           "seed": point.seed, "input_shape": list(point.input_shape), "device": point.device,
           "status": outcome.status.value, "error": outcome.error,
           "elapsed_s": outcome.elapsed_s, "trace": outcome.trace, "report": outcome.report}
    text = json.dumps(doc, allow_nan=False) + "\n"
    write_atomic(_point_path(out, point.key), lambda path: path.write_text(text))


def load_outcome(out: Path, key: str) -> Outcome | None:
    """The stored outcome of point ``key``, or None if there is none (or it is unreadable)."""
    try:
        doc = json.loads(_point_path(out, key).read_text())
        return Outcome(doc["key"], Status(doc["status"]), doc["elapsed_s"], doc["error"],
                       doc["trace"], doc["report"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def point_table(points: Sequence[Point], outcomes: Mapping[str, Outcome]) -> pd.DataFrame:
    """The long table of every done point, in grid order: ``point``, the grid columns,
    ``replicate``, then :meth:`sigprop.Trace.to_frame`'s columns."""
    import pandas as pd

    frames = []
    columns = _grid_columns(points)
    for point in points:
        outcome = outcomes.get(point.key)
        if outcome is None or outcome.status is not Status.DONE or outcome.trace is None:
            continue
        frame = Trace.from_dict(outcome.trace).to_frame()
        cells = [point.key, *(_cell(point, name) for name in columns), point.replicate]
        for position, (name, cell) in enumerate(zip(["point", *columns, "replicate"], cells,
                                                     strict=True)):
            frame.insert(position, name, cell)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["point", *columns, "replicate", "seed", "block", "name",
                                     "stage", "tensor", "stat", "value"])
    return _typed(pd.concat(frames, ignore_index=True), columns)


def fit_table(points: Sequence[Point], outcomes: Mapping[str, Outcome]) -> pd.DataFrame:
    """The fits of every configuration, its replicates pooled (seeds are the independent
    unit): the grid columns, ``runs``, then ``fit, stage, estimate, lo, hi, predicted``."""
    import pandas as pd

    columns = _grid_columns(points)
    groups: dict[tuple[tuple[str, Any], ...], list[Trace]] = {}
    for point in points:
        outcome = outcomes.get(point.key)
        if outcome is not None and outcome.status is Status.DONE and outcome.trace is not None:
            config = tuple((name, _cell(point, name)) for name in columns)
            groups.setdefault(config, []).append(Trace.from_dict(outcome.trace))
    rows = []
    for config, traces in groups.items():
        for estimate in stats.fits(reduce(Trace.merge, traces)):
            rows.append({**dict(config), "runs": len(traces), "fit": estimate.id.value,
                         "stage": estimate.stage, "estimate": estimate.estimate,
                         "lo": estimate.ci95[0], "hi": estimate.ci95[1],
                         "predicted": estimate.predicted})
    table = pd.DataFrame(rows, columns=[*columns, "runs", "fit", "stage", "estimate", "lo",
                                        "hi", "predicted"])
    table["predicted"] = table["predicted"].astype(float)
    return _typed(table, columns)


def _grid_columns(points: Sequence[Point]) -> list[str]:
    """Every axis of every point, in first-seen order."""
    return list(dict.fromkeys(name for point in points for name, _ in point.config))


def _cell(point: Point, name: str) -> Any:
    return point.settings.get(name)


def _typed(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Grid columns mixing numbers and text become text, so that Parquet can store them."""
    for name in columns:
        kinds = {type(v) for v in table[name] if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float}:
            table[name] = [None if v is None else str(v) for v in table[name]]
    return table
