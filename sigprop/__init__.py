"""sigprop: measure signal propagation at initialization in PyTorch residual networks.

>>> import sigprop
>>> net = sigprop.models.resnet(16, seed=0)
>>> trace = sigprop.measure(net, sigprop.InputSpec("gaussian", (8, 3, 16, 16), seed=0))
>>> trace.n_blocks
16

Names are imported on first use (PEP 562), so that ``import sigprop`` and the command line's
``--help`` do not import torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sigprop._version import __version__

if TYPE_CHECKING:
    from sigprop import models
    from sigprop._moments import moments
    from sigprop.blocks import ResidualAdd
    from sigprop.finding import NoResidualBlockError
    from sigprop.planning import Plan
    from sigprop.recording import (
        BackwardError,
        ForwardError,
        MeasurementError,
        find_blocks,
        gaussian_input,
        measure,
        token_input,
    )
    from sigprop.trace import (
        BatchNorms,
        Block,
        BlockStats,
        BNMode,
        Direction,
        Gradients,
        GradRole,
        InputKind,
        InputSpec,
        Moments,
        Run,
        Shortcut,
        Stat,
        TensorRole,
        Trace,
        TraceFormatError,
    )

_WHERE = {
    "models": "sigprop.models",
    "moments": "sigprop._moments",
    "ResidualAdd": "sigprop.blocks",
    "NoResidualBlockError": "sigprop.finding",
    "Plan": "sigprop.planning",
    **dict.fromkeys(["BackwardError", "ForwardError", "MeasurementError", "find_blocks",
                     "gaussian_input", "measure", "token_input"], "sigprop.recording"),
    **dict.fromkeys(["BatchNorms", "Block", "BlockStats", "BNMode", "Direction", "Gradients",
                     "GradRole", "InputKind", "InputSpec",
                     "Moments", "Run", "Shortcut", "Stat", "TensorRole", "Trace",
                     "TraceFormatError"], "sigprop.trace"),
}

__all__ = [
    "BNMode",
    "BackwardError",
    "BatchNorms",
    "Block",
    "BlockStats",
    "Direction",
    "ForwardError",
    "GradRole",
    "Gradients",
    "InputKind",
    "InputSpec",
    "MeasurementError",
    "Moments",
    "NoResidualBlockError",
    "Plan",
    "ResidualAdd",
    "Run",
    "Shortcut",
    "Stat",
    "TensorRole",
    "Trace",
    "TraceFormatError",
    "__version__",
    "find_blocks",
    "gaussian_input",
    "measure",
    "models",
    "moments",
    "token_input",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name, f"sigprop.{name}")  # else a submodule: sigprop.stats ...
    try:
        module = importlib.import_module(where)
    except ModuleNotFoundError as e:
        if e.name != where:
            raise
        raise AttributeError(f"module 'sigprop' has no attribute {name!r}") from None
    value = module if where == f"sigprop.{name}" else getattr(module, name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
