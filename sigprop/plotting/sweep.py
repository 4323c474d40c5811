"""Finite-size scaling: a sweep's fitted figures against depth, width or image size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from sigprop.plotting._helpers import canvas, outside_legend, theory_legend_entry
from sigprop.plotting.style import DOUBLE_COLUMN, palette

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["SWEEP_FITS", "plot_sweep"]

#: The fits drawn by default, with the label of their axis.
SWEEP_FITS = {"skip_m2_slope": "skip $m_2$ increment / block",
              "ratio_exponent": "exponent of residual/skip",
              "growth_rate": "growth factor / block"}

_FIT_COLUMNS = ("runs", "fit", "stage", "estimate", "lo", "hi", "predicted")


def plot_sweep(fits: pd.DataFrame, x: str, *, fit_ids: Sequence[str] = tuple(SWEEP_FITS),
               stage: int = 0, axes: Sequence[Axes] | None = None) -> Figure:
    """One panel per fit: the estimate (95% interval) against ``x``, one line per variant.

    A variant is a combination of the other grid columns that vary in ``fits``; the theory's
    value of the same fit is drawn dashed in the variant's colour. The increment panel is on a
    log scale (unnormalized networks add orders of magnitude per block; an increment of 0, the
    identity, is not drawn there: the growth factor of 1 shows it).

    Args:
        fits: a sweep's pooled fits (:attr:`sigprop.sweep.Sweep.fits`, fits.parquet).
        x: the grid column on the horizontal axis, e.g. ``depth``, ``width``, ``image_size``.
        fit_ids: the fits to draw, one panel each.
        stage: the stage whose fits are drawn.
        axes: one axes per fit to draw into (default: a new figure).

    Returns:
        The figure.

    >>> import pandas as pd
    >>> fits = pd.DataFrame({"depth": [16, 64], "norm": "batchnorm", "runs": 1,
    ...                      "fit": "ratio_exponent", "stage": 0, "estimate": [-0.8, -0.9],
    ...                      "lo": [-1.0, -1.0], "hi": [-0.6, -0.8], "predicted": [-0.8, -0.9]})
    >>> len(plot_sweep(fits, "depth", fit_ids=["ratio_exponent"]).axes)
    1
    """
    if x not in fits.columns:
        raise ValueError(f"no grid column {x!r} in the fits: choose one of "
                         f"{', '.join(c for c in fits.columns if c not in _FIT_COLUMNS)}")
    chosen = fits[fits["stage"] == stage]
    grid = [c for c in fits.columns if c not in _FIT_COLUMNS and c != x]
    varying = [c for c in grid if chosen[c].nunique(dropna=False) > 1]
    with canvas(axes, len(fit_ids), 1, (DOUBLE_COLUMN, 2.8)) as (fig, panels):
        for ax, fit_id in zip(panels, fit_ids, strict=True):
            _panel(ax, chosen[chosen["fit"] == fit_id], x, varying)
            ax.set_xlabel(x.replace("_", " "))
            ax.set_ylabel(SWEEP_FITS.get(fit_id, fit_id))
            ax.set_title(f"stage {stage}", fontsize="medium")
            if fit_id == "skip_m2_slope":
                ax.set_yscale("log", nonpositive="clip")
            values = chosen[x].dropna()
            if len(values) and values.min() > 0 and values.max() >= 8 * values.min():
                ax.set_xscale("log")
        theory_legend_entry(panels[0], "theory (dashed)")
        outside_legend(fig, panels[0], axes is None, ncol=3)
    return fig


def _panel(ax: Axes, rows: pd.DataFrame, x: str, varying: list[str]) -> None:
    groups = rows.groupby(varying, dropna=False, sort=False) if varying else [((), rows)]
    for (values, group), color in zip(groups, palette() * 4, strict=False):
        group = group.sort_values(x)
        names = values if isinstance(values, tuple) else (values,)
        label = ", ".join(f"{c}={v}" for c, v in zip(varying, names, strict=True)) or "measured"
        estimate = group["estimate"].to_numpy(float)
        errors = np.abs(np.vstack([estimate - group["lo"].to_numpy(float),
                                   group["hi"].to_numpy(float) - estimate]))
        ax.errorbar(group[x], estimate, yerr=np.nan_to_num(errors), color=color, marker="o",
                    markersize=3, capsize=2, linewidth=1, label=label)
        predicted = group["predicted"].to_numpy(float)
        if np.isfinite(predicted).any():
            ax.plot(group[x], predicted, color=color, linestyle=(0, (2, 2)), linewidth=0.9)
