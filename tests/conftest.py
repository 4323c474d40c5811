"""Shared fixtures, one torch thread per test process, and the order in which test files are
handed to the workers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from torch.nn import Module


def pytest_configure(config: pytest.Config) -> None:
    # One intra-op thread for the whole suite: tiny models gain nothing from a thread pool, and
    # on cores shared with another job the pool's threads wait on each other (a 10-20x
    # slowdown). Not in xdist's controller, which runs no test: importing torch there (~2 s)
    # only delays the start of the workers.
    if config.getoption("numprocesses", None) and not hasattr(config, "workerinput"):
        return
    import torch

    torch.set_num_threads(1)


# The longest files first (seconds of one worker, 2 cores). With `--dist loadfile` a file runs
# whole on one worker; started last, a long file keeps one worker busy alone at the end, while
# started first the short files fill in around it (longest-first scheduling). pyproject.toml's
# --no-loadscope-reorder keeps this order (xdist would sort the files by their number of tests).
_LONGEST_FIRST = ("test_paper.py", "test_sweep.py", "test_audit.py", "test_planning.py",
                  "test_plotting.py", "test_calibration.py", "test_theory.py",
                  "test_cli_sources.py", "test_package.py", "test_cli.py", "test_cli_fuzz.py",
                  "test_docs.py", "test_plot_cli.py", "test_discovery_zoo.py", "test_stats.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)  # stable: a file's tests keep their order, the other files theirs


@pytest.fixture
def scaled_model() -> Module:
    from torch import nn

    from tests.helpers import ScaledBlock

    return nn.Sequential(ScaledBlock(3, 0.5), ScaledBlock(3, -2.0)).double()
