"""Whose error is it: the model's forward, or sigprop's own code running inside it?

During a measured forward pass sigprop's hooks, reducers, discovery mode and the progress callback
run inside the model's call. An exception that escapes the call is the model's when it was raised
in the model's code or in one of the model's own operations; it is sigprop's when it was raised in
sigprop's code, or in code sigprop called (the progress callback).

The traceback is read from the outside in: a frame of sigprop's code makes the error sigprop's,
a frame of model code (a built-in model's forward, :class:`~sigprop.ResidualAdd`'s addition, or
the place where discovery runs one of the model's operations: :func:`runs_model_code`) makes it
the model's again; frames of other code (torch, the user's) leave the verdict as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import CodeType, TracebackType
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])

_PACKAGE = Path(__file__).resolve().parent
_MODEL_FILES = {str(_PACKAGE / "models.py")}  # the built-in networks are model code
_MODEL_CODE: set[CodeType] = set()


def runs_model_code(function: F) -> F:
    """Mark a sigprop function that runs the model's own operations: an exception raised in its
    frame (by the operation it runs) is the model's, not sigprop's."""
    _MODEL_CODE.add(function.__code__)
    return function


def sigprop_raised(traceback: TracebackType | None) -> bool:
    """True if the exception with this traceback (from the call of the model outwards) was
    raised in sigprop's own code, False if in the model's."""
    ours = False
    while traceback is not None:
        code = traceback.tb_frame.f_code
        if code in _MODEL_CODE or code.co_filename in _MODEL_FILES:
            ours = False
        elif _is_sigprop_file(code.co_filename):
            ours = True
        traceback = traceback.tb_next
    return ours


def _is_sigprop_file(filename: str) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(_PACKAGE)
    except (OSError, ValueError):  # "<string>" and other pseudo-files
        return False
