"""What a source command hands to its group's action: what to measure and how to run.

Light on purpose (no torch): every command's ``--help`` imports it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sigprop._validate import check_int

from ._errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from sigprop.trace import BNMode

STATS_JSON, STATS_CSV, SPP_PNG = "stats.json", "stats.csv", "spp.png"
"""The files ``analyze`` writes (and ``audit --out``)."""
SPP_BACKWARD_PNG = "spp-backward.png"
"""Written too when the gradients were measured (``--backward``)."""

ModelInputs = tuple[tuple[Any, ...], dict[str, Any]]
"""The arguments of a model's forward: positional and keyword inputs."""


@dataclass(frozen=True)
class Analysis:
    """What to measure: a builder (seed -> model and its configuration), its input shape, and
    the names of the block modules when the user gave them (``--blocks``)."""

    build: Callable[[int], tuple[nn.Module, dict[str, Any]]]
    input_shape: tuple[int, ...]
    expected_blocks: int | None
    blocks: tuple[str, ...] | None = None
    shape_option: bool = False  # the input shape came from --input-shape (without the batch)
    # Makes the inputs instead of a Gaussian batch of input_shape: (seed, device) ->
    # (args, kwargs), token ids or tensors loaded from a file.
    inputs: Callable[[int, torch.device], ModelInputs] | None = None


@dataclass(frozen=True)
class RunOptions:
    """Options every model source shares."""

    seed: int
    seeds: int
    device: str
    bn_mode: BNMode
    out: Path | None
    json: bool
    threads: int
    backward: bool = False


def check_positive(option: str, value: int, unit: str) -> None:
    """Exit with a usage error unless ``value`` is an integer >= 1."""
    try:
        check_int(option, value, 1, unit)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from e


SEED_RANGE = (-2**63, 2**64 - 1)
"""The seeds torch's generators accept."""


def check_seeds(seed: int, seeds: int) -> None:
    """A usage error unless ``seeds >= 1`` and every seed ``seed .. seed + seeds - 1`` is one
    torch accepts."""
    check_positive("--seeds", seeds, "run")
    low, high = SEED_RANGE
    if not low <= seed <= high - (seeds - 1):
        raise UsageError(f"--seed {seed} with --seeds {seeds}: every seed must lie in "
                         f"[{low}, {high}] (torch's range), e.g. --seed 0")


def check_threads(threads: int) -> None:
    """A usage error unless ``1 <= threads <=`` this machine's cores."""
    cores = os.cpu_count() or 1
    check_positive("--threads", threads, "thread")
    if threads > cores:
        raise UsageError(f"--threads {threads} is more than this machine's {cores} cores: "
                         f"use 1 to {cores} (more threads than cores only wait on each other)")


def parse_blocks(text: str | None) -> tuple[str, ...] | None:
    """``"layer1.0,layer1.1"`` -> ``("layer1.0", "layer1.1")``; None when not given."""
    if text is None:
        return None
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names:
        raise UsageError(f"--blocks {text!r} names no module: give qualified module names "
                         "separated by commas, e.g. --blocks layer1.0,layer1.1")
    return names
