"""Closed-form predictions for the built-in ResNets, block by block, on the measured image size.

Every rule propagates the skip second moment from the *measured* skip second moment of the first
block of each stage (``m2_0``): a projection shortcut resets the skip path, so each stage is
anchored on its own. Assumptions: infinite width, branch independent of the skip path at
initialization, Gaussian input, He-initialized convolutions. See docs/theory.md.

The finite image enters through the 3x3 convolutions' padding. With zero padding a border
output sees fewer inputs, so the second moment is tracked per position: a He-init 3x3
convolution after a ReLU (or after BN, which it meets as a unit-variance input) maps the
per-position second moment ``s`` to ``T s T'``, where ``T`` averages the three taps of each
axis that fall inside the map; batch norm rescales the map to mean 1. With circular padding
``T`` keeps a uniform map uniform and the infinite-image forms come back exactly. A scaled
weight-standardized convolution (NF-ResNets) also subtracts the squared tap-average of its
input's mean, ``(T m T')^2``: all of it in the interior, less at the border, where the mean
leaks through. In the backward pass each batch norm divides the gradient by the channel
variance of what it normalizes on this map, whose channel mean averages border and interior.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy.special import ndtr

from sigprop.config import Norm, Order, Padding, ResNetConfig, Variant
from sigprop.models import NF_GAMMA, nf_betas
from sigprop.trace import BlockStats, Shortcut, Trace

__all__ = [
    "BN_BRANCH_SQ_MEAN",
    "BN_BRANCH_VAR",
    "BlockPrediction",
    "GradientPrediction",
    "Prediction",
    "channel_mean_factor",
    "predict",
    "predict_gradients",
]

# Second moment split of a BN-ReLU-Conv branch with He init on an infinite image: ReLU of a unit
# Gaussian has mean 1/sqrt(2 pi) and second moment 1/2; the He conv (gain 2) maps that to
# per-channel means of variance 2 * 1/(2 pi) = 1/pi and to a total second moment of 1.
BN_BRANCH_VAR = 1.0 - 1.0 / math.pi
BN_BRANCH_SQ_MEAN = 1.0 / math.pi


def channel_mean_factor(height: int, width: int | None = None, circular: bool = False) -> float:
    """Factor on the BN-ReLU-Conv branch's squared channel means (``1/pi``) on a finite map.

    Per axis of ``n`` positions with zero padding: the first convolution's border outputs see 2
    of 3 taps, so after BN the last convolution's input has variance ``2/3`` at the border
    relative to the interior (both divided by their mean ``m = 1 - 2/(3n)``), and its ReLU
    means are the square roots of those variances over ``sqrt(2 pi)``. The last convolution's
    channel mean averages, per tap offset, the ReLU means that land on the map: all ``n`` for
    offset 0, one border position fewer for +-1. With i.i.d. weights
    ``E[mu^2] = (1/pi) A(height) A(width)``, ``A(n) = (A_0^2 + 2 A_1^2) / 3``, where
    ``A_0 = (n - 2 + 2c) / (n sqrt(m))``, ``A_1 = (n - 2 + c) / (n sqrt(m))``, ``c = sqrt(2/3)``:
    :meth:`_Image.relu_conv_sq_mean` of the first convolution's map, which this closed form
    writes out axis by axis.

    >>> round(channel_mean_factor(16), 4), round(channel_mean_factor(32), 4)
    (0.8623, 0.9295)
    """
    image = _Image.of(height, height if width is None else width, circular)
    uniform = np.ones((image.rows.shape[0], image.cols.shape[0]))
    return math.pi * image.relu_conv_sq_mean(image.normalize(image.conv(uniform)))


@dataclass(frozen=True, slots=True)
class BlockPrediction:
    """Predicted second moments of one block (NaN where the theory says nothing)."""

    index: int
    stage: int
    skip_m2: float
    residual_m2: float
    skip_var: float = math.nan
    skip_sq_mean: float = math.nan
    residual_sq_mean: float = math.nan

    @property
    def ratio(self) -> float:
        """Predicted residual/skip ratio of second moments."""
        return self.residual_m2 / self.skip_m2 if self.skip_m2 else math.nan

    @property
    def output_m2(self) -> float:
        """Predicted second moment of ``skip + residual`` (independent operands add)."""
        return self.skip_m2 + self.residual_m2

    @property
    def residual_var(self) -> float:
        """Predicted average channel variance of the residual branch."""
        return self.residual_m2 - self.residual_sq_mean

    @property
    def output_var(self) -> float:
        """Predicted average channel variance of the block's output (the sum)."""
        return self.skip_var + self.residual_var

    @property
    def output_sq_mean(self) -> float:
        """Predicted average channel squared mean of the block's output (independent means add)."""
        return self.skip_sq_mean + self.residual_sq_mean


