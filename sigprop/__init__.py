"""sigprop: measure signal propagation at initialization in PyTorch residual networks.

>>> import sigprop
>>> net = sigprop.models.resnet(16, seed=0)
>>> trace = sigprop.measure(net, sigprop.InputSpec("gaussian", (8, 3, 16, 16), seed=0))
>>> trace.n_blocks
16
"""

from sigprop import models
from sigprop._moments import moments
from sigprop._version import __version__
from sigprop.blocks import ResidualAdd
from sigprop.finding import NoResidualBlockError
from sigprop.recording import (
    BackwardError,
    BNMode,
    ForwardError,
    find_blocks,
    gaussian_input,
    measure,
)
from sigprop.trace import (
    BatchNorms,
    Block,
    BlockStats,
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
    "Moments",
    "NoResidualBlockError",
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
]
