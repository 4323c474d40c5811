"""The residual networks of De & Smith (2020), CIFAR-style, with depth counted in blocks."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn

from sigprop._validate import parse_choice
from sigprop.blocks import ResidualAdd
from sigprop.config import Norm, Order, Padding, ResNetConfig, Variant
from sigprop.trace import Shortcut

__all__ = ["Norm", "Order", "Padding", "ResNet", "ResNetConfig", "Variant", "resnet"]


class Gain(nn.Module):
    """Multiplies the residual branch by a scalar: learnable (SkipInit) or fixed."""

    def __init__(self, value: float, learnable: bool):
        super().__init__()
        if learnable:
            self.alpha = nn.Parameter(torch.tensor(float(value)))
        else:
            self.register_buffer("alpha", torch.tensor(float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * x


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


def _norm(channels: int, norm: Norm) -> nn.Module:
    return nn.BatchNorm2d(channels) if norm is Norm.BATCHNORM else nn.Identity()


def _gain(norm: Norm, alpha: float, depth: int) -> nn.Module:
    if norm is Norm.SKIPINIT:
        return Gain(alpha, learnable=True)
    if norm is Norm.SQRT_DEPTH:
        return Gain(1.0 / math.sqrt(depth), learnable=False)
    return nn.Identity()


class PreActBlock(nn.Module):
    """v2 block: ``x + gain * Conv(ReLU(BN(Conv(ReLU(BN(x))))))`` (or ReLU before BN).

    A projection shortcut (stage transition) is applied to the normalized, activated input.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, norm: Norm, gain: nn.Module,
                 order: Order = Order.BN_RELU):
        super().__init__()
        self.order = order
        self.norm1 = _norm(c_in, norm)
        self.relu = nn.ReLU()
        self.conv1 = _conv(c_in, c_out, 3, stride)
        self.norm2 = _norm(c_out, norm)
        self.conv2 = _conv(c_out, c_out, 3)
        self.gain = gain
        projection = stride != 1 or c_in != c_out
        self.shortcut = _conv(c_in, c_out, 1, stride) if projection else None
        self.add = ResidualAdd(Shortcut.PROJECTION if projection else Shortcut.IDENTITY,
                               gain="gain.alpha" if isinstance(gain, Gain) else None)

    def _activate(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.order is Order.BN_RELU:
            return self.relu(norm(x))  # type: ignore[no-any-return]
        return norm(self.relu(x))  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self._activate(self.norm1, x)
        skip = x if self.shortcut is None else self.shortcut(pre)
        branch = self.conv2(self._activate(self.norm2, self.conv1(pre)))
        out: torch.Tensor = self.add(skip, self.gain(branch))
        return out


class PostActBlock(nn.Module):
    """v1 block: ``ReLU(x + gain * BN(Conv(ReLU(BN(Conv(x))))))``."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: Norm, gain: nn.Module):
        super().__init__()
        self.conv1 = _conv(c_in, c_out, 3, stride)
        self.norm1 = _norm(c_out, norm)
        self.relu = nn.ReLU()
        self.conv2 = _conv(c_out, c_out, 3)
        self.norm2 = _norm(c_out, norm)
        self.gain = gain
        projection = stride != 1 or c_in != c_out
        self.shortcut = (
            nn.Sequential(_conv(c_in, c_out, 1, stride), _norm(c_out, norm)) if projection else None
        )
        self.add = ResidualAdd(Shortcut.PROJECTION if projection else Shortcut.IDENTITY,
                               gain="gain.alpha" if isinstance(gain, Gain) else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        branch = self.norm2(self.conv2(self.relu(self.norm1(self.conv1(x)))))
        out: torch.Tensor = self.relu(self.add(skip, self.gain(branch)))
        return out


class ResNet(nn.Module):
    """A CIFAR-style residual network: stem, residual blocks in stages, pooling, linear head.

    Attributes:
        config: the builder arguments, recorded with every measurement (``config.to_dict()``).
    """

    def __init__(self, stem: nn.Module, blocks: nn.Sequential, head_norm: nn.Module,
                 head: nn.Linear, config: ResNetConfig):
        super().__init__()
        self.stem = stem
        self.blocks = blocks
        self.head_norm = head_norm
        self.head = head
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = torch.relu(self.head_norm(x)).mean(dim=(2, 3))
        logits: torch.Tensor = self.head(x)
        return logits


def stage_sizes(depth: int, stages: int) -> list[int]:
    """Split ``depth`` blocks into ``stages`` stages as evenly as possible, earlier ones larger.

    >>> stage_sizes(10, 3)
    [4, 3, 3]
    """
    base, extra = divmod(depth, stages)
    return [base + (1 if s < extra else 0) for s in range(stages)]


def resnet(
    depth: int,
    *,
    variant: Variant | str = Variant.V2,
    norm: Norm | str = Norm.BATCHNORM,
    width: int = 16,
    stages: int = 1,
    alpha: float | None = None,
    order: Order | str = Order.BN_RELU,
    padding: Padding | str = Padding.ZEROS,
    in_channels: int = 3,
    num_classes: int = 10,
    seed: int | None = None,
) -> ResNet:
    """Build the paper's ResNet with ``depth`` residual blocks (the paper's d, not layers).

    Args:
        depth: number of residual blocks, >= 1 (each block holds two 3x3 convolutions).
        variant: ``v2`` pre-activation (BN-ReLU-Conv) or ``v1`` post-activation.
        norm: ``batchnorm``; ``none`` (unnormalized); ``skipinit`` (no BN, learnable scalar gain
            ``alpha`` ending every branch); ``sqrt-depth`` (no BN, branch times 1/sqrt(depth)).
        width: channels of the first stage; each later stage doubles it.
        stages: number of stages; the first block of every later stage halves the resolution,
            doubles the width and uses a projection shortcut (1x1 strided convolution).
        alpha: initial SkipInit gain, only with ``norm="skipinit"`` (default 0.0).
        order: ``bn-relu`` (BN-ReLU-Conv, the paper's) or ``relu-bn`` (ReLU-BN-Conv), for v2
            with batch norm.
        padding: ``zeros`` (the paper's; border outputs see fewer inputs, which lowers every
            branch's second moment on small maps) or ``circular`` (the infinite-image theory
            holds exactly).
        in_channels: channels of the input images.
        num_classes: outputs of the linear head.
        seed: if given, initialize the weights from this seed with a private generator, leaving
            the global torch RNG untouched; otherwise draw from the global RNG like any module.

    Returns:
        A :class:`ResNet`; convolutions use He (fan-in, ReLU) initialization, BN weight 1, bias 0.

    >>> net = resnet(8, norm="skipinit", seed=0)
    >>> len(net.blocks), net.blocks[0].gain.alpha.item()
    (8, 0.0)
    """
    config = ResNetConfig(depth, parse_choice(Variant, variant, "variant"),
                          parse_choice(Norm, norm, "norm"), width, stages, alpha,
                          parse_choice(Order, order, "order"),
                          parse_choice(Padding, padding, "padding"), in_channels, num_classes)
    rng = torch.random.fork_rng(devices=[]) if seed is not None else nullcontext()
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        return _build(config)


def _build(config: ResNetConfig) -> ResNet:
    c = config
    stem: nn.Module = _conv(c.in_channels, c.width, 3)
    if c.variant is Variant.V1:
        stem = nn.Sequential(stem, _norm(c.width, c.norm), nn.ReLU())
    blocks = []
    channels = c.width
    for stage, size in enumerate(stage_sizes(c.depth, c.stages)):
        out = c.width * 2**stage
        for i in range(size):
            stride = 2 if stage > 0 and i == 0 else 1
            gain = _gain(c.norm, c.alpha or 0.0, c.depth)
            blocks.append(PreActBlock(channels, out, stride, c.norm, gain, c.order)
                          if c.variant is Variant.V2 else
                          PostActBlock(channels, out, stride, c.norm, gain))
            channels = out
    head_norm = _norm(channels, c.norm) if c.variant is Variant.V2 else nn.Identity()
    net = ResNet(stem, nn.Sequential(*blocks), head_norm, nn.Linear(channels, c.num_classes),
                 config)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            module.padding_mode = c.padding.value  # the 1x1 projections have no padding to wrap
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=1.0 / math.sqrt(module.in_features))
            nn.init.zeros_(module.bias)
    return net

