"""Many tiny residual blocks, without marks: the worst case of per-block cost for a plan.

``tiny()`` is 5000 blocks ``x + conv1x1(relu(x))`` on 3 channels, so that the bare forward pass is
almost only Python and dispatch overhead and every per-block cost of measuring shows. Measure it
with ``benchmarks/bench.py --plan --models model:benchmarks/tiny.py:tiny --image 8``.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyBlock(nn.Module):
    """``x + conv1x1(relu(x))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.conv(torch.relu(x))
        return out


class Tiny(nn.Module):
    """A stack of :class:`TinyBlock` (a plain loop: no residual-addition marks)."""

    def __init__(self, blocks: int, channels: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyBlock(channels) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def tiny(blocks: int = 5000, channels: int = 3) -> nn.Module:
    """The benchmark's model: ``blocks`` tiny blocks on ``channels`` channels."""
    return Tiny(blocks, channels)
