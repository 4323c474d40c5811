"""Time of ``sigprop.measure`` by torch thread count, relative to one thread: the measured
default of ``--threads`` (docs/performance.md).

Usage (from the repository root, with the project's virtual environment):

    .venv/bin/python benchmarks/threads.py                      # depth 64, 1/2/all threads
    .venv/bin/python benchmarks/threads.py --depth 512 --pairs 3 --image 32

Method. One process; the thread counts take turns (the order rotates every round, after one
warm-up of each), each measuring the paper's BN ResNet-v2 on the same Gaussian batch; the table
gives, per thread count, the median time and the median of its per-round ratio to one thread.
The load average printed beside it says how busy the machine was: the ratios depend on it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import sigprop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=5, help="rounds over the thread counts")
    parser.add_argument("--threads", default=None,
                        help="comma-separated thread counts (default: 1, 2 and all cores)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    counts = sorted({int(t) for t in args.threads.split(",")} if args.threads
                    else {1, min(2, cores), cores})
    net = sigprop.models.resnet(args.depth, seed=0)
    spec = sigprop.InputSpec("gaussian", (args.batch, 3, args.image, args.image), 0)

    def timed(threads: int) -> float:
        torch.set_num_threads(threads)
        started = time.perf_counter()
        sigprop.measure(net, spec)
        return time.perf_counter() - started

    for n in counts:
        timed(n)  # warm-up
    times: dict[int, list[float]] = {n: [] for n in counts}
    for k in range(args.pairs):
        for n in counts[k % len(counts):] + counts[:k % len(counts)]:
            times[n].append(timed(n))
    print(f"resnet depth {args.depth}, batch {args.batch}x3x{args.image}x{args.image}, "
          f"{cores} cores, load average {os.getloadavg()[0]:.1f}, {args.pairs} rounds")
    print(f"{'threads':>8} {'median s':>9} {'ratio to 1 thread':>18}")
    for n in counts:
        ratio = statistics.median(t / one for t, one in zip(times[n], times[counts[0]],
                                                             strict=True))
        print(f"{n:>8} {statistics.median(times[n]):>9.3f} {ratio:>18.2f}")


if __name__ == "__main__":
    main()
