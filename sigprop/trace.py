"""Frozen results of a measurement: per-block statistics of skip, residual and output."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sigprop._version import __version__

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "BNMode",
    "BatchNorms",
    "Block",
    "BlockStats",
    "Direction",
    "GradRole",
    "Gradients",
    "InputKind",
    "InputSpec",
    "Moments",
    "Run",
    "Shortcut",
    "Stat",
    "TensorRole",
    "Trace",
    "TraceFormatError",
]


class BNMode(StrEnum):
    """Which statistics batch-norm layers normalize with while measuring."""

    TRAIN = "train"  # batch statistics: the paper's setting at initialization
    EVAL = "eval"  # running statistics (mean 0 / var 1 when fresh: BN is then the identity)


class Shortcut(StrEnum):
    """What the skip path of a residual block computes."""

    IDENTITY = "identity"
    PROJECTION = "projection"


class TensorRole(StrEnum):
    """The three tensors recorded at every residual addition ``output = skip + residual``."""

    SKIP = "skip"
    RESIDUAL = "residual"
    OUTPUT = "output"


class GradRole(StrEnum):
    """The four gradients recorded at every residual block ``y = skip(x) + residual(x)``."""

    OUTPUT = "output"  # dL/dy
    SKIP = "skip"  # the part of dL/dx that flows back through the skip path
    RESIDUAL = "residual"  # the part of dL/dx that flows back through the residual branch
    INPUT = "input"  # dL/dx = skip + residual


class Direction(StrEnum):
    """Which pass a row of :meth:`Trace.to_frame` comes from."""

    FORWARD = "forward"
    BACKWARD = "backward"


class Stat(StrEnum):
    """Signal-propagation statistics of one tensor (see docs/theory.md)."""

    VAR = "var"
    SQ_MEAN = "sq_mean"


class TraceFormatError(ValueError):
    """A stats.json file that does not follow sigprop's schema."""


@dataclass(frozen=True, slots=True)
class Moments:
    """Per-channel moments of one tensor, averaged over channels.

    Attributes:
        var: average channel variance, ``mean_c sigma2_c`` (population variance per channel).
        sq_mean: average channel squared mean, ``mean_c mu_c**2``.
    """

    var: float
    sq_mean: float

    @property
    def m2(self) -> float:
        """Second moment ``var + sq_mean`` (the mean of ``x**2`` over all elements)."""
        return self.var + self.sq_mean

    @property
    def finite(self) -> bool:
        """True when both statistics are finite numbers."""
        return math.isfinite(self.var) and math.isfinite(self.sq_mean)


@dataclass(frozen=True, slots=True)
class Gradients:
    """Moments of the four gradients of one residual block (see :class:`GradRole`).

    Attributes:
        output: ``dL/dy`` at the block's sum ``y = skip + residual``.
        skip: ``J_skip^T dL/dy``, the part of ``dL/dx`` that flows through the skip path
            (``output`` itself for an identity shortcut).
        residual: ``J_branch^T dL/dy``, the part that flows through the residual branch.
        input: ``dL/dx = skip + residual``.
    """

    output: Moments
    skip: Moments
    residual: Moments
    input: Moments

    @property
    def ratio(self) -> float:
        """Residual/skip ratio of the gradients' second moments (0: the block passes the
        gradient through unchanged)."""
        return _safe_ratio(self.residual.m2, self.skip.m2)

    @property
    def finite(self) -> bool:
        """True when every statistic is finite."""
        return all(self.moments(role).finite for role in GradRole)

    def moments(self, role: GradRole) -> Moments:
        """The moments of the gradient playing ``role``."""
        return {"output": self.output, "skip": self.skip, "residual": self.residual,
                "input": self.input}[role]