@dataclass(frozen=True, slots=True)
class Prediction:
    """Per-block predictions for one network, with the rule that produced them.

    Attributes:
        family: which closed form applies, e.g. ``bn-v2``, ``nf`` or ``fixup``.
        rule: the recursion in words, with its constants for this image size.
        exact: False where the theory only gives an approximation (v1 with BN, v1 Fixup
            without its zero last layer).
        blocks: one prediction per measured block, in call order.
        growth: the skip second moment's factor per block on an infinite image for geometric
            families (2 for unnormalized, 1 + alpha^2 for SkipInit, 1 + 1/d for sqrt-depth and
            for Fixup without its zero last layer); 1 for identity blocks (SkipInit at
            alpha = 0, Fixup, NF with zero-initialized gains); None for linear ones (BN, NF).
        proportional: whether each branch's second moment is proportional to its skip path's
            (no normalization in the branch: unnormalized, SkipInit, sqrt-depth, NF, Fixup
            without its zero last layer), so that a block's effect on the skip path is a
            factor, not an increment. The fits use it to build the skip slopes' intervals.
    """

    family: str
    rule: str
    exact: bool
    blocks: tuple[BlockPrediction, ...]
    growth: float | None = None
    proportional: bool = False


@cache
def _axis(size: int, circular: bool) -> tuple[np.ndarray, np.ndarray]:
    """One axis of a 3x3 convolution on ``size`` positions: its tap average and its three taps.

    ``bands[k, p, q]`` is 1 where tap ``k - 1`` of output ``p`` lands on input ``q`` (with zero
    padding the first tap of the first output and the last tap of the last land nowhere);
    ``T``, their average, is 1/3 for each of output ``p``'s taps that lands on ``q``.
    """
    bands = np.zeros((3, size, size))
    for p in range(size):
        for k, offset in enumerate((-1, 0, 1)):
            q = p + offset
            if circular or 0 <= q < size:
                bands[k, p, q % size] += 1.0
    return bands.sum(axis=0) / 3, bands


@dataclass(frozen=True, slots=True)
class _Image:
    """The per-position second-moment algebra of one stage's feature map."""

    rows: np.ndarray  # T of the height axis
    cols: np.ndarray  # T of the width axis
    row_bands: np.ndarray  # the height axis's three taps (3 x height x height)
    col_bands: np.ndarray

    @staticmethod
    def of(height: int, width: int, circular: bool) -> _Image:
        """The map of ``height x width`` positions with zero or circular padding."""
        (rows, row_bands), (cols, col_bands) = _axis(height, circular), _axis(width, circular)
        return _Image(rows, cols, row_bands, col_bands)

    @staticmethod
    def infinite() -> _Image:
        """A single position that is its own neighbour: the infinite-image forms."""
        return _Image.of(1, 1, True)

    def conv(self, profile: np.ndarray) -> np.ndarray:
        """A He-init 3x3 conv after a ReLU of a symmetric input or after BN (gains cancel)."""
        out: np.ndarray = self.rows @ profile @ self.cols.T
        return out

    def conv_transposed(self, profile: np.ndarray) -> np.ndarray:
        """The gradient's per-position second moment through a He conv's transpose and a ReLU."""
        out: np.ndarray = self.rows.T @ profile @ self.cols
        return out

    def relu_conv_mean_cross(self, second: np.ndarray) -> np.ndarray:
        """``E_c[mu_c(p) mu_c]`` per position of a He-init 3x3 conv of ``relu(z)``, infinite width.

        ``z`` is centred and symmetric with per-position second moment ``second``, so
        ``relu(z)`` has mean ``a = sqrt(second / (2 pi))``. Output channel ``c``'s mean at
        ``p``, ``mu_c(p)``, sums over input channels and the 9 taps a weight times ``a`` where
        the tap lands; its mean over the map, ``mu_c``, the same weights times the mean of the
        ``a`` each tap reads, ``abar_tap``. With i.i.d. weights of variance ``2 / (9 C)``:
        ``E[mu_c(p) mu_c] = (2/9) sum_taps a(p + tap) abar_tap``, whose mean over the map is
        ``E[mu_c^2]`` (:meth:`relu_conv_sq_mean`).
        """
        mean = np.sqrt(second / (2 * math.pi))
        reads = self._reads(mean)
        out: np.ndarray = 2 / 9 * sum(
            (reads[j, k] * self.row_bands[j] @ mean @ self.col_bands[k].T
             for j in range(3) for k in range(3)), np.zeros_like(second))
        return out

    def relu_conv_sq_mean(self, second: np.ndarray) -> float:
        """Squared channel mean ``E[mu_c^2]`` of a He-init 3x3 conv of ``relu(z)``.

        The mean over the map of :meth:`relu_conv_mean_cross`, ``(2/9) sum_taps abar_tap^2``:
        ``(1/pi) mean_taps (sum of sqrt(second) the tap reads / positions)^2``, ``1/pi`` on a
        uniform map with circular padding.
        """
        return float((self._reads(np.sqrt(second)) ** 2).mean() / math.pi)

    def _reads(self, values: np.ndarray) -> np.ndarray:
        """Per tap (3 x 3), the sum of the ``values`` that tap reads over the map, per position."""
        out: np.ndarray = (self.row_bands.sum(axis=1) @ values @ self.col_bands.sum(axis=1).T
                           / values.size)
        return out

    def relu_conv_variance(self, second: np.ndarray) -> float:
        """Channel variance of a He-init 3x3 conv of ``relu(z)`` (see :meth:`relu_conv_sq_mean`)."""
        return float(self.conv(second).mean()) - self.relu_conv_sq_mean(second)

    @staticmethod
    def normalize(profile: np.ndarray) -> np.ndarray:
        """Batch norm: the map rescaled to mean second moment 1."""
        out: np.ndarray = profile / profile.mean()
        return out


