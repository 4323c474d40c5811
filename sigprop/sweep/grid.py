"""A sweep's grid: axes of values, their product, and the points it holds.

A grid is one or more *products* of axes (``depth = [16, 64]``, ``norm = ["batchnorm", "none"]``)
times ``seeds`` replicates. Every point is a configuration (one value per axis) and a replicate
number; its key hashes the configuration, the sweep seed and the sigprop version, and its seed
is derived from the sweep seed and the configuration, so a point gives the same numbers whoever
computes it and in whatever order. Every check a user can fail is made here, before any work,
as a one-line ``ValueError`` naming the value and the fix.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from sigprop._validate import check_int, parse_choice, parse_shape
from sigprop._version import __version__
from sigprop.config import ResNetConfig
from sigprop.recording import BNMode
from sigprop.sources import ModelSource, Source

__all__ = ["INPUT_AXES", "RESNET_AXES", "Grid", "Point"]

Axes = tuple[tuple[str, tuple[Any, ...]], ...]
"""One product of the grid: each axis's name and values, in order."""

INPUT_AXES = ("batch_size", "image_size", "bn_mode")
"""Axes of the input and of the measurement; every other axis is an argument of the builder."""

RESNET_AXES = tuple(f.name for f in fields(ResNetConfig))
"""Builder arguments of the built-in ResNet (:func:`sigprop.models.resnet`)."""

_DEFAULTS: dict[str, Any] = {"model": "resnet", "batch_size": 32, "image_size": 32,
                             "bn_mode": BNMode.TRAIN.value}
_TOP_LEVEL = ("model", "seeds", "seed", "input_shape", "device", "backward", "grid")
_SEED_RANGE = 2**31  # seeds fit every RNG and every JSON reader


@dataclass(frozen=True, slots=True)
class Point:
    """One grid point: a configuration, a replicate, and what follows from them.

    Attributes:
        config: the value of every axis of its product, in the grid's order (``model``,
            builder arguments, ``batch_size``, ``image_size`` when the input is an image,
            ``bn_mode``).
        replicate: its replicate number, 0 .. seeds - 1.
        seed: the seed of its weights and its Gaussian input, derived from the sweep seed, the
            configuration and the replicate.
        key: the hash naming its result file: configuration, replicate, input, device, sweep
            seed and sigprop version.
        input_shape: the shape of its input batch.
        device: the torch device it is measured on.
        backward: whether its measurement also records the gradients (``measure(...,
            backward=True)``).
    """

    config: tuple[tuple[str, Any], ...]
    replicate: int
    seed: int
    key: str
    input_shape: tuple[int, ...]
    device: str
    backward: bool = False

    @property
    def settings(self) -> dict[str, Any]:
        """The configuration as a dict."""
        return dict(self.config)

    @property
    def source(self) -> ModelSource:
        """The model to build: the ``model`` axis with the builder arguments."""
        return _source(self.settings)

    @property
    def bn_mode(self) -> BNMode:
        """The batch-norm mode of its measurement."""
        return BNMode(self.settings["bn_mode"])


