"""Where a model comes from: torchvision, timm, or a user's ``file.py:callable``.

Every failure a user can fix becomes a ``ValueError`` with one readable line, which
``_run.run`` turns into an ``error:`` line and exit code 2.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from sigprop.sources import Builder, seeded, timm_builder, torchvision_builder

__all__ = ["Builder", "parse_kwargs", "parse_shape", "spec_builder", "timm_builder",
           "torchvision_builder"]


def parse_kwargs(pairs: list[str]) -> dict[str, Any]:
    """``["depth=3", "name=x"]`` -> ``{"depth": 3, "name": "x"}`` (Python literals, else text)."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--arg {pair!r} must be key=value with a Python name as key")
        try:
            kwargs[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[key] = text
    return kwargs


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3,32,32"`` -> ``(3, 32, 32)``: the shape of one input, without the batch."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(n < 1 for n in shape):
        raise ValueError(
            f"--input-shape {text!r} must be positive integers separated by commas, e.g. 3,32,32"
        )
    return shape


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
        name = f"_sigprop_user_{path.stem}"
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


def spec_builder(spec: str, kwargs: dict[str, Any]) -> Builder:
    """A builder calling the user's ``file.py:callable`` or ``module:callable`` on kwargs."""
    make = _load(spec)

    def build(seed: int) -> tuple[nn.Module, dict[str, Any]]:
        try:
            model = seeded(seed, lambda: make(**kwargs))
        except Exception as e:
            raise ValueError(f"{spec} raised {type(e).__name__}: {e}") from e
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"{spec} returned a value of type {type(model).__name__}, not a torch.nn.Module"
            )
        return model, {"source": "model", "name": spec, **{k: _plain(v) for k, v in
                                                            kwargs.items()}}

    return build


def _plain(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool) or value is None else repr(value)