def _relu_variance(second: np.ndarray) -> float:
    """Channel variance of ``relu(z)``, ``z`` centred and symmetric with per-position ``second``.

    Its second moment is ``second / 2`` and its mean ``sqrt(second / (2 pi))`` per position:
    ``(1 - 1/pi) / 2`` of a uniform ``second``, more where ``second`` varies over the map.
    """
    return float(second.mean() / 2 - np.sqrt(second / (2 * math.pi)).mean() ** 2)


def _scaled_relu(profile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``gamma relu(z)`` of a symmetric ``z``: its per-position second moment and mean."""
    second: np.ndarray = NF_GAMMA**2 / 2 * profile
    mean: np.ndarray = NF_GAMMA * np.sqrt(profile / (2 * math.pi))
    return second, mean


def _ws_conv(image: _Image, second: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """A 3x3 WS convolution: each output position's weights sum to 0 only where all land.

    With ``N`` standardized weights per output channel (sum 0, squared norm 1),
    ``E[w_i^2] = 1/N`` and ``E[w_i w_j] = -1/(N(N - 1))``, so at infinite width
    ``E[y^2] = T s T' - (T m T')^2`` for inputs of second moment ``s`` and mean ``m`` (shared by
    the channels): the mean is removed in the interior, and leaks through at the border.
    """
    out: np.ndarray = image.conv(second) - image.conv(mean) ** 2
    return out


def _nf_branch(image: _Image, skip: np.ndarray, strided: tuple[_Image, np.ndarray] | None = None
               ) -> np.ndarray:
    """ScaledReLU-WSConv-ScaledReLU-WSConv of ``skip`` (already divided by beta^2).

    With ``strided`` (the previous stage's map and the transition's input on it), the first
    convolution runs on the previous map with stride 2 and keeps its even positions.
    """
    if strided is None:
        hidden = _ws_conv(image, *_scaled_relu(skip))
    else:
        hidden = _ws_conv(strided[0], *_scaled_relu(strided[1]))[::2, ::2]
    return _ws_conv(image, *_scaled_relu(hidden))


def _bn_branch(image: _Image, skip: np.ndarray) -> np.ndarray:
    """BN-ReLU-Conv-BN-ReLU-Conv: the branch's per-position second moment (mean ~1)."""
    return image.conv(image.normalize(image.conv(image.normalize(skip))))


def _plain_branch(image: _Image, skip: np.ndarray) -> np.ndarray:
    """ReLU-Conv-ReLU-Conv without normalization: it preserves the second moment it gets."""
    return image.conv(image.conv(skip))


@dataclass(frozen=True, slots=True)
class _Family:
    name: str
    rule: str
    exact: bool
    branch_gain: float  # the branch's second moment is branch_gain * (the profile's mean)
    normalized: bool  # BN branch (its output does not depend on the skip's scale)
    split: tuple[float, float] | None = None  # infinite-image (var, sq_mean) of the branch
    growth: float | None = None
    # Whether BN meets the skip path's own border profile (propagated block by block) or a
    # uniform map. Measured (4x4 to 32x32, width 64, 100s of seeds): BN-ReLU-Conv branches
    # follow the uniform form within 0.8%, ReLU-BN-Conv ones the propagated profile within 1%
    # (the uniform form is 1.5-2.5% low there).
    propagate: bool = True
    # NF: every block's beta (in call order); the branch is the NF map of skip / beta^2.
    betas: tuple[float, ...] | None = None
    # v1 without BN (Fixup): the ReLU after the addition halves a transition's symmetric skip.
    post_relu: bool = False

    def branch(self, image: _Image, profile: np.ndarray, index: int) -> np.ndarray:
        """The branch's per-position second moment at block ``index`` for the skip ``profile``."""
        if self.normalized and not self.exact:
            return self.branch_gain * np.ones_like(profile)
        if self.normalized:
            return self.branch_gain * _bn_branch(image, profile if self.propagate
                                                 else np.ones_like(profile))
        if self.betas is not None:
            return self.branch_gain / self.betas[index] ** 2 * _nf_branch(image, profile)
        return self.branch_gain * _plain_branch(image, profile)


