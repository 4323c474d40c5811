"""The configuration of a built-in ResNet: one typed, frozen record with one serialization.

The builder (:func:`sigprop.models.resnet`) makes it, the network carries it, a measurement
records it (``trace.model`` is its :meth:`ResNetConfig.to_dict`), and the theory answers from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from sigprop._validate import check_int, parse_choice

__all__ = ["Norm", "Order", "Padding", "ResNetConfig", "Variant"]

NAME = "resnet"
"""``trace.model["name"]`` of a built-in ResNet."""


class Variant(StrEnum):
    """Where normalization and activation sit in a block."""

    V1 = "v1"  # post-activation: Conv-BN-ReLU-Conv-BN branch, ReLU after the addition
    V2 = "v2"  # pre-activation: BN-ReLU-Conv-BN-ReLU-Conv branch, identity skip


class Norm(StrEnum):
    """How the residual branch is normalized or scaled."""

    BATCHNORM = "batchnorm"
    NONE = "none"
    SKIPINIT = "skipinit"  # no BN; a learnable scalar alpha ends every branch
    SQRT_DEPTH = "sqrt-depth"  # no BN; every branch is divided by sqrt(number of blocks)
    NF = "nf"  # normalizer-free (v2): x + alpha f(x / beta), scaled WS convs, scaled ReLU
    FIXUP = "fixup"  # no BN; last branch layer zero, the others scaled by depth^(-1/2)


class Order(StrEnum):
    """Order of normalization and activation inside a v2 branch."""

    BN_RELU = "bn-relu"  # BN-ReLU-Conv, the paper's pre-activation block
    RELU_BN = "relu-bn"  # ReLU-BN-Conv: the convolution sees zero-mean, unit-variance inputs


class Padding(StrEnum):
    """How the 3x3 convolutions pad the border of the feature map."""

    ZEROS = "zeros"  # the paper's (and every library's) default: border outputs see fewer taps
    CIRCULAR = "circular"  # the map wraps around: every position sees a full 3x3 neighbourhood


# The norms that take a branch gain ``alpha``, with its default.
_ALPHA_DEFAULT = {Norm.SKIPINIT: 0.0, Norm.NF: 0.2}

_CHOICES: dict[str, type[StrEnum]] = {"variant": Variant, "norm": Norm, "order": Order,
                                      "padding": Padding}


@dataclass(frozen=True, slots=True)
class ResNetConfig:
    """The builder arguments of a built-in ResNet, validated.

    Attributes:
        depth: number of residual blocks, >= 1 (each block holds two 3x3 convolutions).
        variant: ``v2`` pre-activation (BN-ReLU-Conv) or ``v1`` post-activation.
        norm: ``batchnorm``, ``none``, ``skipinit``, ``sqrt-depth``, ``nf`` (v2 only) or
            ``fixup``.
        width: channels of the first stage; each later stage doubles it.
        stages: number of stages (each later one halves the resolution).
        alpha: the branch gain: SkipInit's initial one (0.0 by default with
            ``norm="skipinit"``) or the NF-ResNet's fixed one (0.2 by default with
            ``norm="nf"``); None for the other norms.
        order: ``bn-relu`` or ``relu-bn`` (v2 with batch norm only).
        padding: ``zeros`` or ``circular``, for the 3x3 convolutions.
        in_channels: channels of the input images.
        num_classes: outputs of the linear head.
        nf_zero_init: with ``norm="nf"``, initialize the gain of every branch's last
            convolution to 0 (every block starts as the identity); False for the others.
        fixup_zero_last: with ``norm="fixup"``, zero-initialize the last convolution of every
            branch (Fixup's rule; False studies the scaled non-zero variant); True for the
            others, where it has no effect.

    >>> config = ResNetConfig(8, norm="skipinit")
    >>> config.alpha, ResNetConfig.from_dict(config.to_dict()) == config
    (0.0, True)
    """

    depth: int
    variant: Variant = Variant.V2
    norm: Norm = Norm.BATCHNORM
    width: int = 16
    stages: int = 1
    alpha: float | None = None
    order: Order = Order.BN_RELU
    padding: Padding = Padding.ZEROS
    in_channels: int = 3
    num_classes: int = 10
    nf_zero_init: bool = False
    fixup_zero_last: bool = True

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            object.__setattr__(self, name, parse_choice(choices, getattr(self, name), name))
        if self.order is not Order.BN_RELU and (self.variant is not Variant.V2
                                                or self.norm is not Norm.BATCHNORM):
            raise ValueError(
                f"order {self.order.value!r} applies only to variant='v2' with "
                f"norm='batchnorm', got variant='{self.variant}', norm='{self.norm}'")
        check_int("depth", self.depth, 1, "residual block")
        check_int("width", self.width, 1, "channel")
        check_int("stages", self.stages, 1, "stage")
        check_int("in_channels", self.in_channels, 1, "channel")
        check_int("num_classes", self.num_classes, 1, "class")
        if self.stages > self.depth:
            raise ValueError(f"stages must be <= depth ({self.depth}), got {self.stages}: "
                             "every stage needs a block")
        if self.alpha is not None and self.norm not in _ALPHA_DEFAULT:
            raise ValueError(f"alpha applies only to norm='skipinit' or norm='nf', got "
                             f"alpha={self.alpha} with norm='{self.norm}'")
        if self.alpha is not None and not math.isfinite(self.alpha):
            raise ValueError(f"alpha must be a finite number, got {self.alpha}")
        if self.norm is Norm.NF and self.variant is not Variant.V2:
            raise ValueError(f"norm='nf' is built on the pre-activation layout: use "
                             f"variant='v2', got variant='{self.variant}'")
        for flag, norm, default in (("nf_zero_init", Norm.NF, False),
                                    ("fixup_zero_last", Norm.FIXUP, True)):
            value = getattr(self, flag)
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be True or False, got {value!r}")
            if value is not default and self.norm is not norm:
                raise ValueError(f"{flag}={value} applies only to norm='{norm}', got "
                                 f"norm='{self.norm}': leave it at {default}")
        if self.norm in _ALPHA_DEFAULT:
            alpha = _ALPHA_DEFAULT[self.norm] if self.alpha is None else float(self.alpha)
            object.__setattr__(self, "alpha", alpha)

    def to_dict(self) -> dict[str, Any]:
        """The plain form in ``trace.model`` and stats.json: ``{"name": "resnet", ...}``."""
        doc: dict[str, Any] = {"name": NAME}
        for field in fields(self):
            value = getattr(self, field.name)
            doc[field.name] = value.value if isinstance(value, StrEnum) else value
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ResNetConfig:
        """The inverse of :meth:`to_dict`; keys missing from older traces take their defaults.

        Raises ``ValueError`` when ``doc`` is not a built-in ResNet's configuration.
        """
        if doc.get("name") != NAME:
            raise ValueError(f"not a built-in ResNet configuration: name {doc.get('name')!r}")
        known = {field.name for field in fields(cls)}
        try:
            return cls(**{k: v for k, v in doc.items() if k in known})
        except TypeError as e:
            raise ValueError(f"not a built-in ResNet configuration: {e}") from e

    @classmethod
    def of(cls, model: Mapping[str, Any]) -> ResNetConfig | None:
        """The configuration recorded in ``trace.model``, or None for any other model."""
        return cls.from_dict(model) if model.get("name") == NAME else None
