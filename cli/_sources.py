"""Parsing the command line's model options: ``--arg key=value``, literal values, ``--input``.

Models are built by the library's one registry, :class:`sigprop.sources.ModelSource`. Every
failure a user can fix becomes a ``ValueError`` with one readable line, which the command turns
into an ``error:`` line and exit code 2.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["load_input", "parse_kwargs", "parse_literal"]


def parse_kwargs(pairs: list[str]) -> dict[str, Any]:
    """``["depth=3", "name=x"]`` -> ``{"depth": 3, "name": "x"}`` (Python literals, else text)."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--arg {pair!r} must be key=value with a Python name as key")
        kwargs[key] = parse_literal(text)
    return kwargs


def parse_literal(text: str) -> Any:
    """A Python literal (``3``, ``0.5``, ``None``, ``True``), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_input(path: Path, device: torch.device) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The model's inputs saved in ``path`` by ``torch.save``: ``(args, kwargs)`` for its forward.

    A tensor is the one positional input, a list or tuple of tensors several, a dict of tensors
    keyword inputs (``input_ids``, ``attention_mask``). Loaded with ``weights_only=True``: a
    file can hold tensors and plain containers only, never code.
    """
    import torch
    try:
        loaded = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"--input {str(path)!r}: no such file") from None
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
        raise ValueError(f"--input {str(path)!r} cannot be loaded with weights_only=True: save "
                         "a tensor, a list or a dict of tensors with torch.save") from e
    first = next(iter(loaded.values() if isinstance(loaded, dict) else
                      loaded if isinstance(loaded, list | tuple) else [loaded]), None)
    if isinstance(first, torch.Tensor) and (first.ndim == 0 or first.shape[0] == 0):
        raise ValueError(f"--input {str(path)!r}: the first tensor must have a batch "
                         f"dimension of size >= 1, got shape {tuple(first.shape)}")
    if isinstance(loaded, torch.Tensor):
        return (loaded,), {}
    if isinstance(loaded, list | tuple) and loaded and all(
            isinstance(t, torch.Tensor) for t in loaded):
        return tuple(loaded), {}
    if isinstance(loaded, dict) and loaded and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()):
        return (), dict(loaded)
    raise ValueError(f"--input {str(path)!r} must hold a tensor, a list of tensors or a dict of "
                     f"named tensors, got {type(loaded).__name__}")