def _family(config: ResNetConfig) -> _Family:
    # A ReLU after the addition (v1) breaks the exact recursions.
    exact = config.variant is Variant.V2
    if config.norm is Norm.BATCHNORM and exact and config.order is Order.RELU_BN:
        return _Family("bn-v2-relu-bn", "m2_l = m2_0 + 2f l; ratio = 2f/(m2_0 + 2f l)",
                       True, 2.0, True, (2.0, 0.0))
    if config.norm is Norm.BATCHNORM and exact:
        return _Family("bn-v2", "m2_l = m2_0 + f l; ratio = f/(m2_0 + f l)", True, 1.0,
                       True, (BN_BRANCH_VAR, BN_BRANCH_SQ_MEAN), propagate=False)
    if config.norm is Norm.BATCHNORM:
        return _Family("bn-v1",
                       "approximately m2_l = m2_0 + l (ReLU after the addition clips little); "
                       "ratio = 1/(m2_0 + l)",
                       False, 1.0, True)
    if config.norm is Norm.NONE:
        return _Family("unnormalized", "m2_{l+1} = (1 + f) m2_l; ratio = f", exact, 1.0, False,
                       growth=2.0)
    if config.norm is Norm.SKIPINIT:
        alpha = config.alpha or 0.0
        return _Family("skipinit",
                       f"m2_{{l+1}} = (1 + alpha^2 f) m2_l; ratio = alpha^2 f = {alpha**2:g} f",
                       exact, alpha**2, False, growth=1 + alpha**2)
    depth = config.depth
    if config.norm is Norm.NF:
        alpha = config.alpha or 0.0
        if config.nf_zero_init:
            return _Family("nf-zero-init", "m2_l = m2_0 (every block is the identity); ratio = 0",
                           True, 0.0, False, (0.0, 0.0), growth=1.0)
        return _Family(
            "nf",
            f"m2_{{l+1}} = (1 + alpha^2 f / beta_l^2) m2_l with beta_l^2 = 1 + l alpha^2: "
            f"m2_l = m2_0 (1 + l alpha^2)^f, linear for f = 1; ratio = alpha^2 f / beta_l^2 "
            f"(alpha^2 = {alpha**2:g})",
            True, alpha**2, False, (1.0, 0.0),
            betas=tuple(nf_betas(depth, config.stages, alpha)))
    if config.norm is Norm.FIXUP and config.fixup_zero_last:
        post = config.variant is Variant.V1
        return _Family("fixup",
                       "m2_l = m2_0 (every block is the identity"
                       + ("; a transition's ReLU halves its projection" if post else "")
                       + "); ratio = 0", True, 0.0, False, None if post else (0.0, 0.0),
                       growth=1.0, post_relu=post)
    if config.norm is Norm.FIXUP and config.variant is Variant.V1:
        return _Family("fixup-nonzero-v1",
                       "approximately m2_{l+1} = (1 + 2f/d) m2_l (the branch sees a ReLU output; "
                       f"the ReLU after the addition clips little); ratio = 2f/d = 2f/{depth}",
                       False, 2 / depth, False, growth=1 + 2 / depth, post_relu=True)
    if config.norm is Norm.FIXUP:
        return _Family("fixup-nonzero",
                       f"m2_{{l+1}} = (1 + f/d) m2_l (conv1 scaled by d^(-1/2)); ratio = f/d = "
                       f"f/{depth}", exact, 1 / depth, False, growth=1 + 1 / depth)
    return _Family("sqrt-depth", f"m2_{{l+1}} = (1 + f/d) m2_l; ratio = f/d = f/{depth}", exact,
                   1 / depth, False, growth=1 + 1 / depth)


def _stage_images(trace: Trace, circular: bool, stages: int) -> list[_Image | None]:
    """Each stage's map: the input's spatial size, halved (rounding up) at every transition."""
    shape = trace.input.shape
    if len(shape) != 4:
        return [None] * stages
    height, width = shape[2], shape[3]
    images: list[_Image | None] = []
    for _ in range(stages):
        images.append(_Image.of(height, width, circular))
        height, width = (height + 1) // 2, (width + 1) // 2
    return images


def predict(trace: Trace) -> Prediction | None:
    """Per-block predictions for a built-in ResNet trace on its image size, or None otherwise.

    Each stage is anchored on the measured skip second moment of its first block, averaged over
    the trace's runs (non-finite runs excluded); within the stage the skip path's per-position
    second moment starts uniform and grows by each branch's per-position second moment.

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(4, padding="circular", seed=0),
    ...                         sigprop.InputSpec("gaussian", (8, 3, 8, 8), 0))
    >>> p = predict(trace)
    >>> p.family, [round(b.skip_m2 - p.blocks[0].skip_m2, 6) for b in p.blocks]
    ('bn-v2', [0.0, 1.0, 2.0, 3.0])
    """
    forward = _forward(trace)
    return None if forward is None else forward[0]


def _forward(trace: Trace) -> tuple[Prediction, list[np.ndarray]] | None:
    """:func:`predict` and the skip path's per-position second moment at every block."""
    config = ResNetConfig.of(trace.model)
    if config is None or not trace.runs:
        return None
    family = _family(config)
    circular = config.padding is Padding.CIRCULAR
    first = trace.runs[0].blocks
    n_stages = max(b.stage for b in first) + 1
    images = _stage_images(trace, circular, n_stages)
    predictions: list[BlockPrediction] = []
    skips: list[np.ndarray] = []
    previous: tuple[_Image, np.ndarray] | None = None
    for stage in range(n_stages):
        blocks = [b for b in first if b.stage == stage]
        stage_predictions, profiles = _predict_stage(trace, family, images[stage],
                                                     blocks[0].index, len(blocks), circular,
                                                     previous)
        predictions += stage_predictions
        skips += profiles[:-1]
        image = images[stage]
        previous = None if image is None else (image, profiles[-1])
    return Prediction(family.name, _rule(family, images[0], circular), family.exact,
                      tuple(predictions), family.growth,
                      proportional=not family.normalized and family.branch_gain > 0), skips


def _anchor(trace: Trace, index: int) -> tuple[float, float, float]:
    """Mean over runs of the skip's (m2, var, sq_mean) at block ``index`` (finite runs only)."""
    first = [run.blocks[index].skip for run in trace.runs if run.blocks[index].skip.finite]
    if not first:
        return math.nan, math.nan, math.nan
    return (float(np.mean([m.m2 for m in first])), float(np.mean([m.var for m in first])),
            float(np.mean([m.sq_mean for m in first])))