@dataclass(frozen=True, slots=True)
class Grid:
    """A sweep's grid: one or more products of axes, and the options every point shares.

    Attributes:
        products: each product's axes (name and values, in order); the grid holds the union of
            their points. Axes not given take their defaults (``model = "resnet"``,
            ``batch_size = 32``, ``image_size = 32`` unless ``input_shape`` is given,
            ``bn_mode = "train"``).
        seeds: replicates of every configuration, each with its own derived seed.
        seed: the sweep seed every point's seed is derived from.
        input_shape: shape of one input without the batch (default ``(3, image_size,
            image_size)``); with it, ``image_size`` is not an axis.
        device: torch device of every point.
        backward: every point also records the gradients of one backward pass.

    >>> grid = Grid.from_mapping({"grid": {"depth": [2, 4], "norm": ["batchnorm", "none"]},
    ...                           "seeds": 2})
    >>> points = grid.points()
    >>> len(points), points[0].settings["depth"], points[0].input_shape
    (8, 2, (32, 3, 32, 32))
    """

    products: tuple[Axes, ...]
    seeds: int = 1
    seed: int = 0
    input_shape: tuple[int, ...] | None = None
    device: str = "cpu"
    backward: bool = False

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any]) -> Grid:
        """A grid from the form of a TOML file: ``model``, ``seeds``, ``seed``,
        ``input_shape``, ``device``, ``backward``, and ``grid``, a table of axes (or an array
        of tables).

        A list is an axis of several values; any other value is an axis of one value.
        """
        unknown = sorted(set(doc) - set(_TOP_LEVEL))
        if unknown:
            raise ValueError(f"unknown sweep setting {unknown[0]!r}"
                             f"{_did_you_mean(unknown[0], _TOP_LEVEL)}: the top level takes "
                             f"{', '.join(_TOP_LEVEL)}; put axes under [grid]")
        tables = doc.get("grid", {})
        if isinstance(tables, Mapping):
            tables = [tables]
        if not isinstance(tables, list) or not all(isinstance(t, Mapping) for t in tables):
            raise ValueError("grid must be a table of axes ([grid]) or an array of tables "
                             "([[grid]])")
        if not tables:
            raise ValueError("the grid has no points: give at least one [[grid]] table")
        products = []
        for table in tables:
            axes = {name: tuple(v) if isinstance(v, list) else (v,) for name, v in table.items()}
            if "model" in doc:
                if "model" in axes:
                    raise ValueError("model is given twice: at the top level and in [grid]")
                axes = {"model": (doc["model"],), **axes}
            products.append(tuple(axes.items()))
        shape = doc.get("input_shape")
        backward = doc.get("backward", False)
        if not isinstance(backward, bool):
            raise ValueError(f"backward {backward!r} must be true or false")
        grid = cls(tuple(products), seeds=doc.get("seeds", 1), seed=doc.get("seed", 0),
                   input_shape=None if shape is None else parse_shape(shape, "input_shape"),
                   device=doc.get("device", "cpu"), backward=backward)
        grid.points()  # validate now
        return grid

    @classmethod
    def from_toml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> Grid:
        """The grid of a TOML file, with ``overrides`` (e.g. from the command line) applied:
        axes replace the file's axes in every product, settings replace its settings."""
        try:
            doc = tomllib.loads(Path(path).read_text())
        except OSError as e:
            raise ValueError(f"cannot read the grid file {str(path)!r}: "
                             f"{e.strerror or e}") from e
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"the grid file {str(path)!r} is not valid TOML: {e}") from e
        return cls.from_mapping(_override(doc, overrides or {}))

    def points(self) -> tuple[Point, ...]:
        """Every point of the grid, product by product, replicates innermost; checked.

        Raises:
            ValueError: an empty axis, an unknown axis or value, or a configuration the
                builder rejects, naming it.
        """
        try:
            return self._points()
        except TypeError as e:  # check_int's: a value of the wrong type
            raise ValueError(str(e)) from e

    def _points(self) -> tuple[Point, ...]:
        check_int("seeds", self.seeds, 1, "replicate")
        check_int("seed", self.seed, 0, "(the sweep seed)")
        _check_device(self.device)
        seen: dict[str, Point] = {}
        checked: set[str] = set()  # model names and files already checked (loaded once)
        for axes in self.products:
            names = [name for name, _ in axes]
            for name, values in axes:
                if not values:
                    raise ValueError(f"grid axis {name!r} is empty: give it at least one value")
            if len(set(names)) != len(names):
                raise ValueError(f"grid axis {_first_repeat(names)!r} is given twice")
            for values in itertools.product(*(v for _, v in axes)):
                config = self._complete(dict(zip(names, values, strict=True)), checked)
                shape = self._input_shape(config)
                for replicate in range(self.seeds):
                    point = self._point(config, shape, replicate)
                    seen.setdefault(point.key, point)
        return tuple(seen.values())

    def to_dict(self) -> dict[str, Any]:
        """The grid as plain JSON values (for sweep.json)."""
        return {"grid": [{name: list(values) for name, values in axes}
                         for axes in self.products],
                "seeds": self.seeds, "seed": self.seed,
                "input_shape": None if self.input_shape is None else list(self.input_shape),
                "device": self.device, "backward": self.backward}

    def _complete(self, config: dict[str, Any], checked: set[str]) -> dict[str, Any]:
        """Defaults filled in, values checked: a one-line ValueError naming the first bad one."""
        defaults = dict(_DEFAULTS)
        if self.input_shape is not None:
            if "image_size" in config:
                raise ValueError("image_size is an axis and input_shape is given: drop one "
                                 "(input_shape is the whole shape of one input)")
            del defaults["image_size"]
        config = {**{"model": defaults.pop("model")}, **config}
        for name, value in defaults.items():
            config.setdefault(name, value)
        config["bn_mode"] = parse_choice(BNMode, config["bn_mode"], "bn_mode").value
        check_int("batch_size", config["batch_size"], 1, "image")
        if "image_size" in config:
            check_int("image_size", config["image_size"], 1, "pixel")
        _check_source(config, checked)
        return config

    def _input_shape(self, config: Mapping[str, Any]) -> tuple[int, ...]:
        one = self.input_shape or (3, config["image_size"], config["image_size"])
        return (config["batch_size"], *one)

    def _point(self, config: dict[str, Any], shape: tuple[int, ...], replicate: int) -> Point:
        identity = {"config": config, "replicate": replicate, "input_shape": list(shape)}
        seed = int(_digest(identity | {"sweep_seed": self.seed}), 16) % _SEED_RANGE
        measured = {"sweep_seed": self.seed, "device": self.device, "sigprop": __version__}
        if self.backward:  # forward-only keys stay what they were
            measured["backward"] = True
        key = _digest(identity | measured)[:16]
        return Point(tuple(config.items()), replicate, seed, key, shape, self.device,
                     self.backward)


