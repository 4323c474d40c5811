"""Shared fixtures."""

from __future__ import annotations

import pytest
from torch import nn

from tests.helpers import ScaledBlock


@pytest.fixture
def scaled_model() -> nn.Module:
    return nn.Sequential(ScaledBlock(3, 0.5), ScaledBlock(3, -2.0)).double()