def _predict_stage(trace: Trace, family: _Family, image: _Image | None, start: int, size: int,
                   circular: bool, previous: tuple[_Image, np.ndarray] | None = None
                   ) -> tuple[list[BlockPrediction], list[np.ndarray]]:
    """One stage's predictions and the per-position maps of its skip path: every block's, then
    its last block's output.

    ``previous`` is the previous stage's map and its last output's per-position second moment
    (used by NF transitions); the first stage's skip path is the stem convolution of a uniform
    image (a border deficit), a later one starts uniform unless its family says otherwise.
    """
    m2_0, var_0, sq_0 = _anchor(trace, start)
    stage = trace.runs[0].blocks[start].stage
    height, width = (1, 1) if image is None else (image.rows.shape[0], image.cols.shape[0])
    if image is None:  # not an image: the infinite-image forms
        image = _Image.infinite()
    uniform = np.ones((height, width))
    shape = image.conv(uniform) if stage == 0 else uniform
    transition = None
    if family.betas is not None and stage > 0 and previous is not None \
            and previous[1][::2, ::2].shape == uniform.shape:
        # NF: the transition's 1x1 WS shortcut keeps the variance of x / beta at the positions
        # its stride picks, and its strided branch sees x / beta on the previous map; both are
        # scaled to the measured skip.
        before = previous[1] * m2_0 / previous[1][::2, ::2].mean()
        shape = before[::2, ::2]
        transition = (previous[0], before)
    profile = m2_0 * shape / shape.mean()
    sq_step = math.nan
    if family.split is not None:
        sq_step = family.split[1] * (channel_mean_factor(height, width, circular)
                                     if height > 1 else 1.0)
    # After a transition of a v1 network without BN, the ReLU of the addition halves the
    # symmetric projection (and the branch saw the previous stage's ReLU output, whose second
    # moment is half the He projection's).
    halve = family.post_relu and stage > 0
    out = []
    profiles = []
    skip_var, skip_sq = var_0, sq_0
    for offset in range(size):
        if transition is not None and offset == 0:
            branch = family.branch_gain * _nf_branch(image, profile, transition)
        else:
            branch = family.branch(image, profile, start + offset)
        if halve and offset == 0:
            branch = branch / 2
        skip_m2, residual_m2 = float(profile.mean()), float(branch.mean())
        profiles.append(profile)
        known = family.split is not None
        out.append(BlockPrediction(start + offset, stage, skip_m2, residual_m2,
                                   skip_var if known else math.nan,
                                   skip_sq if known else math.nan,
                                   sq_step if known else math.nan))
        skip_var += residual_m2 - sq_step
        skip_sq += sq_step
        profile = profile + branch
        if halve and offset == 0:
            profile = profile / 2
    return out, [*profiles, profile]


def _rule(family: _Family, image: _Image | None, circular: bool) -> str:
    """The family's rule with its image factor ``f`` (the branch's m2 per unit of skip)."""
    if image is None or not family.exact or not family.branch_gain:
        return family.rule
    uniform = np.ones((image.rows.shape[0], image.cols.shape[0]))
    if family.normalized:
        branch = _bn_branch(image, uniform)
    elif family.betas is not None:
        branch = _nf_branch(image, uniform)
    else:
        branch = _plain_branch(image, uniform)
    where = "circular padding" if circular else \
        f"zero padding, {image.rows.shape[0]}x{image.cols.shape[0]}"
    first = "" if family.normalized else " at the first block"
    return f"{family.rule}; f = {float(branch.mean()):.3f}{first} ({where})"


@dataclass(frozen=True, slots=True)
class GradientPrediction:
    """Predicted gradient second moments per block, relative to the measured last output's.

    Attributes:
        family: the forward family (:attr:`Prediction.family`).
        rule: the backward recursion in words.
        exact: False where it is an approximation (v1: the ReLU after each addition).
        output, skip, residual, input: per block, in call order, the predicted second moments
            of the four gradients (NaN where the theory says nothing: a projection's parts).
    """

    family: str
    rule: str
    exact: bool
    output: tuple[float, ...]
    skip: tuple[float, ...]
    residual: tuple[float, ...]
    input: tuple[float, ...]

    @property
    def ratio(self) -> tuple[float, ...]:
        """Predicted residual/skip ratio of the gradients' second moments per block."""
        return tuple(r / s if s else math.nan for r, s in zip(self.residual, self.skip,
                                                                strict=True))


def _mean_over_runs(trace: Trace, value: Callable[[BlockStats], float]) -> np.ndarray:
    rows = np.array([[value(b) for b in run.blocks] for run in trace.runs], dtype=float)
    with np.errstate(all="ignore"):
        return np.array([np.nan if not np.isfinite(c).any() else np.nanmean(c) for c in rows.T])


