"""What the figure set measures: networks, sizes and seeds.

A network is a :class:`RunSpec`; the sizes and seeds of the whole set a :class:`FigureConfig`,
:data:`FULL` for the committed figures or :data:`QUICK` for seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["FULL", "QUICK", "FigureConfig", "RunSpec"]


@dataclass(frozen=True, slots=True)
class RunSpec:
    """A network to measure.

    A built-in ResNet (the arguments of :func:`sigprop.models.resnet`) or, with ``model``, a
    real architecture.

    Attributes:
        depth: number of residual blocks (for a real architecture: how many it has, for the
            progress bar).
        norm, variant, order, alpha, stages, nf_zero_init, fixup_zero_last: as in
            :func:`sigprop.models.resnet`.
        width, batch, image, seeds: channels of the first stage, images per batch, image side
            and seeds; None takes the :class:`FigureConfig`'s value.
        backward: also measure the gradients of one backward pass.
    """

    depth: int
    norm: str = "batchnorm"
    variant: str = "v2"
    order: str = "bn-relu"
    alpha: float | None = None
    stages: int = 1
    width: int | None = None
    batch: int | None = None
    image: int | None = None
    seeds: tuple[int, ...] | None = None
    model: str | None = None  # "torchvision:NAME" or "timm:NAME", built without weights
    nf_zero_init: bool = False
    fixup_zero_last: bool = True
    backward: bool = False


@dataclass(frozen=True, slots=True)
class FigureConfig:
    """Sizes and seeds of a figure set.

    Attributes:
        name: ``full`` or ``quick``, said by ``sigprop figures`` when it is done.
        width, batch, image: defaults of every network (channels, images per batch, side).
        seeds: the seeds of every network (weights and input batch); bands are over these.
        sweep_seeds: the depth sweep uses only the first ``sweep_seeds`` seeds (its deep
            networks cost the most).
        spp_depth: depth of the SPP trio and the identity-bias figure.
        law_depths: depths of the sqrt(depth)-law figure.
        sweep_depths: depths of the depth sweep.
        sweep_overflow_depth: the unnormalized network is measured only up to this depth (it
            overflows float32 after a few hundred blocks; deeper ones add nothing but time).
        variants_depth: depth of the orderings/variants figure and of the zoo.
        stages: number of stages of the multi-stage network.
        headline: (depth, batch, image) of the README's single-network SPP.
        zoo_image, zoo_batch: input size of the real architectures (torchvision, timm) in the
            zoo.
        finite_depth, finite_images: depth and image sides of the BN networks of the
            finite-size figure.
        finite_growth_depth, finite_widths: depth and widths of its unnormalized networks.
    """

    name: str
    width: int
    batch: int
    image: int
    seeds: tuple[int, ...]
    sweep_seeds: int
    spp_depth: int
    law_depths: tuple[int, ...]
    sweep_depths: tuple[int, ...]
    sweep_overflow_depth: int
    variants_depth: int
    stages: int
    headline: tuple[int, int, int]
    zoo_image: int
    zoo_batch: int
    finite_depth: int
    finite_images: tuple[int, ...]
    finite_growth_depth: int
    finite_widths: tuple[int, ...]

    def describe(self, spec: RunSpec | None = None, seeds: Sequence[int] | None = None) -> str:
        """The sizes and seeds in words, for a caption."""
        width = self.width if spec is None or spec.width is None else spec.width
        batch = self.batch if spec is None or spec.batch is None else spec.batch
        image = self.image if spec is None or spec.image is None else spec.image
        seeds = self.seeds if seeds is None else seeds
        seed_text = (f"seed {seeds[0]}" if len(seeds) == 1 else
                     f"{len(seeds)} seeds ({seeds[0]}-{seeds[-1]}): mean with 95% band, on log "
                     "axes geometric mean with the band of the mean log")
        return (f"Width {width}, batch of {batch} Gaussian {image}x{image} images, {seed_text}, "
                "BN with batch statistics.")


FULL = FigureConfig(
    name="full", width=16, batch=8, image=16, seeds=(0, 1, 2, 3, 4), sweep_seeds=3,
    spp_depth=512,
    law_depths=(64, 256, 1024), sweep_depths=(16, 32, 64, 128, 256, 512, 1024, 2048),
    sweep_overflow_depth=512, variants_depth=256, stages=3, headline=(512, 32, 32),
    zoo_image=64, zoo_batch=8, finite_depth=128, finite_images=(4, 8, 16, 32),
    finite_growth_depth=32, finite_widths=(8, 16, 32, 64),
)
QUICK = FigureConfig(
    name="quick", width=8, batch=4, image=8, seeds=(0, 1, 2), sweep_seeds=3, spp_depth=48,
    law_depths=(16, 48), sweep_depths=(4, 8, 16, 32, 64), sweep_overflow_depth=64,
    variants_depth=24, stages=3, headline=(32, 4, 8), zoo_image=32, zoo_batch=2,
    finite_depth=16, finite_images=(4, 8), finite_growth_depth=8, finite_widths=(4, 8),
)