def _digest(doc: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _source(config: Mapping[str, Any]) -> ModelSource:
    model = config["model"]
    if not isinstance(model, str):
        raise ValueError(f"model {model!r} must be a string: resnet, torchvision:NAME, "
                         "timm:NAME or model:FILE.py:CALLABLE")
    kwargs = {k: v for k, v in config.items() if k != "model" and k not in INPUT_AXES}
    return ModelSource.parse(model, **kwargs)


def _check_source(config: Mapping[str, Any], checked: set[str]) -> None:
    source = _source(config)
    kwargs = dict(source.kwargs)
    if source.source is Source.RESNET:
        unknown = sorted(set(kwargs) - set(RESNET_AXES))
        if unknown:
            raise ValueError(f"unknown grid axis {unknown[0]!r}"
                             f"{_did_you_mean(unknown[0], RESNET_AXES + INPUT_AXES)}: the "
                             f"resnet takes {', '.join(RESNET_AXES)}; the input "
                             f"{', '.join(INPUT_AXES)}")
        if "depth" not in kwargs:
            raise ValueError("the resnet needs a depth: give --depth (or depth in [grid])")
        try:
            ResNetConfig(**kwargs)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{_describe(config)}: {e}") from e
        return
    if kwargs and source.source is not Source.MODEL:
        raise ValueError(f"{source} takes no builder arguments, got {', '.join(kwargs)}: "
                         f"sweep them with model = resnet or model:FILE.py:CALLABLE")
    if str(source) not in checked:
        ModelSource(source.source, source.name).builder()  # the name exists, the file loads
        checked.add(str(source))


def _check_device(device: str) -> None:
    # The device need not exist here: on a cluster, the workers have the GPUs.
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")


def _describe(config: Mapping[str, Any]) -> str:
    return "grid point " + ", ".join(f"{k}={v}" for k, v in config.items())


def _override(doc: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(doc)
    axes = {k: v for k, v in overrides.items() if k not in _TOP_LEVEL or k == "model"}
    merged.update({k: v for k, v in overrides.items() if k in _TOP_LEVEL and k != "model"})
    tables = merged.get("grid", {})
    tables = [tables] if isinstance(tables, Mapping) else tables
    if axes and isinstance(tables, list):
        if "model" in axes:
            merged.pop("model", None)
        merged["grid"] = [{**t, **axes} if isinstance(t, Mapping) else t for t in tables or [{}]]
    return merged


def _first_repeat(names: Sequence[str]) -> str:
    return next(n for i, n in enumerate(names) if n in names[:i])


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""