@dataclass(frozen=True, slots=True)
class Block:
    """One call of a residual block in a forward pass: where its addition is and how to read it.

    Found once per pass (:func:`sigprop.find_blocks`) and carried, unchanged, into the trace:
    :class:`BlockStats` is a block with its statistics.

    Attributes:
        index: position among the residual additions executed, in call order, from 0.
        name: qualified name of the module owning the addition (``blocks.3``).
        stage: stage index; a projection shortcut after the first block starts a new stage, and
            so does a change of shape (width or resolution) from the previous block.
        shortcut: ``identity`` if the skip operand is the block input, ``projection`` if it is
            a transformation of it.
        channels_last: whether channels are the last dimension of the activations, so that
            statistics are per last dimension (transformer tokens ``(N, T, C)``) instead of per
            dimension 1 (False when read from an older stats.json, which did not record it).
        gain: the gain seen on the residual branch just before the addition, e.g.
            ``bn3.weight = 0`` (the branch is ~0 at initialization because of it) or
            ``gamma: mean |g| = 1e-06``; None when none was seen.
    """

    index: int
    name: str
    stage: int
    shortcut: Shortcut
    channels_last: bool = field(default=False, kw_only=True)
    gain: str | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class BlockStats(Block):
    """Statistics of one executed residual addition: a :class:`Block` and its moments.

    Attributes:
        skip, residual, output: moments of ``skip``, ``residual`` and ``skip + residual``.
        cross: ``mean(skip * residual)`` over all elements; 0 in expectation when the branch is
            independent of the skip path, as the theory assumes at initialization. It is derived
            from ``m2(output) - m2(skip) - m2(residual)``, so its absolute precision is about
            1e-7 times ``m2(output)`` (float32 sums).
        grad: moments of the block's gradients (``measure(..., backward=True)``); None when
            the backward pass was not measured.

    The block's own attributes (``index``, ``name``, ``stage``, ``shortcut``,
    ``channels_last``, ``gain``) are described in :class:`Block`.
    """

    skip: Moments
    residual: Moments
    output: Moments
    cross: float
    grad: Gradients | None = field(default=None, kw_only=True)

    @classmethod
    def of(cls, block: Block, skip: Moments, residual: Moments, output: Moments,
           cross: float, grad: Gradients | None = None) -> BlockStats:
        """``block`` with its statistics."""
        return cls(block.index, block.name, block.stage, block.shortcut, skip, residual, output,
                   cross, channels_last=block.channels_last, gain=block.gain, grad=grad)

    @property
    def ratio(self) -> float:
        """Residual/skip ratio of second moments (the sqrt(depth) law: ~1/(m2_0 + l))."""
        return _safe_ratio(self.residual.m2, self.skip.m2)

    @property
    def branch_norm_ratio(self) -> float:
        """``||residual|| / ||skip||``: how far the block moves its skip path (0: identity)."""
        return math.sqrt(self.ratio) if self.ratio >= 0 else math.nan

    @property
    def cosine(self) -> float:
        """Cosine similarity between the skip operand and the output, over all elements.

        1 means the block is the identity on its skip path (the block input itself for an
        identity shortcut). With an independent branch it is ``1 / sqrt(1 + ratio)``.
        """
        return _safe_ratio(self.skip.m2 + self.cross, math.sqrt(self.skip.m2 * self.output.m2))

    @property
    def correlation(self) -> float:
        """``cross / sqrt(m2_skip * m2_residual)``: the skip/branch correlation (theory: 0)."""
        return _safe_ratio(self.cross, math.sqrt(self.skip.m2 * self.residual.m2))

    @property
    def finite(self) -> bool:
        """True when every statistic of the block is finite."""
        return (self.skip.finite and self.residual.finite and self.output.finite
                and math.isfinite(self.cross))

    def moments(self, role: TensorRole) -> Moments:
        """The moments of the tensor playing ``role`` in the addition."""
        return {"skip": self.skip, "residual": self.residual, "output": self.output}[role]


@dataclass(frozen=True, slots=True)
class Run:
    """One forward pass: its seed (None if unknown) and the blocks in call order."""

    seed: int | None
    blocks: tuple[BlockStats, ...]

    @property
    def first_overflow(self) -> int | None:
        """Index of the first block with a non-finite statistic, or None if all are finite."""
        return next((b.index for b in self.blocks if not b.finite), None)


class InputKind(StrEnum):
    """Where the input batch came from."""

    GAUSSIAN = "gaussian"  # generated by sigprop: i.i.d. unit Gaussian from a seed
    TENSOR = "tensor"  # the caller's tensor


@dataclass(frozen=True, slots=True)
class InputSpec:
    """How the input batch was made: its kind (an :class:`InputKind`), shape and seed.

    >>> InputSpec("gaussian", (8, 3, 32, 32), 0).kind is InputKind.GAUSSIAN
    True
    """

    kind: str  # an InputKind: a plain string is checked and converted
    shape: tuple[int, ...]
    seed: int | None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", InputKind(self.kind))
        except ValueError:
            kinds = ", ".join(repr(k.value) for k in InputKind)
            raise ValueError(f"unknown input kind {self.kind!r}: choose one of {kinds}") from None


@dataclass(frozen=True, slots=True)
class BatchNorms:
    """The measured model's batch-norm layers, counted before the forward pass.

    Attributes:
        layers: batch-norm layers in the model.
        fresh: of which with fresh running statistics (mean 0, variance 1): in eval mode these
            are the identity, and a BN network behaves as an unnormalized one.
    """

    layers: int
    fresh: int


