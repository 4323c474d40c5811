"""Coverage of the fits' 95% intervals on real traces of the built-in networks.

Usage (from the repository root, with the project's virtual environment):

    .venv/bin/python benchmarks/calibration.py                     # the full table (R = 200)
    .venv/bin/python benchmarks/calibration.py --quick             # a small run (about 20 s)
    .venv/bin/python benchmarks/calibration.py --cache calibration-cache --replications 400
    .venv/bin/python benchmarks/calibration.py --gradients --replications 100   # gradient fits

Method. Replication ``s`` (``s = 0 .. R-1``) builds the weights and the input from seed ``s``:
``measure(resnet(depth, seed=s, **kw), InputSpec("gaussian", (batch, 3, image, image), s))``, so
the replications are independent. For every network, depth and fit (:class:`sigprop.stats.FitId`,
stage 0):

* ``true``: the mean of the R per-seed estimates (``sigprop.stats.fit`` of one seed's trace);
* ``sd``: the standard deviation of the per-seed estimates (what one seed's interval should
  describe: a calibrated 95% half-width is about 1.96 sd);
* ``cov1``: the fraction of the R one-seed intervals that contain the true value, the true value
  being the leave-one-out mean (the replication under test excluded);
* ``cov3``: the same for the intervals of ``R // 3`` disjoint groups of three seeds (their traces
  merged with ``Trace.merge``, the interval pooling the between-seed spread with the within-run
  jackknife), against the mean of the seeds outside the group; ``groups`` counts them;
* ``hw1`` / ``hw3``: the median half-width of the one-seed / three-seed intervals;
* ``predicted``: ``Estimate.predicted``, the same fit of the theory's per-block prediction (anchored
  on the mean first block of all R seeds), where the theory has one.

Where the 90-98% target applies (``flag``: ``LOW cov1``, ``HIGH cov3``, ... when a coverage is
outside it; with 66 groups a calibrated ``cov3`` leaves the band by chance now and then):

* ``skip_m2_slope``, ``skip_var_slope``, ``skip_sq_mean_slope``: for the linear BN families
  (BN v2 and ReLU-BN), whose skip path is a random walk with close-to-independent increments. In
  the geometrically growing networks (unnormalized, SkipInit, sqrt-depth) the increments grow with
  the level and the mean increment of one trace is dominated by its last few blocks (heavy tails):
  no interval from within one run can describe its spread, and these rows say ``no law``. The
  NF-ResNet grows linearly in expectation while each branch is proportional to its skip path
  (``alpha^2 x / beta^2``): its slope intervals come from the log-factors (``sigprop.stats.fits``)
  and the target applies;
* ``inverse_ratio_slope``, ``ratio_exponent`` and ``growth_rate``: for every network. A fit with
  no finite estimate (a ratio that is exactly 0) is printed as ``nan`` with ``no estimate``.

With ``--gradients`` the traces are measured with ``backward=True`` and the gradient fits
(``grad_growth_rate``, ``grad_ratio_exponent``) are calibrated on :data:`GRADIENT_NETWORKS`; the
target applies to both everywhere.

Coverage is a binomial proportion: over R intervals its standard error is about
``sqrt(0.95 * 0.05 / R)`` (0.015 at R = 200, 0.027 over the 66 three-seed groups).
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import sigprop
from sigprop.stats import GRADIENT_FITS, Estimate, FitId
from sigprop.theory import predict

TARGET = (0.90, 0.98)
"""Coverage band of a calibrated 95% interval (what the flag column checks)."""

FORWARD_FITS = tuple(f for f in FitId if f not in GRADIENT_FITS)
"""The fits calibrated here (the gradient fits need traces measured with backward=True)."""

SKIP_SLOPES = (FitId.SKIP_M2_SLOPE, FitId.SKIP_VAR_SLOPE, FitId.SKIP_SQ_MEAN_SLOPE)

NETWORKS: dict[str, tuple[dict[str, Any], tuple[int, int]]] = {
    "bn-v2": ({}, (32, 256)),
    "relu-bn": ({"order": "relu-bn"}, (32, 256)),
    "unnormalized": ({"norm": "none"}, (16, 64)),  # deeper overflows float32 at small seeds
    "skipinit-0.25": ({"norm": "skipinit", "alpha": 0.25}, (32, 256)),
    "sqrt-depth": ({"norm": "sqrt-depth"}, (32, 256)),
    "nf": ({"norm": "nf"}, (32, 256)),
}
"""Name: (keyword arguments of ``sigprop.models.resnet``, (short depth, long depth))."""

GRADIENT_NETWORKS: dict[str, tuple[dict[str, Any], tuple[int, int]]] = {
    "bn-v2": ({}, (32, 128)),
    "bn-v1": ({"variant": "v1"}, (32, 128)),
    "unnormalized": ({"norm": "none"}, (16, 48)),
    "skipinit-0.25": ({"norm": "skipinit", "alpha": 0.25}, (32, 128)),
    "sqrt-depth": ({"norm": "sqrt-depth"}, (32, 128)),
    "nf": ({"norm": "nf"}, (32, 128)),
}
"""The networks and depths of the gradient fits' calibration (``--gradients``)."""

