"""Cost of ``sigprop.measure`` relative to a bare forward pass: time, peak memory, per block.

Usage (from the repository root, with the project's virtual environment):

    .venv/bin/python benchmarks/bench.py                       # the default grid
    .venv/bin/python benchmarks/bench.py --depths 64,512 --pairs 7 --models resnet
    .venv/bin/python benchmarks/bench.py --models torchvision:resnet50 --batch 8 --image 64
    .venv/bin/python benchmarks/bench.py --backward --depths 512 --pairs 5   # with gradients
    .venv/bin/python benchmarks/bench.py --plan --models torchvision:resnet50 --batch 8 --image 224
    .venv/bin/python benchmarks/bench.py --plan --models model:benchmarks/tiny.py:tiny --image 8

Method. Both sides run the same model on the same input with batch norm in train mode under
``torch.no_grad()``. Time: in one process, the bare pass and ``measure`` alternate (the order
flips every pair), after one warm-up of each; the table gives the median of the per-pair
ratios, their interquartile range and their full range, and the *fastest ratio*: the fastest
measure over the fastest bare pass, each side's least disturbed run (other jobs on shared cores
only ever add time). Memory: each side runs once in a fresh
child process, which reports its peak resident set size (``resource.getrusage``); the ratio is
measure/bare. glibc's allocator is pinned for every process (``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_``): otherwise freed activation buffers go back to the kernel and come
back as page faults whose cost varies from run to run by more than the overhead being measured.

With ``--backward`` the bare pass is a forward and a backward pass with the same cotangent as
``measure(..., backward=True)``: ``torch.autograd.grad`` of the output with respect to the input,
parameters not requiring grad (on both sides).

With ``--plan`` each round runs three sides in a rotating order: the bare pass, a *first*
``measure`` (a fresh :class:`sigprop.Plan`: discovery, recording the plan) and a *planned*
``measure`` (one plan reused, recorded in the warm-up: replayed); the table gives, per model,
the median bare time and the medians of the per-round ratios first/bare and planned/bare.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

import sigprop
from sigprop._backward import cotangent_seed
from sigprop.sources import ModelSource

PINNED = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def build(model: str, depth: int, width: int, backward: bool = False) -> nn.Module:
    """``resnet`` (the paper's BN ResNet-v2 with ``depth`` blocks), ``torchvision:NAME``,
    ``timm:NAME`` or ``model:FILE.py:CALLABLE``, built by sigprop's source registry; with
    ``backward`` its parameters do not require grad."""
    kwargs = {"depth": depth, "width": width} if model == "resnet" else {}
    try:
        net = ModelSource.parse(model, **kwargs).builder()(0)[0]
    except ValueError as e:
        raise SystemExit(f"--models: {e}") from e
    return net.requires_grad_(False) if backward else net


def bare(net: nn.Module, x: torch.Tensor, backward: bool = False) -> None:
    if not backward:
        with torch.no_grad():
            net(x)
        return
    leaf = x.detach().requires_grad_(True)
    out = net(leaf)
    generator = torch.Generator().manual_seed(cotangent_seed(None))
    cotangent = torch.randn(out.shape, generator=generator).to(out.device)
    torch.autograd.grad(out, [leaf], cotangent)


def measured(net: nn.Module, x: torch.Tensor, backward: bool = False) -> sigprop.Trace:
    return sigprop.measure(net, x, backward=backward)


def time_plan(net: nn.Module, x: torch.Tensor, rounds: int, backward: bool = False
              ) -> tuple[float, list[float], list[float]]:
    """Median bare time and per-round ratios first/bare and planned/bare (rotating order)."""
    net.train()
    plan = sigprop.Plan()
    sides: list[Callable[[], object]] = [
        lambda: bare(net, x, backward),
        lambda: sigprop.measure(net, x, backward=backward, plan=sigprop.Plan()),
        lambda: sigprop.measure(net, x, backward=backward, plan=plan),
    ]
    for warm_up in sides:  # records the reused plan
        warm_up()
    bares, firsts, planned = [], [], []
    for k in range(rounds):
        times = [0.0, 0.0, 0.0]
        for j in range(3):
            which = (j + k) % 3
            times[which] = timed(sides[which])
        bares.append(times[0])
        firsts.append(times[1] / times[0])
        planned.append(times[2] / times[0])
    if plan.discoveries != 1:
        raise SystemExit(f"the reused plan fell back to discovery: {plan}")
    return statistics.median(bares), firsts, planned


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_pairs(net: nn.Module, x: torch.Tensor, pairs: int, backward: bool = False
               ) -> tuple[list[float], list[float]]:
    """Bare and measure times of each pair, alternating the order."""
    net.train()
    def run_bare() -> None:
        bare(net, x, backward)
    def run_measure() -> None:
        measured(net, x, backward)
    run_bare()  # warm-up of each side
    run_measure()
    bares, measures = [], []
    for k in range(pairs):
        if k % 2 == 0:
            b, m = timed(run_bare), timed(run_measure)
        else:
            m, b = timed(run_measure), timed(run_bare)
        bares.append(b)
        measures.append(m)
    return bares, measures


def child_peak(side: str, model: str, depth: int, width: int, batch: int, image: int,
               backward: bool = False) -> int:
    """Peak RSS in MiB of a fresh process running one pass of ``side``."""
    args = [sys.executable, __file__, "--child", side, "--models", model, "--depths", str(depth),
            "--width", str(width), "--batch", str(batch), "--image", str(image),
            *(["--backward"] if backward else [])]
    out = subprocess.run(args, check=True, capture_output=True, text=True,
                         env={**os.environ, **PINNED})
    return int(out.stdout.strip().splitlines()[-1])


def child(side: str, model: str, depth: int, width: int, batch: int, image: int,
          backward: bool = False) -> None:
    net = build(model, depth, width, backward).train()
    x = sigprop.gaussian_input((batch, 3, image, image), seed=0)
    if side == "bare":
        bare(net, x, backward)
    else:
        measured(net, x, backward)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


def cases(args: argparse.Namespace, depths: list[int]
          ) -> Iterator[tuple[str, int, nn.Module, torch.Tensor]]:
    """Each model at each depth, built, with the benchmark's input batch."""
    for model in args.models.split(","):
        for depth in depths:
            net = build(model, depth, args.width, args.backward)
            yield model, depth, net, sigprop.gaussian_input(
                (args.batch, 3, args.image, args.image), seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet")
    parser.add_argument("--depths", default="64,512")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=11)
    parser.add_argument("--no-memory", action="store_true", help="skip the child processes")
    parser.add_argument("--backward", action="store_true",
                        help="forward + backward on both sides: measure(..., backward=True)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's)")
    parser.add_argument("--plan", action="store_true",
                        help="bare vs a first measure (discovery) vs a planned measure (replay)")
    parser.add_argument("--child", choices=["bare", "measure"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.models, depths[0], args.width, args.batch, args.image,
              args.backward)
        return
    if any(os.environ.get(k) != v for k, v in PINNED.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **PINNED})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.image}x{args.image} input, width {args.width}, {args.pairs} pairs"
          + (", forward + backward" if args.backward else "")
          + f", load average {os.getloadavg()[0]:.2f}")
    if args.plan:
        print("model | input | blocks | bare s | first/bare (median) | first IQR | "
              "planned/bare (median) | planned IQR | planned range")
        for model, _depth, net, x in cases(args, depths):
            b, firsts, planned = time_plan(net, x, args.pairs, args.backward)
            blocks = sigprop.measure(net, x).n_blocks
            f_low, _, f_high = statistics.quantiles(firsts, n=4)
            p_low, _, p_high = statistics.quantiles(planned, n=4)
            print(" | ".join([
                model, f"batch {args.batch}, {args.image}x{args.image}", str(blocks),
                f"{b:.3f}", f"{statistics.median(firsts):.3f}", f"{f_low:.3f}-{f_high:.3f}",
                f"{statistics.median(planned):.3f}", f"{p_low:.3f}-{p_high:.3f}",
                f"{min(planned):.3f}-{max(planned):.3f}"])
                + f" | load {os.getloadavg()[0]:.2f}", flush=True)
        return
    header = ("model", "blocks", "bare s", "measure s", "ratio (median)", "ratio IQR",
              "ratio range", "fastest ratio", "ms/block", "peak MiB bare", "peak MiB measure",
              "mem ratio")
    print(" | ".join(header))
    for model, depth, net, x in cases(args, depths):
        bares, measures = time_pairs(net, x, args.pairs, args.backward)
        ratios = [m / b for m, b in zip(measures, bares, strict=True)]
        m = statistics.median(measures)
        blocks = sigprop.measure(net, x).n_blocks
        low, _, high = statistics.quantiles(ratios, n=4)
        row = [model, str(blocks), f"{statistics.median(bares):.3f}", f"{m:.3f}",
               f"{statistics.median(ratios):.3f}", f"{low:.3f}-{high:.3f}",
               f"{min(ratios):.3f}-{max(ratios):.3f}", f"{min(measures) / min(bares):.3f}",
               f"{1000 * m / blocks:.2f}"]
        if args.no_memory:
            row += ["-", "-", "-"]
        else:
            sizes = (model, depth, args.width, args.batch, args.image, args.backward)
            pb = child_peak("bare", *sizes)
            pm = child_peak("measure", *sizes)
            row += [str(pb), str(pm), f"{pm / pb:.3f}"]
        print(" | ".join(row) + f" | load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
