"""Measuring one grid point, wherever it runs: in this process, a pool worker or a Ray task."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch

from sigprop import stats
from sigprop.planning import Plan
from sigprop.recording import measure
from sigprop.sweep.grid import Point
from sigprop.trace import InputSpec

__all__ = ["Outcome", "Status", "run_point"]


class Status(StrEnum):
    """Where a grid point stands."""

    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What measuring one point gave: plain values only, so any executor can carry it back.

    Attributes:
        key: the point's key.
        status: ``done`` or ``failed``.
        elapsed_s: seconds spent building and measuring it (and fitting).
        error: for a failed point, ``Type: message`` on one line.
        trace: the trace's stats.json document (:meth:`sigprop.Trace.to_dict`).
        report: its fits and verdicts (:meth:`sigprop.stats.Report.to_dict`).
    """

    key: str
    status: Status
    elapsed_s: float
    error: str | None = None
    trace: dict[str, Any] | None = None
    report: dict[str, Any] | None = None

    @classmethod
    def failed(cls, key: str, error: BaseException | str, elapsed_s: float = 0.0) -> Outcome:
        """A failed point, its error on one line."""
        text = error if isinstance(error, str) else \
            f"{type(error).__name__}: {error or '(no message)'}"
        return cls(key, Status.FAILED, elapsed_s, " ".join(text.split()))


_PLANS: OrderedDict[str, Plan] = OrderedDict()
"""Plans of the configurations this process measured last: replicates of a configuration
(other seeds) replay the plan of the first (see :class:`sigprop.Plan`)."""

_KEPT_PLANS = 16


def _plan(point: Point) -> Plan:
    """The plan of ``point``'s configuration (architecture, input, device, autograd)."""
    key = repr((point.config, point.input_shape, point.device, point.backward))
    plan = _PLANS.pop(key, None) or Plan()
    _PLANS[key] = plan
    while len(_PLANS) > _KEPT_PLANS:
        _PLANS.popitem(last=False)
    return plan


def run_point(point: Point, threads: int | None = None) -> Outcome:
    """Build and measure ``point`` (weights and input from its seed), then fit the trace.

    Any exception of the user's model or of the measurement becomes a failed outcome, so one
    point cannot stop a sweep.

    Args:
        point: the grid point.
        threads: torch intra-op threads while it runs (restored afterwards); None keeps them.

    >>> from sigprop.sweep import Grid
    >>> point = Grid.from_mapping({"grid": {"depth": 3, "width": 4, "image_size": 8,
    ...                                     "batch_size": 2}}).points()[0]
    >>> outcome = run_point(point)
    >>> outcome.status.value, len(outcome.trace["runs"][0]["blocks"])
    ('done', 3)
    """
    started = time.perf_counter()
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model, info = point.source.builder()(point.seed)
        model.to(point.device)
        spec = InputSpec("gaussian", point.input_shape, point.seed)
        trace = measure(model, spec, bn_mode=point.bn_mode, model_info=info,
                        backward=point.backward, plan=_plan(point))
        report = stats.report(trace)
    except Exception as e:
        return Outcome.failed(point.key, e, time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)
    return Outcome(point.key, Status.DONE, time.perf_counter() - started,
                   trace=trace.to_dict(), report=report.to_dict())
