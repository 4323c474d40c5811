"""``sigprop analyze``: measure a network and write stats.json, stats.csv and spp.png."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from sigprop import BNMode, models
from sigprop.models import Norm, Order, Variant

from ._run import Analysis, check_positive, run, usage_error
from ._sources import (
    Builder,
    parse_kwargs,
    parse_shape,
    spec_builder,
    timm_builder,
    torchvision_builder,
)

app = typer.Typer(help="Measure a network and write stats.json, stats.csv and spp.png.",
                  no_args_is_help=True)

Seed = Annotated[int, typer.Option(help="Seed of the weights and of the Gaussian input batch.")]
Seeds = Annotated[int, typer.Option(
    help="Number of runs, with seeds --seed, --seed + 1, ...: the plot draws 95% bands and the "
    "fits pool the runs.")]
Device = Annotated[str, typer.Option(help="Torch device: cpu, cuda or cuda:N.")]
BatchSize = Annotated[int, typer.Option(help="Images in the Gaussian input batch.")]
BN = Annotated[BNMode, typer.Option(
    help="train: BN normalizes with batch statistics (the paper's setting; running statistics "
    "are not updated). eval: BN uses its running statistics.")]
Out = Annotated[Path, typer.Option(help="Folder for stats.json, stats.csv and spp.png.")]


@app.command("resnet")
def resnet(
    depth: Annotated[int, typer.Option(
        help="Number of residual blocks d (the paper's depth), NOT layers: each block holds "
        "two 3x3 convolutions.")] = 512,
    variant: Annotated[Variant, typer.Option(
        help="v2: pre-activation BN-ReLU-Conv branches, identity skip. v1: post-activation "
        "Conv-BN-ReLU-Conv-BN branches, ReLU after the addition.")] = Variant.V2,
    norm: Annotated[Norm, typer.Option(
        help="batchnorm; none (unnormalized); skipinit (no BN, learnable scalar gain alpha at "
        "the end of each branch); sqrt-depth (no BN, branch times 1/sqrt(depth)).")
    ] = Norm.BATCHNORM,
    alpha: Annotated[float | None, typer.Option(
        help="Initial SkipInit gain (only with --norm skipinit).  [default: 0.0]")] = None,
    order: Annotated[Order, typer.Option(
        help="Inside v2 BN branches: bn-relu (BN-ReLU-Conv, the paper's) or relu-bn "
        "(ReLU-BN-Conv).")] = Order.BN_RELU,
    width: Annotated[int, typer.Option(help="Channels of the first stage.")] = 16,
    stages: Annotated[int, typer.Option(
        help="Stages; each later one halves the resolution, doubles the width and starts with "
        "a projection shortcut.")] = 1,
    batch_size: BatchSize = 32,
    image_size: Annotated[int, typer.Option(help="Height and width of the input images.")] = 32,
    seed: Seed = 0,
    seeds: Seeds = 1,
    device: Device = "cpu",
    bn_mode: BN = BNMode.TRAIN,
    out: Out = Path("sigprop-out"),
) -> None:
    """Measure the paper's CIFAR-style ResNet with --depth residual blocks.

    Example: sigprop analyze resnet --depth 512
    """
    check_positive("--batch-size", batch_size, "image")
    check_positive("--image-size", image_size, "pixel")

    def build(seed: int) -> tuple[models.ResNet, dict[str, Any]]:
        net = models.resnet(depth, variant=variant, norm=norm, width=width, stages=stages,
                            alpha=alpha, order=order, seed=seed)
        return net, net.config

    run(Analysis(build, (batch_size, 3, image_size, image_size), depth),
        seed=seed, seeds=seeds, device=device, bn_mode=bn_mode, out=out)


ImageSize = Annotated[int, typer.Option(help="Height and width of the Gaussian input images.")]


def _measure_source(make: Callable[[], Builder], input_shape: tuple[int, ...], *, seed: int,
                    seeds: int, device: str, bn_mode: BNMode, out: Path) -> None:
    try:
        build = make()
    except ValueError as e:
        usage_error(str(e))
    run(Analysis(build, input_shape, None), seed=seed, seeds=seeds, device=device,
        bn_mode=bn_mode, out=out)


@app.command("torchvision")
def torchvision_model(
    name: Annotated[str, typer.Argument(help="torchvision classification model, e.g. resnet50.")],
    batch_size: BatchSize = 8,
    image_size: ImageSize = 224,
    seed: Seed = 0,
    seeds: Seeds = 1,
    device: Device = "cpu",
    bn_mode: BN = BNMode.TRAIN,
    out: Out = Path("sigprop-out"),
) -> None:
    """Measure a torchvision classification model, built with no weights.

    Residual blocks are found automatically (see docs/discovery.md).

    Example: sigprop analyze torchvision resnet50
    """
    check_positive("--batch-size", batch_size, "image")
    check_positive("--image-size", image_size, "pixel")
    _measure_source(lambda: torchvision_builder(name), (batch_size, 3, image_size, image_size),
                    seed=seed, seeds=seeds, device=device, bn_mode=bn_mode, out=out)


@app.command("timm")
def timm_model(
    name: Annotated[str, typer.Argument(help="timm model, e.g. resnetv2_50.")],
    batch_size: BatchSize = 8,
    image_size: ImageSize = 224,
    seed: Seed = 0,
    seeds: Seeds = 1,
    device: Device = "cpu",
    bn_mode: BN = BNMode.TRAIN,
    out: Out = Path("sigprop-out"),
) -> None:
    """Measure a timm model, built with pretrained=False.

    Residual blocks are found automatically (see docs/discovery.md).

    Example: sigprop analyze timm resnetv2_50
    """
    check_positive("--batch-size", batch_size, "image")
    check_positive("--image-size", image_size, "pixel")
    _measure_source(lambda: timm_builder(name), (batch_size, 3, image_size, image_size),
                    seed=seed, seeds=seeds, device=device, bn_mode=bn_mode, out=out)


@app.command("model")
def custom_model(
    spec: Annotated[str, typer.Argument(
        help="path/to/file.py:callable or package.module:callable returning an nn.Module.")],
    input_shape: Annotated[str, typer.Option(
        help="Shape of one input without the batch, e.g. 3,32,32.")],
    arg: Annotated[list[str] | None, typer.Option(
        help="key=value keyword argument for the callable (repeatable); values are Python "
        "literals, else strings.")] = None,
    batch_size: BatchSize = 8,
    seed: Seed = 0,
    seeds: Seeds = 1,
    device: Device = "cpu",
    bn_mode: BN = BNMode.TRAIN,
    out: Out = Path("sigprop-out"),
) -> None:
    """Measure your own model: the callable SPEC builds it (torch RNG seeded with --seed).

    Residual blocks are found automatically (see docs/discovery.md).

    Example: sigprop analyze model examples/custom_net.py:build --input-shape 3,32,32
    """
    check_positive("--batch-size", batch_size, "image")
    try:
        shape = parse_shape(input_shape)
        kwargs = parse_kwargs(arg or [])
    except ValueError as e:
        usage_error(str(e))
    _measure_source(lambda: spec_builder(spec, kwargs), (batch_size, *shape),
                    seed=seed, seeds=seeds, device=device, bn_mode=bn_mode, out=out)
