"""Running a sweep: skip what is done, measure the rest, write the tables and the index."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sigprop._files import write_together
from sigprop._version import __version__
from sigprop.sweep.executors import Executor, LocalExecutor
from sigprop.sweep.grid import Grid, Point
from sigprop.sweep.point import Outcome, Status
from sigprop.sweep.results import (
    POINTS_DIR,
    fit_table,
    load_outcome,
    point_table,
    save_outcome,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FITS_PARQUET", "SWEEP_JSON", "SWEEP_PARQUET", "Sweep", "check_parquet", "run_sweep"]

SWEEP_PARQUET, FITS_PARQUET, SWEEP_JSON = "sweep.parquet", "fits.parquet", "sweep.json"

Progress = Callable[[Outcome | None, int, int], None]
"""Called with ``(None, done, total)`` before any work, then ``(outcome, done, total)``."""


@dataclass(frozen=True)
class Sweep:
    """A finished sweep: its points, their outcomes and the tables written from them.

    Attributes:
        points: every point of the grid, in grid order.
        outcomes: the outcome of each point by key (done earlier, done now or failed).
        computed: keys of the points measured by this run (the others were done before).
        table: the long table of sweep.parquet.
        fits: the pooled fits of fits.parquet.
        index: the sweep.json document.
    """

    points: tuple[Point, ...]
    outcomes: dict[str, Outcome]
    computed: tuple[str, ...]
    table: pd.DataFrame = field(repr=False)
    fits: pd.DataFrame = field(repr=False)
    index: dict[str, Any] = field(repr=False)

    @property
    def failed(self) -> list[Point]:
        """The points whose measurement failed."""
        return [p for p in self.points if self.outcomes[p.key].status is Status.FAILED]


def check_parquet() -> None:
    """Raise a ValueError naming the install when pandas cannot write Parquet."""
    try:
        import pyarrow  # noqa: F401
    except ImportError as e:
        raise ValueError("sweep.parquet needs pyarrow: pip install 'sigprop[sweep]'") from e


def run_sweep(grid: Grid, out: str | Path, executor: Executor | None = None,
              progress: Progress | None = None) -> Sweep:
    """Measure every point of ``grid`` not yet done in ``out``, then write the results there.

    Each outcome is written to ``out/points/KEY.json`` as it arrives, so an interrupted sweep
    resumes where it stopped: a re-run skips the points already done (same configuration, sweep
    seed and sigprop version) and retries the failed ones. A failing point does not stop the
    others. At the end: ``sweep.parquet`` (every done point's
    :meth:`~sigprop.Trace.to_frame` with the grid columns), ``fits.parquet`` (the fits of each
    configuration, replicates pooled) and ``sweep.json`` (grid, versions, per-point status,
    error, time, fits and verdicts).

    Args:
        grid: the grid (checked before any work).
        out: the output folder (created).
        executor: who measures (default: :class:`LocalExecutor` with one worker per core).
        progress: called with ``(None, done, total)`` once the done points are found, then
            with ``(outcome, done, total)`` as each outcome is written.

    Returns:
        The :class:`Sweep`.

    >>> import tempfile
    >>> grid = Grid.from_mapping({"grid": {"depth": [2, 3], "width": 4, "image_size": 8,
    ...                                    "batch_size": 2}})
    >>> with tempfile.TemporaryDirectory() as out:
    ...     sweep = run_sweep(grid, out, LocalExecutor(workers=1))
    ...     again = run_sweep(grid, out, LocalExecutor(workers=1))
    >>> len(sweep.computed), len(again.computed), len(sweep.table)
    (2, 0, 30)
    """
    points = grid.points()
    check_parquet()
    executor = executor or LocalExecutor()
    out = Path(out)
    (out / POINTS_DIR).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    outcomes: dict[str, Outcome] = {}
    for point in points:
        stored = load_outcome(out, point.key)
        if stored is not None and stored.status is Status.DONE:
            outcomes[point.key] = stored
    todo = [p for p in points if p.key not in outcomes]
    by_key = {p.key: p for p in todo}
    computed: list[str] = []
    if progress is not None:
        progress(None, len(outcomes), len(points))
    stream = executor.map(todo)
    try:
        for outcome in stream:
            point = by_key[outcome.key]
            save_outcome(out, point, outcome)
            outcomes[point.key] = outcome
            computed.append(point.key)
            if progress is not None:
                progress(outcome, len(outcomes), len(points))
    finally:
        # Interrupted: stop the executor's pending work now, not when the stream is collected.
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    table, fits = point_table(points, outcomes), fit_table(points, outcomes)
    index = _index(grid, points, outcomes, computed, executor, time.perf_counter() - started)
    text = json.dumps(index, indent=1, allow_nan=False) + "\n"
    # The tables and their index together: never the tables of one run beside another's index.
    write_together(out, {SWEEP_PARQUET: lambda path: table.to_parquet(path, index=False),
                         FITS_PARQUET: lambda path: fits.to_parquet(path, index=False),
                         SWEEP_JSON: lambda path: path.write_text(text)})
    return Sweep(points, outcomes, tuple(computed), table, fits, index)


def _index(grid: Grid, points: tuple[Point, ...], outcomes: dict[str, Outcome],
           computed: list[str], executor: Executor, wall_s: float) -> dict[str, Any]:
    entries = []
    for point in points:
        outcome = outcomes[point.key]
        report = outcome.report or {}
        entries.append({
            "key": point.key, "config": point.settings, "replicate": point.replicate,
            "seed": point.seed, "status": outcome.status.value, "error": outcome.error,
            "elapsed_s": outcome.elapsed_s, "computed_now": point.key in computed,
            "file": f"{POINTS_DIR}/{point.key}.json",
            "fits": report.get("fits"), "verdicts": report.get("verdicts")})
    counts = {s.value: sum(e["status"] == s.value for e in entries) for s in Status}
    return {"sigprop_version": __version__, "versions": _versions(executor),
            "grid": grid.to_dict(), "run": executor.describe() | {"wall_s": wall_s},
            "counts": counts | {"computed_now": len(computed)}, "points": entries}


def _versions(executor: Executor) -> dict[str, str]:
    names = ["torch", "numpy", "scipy", "pandas", "pyarrow"]
    if executor.describe()["executor"] == "ray":
        names.append("ray")
    found = {"python": platform.python_version(), "sigprop": __version__}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found
