"""Plots of measured traces: the signal-propagation plot and the paper's panels.

Every plot function takes traces (results), never models; accepts optional axes to draw into;
returns the figure; and draws inside :func:`style`, leaving matplotlib's global style alone.
matplotlib and seaborn are imported when a figure is drawn, so importing this package is light.

>>> import sigprop
>>> from sigprop.plotting import plot_zoo
>>> trace = sigprop.measure(sigprop.models.resnet(4, width=4, seed=0),
...                         sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0))
>>> len(plot_zoo([trace, trace], ["BN v2", "again"], groups=["one", "two"]).axes)
2
"""

from sigprop.plotting.backward import plot_spp_backward
from sigprop.plotting.compare import plot_comparison
from sigprop.plotting.depth import SweepPoint, plot_depth_sweep, plot_sqrt_depth_law, sweep_points
from sigprop.plotting.finite import plot_finite_size
from sigprop.plotting.identity import plot_identity_bias, plot_zoo
from sigprop.plotting.orderings import plot_orderings
from sigprop.plotting.quantities import (
    MEASURED,
    PREDICTED,
    Quantity,
    TheoryQuantity,
    fit_text,
    network_depth,
)
from sigprop.plotting.spp import plot_spp, plot_spp_trio
from sigprop.plotting.style import DOUBLE_COLUMN, SINGLE_COLUMN, palette, style
from sigprop.plotting.sweep import SWEEP_FITS, plot_sweep

__all__ = [
    "DOUBLE_COLUMN",
    "MEASURED",
    "PREDICTED",
    "SINGLE_COLUMN",
    "SWEEP_FITS",
    "Quantity",
    "SweepPoint",
    "TheoryQuantity",
    "fit_text",
    "network_depth",
    "palette",
    "plot_comparison",
    "plot_depth_sweep",
    "plot_finite_size",
    "plot_identity_bias",
    "plot_orderings",
    "plot_spp",
    "plot_spp_backward",
    "plot_spp_trio",
    "plot_sqrt_depth_law",
    "plot_sweep",
    "plot_zoo",
    "style",
    "sweep_points",
]
