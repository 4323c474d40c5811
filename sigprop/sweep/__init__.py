"""Sweeps: grids of depth x variant x size x seed, measured locally or on a Ray cluster.

:class:`Grid` holds the points (checked before any work, each with a seed derived from the
sweep seed and its configuration), :func:`run_sweep` measures those not yet done with an
executor (:class:`LocalExecutor`, :class:`RayExecutor`) and writes the tables (docs/sweeps.md).

>>> from sigprop.sweep import Grid
>>> grid = Grid.from_mapping({"grid": {"depth": [16, 64], "norm": ["batchnorm", "none"]},
...                           "seeds": 3})
>>> len(grid.points())
12
"""

from sigprop.sweep.executors import Executor, LocalExecutor, RayExecutor, usable_cores
from sigprop.sweep.grid import INPUT_AXES, RESNET_AXES, Grid, Point
from sigprop.sweep.point import Outcome, Status, run_point
from sigprop.sweep.run import FITS_PARQUET, SWEEP_JSON, SWEEP_PARQUET, Sweep, run_sweep

__all__ = [
    "FITS_PARQUET",
    "INPUT_AXES",
    "RESNET_AXES",
    "SWEEP_JSON",
    "SWEEP_PARQUET",
    "Executor",
    "Grid",
    "LocalExecutor",
    "Outcome",
    "Point",
    "RayExecutor",
    "Status",
    "Sweep",
    "run_point",
    "run_sweep",
    "usable_cores",
]