def predict_gradients(trace: Trace) -> GradientPrediction | None:
    """Per-block gradient second moments of a built-in ResNet trace with gradients, or None.

    The backward pass through a branch is the forward one transposed: a He-init 3x3
    convolution's transpose keeps the gradient's second moment per position as ``T' p T`` (its
    gain 2 and the next ReLU's mask 1/2 cancel), and a batch norm divides it by the channel
    variance of the tensor it normalized, over the whole map (:func:`_bn_variances`: ``var_l``,
    of the block input, for the first; the first convolution's output for the second,
    ``1 - 1/pi`` on an infinite image, more with zero padding, where the channel mean it
    subtracts is that of border and interior together). So the branch's gradient is
    ``rho_l`` times the block's output gradient, with ``rho_l = T'T'/(v_l var_l)``
    (BN-ReLU-Conv, ``v_l`` the second variance; ``2/(1 - 1/pi)^2`` for ReLU-BN-Conv on an
    infinite image, ``T'T'`` alone without BN, times ``alpha^2`` or ``1/d``; NF:
    ``alpha^2 / ((1 - 1/pi)^2 beta_l^2)``, the scaled ReLUs' ``gamma^2 / 2`` twice; Fixup: 0
    with its zero last layer, else ``1/d``), and the input gradient is the output's times
    ``1 + rho_l``:
    the gradient grows from the last block to the first by ``prod (1 + rho_l)``. ``var_l`` is
    the forward prediction where there is one, else the measured skip variance. Each stage is
    anchored on the measured output gradient of its last block (mean over runs). In BN v1 the
    ReLU after each addition passes the share :func:`_relu_shares` of the gradient (a
    reflected random walk of the skip path, with the correlation between the gradient and the
    ReLU's mask); v1 without BN has no closed form (None), except Fixup's identity blocks.
    Fixup's zero classification layer makes every gradient exactly 0 at initialization, and so
    every prediction. See docs/theory.md.

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(4, norm="skipinit", seed=0),
    ...                         sigprop.InputSpec("gaussian", (8, 3, 8, 8), 0), backward=True)
    >>> p = predict_gradients(trace)
    >>> [round(i / p.output[-1], 6) for i in p.input]  # alpha = 0: every block passes it on
    [1.0, 1.0, 1.0, 1.0]
    """
    config = ResNetConfig.of(trace.model)
    if config is None or not trace.runs or not trace.has_gradients:
        return None
    computed = _forward(trace)
    assert computed is not None  # a built-in ResNet's trace
    forward, skip_maps = computed
    blocks = trace.runs[0].blocks
    n_stages = max(b.stage for b in blocks) + 1
    images = _stage_images(trace, config.padding is Padding.CIRCULAR, n_stages)
    var = _mean_over_runs(trace, lambda b: b.skip.var)
    if forward.exact and config.norm is Norm.BATCHNORM:
        var = np.array([p.skip_var for p in forward.blocks])
    betas = (nf_betas(config.depth, config.stages, config.alpha or 0.0)
             if config.norm is Norm.NF else [1.0] * len(blocks))
    last_output = _mean_over_runs(trace, lambda b: b.grad.output.m2 if b.grad else math.nan)
    gain = _branch_gain(config)
    post_relu = config.variant is Variant.V1
    # v1: the ReLU after each addition masks the gradient. With BN its share has a closed form
    # (_relu_shares); Fixup's identity blocks repeat the mask the gradient already carries.
    # Other branches without BN have channel means that the walk leaves out: no closed form.
    shares = post_relu and config.norm is Norm.BATCHNORM
    if post_relu and not shares and not (config.norm is Norm.FIXUP and config.fixup_zero_last):
        return None
    # BN-ReLU-Conv branches add channel means that vary over the map: the first BN meets the
    # skip path about them.
    centre = config.norm is Norm.BATCHNORM and forward.family == "bn-v2"
    nan = [math.nan] * len(blocks)
    output, skip, residual, inputs = (np.array(nan) for _ in range(4))
    for stage in range(n_stages):
        members = [b for b in blocks if b.stage == stage]
        image = images[stage] or _Image.infinite()
        size = (image.rows.shape[0], image.cols.shape[0])
        profile = np.full(size, last_output[members[-1].index])
        bn_inputs = _centred(image, [skip_maps[b.index] for b in members]) if centre else \
            [skip_maps[b.index] for b in members]
        for position, block in reversed(list(enumerate(members))):
            l = block.index
            output[l] = float(profile.mean())
            if block.shortcut is Shortcut.PROJECTION:
                break  # the skip part leaves the stage's map: no closed form here
            branch = gain / betas[l] ** 2 * image.conv_transposed(image.conv_transposed(profile))
            if config.norm is Norm.BATCHNORM:
                branch = branch / math.prod(_bn_variances(config, image, bn_inputs[position],
                                                          var[l]))
            skip[l], residual[l] = output[l], float(branch.mean())
            profile = profile + branch
            inputs[l] = float(profile.mean())
        if shares:
            _apply_relu_shares(members, (output, skip, residual, inputs))
    bn = ("2/((1 - 1/pi)^2 var_l)" if config.order is Order.RELU_BN and not post_relu
          else "1/((1 - 1/pi) var_l)")
    fixup = ("0 (the zero last layer: every block passes the gradient on exactly)"
             if config.fixup_zero_last else f"1/d (d = {config.depth})")
    if config.padding is not Padding.CIRCULAR:  # the first clause is what a legend shows
        bn = (f"the padded convolutions' gain / the product of its BNs' channel variances, on "
              f"the measured map; {bn} on an infinite image")
    rules = {
        Norm.BATCHNORM: f"g_in = (1 + rho_l) g_out, rho_l = {bn}",
        Norm.NONE: "g_in = (1 + rho) g_out, rho = 1 (x2 per block)",
        Norm.SKIPINIT: f"g_in = (1 + alpha^2) g_out (alpha^2 = {(config.alpha or 0.0)**2:g})",
        Norm.SQRT_DEPTH: f"g_in = (1 + 1/d) g_out (d = {config.depth})",
        Norm.NF: ("g_in = g_out (zero-initialized gains)" if config.nf_zero_init else
                  "g_in = (1 + rho_l) g_out, rho_l = alpha^2 / ((1 - 1/pi)^2 beta_l^2) "
                  f"(alpha^2 = {(config.alpha or 0.0)**2:g})"),
        Norm.FIXUP: f"g_in = (1 + rho) g_out, rho = {fixup}; every gradient is 0 while the "
                    "classification layer is (Fixup's zero init)",
    }
    rule = rules[config.norm] + ("; times the share of the gradient that the ReLU after each "
                                 "addition passes (a reflected random walk)" if shares else "") + \
        ("" if config.padding is Padding.CIRCULAR or config.norm is Norm.BATCHNORM else
         "; zero padding on the measured map")
    return GradientPrediction(forward.family, rule, not shares, tuple(output.tolist()),
                              tuple(skip.tolist()), tuple(residual.tolist()),
                              tuple(inputs.tolist()))