QUICK_DEPTHS: dict[str, tuple[int, int]] = {"unnormalized": (8, 32)}
QUICK_DEFAULT_DEPTHS = (24, 64)  # not 16: sqrt-depth at 16 blocks is SkipInit 0.25
QUICK_REPLICATIONS = 30


def has_law(network_kwargs: Mapping[str, Any], fit_id: FitId) -> bool:
    """Whether the 90-98% coverage target applies to ``fit_id`` on this network.

    The skip slopes only in the linearly growing families (batch norm in any order, and the
    NF-ResNet, whose slope intervals come from its log-factors); the ratio fits, the growth
    rate and the gradient fits everywhere.
    """
    if fit_id in GRADIENT_FITS:
        return True
    if fit_id in SKIP_SLOPES:
        return str(network_kwargs.get("norm", "batchnorm")) in ("batchnorm", "nf")
    return True


@dataclass(frozen=True, slots=True)
class CoverageRow:
    """Coverage of one fit's intervals over independent replications.

    Attributes:
        fit_id: the fit.
        law: whether the 90-98% target applies (:func:`has_law`).
        replications: replications with a finite estimate (the denominator of ``coverage1``).
        true_value: mean of their per-seed estimates.
        sd: standard deviation of the per-seed estimates.
        coverage1: fraction of one-seed intervals containing the leave-one-out mean.
        half_width1: median half-width of the one-seed intervals.
        groups: three-seed groups with a finite estimate (the denominator of ``coverage3``).
        coverage3: fraction of three-seed intervals containing the mean outside the group.
        half_width3: median half-width of the three-seed intervals.
        predicted: ``Estimate.predicted`` of the theory, or None.
    """

    fit_id: FitId
    law: bool
    replications: int
    true_value: float
    sd: float
    coverage1: float
    half_width1: float
    groups: int
    coverage3: float
    half_width3: float
    predicted: float | None

    @property
    def flag(self) -> str:
        """``ok``; ``LOW cov1`` / ``HIGH cov3`` ... (a target row outside 90-98%, which coverage);
        ``no law``; ``no estimate``."""
        if self.replications == 0:
            return "no estimate"
        if not self.law:
            return "no law"
        misses = [f"{'LOW' if c < TARGET[0] else 'HIGH'} {name}"
                  for name, c in (("cov1", self.coverage1), ("cov3", self.coverage3))
                  if math.isfinite(c) and not TARGET[0] <= c <= TARGET[1]]
        return ", ".join(misses) or "ok"


def _cache_file(cache: Path, network_kwargs: Mapping[str, Any], depth: int, width: int,
                batch: int, image: int, seed: int, backward: bool) -> Path:
    name = "-".join(f"{k}={v}" for k, v in sorted(network_kwargs.items())) or "default"
    suffix = "_backward" if backward else ""
    return cache / f"{name}_d{depth}_w{width}_b{batch}_i{image}{suffix}" / f"seed{seed}.json"


