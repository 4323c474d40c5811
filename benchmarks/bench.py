"""Cost of ``sigprop.measure`` relative to a bare forward pass: time, peak memory, per block.

Usage (from the repository root, with the project's virtual environment):

    .venv/bin/python benchmarks/bench.py                       # the default grid
    .venv/bin/python benchmarks/bench.py --depths 64,512 --pairs 7 --models resnet
    .venv/bin/python benchmarks/bench.py --models torchvision:resnet50 --batch 8 --image 64

Method. Both sides run the same model on the same input with batch norm in train mode under
``torch.no_grad()``. Time: in one process, the bare pass and ``measure`` alternate (the order
flips every pair), after one warm-up of each; the table gives the median of the per-pair
ratios, their interquartile range and their full range. Memory: each side runs once in a fresh
child process, which reports its peak resident set size (``resource.getrusage``); the ratio is
measure/bare. glibc's allocator is pinned for every process (``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_``): otherwise freed activation buffers go back to the kernel and come
back as page faults whose cost varies from run to run by more than the overhead being measured.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

import sigprop
from sigprop.sources import ModelSource

PINNED = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def build(model: str, depth: int, width: int) -> nn.Module:
    """``resnet`` (the paper's BN ResNet-v2 with ``depth`` blocks), ``torchvision:NAME``,
    ``timm:NAME`` or ``model:FILE.py:CALLABLE``, built by sigprop's source registry."""
    kwargs = {"depth": depth, "width": width} if model == "resnet" else {}
    try:
        return ModelSource.parse(model, **kwargs).builder()(0)[0]
    except ValueError as e:
        raise SystemExit(f"--models: {e}") from e


def bare(net: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        net(x)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_pairs(net: nn.Module, x: torch.Tensor, pairs: int) -> tuple[float, float, list[float]]:
    """Median bare and measure times and the per-pair ratios, alternating the order."""
    net.train()
    def run_bare() -> None:
        bare(net, x)
    def run_measure() -> None:
        sigprop.measure(net, x)
    run_bare()  # warm-up of each side
    run_measure()
    bares, measures, ratios = [], [], []
    for k in range(pairs):
        if k % 2 == 0:
            b, m = timed(run_bare), timed(run_measure)
        else:
            m, b = timed(run_measure), timed(run_bare)
        bares.append(b)
        measures.append(m)
        ratios.append(m / b)
    return statistics.median(bares), statistics.median(measures), ratios


def child_peak(side: str, model: str, depth: int, width: int, batch: int, image: int) -> int:
    """Peak RSS in MiB of a fresh process running one pass of ``side``."""
    args = [sys.executable, __file__, "--child", side, "--models", model, "--depths", str(depth),
            "--width", str(width), "--batch", str(batch), "--image", str(image)]
    out = subprocess.run(args, check=True, capture_output=True, text=True,
                         env={**os.environ, **PINNED})
    return int(out.stdout.strip().splitlines()[-1])


def child(side: str, model: str, depth: int, width: int, batch: int, image: int) -> None:
    net = build(model, depth, width).train()
    x = sigprop.gaussian_input((batch, 3, image, image), seed=0)
    if side == "bare":
        bare(net, x)
    else:
        sigprop.measure(net, x)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet")
    parser.add_argument("--depths", default="64,512")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=11)
    parser.add_argument("--no-memory", action="store_true", help="skip the child processes")
    parser.add_argument("--child", choices=["bare", "measure"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    if args.child:
        child(args.child, args.models, depths[0], args.width, args.batch, args.image)
        return
    if any(os.environ.get(k) != v for k, v in PINNED.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **PINNED})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.image}x{args.image} input, width {args.width}, {args.pairs} pairs")
    header = ("model", "blocks", "bare s", "measure s", "ratio (median)", "ratio IQR",
              "ratio range", "ms/block", "peak MiB bare", "peak MiB measure", "mem ratio")
    print(" | ".join(header))
    for model in args.models.split(","):
        for depth in depths:
            net = build(model, depth, args.width)
            x = sigprop.gaussian_input((args.batch, 3, args.image, args.image), seed=0)
            b, m, ratios = time_pairs(net, x, args.pairs)
            blocks = sigprop.measure(net, x).n_blocks
            low, _, high = statistics.quantiles(ratios, n=4)
            row = [model, str(blocks), f"{b:.3f}", f"{m:.3f}", f"{statistics.median(ratios):.3f}",
                   f"{low:.3f}-{high:.3f}", f"{min(ratios):.3f}-{max(ratios):.3f}",
                   f"{1000 * m / blocks:.2f}"]
            if args.no_memory:
                row += ["-", "-", "-"]
            else:
                pb = child_peak("bare", model, depth, args.width, args.batch, args.image)
                pm = child_peak("measure", model, depth, args.width, args.batch, args.image)
                row += [str(pb), str(pm), f"{pm / pb:.3f}"]
            print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
