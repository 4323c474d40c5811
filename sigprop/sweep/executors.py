"""Who measures the points: this machine's cores (a process pool) or a Ray cluster.

An executor maps points to outcomes and yields each outcome as soon as it is ready, in any
order; the sweep writes it at once. Whatever runs a point, :func:`run_point` measures it from
its own seed, so every executor gives the same numbers.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol

from sigprop._validate import check_int
from sigprop.sweep.grid import Point
from sigprop.sweep.point import Outcome, run_point

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "usable_cores"]


class Executor(Protocol):
    """Measures points; yields their outcomes as they finish."""

    def map(self, points: Sequence[Point]) -> Iterator[Outcome]:
        """One outcome per point, in the order they finish."""
        ...

    def describe(self) -> dict[str, Any]:
        """What ran the sweep, for sweep.json."""
        ...


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class LocalExecutor:
    """A pool of ``workers`` processes on this machine, each with ``threads`` torch threads.

    One worker measures in this process (no pool to start). The defaults: one worker per
    usable core, and ``cores // workers`` threads each, so that workers x threads <= cores.

    >>> LocalExecutor(workers=2, threads=3).describe()
    {'executor': 'local', 'workers': 2, 'threads': 3}
    """

    workers: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.workers is not None:
            check_int("workers", self.workers, 1, "process")
        if self.threads is not None:
            check_int("threads", self.threads, 1, "thread")

    @property
    def worker_threads(self) -> int:
        """Torch threads per worker."""
        if self.threads is not None:
            return self.threads
        cores = usable_cores()
        return max(1, cores // (self.workers or cores))

    def map(self, points: Sequence[Point]) -> Iterator[Outcome]:
        """Measure in this process (one worker) or in a pool of fresh processes."""
        workers = min(self.workers or usable_cores(), max(len(points), 1))
        if workers == 1:
            for point in points:
                yield run_point(point, self.worker_threads)
            return
        # Workers fork from a server process that imported sigprop and torch once but never ran
        # an operation: a fork of a process whose torch thread pools ran can hang.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([run_point.__module__])
        pool = ProcessPoolExecutor(workers, mp_context=context)
        finished = False
        try:
            futures: dict[Future[Outcome], Point] = {
                pool.submit(run_point, point, self.worker_threads): point for point in points}
            for future in as_completed(futures):
                try:
                    yield future.result()
                except BrokenProcessPool as e:
                    yield Outcome.failed(futures[future].key, f"the worker process died ({e})")
            finished = True
        finally:
            workers_alive = list((pool._processes or {}).values())
            pool.shutdown(wait=finished, cancel_futures=True)
            if not finished:
                # Interrupted: stop the running points now instead of waiting for them (their
                # results could not be written), and leave no idle worker behind (Python 3.14
                # names this terminate_workers()).
                for process in workers_alive:
                    process.terminate()

    def describe(self) -> dict[str, Any]:
        """``{"executor": "local", "workers", "threads"}``."""
        return {"executor": "local", "workers": self.workers or usable_cores(),
                "threads": self.worker_threads}


@dataclass(frozen=True, slots=True)
class RayExecutor:
    """Each point a Ray task asking for ``cpus_per_task`` CPUs and ``gpus_per_task`` GPUs.

    Connects to the cluster at ``address`` (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``);
    when ``address`` is None, Ray's default: ``$RAY_ADDRESS``, else a cluster started on this
    machine by ``ray start``, else a new local instance, stopped after the sweep. A Ray already
    initialized in this process is used as it is. Ray is an optional extra:
    ``pip install 'sigprop[ray]'``.
    """

    address: str | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0

    def __post_init__(self) -> None:
        if not self.cpus_per_task > 0:
            raise ValueError(f"cpus_per_task must be > 0, got {self.cpus_per_task}")
        if not self.gpus_per_task >= 0:
            raise ValueError(f"gpus_per_task must be >= 0, got {self.gpus_per_task}")
        ray_module()  # installed?

    def map(self, points: Sequence[Point]) -> Iterator[Outcome]:
        """Submit every point, yield each outcome as its task finishes."""
        ray = ray_module()
        started = not ray.is_initialized()
        if started:
            # A cluster keeps its own settings; a local instance for one sweep needs no dashboard.
            ray.init(**({"address": self.address} if self.address else
                        {"include_dashboard": False}))
        task = ray.remote(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task)(run_point)
        threads = max(1, int(self.cpus_per_task))
        pending = {task.remote(point, threads): point for point in points}
        try:
            while pending:
                (ready,), _ = ray.wait(list(pending), num_returns=1)
                point = pending.pop(ready)
                try:
                    yield ray.get(ready)
                except ray.exceptions.RayError as e:
                    yield Outcome.failed(point.key, f"the Ray task failed: {e}")
        finally:
            for ref in pending:
                ray.cancel(ref)
            if started:
                ray.shutdown()

    def describe(self) -> dict[str, Any]:
        """``{"executor": "ray", "address", "cpus_per_task", "gpus_per_task"}``."""
        return {"executor": "ray", "address": self.address, "cpus_per_task": self.cpus_per_task,
                "gpus_per_task": self.gpus_per_task}


def ray_module() -> Any:
    """The ``ray`` module, or a ValueError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ValueError("the ray executor needs Ray: pip install 'sigprop[ray]'") from e
    return ray