def _branch_gain(config: ResNetConfig) -> float:
    """The branch's backward gain before padding, batch norm's division and NF's ``1/beta_l^2``.

    Each He convolution's transpose doubles the gradient's second moment and each ReLU's mask
    halves it: 1 with batch norm, whose divisions are :func:`_bn_variances`, but 2 in v1,
    whose first convolution meets the block input without a ReLU inside the branch (the ReLU
    after the previous addition is :func:`_relu_shares`).
    """
    if config.norm is Norm.BATCHNORM:
        return 2.0 if config.variant is Variant.V1 else 1.0
    if config.norm is Norm.NF:
        # Scaled ReLUs pass gamma^2 / 2 = 1/(1 - 1/pi) each; a WS convolution's transpose
        # keeps the second moment (unit rows, fan-out = fan-in).
        return 0.0 if config.nf_zero_init else (config.alpha or 0.0) ** 2 / BN_BRANCH_VAR**2
    if config.norm is Norm.FIXUP:
        return 0.0 if config.fixup_zero_last else 1 / config.depth
    if config.norm is Norm.SKIPINIT:
        return (config.alpha or 0.0) ** 2
    if config.norm is Norm.SQRT_DEPTH:
        return 1 / config.depth
    return 1.0


def _bn_variances(config: ResNetConfig, image: _Image, skip: np.ndarray, var: float
                  ) -> tuple[float, float]:
    """The channel variances by which a BN branch's two batch norms divide the gradient.

    Each batch norm divides the gradient's second moment by the channel variance of the
    tensor it normalizes, taken over the whole map: with zero padding that is not the
    infinite image's variance times the padded convolution's mean second moment ``m``, because
    the channel means it subtracts come from ReLU means that differ between border and
    interior (and from fewer taps at the border). ``skip`` is the block input's per-position
    second moment (the forward's map), ``var`` its channel variance.

    * BN-ReLU-Conv (v2): the block input's ``var``, then the first convolution's output,
      a He convolution of ``relu(BN(x))``: its mean second moment ``mean(T s T')`` less its
      squared channel mean (:meth:`_Image.relu_conv_variance`, ``s`` the normalized map).
      On an infinite image ``var_l`` and ``1 - 1/pi``.
    * ReLU-BN-Conv: ``relu(x)`` and ``relu`` of the first convolution's output
      (:func:`_relu_variance`, per-position second moments ``s`` and ``2 T s T'``):
      ``(1 - 1/pi) var_l / 2`` and ``1 - 1/pi`` on an infinite image.
    * Conv-BN-ReLU-Conv-BN (v1): the first convolution's output, ``2 var`` (measured within 2%
      at 32x32: the border's missing taps lower it, the channel means of the post-ReLU input
      that differ between border and interior raise it back), then the second convolution's,
      a He convolution of ``relu(BN(.))`` of the first's map on a uniform input.
    """
    normalized = image.normalize(skip)
    if config.variant is Variant.V1:
        uniform = np.ones_like(skip)
        return 2 * var, image.relu_conv_variance(image.normalize(image.conv(uniform)))
    if config.order is Order.RELU_BN:
        return _relu_variance(skip), _relu_variance(2 * image.conv(normalized))
    return var, image.relu_conv_variance(normalized)


def _centred(image: _Image, skips: Sequence[np.ndarray]) -> list[np.ndarray]:
    """BN v2 (BN-ReLU-Conv): one stage's skip maps about their channel means.

    Every branch adds channel means that vary over the map (``mu_c(p)``, smaller at the
    border, from the ReLU means of its BN-normalized ``T 1 T'`` map, the forward's branch);
    the first batch norm subtracts their mean over the map, ``mu_c``, so the block input it
    normalizes has ``E[(x(p) - mu_c)^2] = m2(p) - sum_branches (2 E[mu_c(p) mu_c] - E[mu_c^2])``
    (:meth:`_Image.relu_conv_mean_cross`): flatter than ``m2``, whose interior excess is partly
    the means'. The stem adds no channel mean; a projection's is the same at every position.
    """
    branch_input = image.normalize(image.conv(np.ones_like(skips[0])))
    cross = image.relu_conv_mean_cross(branch_input)
    return [skip - k * (2 * cross - cross.mean()) for k, skip in enumerate(skips)]


