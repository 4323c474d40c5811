"""The figure set: its ten figures, and measuring and rendering them one at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from sigprop.paper.backward import backward_figure
from sigprop.paper.config import FigureConfig, RunSpec
from sigprop.paper.depth import law_figure, sweep_figure
from sigprop.paper.finite import finite_size_figure
from sigprop.paper.methods import methods_figure
from sigprop.paper.runs import measure_run
from sigprop.paper.spec import FigureResult, FigureSpec
from sigprop.paper.spp import headline_figure, identity_figure, trio_figure
from sigprop.paper.variants import orderings_figure, zoo_figure
from sigprop.trace import Trace

__all__ = ["figure_specs", "generate", "total_blocks"]


def figure_specs(config: FigureConfig) -> list[FigureSpec]:
    """The figure set for ``config``: every figure with the networks it measures.

    >>> from sigprop.paper import QUICK
    >>> [spec.name for spec in figure_specs(QUICK)]  # doctest: +NORMALIZE_WHITESPACE
    ['spp-resnet-v2-batchnorm', 'spp-trio', 'identity-bias', 'normalizer-free', 'sqrt-depth-law',
     'depth-sweep', 'finite-size', 'orderings', 'zoo', 'spp-backward']
    """
    # In this order the trio's networks are measured once for the identity-bias figure too,
    # and its BN network once more for the normalizer-free comparison.
    figures = (headline_figure, trio_figure, identity_figure, methods_figure, law_figure,
               sweep_figure, finite_size_figure, orderings_figure, zoo_figure, backward_figure)
    return [figure(config) for figure in figures]


def total_blocks(specs: Sequence[FigureSpec], config: FigureConfig) -> int:
    """Blocks measured by :func:`generate` for ``specs`` (each network once), for progress bars.

    >>> from sigprop.paper import QUICK
    >>> total_blocks(figure_specs(QUICK), QUICK) > 0
    True
    """
    unique = {run for spec in specs for run in spec.runs}
    return sum(run.depth * len(run.seeds or config.seeds) for run in unique)


def generate(config: FigureConfig, specs: Sequence[FigureSpec] | None = None,
             progress: Callable[[str], None] | None = None) -> Iterator[FigureResult]:
    """Measure and render the figure set, one figure at a time.

    Args:
        config: :data:`sigprop.paper.FULL`, :data:`sigprop.paper.QUICK` or your own sizes.
        specs: the figures (default: :func:`figure_specs` of ``config``).
        progress: called with the figure's name after every measured block.

    Returns:
        An iterator of rendered figures; traces needed by several figures are measured once.
    """
    specs = figure_specs(config) if specs is None else specs
    cache: dict[RunSpec, Trace] = {}
    for spec in specs:
        name = spec.name

        def tick(_done: int, name: str = name) -> None:
            if progress is not None:
                progress(name)

        for run in spec.runs:
            if run not in cache:
                cache[run] = measure_run(run, config, tick)
        figure, data, caption = spec.render({run: cache[run] for run in spec.runs})
        yield FigureResult(spec.name, spec.title, figure, data, caption)
        needed = {run for later in specs[specs.index(spec) + 1:] for run in later.runs}
        for run in [r for r in cache if r not in needed]:
            del cache[run]