def measure_seed(network_kwargs: Mapping[str, Any], depth: int, seed: int, *, width: int = 16,
                 batch: int = 8, image: int = 16, cache: Path | None = None,
                 backward: bool = False) -> sigprop.Trace:
    """One replication's trace: weights and input from ``seed`` (read from ``cache`` if there);
    with ``backward`` the gradient statistics too."""
    path = (_cache_file(cache, network_kwargs, depth, width, batch, image, seed, backward)
            if cache is not None else None)
    if path is not None and path.exists():
        return sigprop.Trace.from_json(path)
    net = sigprop.models.resnet(depth, width=width, seed=seed, **network_kwargs)
    trace = sigprop.measure(net, sigprop.InputSpec("gaussian", (batch, 3, image, image), seed),
                            backward=backward)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        trace.to_json(path)
    return trace


def _covered(estimate: Estimate, value: float) -> bool:
    """An interval that could not be computed (NaN) counts as a miss."""
    return math.isfinite(value) and estimate.contains(value)


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def coverage_from_traces(traces: Sequence[sigprop.Trace], network_kwargs: Mapping[str, Any],
                         fit_ids: Sequence[FitId] = FORWARD_FITS) -> dict[FitId, CoverageRow]:
    """Coverage of every fit in ``fit_ids`` over ``traces``, one independent seed each."""
    merged_all = functools.reduce(sigprop.Trace.merge, traces)
    prediction = predict(merged_all)
    groups = [functools.reduce(sigprop.Trace.merge, traces[k:k + 3])
              for k in range(0, len(traces) - 2, 3)]
    rows: dict[FitId, CoverageRow] = {}
    for fit_id in fit_ids:
        singles = [sigprop.stats.fit(t, fit_id, prediction=prediction) for t in traces]
        values = np.array([e.estimate for e in singles], dtype=float)
        finite = np.isfinite(values)
        n = int(finite.sum())
        total = float(values[finite].sum())
        predicted = (sigprop.stats.fit(merged_all, fit_id, prediction=prediction).predicted
                     if prediction is not None else None)
        if n < 2:
            rows[fit_id] = CoverageRow(fit_id, has_law(network_kwargs, fit_id), n,
                                       total / n if n else math.nan, math.nan, math.nan,
                                       math.nan, 0, math.nan, math.nan, predicted)
            continue
        hits1 = [_covered(e, (total - e.estimate) / (n - 1))
                 for e in singles if math.isfinite(e.estimate)]
        hits3, widths3 = [], []
        for k, group in enumerate(groups):
            estimate = sigprop.stats.fit(group, fit_id, prediction=prediction)
            members = values[3 * k:3 * k + 3]
            inside = members[np.isfinite(members)]
            if not math.isfinite(estimate.estimate) or n - inside.size < 1:
                continue
            outside_mean = (total - float(inside.sum())) / (n - inside.size)
            hits3.append(_covered(estimate, outside_mean))
            widths3.append(estimate.half_width)
        rows[fit_id] = CoverageRow(
            fit_id, has_law(network_kwargs, fit_id), n, total / n,
            float(values[finite].std(ddof=1)), float(np.mean(hits1)),
            _median([e.half_width for e in singles if math.isfinite(e.estimate)]),
            len(hits3), float(np.mean(hits3)) if hits3 else math.nan, _median(widths3), predicted)
    return rows


