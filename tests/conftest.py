"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.helpers import ScaledBlock

# One intra-op thread for the whole suite: tiny models gain nothing from a thread pool, and on
# cores shared with another job the pool's threads wait on each other (a 10-20x slowdown).
torch.set_num_threads(1)


@pytest.fixture
def scaled_model() -> nn.Module:
    return nn.Sequential(ScaledBlock(3, 0.5), ScaledBlock(3, -2.0)).double()
