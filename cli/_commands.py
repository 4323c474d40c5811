"""The model sources (resnet, torchvision, timm, model), shared by ``analyze`` and ``audit``.

Each source command parses its options into an :class:`Analysis` (what to build and feed) and
:class:`RunOptions` (how to run), and hands both to the group's action.

No ``from __future__ import annotations`` here: Typer evaluates the commands' annotations, and
the ``--out``/``--json`` aliases are local to :func:`add_source_commands`.
"""


from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sigprop._validate import parse_shape
from sigprop.config import Norm, Order, Padding, Variant
from sigprop.trace import BNMode

from ._errors import UsageError, reports_usage_errors
from ._files import check_writable
from ._options import (
    Analysis,
    ModelInputs,
    RunOptions,
    check_positive,
    check_seeds,
    check_threads,
    parse_blocks,
)
from ._sources import load_input, parse_kwargs

if TYPE_CHECKING:
    import torch

    from sigprop.sources import ModelSource

Action = Callable[[Analysis, RunOptions], None]

Seed = Annotated[int, typer.Option(help="Seed of the weights and of the Gaussian input batch.")]
Seeds = Annotated[int, typer.Option(
    help="Number of runs, with seeds --seed, --seed + 1, ...: the plot draws 95% bands and the "
    "fits pool the runs.")]
Device = Annotated[str, typer.Option(help="Torch device: cpu, cuda or cuda:N.")]
BatchSize = Annotated[int, typer.Option(help="Images in the Gaussian input batch.")]
ImageSize = Annotated[int, typer.Option(help="Height and width of the Gaussian input images.")]
Blocks = Annotated[str | None, typer.Option(
    metavar="NAME[,NAME...]",
    help="Qualified names of the block modules (e.g. layer1.0,layer1.1), whose forward returns "
    "skip + residual: overrides automatic discovery (see docs/discovery.md).",
    show_default=False)]
DEFAULT_THREADS = 1
Threads = Annotated[int, typer.Option(
    help="Torch CPU threads while measuring (1 to the machine's cores). The default, one, was "
    "the fastest measured; on cores other jobs use, more threads wait on each other and ran "
    "up to 10x slower (docs/performance.md).")]
Backward = Annotated[bool, typer.Option(
    "--backward",
    help="Also run one backward pass (cotangent i.i.d. N(0, 1) from the seed) and record the "
    "gradients of every block: dL/dy, its skip and residual parts, dL/dx; writes "
    "spp-backward.png.")]
BN = Annotated[BNMode, typer.Option(
    help="train: BN normalizes with batch statistics (the paper's setting; running statistics "
    "are not updated). eval: BN uses its running statistics.")]


class InputKindOption(StrEnum):
    """What ``sigprop analyze model`` feeds the model when no ``--input`` file is given."""

    GAUSSIAN = "gaussian"
    TOKENS = "tokens"


def model_inputs(input_shape: str | None, kind: InputKindOption, vocab_size: int | None,
                 input_file: Path | None
                 ) -> tuple[tuple[int, ...], Callable[[int], Callable[[int, "torch.device"],
                                                                      ModelInputs] | None]]:
    """The shape of one input and, per batch size, how to make the inputs (None: Gaussian).

    Raises ValueError for a combination of options that does not make sense.
    """
    if input_file is not None:
        if input_shape is not None or kind is not InputKindOption.GAUSSIAN or vocab_size:
            raise ValueError("--input replaces --input-shape, --input-kind and --vocab-size: "
                             "give either the file or the shape")
        if not input_file.is_file():
            raise ValueError(f"--input {str(input_file)!r}: no such file")
        return (), lambda _batch: lambda _seed, device: load_input(input_file, device)
    if input_shape is None:
        raise ValueError("give --input-shape (e.g. 3,32,32) or --input FILE.pt")
    shape = parse_shape(input_shape)
    if kind is InputKindOption.GAUSSIAN:
        if vocab_size is not None:
            raise ValueError("--vocab-size is for --input-kind tokens")
        return shape, lambda _batch: None
    if vocab_size is None or vocab_size < 1:
        raise ValueError(f"--input-kind tokens needs --vocab-size N >= 1, got {vocab_size}")
    vocab = vocab_size

    def tokens(batch: int) -> Callable[[int, "torch.device"], ModelInputs]:
        def make(seed: int, device: "torch.device") -> ModelInputs:
            from sigprop.recording import token_input

            return (token_input((batch, *shape), vocab, seed, device),), {}

        return make

    return shape, tokens


def image_batch(batch_size: int, image_size: int) -> tuple[int, int, int, int]:
    """The input shape of a batch of RGB images; a usage error unless both sizes are >= 1."""
    check_positive("--batch-size", batch_size, "image")
    check_positive("--image-size", image_size, "pixel")
    return (batch_size, 3, image_size, image_size)


