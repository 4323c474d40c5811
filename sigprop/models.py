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

__all__ = ["NF_GAMMA", "Norm", "Order", "Padding", "ResNet", "ResNetConfig", "ScaledReLU",
           "Variant", "WSConv2d", "nf_betas", "resnet"]

NF_GAMMA = math.sqrt(2 / (1 - 1 / math.pi))
"""The scaled ReLU's gain: ``gamma * relu(z)`` has unit variance for ``z ~ N(0, 1)``."""


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


class Bias(nn.Module):
    """Adds a learnable scalar, 0 at initialization (Fixup's biases)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class ScaledReLU(nn.Module):
    """``gamma * relu(x)`` with ``gamma = sqrt(2 / (1 - 1/pi))``: unit variance on a unit Gaussian.

    >>> torch.manual_seed(0) and None
    >>> round(ScaledReLU()(torch.randn(10**6)).var().item(), 2)
    1.0
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return NF_GAMMA * torch.relu(x)


class WSConv2d(nn.Conv2d):
    """A convolution with scaled weight standardization (Brock, De & Smith, ICLR 2021).

    Every output channel's weights are standardized over its fan-in ``N`` and scaled:
    ``W_hat = gain * (W - mean(W)) / (std(W) sqrt(N))`` (population std, with ``eps`` added to
    the variance). So each row of ``W_hat`` sums to 0 (a mean shared by the inputs is removed)
    and has squared norm ``gain^2``: the output's variance equals the input's. ``gain`` is a
    learnable per-channel scale, 1 at initialization (0 with ``zero_init``).

    >>> conv = WSConv2d(4, 8, 3)
    >>> w = conv.standardized_weight()
    >>> w.sum(dim=(1, 2, 3)).abs().max().item() < 1e-6, round(w.pow(2).sum().item(), 3)
    (True, 8.0)
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1,
                 zero_init: bool = False, eps: float = 1e-8):
        super().__init__(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.gain = nn.Parameter(torch.full((c_out, 1, 1, 1), 0.0 if zero_init else 1.0))
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        """The weight the convolution uses: standardized per output channel, times ``gain``."""
        w = self.weight
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, correction=0)
        return self.gain * (w - mean) * torch.rsqrt((var + self.eps) * w[0].numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self._conv_forward(x, self.standardized_weight(), None)
        return out


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


class NFBlock(nn.Module):
    """NF-ResNet block (v2 layout): ``x + alpha * f(x / beta)``, no normalization.

    ``f`` is ScaledReLU-WSConv-ScaledReLU-WSConv; ``beta`` is the expected standard deviation
    of the block's input (:func:`nf_betas`), so the branch sees a unit-variance signal. A
    projection shortcut (stage transition) is a 1x1 WS convolution of ``act(x / beta)``, which
    restarts the skip path's variance at 1. ``alpha`` is a fixed scalar; the last convolution's
    ``gain`` starts at 0 with ``zero_init``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, alpha: float, beta: float,
                 zero_init: bool = False):
        super().__init__()
        self.beta = beta
        self.act = ScaledReLU()
        self.conv1 = WSConv2d(c_in, c_out, 3, stride)
        self.conv2 = WSConv2d(c_out, c_out, 3, zero_init=zero_init)
        self.gain = Gain(alpha, learnable=False)
        projection = stride != 1 or c_in != c_out
        self.shortcut = WSConv2d(c_in, c_out, 1, stride) if projection else None
        self.add = ResidualAdd(Shortcut.PROJECTION if projection else Shortcut.IDENTITY,
                               gain="conv2.gain" if zero_init else "gain.alpha")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act(x / self.beta)
        skip = x if self.shortcut is None else self.shortcut(pre)
        branch = self.conv2(self.act(self.conv1(pre)))
        out: torch.Tensor = self.add(skip, self.gain(branch))
        return out

    def extra_repr(self) -> str:
        return f"beta={self.beta:.6g}"


