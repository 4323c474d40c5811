"""Statistics over measured traces: pure functions returning estimates, intervals and verdicts.

* :mod:`sigprop.stats.bands`: per-block means over the runs with their intervals;
* :mod:`sigprop.stats.fits`: the fits of each stage, with intervals calibrated on real traces
  (``benchmarks/calibration.py``; docs/theory.md gives the table);
* :mod:`sigprop.stats.verdicts`: the claims of the theory as three-valued equivalence tests.
"""

from sigprop.stats.bands import Band, band, effective_depth, relative_errors, t_interval
from sigprop.stats.fits import (
    GRADIENT_FITS,
    Estimate,
    FitId,
    Growth,
    fit,
    fits,
    projected_growth,
)
from sigprop.stats.verdicts import (
    Outcome,
    Report,
    Tolerances,
    Verdict,
    VerdictId,
    report,
    verdicts,
)

__all__ = [
    "GRADIENT_FITS",
    "Band",
    "Estimate",
    "FitId",
    "Growth",
    "Outcome",
    "Report",
    "Tolerances",
    "Verdict",
    "VerdictId",
    "band",
    "effective_depth",
    "fit",
    "fits",
    "projected_growth",
    "relative_errors",
    "report",
    "t_interval",
    "verdicts",
]
