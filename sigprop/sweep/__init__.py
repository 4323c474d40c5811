"""Sweeps: grids of depth x variant x size x seed, measured locally or on a Ray cluster.

>>> import tempfile
>>> from sigprop.sweep import Grid, LocalExecutor, run_sweep
>>> grid = Grid.from_mapping({"grid": {"depth": [2, 4], "norm": ["batchnorm", "none"],
...                                    "width": 4, "image_size": 8, "batch_size": 4}})
>>> with tempfile.TemporaryDirectory() as out:
...     sweep = run_sweep(grid, out, LocalExecutor(workers=1))
>>> sorted(set(sweep.table["norm"])), len(sweep.points)
(['batchnorm', 'none'], 4)
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