@dataclass(frozen=True, slots=True)
class Trace:
    """Measured statistics of one model over one or more runs (seeds).

    Attributes:
        model: configuration of the model (plain strings and numbers), e.g. its builder arguments.
        input: how the input was made.
        bn_mode: ``train`` (batch statistics, the paper's setting) or ``eval``.
        runs: one entry per seed, each with the blocks in call order.
        batchnorms: the model's batch-norm layers (None in traces of sigprop before 0.2).
        sigprop_version: version of sigprop that measured it.

    >>> import torch, sigprop
    >>> net = sigprop.models.resnet(4, seed=0)
    >>> trace = sigprop.measure(net, sigprop.gaussian_input((8, 3, 8, 8), seed=0))
    >>> trace.n_blocks, trace.runs[0].blocks[0].name
    (4, 'blocks.0')
    """

    model: Mapping[str, Any]
    input: InputSpec
    bn_mode: str
    runs: tuple[Run, ...]
    batchnorms: BatchNorms | None = None
    sigprop_version: str = field(default=__version__)

    @property
    def n_blocks(self) -> int:
        """Number of residual blocks executed in one forward pass."""
        return len(self.runs[0].blocks) if self.runs else 0

    @property
    def first_overflow(self) -> int | None:
        """The first block with a non-finite statistic in any run, or None if all are finite."""
        found = [run.first_overflow for run in self.runs if run.first_overflow is not None]
        return min(found) if found else None

    @property
    def has_gradients(self) -> bool:
        """True when every block of every run carries gradient statistics."""
        return self.n_blocks > 0 and all(b.grad is not None for _, b in self.blocks())

    @property
    def seeds(self) -> tuple[int | None, ...]:
        """The seed of every run."""
        return tuple(run.seed for run in self.runs)

    def blocks(self) -> Iterator[tuple[int | None, BlockStats]]:
        """Every block of every run, as ``(seed, block)`` pairs."""
        for run in self.runs:
            for block in run.blocks:
                yield run.seed, block

    def by_stage(self, run: int = 0) -> dict[int, tuple[BlockStats, ...]]:
        """The blocks of run number ``run`` grouped by stage, in call order."""
        stages: dict[int, list[BlockStats]] = {}
        for block in self.runs[run].blocks:
            stages.setdefault(block.stage, []).append(block)
        return {stage: tuple(blocks) for stage, blocks in stages.items()}

    def __hash__(self) -> int:
        # The model is a mapping (plain JSON values): hash its canonical JSON.
        model = json.dumps(dict(self.model), sort_keys=True, default=str)
        return hash((model, self.input, self.bn_mode, self.runs, self.batchnorms,
                     self.sigprop_version))

    def merge(self, other: Trace) -> Trace:
        """The runs of both traces in one trace; model, BN mode, input kind and shape, and the
        number of blocks must match (the seeds differ)."""
        if dict(self.model) != dict(other.model) or self.bn_mode != other.bn_mode:
            raise ValueError(
                "cannot merge traces of different models or BN modes: "
                f"{dict(self.model)} ({self.bn_mode}) vs {dict(other.model)} ({other.bn_mode})"
            )
        if (self.input.kind, self.input.shape) != (other.input.kind, other.input.shape):
            raise ValueError(
                "cannot merge traces of different inputs: "
                f"{self.input.kind} {self.input.shape} vs {other.input.kind} {other.input.shape}")
        if self.n_blocks != other.n_blocks:
            raise ValueError(
                f"cannot merge traces with {self.n_blocks} and {other.n_blocks} blocks"
            )
        return Trace(self.model, self.input, self.bn_mode, self.runs + other.runs,
                     self.batchnorms)

    def plot(self, **kwargs: Any) -> Figure:
        """The signal-propagation plot of this trace (:func:`sigprop.plotting.plot_spp`).

        Keyword arguments go to ``plot_spp`` (``theory``, ``labels``, ``axes``). In a notebook
        the returned figure is shown inline.
        """
        from sigprop.plotting import plot_spp

        return plot_spp(self, **kwargs)

    def to_frame(self) -> pd.DataFrame:
        """Long-format table: columns ``seed, block, name, stage, direction, tensor, stat,
        value``; ``direction`` is ``forward`` for the activations and ``backward`` for the
        gradients (rows only where they were measured)."""
        import pandas as pd

        rows = []
        for seed, block in self.blocks():
            head = (seed, block.index, block.name, block.stage)
            measured: list[tuple[Direction, str, Moments]] = [
                (Direction.FORWARD, role.value, block.moments(role)) for role in TensorRole]
            if block.grad is not None:
                measured += [(Direction.BACKWARD, role.value, block.grad.moments(role))
                             for role in GradRole]
            rows += [(*head, direction.value, tensor, stat.value, getattr(m, stat.value))
                     for direction, tensor, m in measured for stat in Stat]
        columns = ["seed", "block", "name", "stage", "direction", "tensor", "stat", "value"]
        return pd.DataFrame(rows, columns=columns)

    def to_dict(self) -> dict[str, Any]:
        """The stats.json document (non-finite numbers become ``None``)."""
        return {
            "sigprop_version": self.sigprop_version,
            "model": dict(self.model),
            "input": {
                "kind": str(self.input.kind),
                "shape": list(self.input.shape),
                "seed": self.input.seed,
            },
            "bn_mode": self.bn_mode,
            "batchnorms": None if self.batchnorms is None else {
                "layers": self.batchnorms.layers, "fresh": self.batchnorms.fresh},
            "runs": [
                {"seed": run.seed, "first_overflow": run.first_overflow,
                 "blocks": [_block_to_dict(b) for b in run.blocks]}
                for run in self.runs
            ],
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Trace:
        """Rebuild a trace from :meth:`to_dict` output; raises TraceFormatError if malformed."""
        try:
            spec = doc["input"]
            return cls(
                model=dict(doc["model"]),
                input=InputSpec(str(spec["kind"]), tuple(int(n) for n in spec["shape"]),
                                _optional_int(spec["seed"])),
                bn_mode=str(doc["bn_mode"]),
                runs=tuple(
                    Run(_optional_int(run["seed"]),
                        tuple(_block_from_dict(b) for b in run["blocks"]))
                    for run in doc["runs"]
                ),
                batchnorms=_batchnorms_from_dict(doc.get("batchnorms")),
                sigprop_version=str(doc["sigprop_version"]),
            )
        except KeyError as e:
            raise TraceFormatError(f"not a sigprop stats document: it has no {e} entry (a "
                                   "stats.json holds 'model', 'input', 'bn_mode' and 'runs')"
                                   ) from e
        except (TypeError, ValueError) as e:
            raise TraceFormatError(f"not a sigprop stats document: {type(e).__name__}: {e}") from e

    def to_json(self, path: str | Path) -> None:
        """Write the trace as JSON (strict: no NaN/Infinity tokens, ``null`` instead)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> Trace:
        """Read a trace written by :meth:`to_json` (or a CLI ``stats.json``)."""
        try:
            doc = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise TraceFormatError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(doc, dict):
            raise TraceFormatError(f"{path} holds a JSON {type(doc).__name__}, not an object")
        return cls.from_dict(doc)


def _safe_ratio(num: float, den: float) -> float:
    if den == 0.0 or not (math.isfinite(num) and math.isfinite(den)):
        return math.nan
    return num / den


def _batchnorms_from_dict(doc: Mapping[str, Any] | None) -> BatchNorms | None:
    return None if doc is None else BatchNorms(int(doc["layers"]), int(doc["fresh"]))


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _encode(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _decode(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _block_to_dict(block: BlockStats) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "index": block.index,
        "name": block.name,
        "stage": block.stage,
        "shortcut": block.shortcut.value,
        "channels_last": block.channels_last,
    }
    for role in TensorRole:
        doc[role.value] = _moments_to_dict(block.moments(role))
    doc["cross"] = _encode(block.cross)
    doc["gain"] = block.gain
    doc["grad"] = None if block.grad is None else {
        role.value: _moments_to_dict(block.grad.moments(role)) for role in GradRole}
    return doc


def _moments_to_dict(m: Moments) -> dict[str, float | None]:
    return {"var": _encode(m.var), "sq_mean": _encode(m.sq_mean)}


def _moments_from_dict(doc: Mapping[str, Any]) -> Moments:
    return Moments(_decode(doc["var"]), _decode(doc["sq_mean"]))


def _block_from_dict(doc: Mapping[str, Any]) -> BlockStats:
    def moments(role: str) -> Moments:
        return _moments_from_dict(doc[role])

    grad = doc.get("grad")  # absent from traces measured without gradients
    return BlockStats(
        index=int(doc["index"]),
        name=str(doc["name"]),
        stage=int(doc["stage"]),
        shortcut=Shortcut(doc["shortcut"]),
        skip=moments("skip"),
        residual=moments("residual"),
        output=moments("output"),
        cross=_decode(doc["cross"]),
        channels_last=bool(doc.get("channels_last", False)),
        gain=None if doc.get("gain") is None else str(doc["gain"]),
        grad=None if grad is None else Gradients(
            *(_moments_from_dict(grad[role.value]) for role in GradRole)),
    )