def add_source_commands(app: typer.Typer, action: Action, *, group: str, verb: str,
                        out_default: Path | None, out_help: str, json_help: str) -> None:
    """Register ``resnet``, ``torchvision``, ``timm`` and ``model`` on ``app``, running ``action``.

    Args:
        app: the command group.
        group: its name on the command line (``analyze`` or ``audit``), for the examples.
        action: what to do with the parsed source and options.
        verb: first word of every command's help, e.g. ``Measure`` or ``Audit``.
        out_default: default of ``--out`` (None: write no files unless asked).
        out_help, json_help: help of ``--out`` and ``--json`` for this group.
    """
    Out = Annotated[Path | None, typer.Option(help=out_help)]
    Json = Annotated[bool, typer.Option("--json", help=json_help)]

    def options(seed: int, seeds: int, device: str, bn_mode: BNMode, out: Path | None,
                json_output: bool, threads: int, backward: bool) -> RunOptions:
        check_seeds(seed, seeds)
        check_threads(threads)
        if out is not None:
            check_writable(out)
        return RunOptions(seed, seeds, device, bn_mode, out, json_output, threads, backward)

    @app.command("resnet", help=f"{verb} the paper's CIFAR-style ResNet with --depth residual "
                 f"blocks.\n\nExample: sigprop {group} resnet --depth 512")
    @reports_usage_errors
    def resnet(
        ctx: typer.Context,
        depth: Annotated[int, typer.Option(
            help="Number of residual blocks d (the paper's depth), NOT layers: each block holds "
            "two 3x3 convolutions.")] = 512,
        variant: Annotated[Variant, typer.Option(
            help="v2: pre-activation BN-ReLU-Conv branches, identity skip. v1: post-activation "
            "Conv-BN-ReLU-Conv-BN branches, ReLU after the addition.")] = Variant.V2,
        norm: Annotated[Norm, typer.Option(
            help="batchnorm; none (unnormalized); skipinit (no BN, learnable scalar gain alpha "
            "at the end of each branch); sqrt-depth (no BN, branch times 1/sqrt(depth)); nf "
            "(NF-ResNet, v2: x + alpha f(x / beta), scaled weight standardization and scaled "
            "ReLUs); fixup (no BN: each branch's last conv zero, its first scaled by "
            "depth^(-1/2), scalar biases and multiplier).")
        ] = Norm.BATCHNORM,
        alpha: Annotated[float | None, typer.Option(
            help="Branch gain: SkipInit's initial one (--norm skipinit, default 0.0) or the "
            "NF-ResNet's fixed one (--norm nf, default 0.2).")] = None,
        nf_zero_init: Annotated[bool, typer.Option(
            "--nf-zero-init",
            help="With --norm nf: start the gain of each branch's last convolution at 0 (every "
            "block is the identity; off so that the signal is visible).")] = False,
        fixup_zero_last: Annotated[bool, typer.Option(
            "--fixup-zero-last/--no-fixup-zero-last",
            help="With --norm fixup: zero-initialize each branch's last convolution (Fixup's "
            "rule); --no-fixup-zero-last keeps it He-initialized (each branch adds 1/depth of "
            "its input).")] = True,
        order: Annotated[Order, typer.Option(
            help="Inside v2 BN branches: bn-relu (BN-ReLU-Conv, the paper's) or relu-bn "
            "(ReLU-BN-Conv).")] = Order.BN_RELU,
        padding: Annotated[Padding, typer.Option(
            help="Padding of the 3x3 convolutions: zeros (border outputs see fewer inputs, "
            "which lowers each branch's second moment on small maps; the theory includes it) "
            "or circular (the infinite-image theory holds exactly).")] = Padding.ZEROS,
        width: Annotated[int, typer.Option(help="Channels of the first stage.")] = 16,
        stages: Annotated[int, typer.Option(
            help="Stages; each later one halves the resolution, doubles the width and starts "
            "with a projection shortcut.")] = 1,
        batch_size: BatchSize = 32,
        image_size: ImageSize = 32,
        seed: Seed = 0,
        seeds: Seeds = 1,
        device: Device = "cpu",
        bn_mode: BN = BNMode.TRAIN,
        blocks: Blocks = None,
        threads: Threads = DEFAULT_THREADS,
        out: Out = out_default,
        json_output: Json = False,
        backward: Backward = False,
    ) -> None:
        from sigprop.sources import ModelSource

        input_shape = image_batch(batch_size, image_size)
        model = ModelSource.parse("resnet", depth=depth, variant=variant, norm=norm, width=width,
                                  stages=stages, alpha=alpha, order=order, padding=padding,
                                  nf_zero_init=nf_zero_init, fixup_zero_last=fixup_zero_last)
        source(model, input_shape, depth, blocks,
               options(seed, seeds, device, bn_mode, out, json_output, threads, backward))

    def source(model: "ModelSource", input_shape: tuple[int, ...], expected_blocks: int | None,
               blocks: str | None, run_options: RunOptions, shape_option: bool = False,
               inputs: Callable[[int, "torch.device"], ModelInputs] | None = None) -> None:
        names = parse_blocks(blocks)
        try:
            build = model.builder()
        except ValueError as e:
            raise UsageError(str(e)) from e
        action(Analysis(build, input_shape, expected_blocks, names, shape_option, inputs),
               run_options)

    def zoo_command(library: str, built: str, example: str) -> None:
        @app.command(library, help=f"{verb} a {library} model, built with {built}.\n\n"
                     "Residual blocks are found automatically (see docs/discovery.md).\n\n"
                     f"Example: sigprop {group} {library} {example}")
        @reports_usage_errors
        def zoo_model(
            ctx: typer.Context,
            name: Annotated[str, typer.Argument(metavar="NAME",
                                                help=f"{library} model, e.g. {example}.")],
            batch_size: BatchSize = 8,
            image_size: ImageSize = 224,
            seed: Seed = 0,
            seeds: Seeds = 1,
            device: Device = "cpu",
            bn_mode: BN = BNMode.TRAIN,
            blocks: Blocks = None,
            threads: Threads = DEFAULT_THREADS,
            out: Out = out_default,
            json_output: Json = False,
            backward: Backward = False,
        ) -> None:
            from sigprop.sources import ModelSource, Source

            source(ModelSource(Source(library), name), image_batch(batch_size, image_size), None,
                   blocks,
                   options(seed, seeds, device, bn_mode, out, json_output, threads, backward))

    zoo_command("torchvision", "no weights (classification models)", "resnet50")
    zoo_command("timm", "pretrained=False", "resnetv2_50")

    @app.command("model", help=f"{verb} your own model: the callable SPEC builds it (torch RNG "
                 "seeded with --seed).\n\nResidual blocks are found automatically (see "
                 f"docs/discovery.md).\n\nThis runs SPEC's Python file (or imports its module) "
                 "with your permissions, as `python` would: only run code you trust.\n\n"
                 f"Example: sigprop {group} model examples/custom_net.py:build --input-shape "
                 "3,32,32")
    @reports_usage_errors
    def custom_model(
        ctx: typer.Context,
        spec: Annotated[str, typer.Argument(
            metavar="SPEC",
            help="path/to/file.py:callable or package.module:callable returning an nn.Module.")],
        input_shape: Annotated[str | None, typer.Option(
            help="Shape of one input without the batch, e.g. 3,32,32 (or 128 tokens).")] = None,
        arg: Annotated[list[str] | None, typer.Option(
            help="key=value keyword argument for the callable (repeatable); values are Python "
            "literals, else strings.")] = None,
        input_kind: Annotated[InputKindOption, typer.Option(
            help="gaussian: unit Gaussian floats; tokens: integer ids drawn uniformly from "
            "[0, --vocab-size), for language models. Both seeded with --seed.")
        ] = InputKindOption.GAUSSIAN,
        vocab_size: Annotated[int | None, typer.Option(
            help="Vocabulary size for --input-kind tokens.")] = None,
        input_file: Annotated[Path | None, typer.Option(
            "--input", help="Measure on saved inputs instead (real images, real text): a file "
            "written by torch.save holding a tensor, a list of tensors (positional inputs) or a "
            "dict of named tensors (keyword inputs, e.g. input_ids, attention_mask); loaded "
            "with torch.load(weights_only=True).")] = None,
        batch_size: BatchSize = 8,
        seed: Seed = 0,
        seeds: Seeds = 1,
        device: Device = "cpu",
        bn_mode: BN = BNMode.TRAIN,
        blocks: Blocks = None,
        threads: Threads = DEFAULT_THREADS,
        out: Out = out_default,
        json_output: Json = False,
        backward: Backward = False,
    ) -> None:
        check_positive("--batch-size", batch_size, "input")
        try:
            kwargs = parse_kwargs(arg or [])
            shape, inputs = model_inputs(input_shape, input_kind, vocab_size, input_file)
        except ValueError as e:
            raise UsageError(str(e)) from e
        from sigprop.sources import ModelSource, Source

        source(ModelSource(Source.MODEL, spec, tuple(sorted(kwargs.items()))),
               (batch_size, *shape), None, blocks,
               options(seed, seeds, device, bn_mode, out, json_output, threads, backward),
               shape_option=input_file is None, inputs=inputs(batch_size))