class _FixupBlock(nn.Module):
    """The layers of a Fixup block: two 3x3 convolutions, four scalar biases, a multiplier.

    The gain named on the addition is the zero last layer when the builder zeroes it, else the
    multiplier.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, zero_last: bool):
        super().__init__()
        self.bias1a, self.bias1b, self.bias2a, self.bias2b = Bias(), Bias(), Bias(), Bias()
        self.relu = nn.ReLU()
        self.conv1 = _conv(c_in, c_out, 3, stride)
        self.conv2 = _conv(c_out, c_out, 3)
        self.gain = Gain(1.0, learnable=True)
        projection = stride != 1 or c_in != c_out
        self.shortcut = _conv(c_in, c_out, 1, stride) if projection else None
        self.add = ResidualAdd(Shortcut.PROJECTION if projection else Shortcut.IDENTITY,
                               gain="conv2.weight" if zero_last else "gain.alpha")


class FixupPreActBlock(_FixupBlock):
    """Fixup on the v2 layout: ``x + scale * Conv(ReLU(Conv(ReLU(x + b) + b) + b) + b)``.

    No normalization; a scalar bias before every convolution and activation (0 at
    initialization) and a scalar multiplier (``gain.alpha``, 1). The builder zero-initializes
    ``conv2`` (Fixup's rule; optional) and scales ``conv1`` by ``depth^(-1/2)``. A projection
    shortcut acts on the activated input, as in :class:`PreActBlock`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bias1a(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        hidden = self.relu(self.bias2a(self.conv1(self.bias1b(pre))))
        out: torch.Tensor = self.add(skip, self.gain(self.conv2(self.bias2b(hidden))))
        return out


class FixupBasicBlock(_FixupBlock):
    """Fixup on the v1 layout (Zhang, Dauphin & Ma 2019), a ReLU after the addition.

    ``ReLU(x + scale * Conv(ReLU(Conv(x + b) + b) + b) + b)``: no normalization, scalar biases
    (0) and multiplier (``gain.alpha``, 1); the builder zero-initializes ``conv2`` (optional) and
    scales ``conv1`` by ``depth^(-1/2)``. A projection shortcut is a 1x1 convolution of
    ``x + b``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shifted = self.bias1a(x)
        skip = x if self.shortcut is None else self.shortcut(shifted)
        hidden = self.relu(self.bias1b(self.conv1(shifted)))
        branch = self.bias2b(self.gain(self.conv2(self.bias2a(hidden))))
        out: torch.Tensor = self.relu(self.add(skip, branch))
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


def nf_betas(depth: int, stages: int, alpha: float) -> list[float]:
    """Each NF block's ``beta``: the expected standard deviation of its input.

    The stem gives variance 1; each block adds ``alpha^2``; the first block of every stage
    restarts the skip path at 1 (its shortcut sees ``x / beta``, or it is the stem's output),
    so within a stage the skip variance is ``1 + l alpha^2`` at the stage's block ``l``.

    >>> [round(b**2, 2) for b in nf_betas(6, 2, 0.5)]
    [1.0, 1.25, 1.5, 1.75, 1.25, 1.5]
    """
    betas, expected = [], 1.0
    for size in stage_sizes(depth, stages):
        for i in range(size):
            betas.append(math.sqrt(expected))
            if i == 0:
                expected = 1.0
            expected += alpha**2
    return betas


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
    nf_zero_init: bool = False,
    fixup_zero_last: bool = True,
    seed: int | None = None,
) -> ResNet:
    """Build the paper's ResNet with ``depth`` residual blocks (the paper's d, not layers).

    Args:
        depth: number of residual blocks, >= 1 (each block holds two 3x3 convolutions).
        variant: ``v2`` pre-activation (BN-ReLU-Conv) or ``v1`` post-activation.
        norm: ``batchnorm``; ``none`` (unnormalized); ``skipinit`` (no BN, learnable scalar gain
            ``alpha`` ending every branch); ``sqrt-depth`` (no BN, branch times 1/sqrt(depth));
            ``nf`` (NF-ResNet, v2 only: ``x + alpha f(x / beta)`` with scaled weight
            standardization and scaled ReLUs, see :class:`NFBlock`); ``fixup`` (no BN; every
            branch's last convolution zero, its first scaled by ``depth^(-1/2)``, scalar biases
            and multiplier, see :class:`FixupPreActBlock` and :class:`FixupBasicBlock`).
        width: channels of the first stage; each later stage doubles it.
        stages: number of stages; the first block of every later stage halves the resolution,
            doubles the width and uses a projection shortcut (1x1 strided convolution).
        alpha: initial SkipInit gain with ``norm="skipinit"`` (default 0.0), or the NF-ResNet's
            fixed branch gain with ``norm="nf"`` (default 0.2); not for the other norms.
        order: ``bn-relu`` (BN-ReLU-Conv, the paper's) or ``relu-bn`` (ReLU-BN-Conv), for v2
            with batch norm.
        padding: ``zeros`` (the paper's; border outputs see fewer inputs, which lowers every
            branch's second moment on small maps) or ``circular`` (the infinite-image theory
            holds exactly).
        in_channels: channels of the input images.
        num_classes: outputs of the linear head.
        nf_zero_init: with ``norm="nf"``, start the gain of every branch's last WS convolution
            at 0 (every block is the identity); off by default, so the signal is visible.
        fixup_zero_last: with ``norm="fixup"``, zero-initialize every branch's last
            convolution (Fixup's rule, the default); False keeps it He-initialized, so each
            branch adds ``1/depth`` of its input's second moment.
        seed: if given, initialize the weights from this seed with a private generator, leaving
            the global torch RNG untouched; otherwise draw from the global RNG like any module.

    Returns:
        A :class:`ResNet`; convolutions use He (fan-in, ReLU) initialization, BN weight 1, bias 0
        (NF: standardized weights; Fixup: the scaling above and a zero classification layer).

    >>> net = resnet(8, norm="skipinit", seed=0)
    >>> len(net.blocks), net.blocks[0].gain.alpha.item()
    (8, 0.0)
    """
    config = ResNetConfig(depth, parse_choice(Variant, variant, "variant"),
                          parse_choice(Norm, norm, "norm"), width, stages, alpha,
                          parse_choice(Order, order, "order"),
                          parse_choice(Padding, padding, "padding"), in_channels, num_classes,
                          nf_zero_init, fixup_zero_last)
    rng = torch.random.fork_rng(devices=[]) if seed is not None else nullcontext()
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        return _build(config)


def _block(c: ResNetConfig, c_in: int, c_out: int, stride: int, beta: float) -> nn.Module:
    if c.norm is Norm.NF:
        return NFBlock(c_in, c_out, stride, c.alpha or 0.0, beta, c.nf_zero_init)
    if c.norm is Norm.FIXUP:
        block = FixupPreActBlock if c.variant is Variant.V2 else FixupBasicBlock
        return block(c_in, c_out, stride, c.fixup_zero_last)
    gain = _gain(c.norm, c.alpha or 0.0, c.depth)
    if c.variant is Variant.V2:
        return PreActBlock(c_in, c_out, stride, c.norm, gain, c.order)
    return PostActBlock(c_in, c_out, stride, c.norm, gain)


def _build(config: ResNetConfig) -> ResNet:
    c = config
    stem: nn.Module = WSConv2d(c.in_channels, c.width, 3) if c.norm is Norm.NF else \
        _conv(c.in_channels, c.width, 3)
    if c.variant is Variant.V1:
        stem = nn.Sequential(stem, Bias() if c.norm is Norm.FIXUP else _norm(c.width, c.norm),
                             nn.ReLU())
    betas = iter(nf_betas(c.depth, c.stages, c.alpha or 0.0))
    blocks = []
    channels = c.width
    for stage, size in enumerate(stage_sizes(c.depth, c.stages)):
        out = c.width * 2**stage
        for i in range(size):
            stride = 2 if stage > 0 and i == 0 else 1
            blocks.append(_block(c, channels, out, stride, next(betas)))
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
    if c.norm is Norm.FIXUP:
        _fixup(net, c)
    return net


def _fixup(net: ResNet, config: ResNetConfig) -> None:
    """Fixup's rules: zero classification layer and last branch layers, the others scaled.

    With ``m = 2`` layers per branch and ``L = depth`` branches, the first layer's weights are
    scaled by ``L^(-1/(2m - 2)) = L^(-1/2)``.
    """
    layers = 2
    with torch.no_grad():
        nn.init.zeros_(net.head.weight)
        for block in net.blocks:
            assert isinstance(block, FixupPreActBlock | FixupBasicBlock)
            block.conv1.weight.mul_(config.depth ** (-1 / (2 * layers - 2)))
            if config.fixup_zero_last:
                nn.init.zeros_(block.conv2.weight)
