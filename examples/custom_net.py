"""A small custom residual network, written the way people write them, with no sigprop markers.

``sigprop analyze model examples/custom_net.py:build --input-shape 3,32,32`` finds its blocks:
``out += identity`` with a projection at each stage transition, blocks held in an
``nn.ModuleList`` and run in a loop, and a SkipInit-style gain on the last stage's branches.
"""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """Post-activation basic block: ``relu(bn(conv(relu(bn(conv(x))))) * gain + shortcut(x))``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, skipinit: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))
        self.alpha = nn.Parameter(torch.zeros(())) if skipinit else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.alpha is not None:
            out = out * self.alpha
        out += identity
        return torch.relu(out)


class CustomNet(nn.Module):
    """Stem, stages of blocks in one ModuleList, global pooling and a linear head."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), depth: int = 2,
                 classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks = []
        c_in = widths[0]
        for s, width in enumerate(widths):
            for i in range(depth):
                stride = 2 if s > 0 and i == 0 else 1
                blocks.append(Block(c_in, width, stride, skipinit=s == len(widths) - 1))
                c_in = width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        out: torch.Tensor = self.head(x.mean(dim=(2, 3)))
        return out


def build(depth: int = 2, width: int = 16) -> CustomNet:
    """The network with ``depth`` blocks per stage and three stages of width x1, x2, x4."""
    return CustomNet((width, 2 * width, 4 * width), depth)