def _apply_relu_shares(members: Sequence[BlockStats], columns: tuple[np.ndarray, ...]) -> None:
    """BN v1: scale one stage's predictions by the shares the ReLUs after its additions pass.

    The columns (output, skip, residual, input) were propagated without the masks; every mask
    multiplies all of them below it by a scalar, which leaves each block's ``rho_l`` as it was.
    """
    output, residual = columns[0], columns[2]
    identity = [b.index for b in members if b.shortcut is Shortcut.IDENTITY]
    if not identity:
        return
    rho = [residual[l] / output[l] if output[l] else 0.0 for l in identity]
    # The branch ends in BN: unit channel variance whatever the skip path's level. After a
    # projection (itself BN-normalized) the first sum has variance 2.
    shares = _relu_shares(rho, 1.0 if members[0].shortcut is Shortcut.IDENTITY else 2.0)
    factor = 1.0
    for position in range(len(identity) - 1, -1, -1):
        for column in columns:
            column[identity[position]] *= factor
        factor *= shares[position]
    if members[0].shortcut is Shortcut.PROJECTION:
        output[members[0].index] *= factor


# Grid of the reflected walk (in units of the branch's standard deviation): bins of at most
# 1/8, at most this many of them, over this many standard deviations of the walk's spread.
_WALK_BINS = 4000
_WALK_RANGE = 8.0


def _relu_shares(rho: Sequence[float], start: float) -> np.ndarray:
    """Shares of the gradient's second moment passed by the ReLU before each block of a BN v1 stage.

    One position and channel of the skip path is a reflected random walk:
    ``x_{k+1} = relu(y_k)``, ``y_k = x_k + xi_k``, with ``xi_k ~ N(0, 1)`` the branch (it ends
    in BN: zero channel mean, unit channel variance, independent of ``x_k`` at initialization)
    and ``x_0 = relu(N(0, start))``. The gradient at ``x_k`` is the branch part (``rho_k`` times
    the output gradient's mean second moment, spread over the map by the convolutions) plus
    ``1{y_k > 0}`` times the gradient at ``x_{k+1}``, which carries the masks of the blocks
    after it: the gradient is smaller where the skip path sits at 0. Its second moment given
    the state obeys ``G_k(x) = rho_k E[G_out,k] + E[1{x + xi > 0} G_{k+1}(x + xi)]``,
    ``G_n = 1`` (the head's or the next stage's gradient does not depend on the sign). The
    ReLU before block ``k`` zeroes the positions at 0 and passes
    ``1 - P(x_k = 0) G_k(0) / E[G_k(x_k)]`` (its pass rate ``P(y > 0)`` alone leaves out that
    ``G_k(0)`` is small). Returns the shares ``k = 0 .. n-1`` (the first is the stem's or the
    projection's ReLU).

    >>> [round(float(s), 3) for s in _relu_shares([0.0], 1.0)]  # 1 - (1/2)(1/2) / (5/8)
    [0.6]
    """
    n = len(rho)
    x_max = _WALK_RANGE * math.sqrt(start + n)
    h = max(1 / 8, x_max / _WALK_BINS)
    x = np.arange(int(x_max / h) + 2) * h
    reach = math.ceil(_WALK_RANGE / h)
    offsets = np.arange(-reach, reach + 1) * h
    weights = ndtr(offsets + h / 2) - ndtr(offsets - h / 2)  # P(xi in each bin's width)
    to_first_bin: np.ndarray = ndtr(h / 2 - x)  # P(y < h/2): the bin of 0 (the atom and (0, h/2))
    to_zero: np.ndarray = ndtr(-x)  # P(y <= 0): the atom

    def masked(g: np.ndarray) -> np.ndarray:
        """``E[1{x + xi > 0} g(x + xi)]`` on the grid."""
        positive = g.copy()
        positive[0] = 0.0
        out: np.ndarray = np.convolve(positive, weights)[reach:reach + x.size] \
            + (to_first_bin - to_zero) * g[0]
        return out

    deviation = math.sqrt(start)
    density = ndtr((x + h / 2) / deviation) - ndtr((x - h / 2) / deviation)
    density[0] = ndtr(h / 2 / deviation)
    densities, atoms = [density], [0.5]
    for _ in range(n - 1):
        density = densities[-1]
        moved = np.convolve(density, weights)[reach:reach + x.size]
        moved[0] = float(density @ to_first_bin)
        atoms.append(float(density @ to_zero))
        densities.append(moved)
    shares = np.empty(n)
    g = np.ones(x.size)
    for k in range(n - 1, -1, -1):
        passed = masked(g)
        g = rho[k] * float(densities[k] @ passed) + passed
        mean = float(densities[k] @ g)
        shares[k] = 1.0 - atoms[k] * g[0] / mean
        g = g / mean
    return shares
