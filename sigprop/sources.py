"""Where a model comes from: the one registry that builds a model from a name.

The CLI, the figure set and the benchmarks all build models here: a built-in ResNet, a
torchvision or timm model (without weights), or a user's ``file.py:callable``. Every failure a
user can fix is a ``ValueError`` with one readable line. torchvision and timm are optional
(``pip install 'sigprop[compat]'``) and imported on use.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from sigprop._validate import parse_choice

__all__ = ["Builder", "ModelSource", "Source", "seeded"]

Builder = Callable[[int], tuple[nn.Module, dict[str, Any]]]
"""seed -> (the model built from that seed, the configuration recorded with it)."""


class Source(StrEnum):
    """Where a model comes from."""

    RESNET = "resnet"  # sigprop.models.resnet, with its keyword arguments
    TORCHVISION = "torchvision"  # a torchvision classification model, no weights
    TIMM = "timm"  # a timm model, pretrained=False
    MODEL = "model"  # the user's path/to/file.py:callable or package.module:callable


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A model to build: its source, its name there and the builder's keyword arguments.

    Attributes:
        source: where it comes from.
        name: the torchvision or timm model name, the user's ``file.py:callable`` or
            ``module:callable``; empty for the built-in ResNet.
        kwargs: keyword arguments of the builder (the ResNet's, or the user callable's).

    >>> net, info = ModelSource.parse("resnet", depth=4).builder()(0)
    >>> len(net.blocks), info["depth"]
    (4, 4)
    """

    source: Source
    name: str = ""
    kwargs: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, text: str, **kwargs: Any) -> ModelSource:
        """``resnet``, ``torchvision:NAME``, ``timm:NAME`` or ``model:FILE.py:CALLABLE``."""
        source, _, name = text.partition(":")
        parsed = parse_choice(Source, source, "model source")
        if (parsed is Source.RESNET) != (name == ""):
            raise ValueError(f"model {text!r}: write 'resnet' (with keyword arguments), or "
                             "torchvision:NAME, timm:NAME or model:FILE.py:CALLABLE")
        return cls(parsed, name, tuple(sorted(kwargs.items())))

    def __str__(self) -> str:
        return self.source.value + (f":{self.name}" if self.name else "")

    def builder(self) -> Builder:
        """Check the name now (a ValueError naming the fix) and return the builder."""
        kwargs = dict(self.kwargs)
        if self.source is Source.RESNET:
            return _resnet_builder(kwargs)
        if self.source is Source.TORCHVISION:
            return _torchvision_builder(self.name)
        if self.source is Source.TIMM:
            return _timm_builder(self.name)
        return _callable_builder(self.name, kwargs)


def seeded(seed: int, make: Callable[[], Any]) -> Any:
    """Call ``make`` with the torch RNG seeded, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def _unknown(kind: str, name: str, known: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown {kind} model {name!r}{hint}")


def _resnet_builder(kwargs: Mapping[str, Any]) -> Builder:
    from sigprop.models import resnet

    def build(seed: int) -> tuple[nn.Module, dict[str, Any]]:
        net = resnet(**kwargs, seed=seed)
        return net, net.config.to_dict()

    return build


def _torchvision_builder(name: str) -> Builder:
    try:
        import torchvision
    except ImportError as e:
        raise ValueError("torchvision is not installed: pip install 'sigprop[compat]'") from e
    known = sorted(torchvision.models.list_models(module=torchvision.models))
    if name not in known:
        raise _unknown("torchvision classification", name, known)

    def build(seed: int) -> tuple[nn.Module, dict[str, Any]]:
        model = seeded(seed, lambda: torchvision.models.get_model(name, weights=None))
        return model, {"source": "torchvision", "name": name}

    return build


def _timm_builder(name: str) -> Builder:
    try:
        import timm
    except ImportError as e:
        raise ValueError("timm is not installed: pip install 'sigprop[compat]'") from e
    if not timm.is_model(name):
        raise _unknown("timm", name, sorted(timm.list_models()))

    def build(seed: int) -> tuple[nn.Module, dict[str, Any]]:
        model = seeded(seed, lambda: timm.create_model(name, pretrained=False))
        return model, {"source": "timm", "name": name}

    return build


def _callable_builder(spec: str, kwargs: Mapping[str, Any]) -> Builder:
    """A builder calling the user's ``file.py:callable`` or ``module:callable`` on kwargs."""
    make = _load(spec)

    def build(seed: int) -> tuple[nn.Module, dict[str, Any]]:
        try:
            model = seeded(seed, lambda: make(**kwargs))
        except Exception as e:
            message = str(e) or "(no message; sigprop --debug shows the traceback)"
            raise ValueError(f"{spec} raised {type(e).__name__}: {message}") from e
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"{spec} returned a value of type {type(model).__name__}, not a torch.nn.Module"
            )
        return model, {"source": "model", "name": spec, **{k: _plain(v) for k, v in
                                                            kwargs.items()}}

    return build


def _load(spec: str) -> Callable[..., Any]:
    target, sep, attribute = spec.rpartition(":")
    if not sep or not target or not attribute:
        raise ValueError(
            f"model {spec!r} must be path/to/file.py:callable or package.module:callable"
        )
    module: ModuleType
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise ValueError(f"cannot load model {spec!r}: no such file {str(path)!r}")
        # Named after the whole path: two files with the same stem are two modules.
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        name = f"_sigprop_user_{_identifier(path.stem)}_{digest}"
        file_spec = importlib.util.spec_from_file_location(name, path)
        if file_spec is None or file_spec.loader is None:
            raise ValueError(f"cannot load model {spec!r}: {str(path)!r} is not a Python file")
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up by name
        try:
            file_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise ValueError(
                f"cannot load model {spec!r}: {path} raised {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:
            raise ValueError(
                f"cannot import {target!r} for model {spec!r}: {type(e).__name__}: {e}") from e
    builder = getattr(module, attribute, None)
    if builder is None:
        raise ValueError(f"cannot load model {spec!r}: {target} has no attribute {attribute!r}")
    if not callable(builder):
        raise ValueError(f"cannot load model {spec!r}: {attribute!r} is not callable")
    return builder  # type: ignore[no-any-return]


def _identifier(text: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in text)


def _plain(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool) or value is None else repr(value)
