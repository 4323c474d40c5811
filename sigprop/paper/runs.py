"""Measuring a network of the figure set: one trace with a run per seed."""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce
from typing import Any

from torch import nn

import sigprop
from sigprop.paper.config import FigureConfig, RunSpec
from sigprop.sources import ModelSource

__all__ = ["measure_run"]


def measure_run(spec: RunSpec, config: FigureConfig,
                progress: Callable[[int], None] | None = None) -> sigprop.Trace:
    """Measure ``spec`` once per seed of ``config`` (weights and input) and merge the runs.

    Args:
        spec: the network.
        config: default sizes and the seeds.
        progress: called after every measured block (with the blocks done in that run).

    Returns:
        One trace with a run per seed.

    >>> from sigprop.paper import QUICK, RunSpec
    >>> trace = measure_run(RunSpec(4), QUICK)
    >>> trace.n_blocks, trace.seeds
    (4, (0, 1, 2))
    """
    width = spec.width or config.width
    batch = spec.batch or config.batch
    image = spec.image or config.image
    traces = []
    plan = sigprop.Plan()  # one architecture, several seeds: discovered once
    for seed in spec.seeds or config.seeds:
        net, info = _build(spec, width, seed)
        inputs = sigprop.InputSpec("gaussian", (batch, 3, image, image), seed)
        traces.append(sigprop.measure(net, inputs, model_info=info, progress=progress,
                                      backward=spec.backward, plan=plan))
    return reduce(sigprop.Trace.merge, traces)


def _build(spec: RunSpec, width: int, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    if spec.model is not None:
        return ModelSource.parse(spec.model).builder()(seed)
    return ModelSource.parse("resnet", depth=spec.depth, variant=spec.variant, norm=spec.norm,
                             width=width, stages=spec.stages, alpha=spec.alpha,
                             order=spec.order, nf_zero_init=spec.nf_zero_init,
                             fixup_zero_last=spec.fixup_zero_last).builder()(seed)