def coverage(network_kwargs: Mapping[str, Any], depth: int, replications: int, *,
             width: int = 16, batch: int = 8, image: int = 16, cache: Path | None = None,
             fit_ids: Sequence[FitId] = FORWARD_FITS) -> dict[FitId, CoverageRow]:
    """Measure ``replications`` seeds of ``resnet(depth, **network_kwargs)`` and the coverage.

    The gradient fits among ``fit_ids`` measure with ``backward=True``.

    >>> rows = coverage({}, 8, 6, batch=4, image=8, fit_ids=[FitId.GROWTH_RATE])
    >>> rows[FitId.GROWTH_RATE].replications, rows[FitId.GROWTH_RATE].groups
    (6, 2)
    """
    backward = any(f in GRADIENT_FITS for f in fit_ids)
    traces = [measure_seed(network_kwargs, depth, seed, width=width, batch=batch, image=image,
                           cache=cache, backward=backward) for seed in range(replications)]
    return coverage_from_traces(traces, network_kwargs, fit_ids)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "nan"
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"


HEADER = ("network", "blocks", "fit", "true", "predicted", "sd", "hw1", "cov1", "hw3",
          "cov3 (groups)", "flag")


def format_row(network: str, depth: int, row: CoverageRow) -> list[str]:
    """The printed cells of one row (coverage in percent)."""
    def percent(c: float) -> str:
        return f"{100 * c:.1f}" if math.isfinite(c) else "nan"

    return [network, str(depth), row.fit_id.value, _number(row.true_value),
            _number(row.predicted), _number(row.sd), _number(row.half_width1),
            percent(row.coverage1), _number(row.half_width3),
            f"{percent(row.coverage3)} ({row.groups})", row.flag]


def print_table(rows: Sequence[list[str]]) -> None:
    widths = [max(len(r[k]) for r in [list(HEADER), *rows]) for k in range(len(HEADER))]
    for r in [list(HEADER), *rows]:
        print(" | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--replications", type=int, default=None,
                        help=f"seeds per network and depth (default 200; --quick "
                             f"{QUICK_REPLICATIONS})")
    parser.add_argument("--quick", action="store_true",
                        help="shallower networks and fewer replications")
    parser.add_argument("--networks", default=None,
                        help="comma-separated subset of " + ", ".join(NETWORKS) + " (with "
                             "--gradients: " + ", ".join(GRADIENT_NETWORKS) + "); default all")
    parser.add_argument("--gradients", action="store_true",
                        help="calibrate the gradient fits (traces measured with backward=True)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image", type=int, default=16)
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder for the measured traces (JSON, one per seed)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    replications = args.replications or (QUICK_REPLICATIONS if args.quick else 200)
    if replications < 3:
        raise SystemExit("--replications must be at least 3")
    networks = GRADIENT_NETWORKS if args.gradients else NETWORKS
    fit_ids = GRADIENT_FITS if args.gradients else FORWARD_FITS
    names = args.networks.split(",") if args.networks else list(networks)
    unknown = [n for n in names if n not in networks]
    if unknown:
        raise SystemExit(f"unknown networks {unknown}: use {', '.join(networks)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, {replications} "
          f"replications, batch {args.batch}, {args.image}x{args.image} input, width "
          f"{args.width}; coverage in %, target {100 * TARGET[0]:.0f}-{100 * TARGET[1]:.0f}",
          file=sys.stderr)
    table: list[list[str]] = []
    for name in names:
        kwargs, depths = networks[name]
        if args.quick:
            depths = QUICK_DEPTHS.get(name, QUICK_DEFAULT_DEPTHS)
        for depth in depths:
            start = time.perf_counter()
            rows = coverage(kwargs, depth, replications, width=args.width, batch=args.batch,
                            image=args.image, cache=args.cache, fit_ids=fit_ids)
            print(f"{name} {depth} blocks: {time.perf_counter() - start:.1f} s", file=sys.stderr,
                  flush=True)
            table += [format_row(name, depth, row) for row in rows.values()]
    print(f"{replications} replications (seeds) per row, batch {args.batch}, {args.image}x"
          f"{args.image} gaussian input, width {args.width}. true: mean of the per-seed "
          "estimates; sd: their standard deviation; hw1/hw3: median half-width of the 1-seed / "
          "3-seed 95% intervals; cov1/cov3: % of them containing the true value (leave-out "
          "mean); flag: target 90-98%.")
    print_table(table)


if __name__ == "__main__":
    main()
