"""The paper-style figure set: what to measure, tidy data, figures and captions.

Each figure is described by a :class:`FigureSpec`: the built-in ResNets it measures
(:class:`RunSpec`) and a renderer that turns their traces into a :class:`FigureResult` (a
matplotlib figure, its data as a tidy long table and a caption). :func:`generate` measures and
renders the whole set for a :class:`FigureConfig` (:data:`FULL` or :data:`QUICK`), reusing a
trace when several figures need the same network.

The figures are drawn by :mod:`sigprop.plotting`. matplotlib and pandas are imported when a
figure or table is made, so ``import sigprop`` stays light.

>>> import sigprop
>>> trace = sigprop.measure(sigprop.models.resnet(8, seed=0),
...                         sigprop.InputSpec("gaussian", (4, 3, 8, 8), 0))
>>> frame = tidy([trace], ["BN v2"], {"ratio": lambda b: b.ratio})
>>> sorted(set(frame["source"])), len(frame[frame["source"] == "measured"])
(['measured', 'theory'], 8)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from sigprop import models, sources, stats
from sigprop.plotting import (
    MEASURED,
    PREDICTED,
    Quantity,
    fit_text,
    network_depth,
    palette,
    plot_depth_sweep,
    plot_identity_bias,
    plot_orderings,
    plot_spp,
    plot_spp_trio,
    plot_sqrt_depth_law,
    plot_zoo,
    sweep_points,
)
from sigprop.recording import measure
from sigprop.theory import predict
from sigprop.trace import InputSpec, Trace

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "COLUMNS",
    "FULL",
    "QUICK",
    "FigureConfig",
    "FigureResult",
    "FigureSpec",
    "RunSpec",
    "figure_specs",
    "generate",
    "measure_run",
    "tidy",
    "total_blocks",
]

#: Columns of every figure's data table (one row per value).
COLUMNS = ["series", "source", "seed", "depth", "block", "stage", "quantity", "value"]


# --------------------------------------------------------------------------------------------
# What to measure


@dataclass(frozen=True, slots=True)
class RunSpec:
    """A network to measure: a built-in ResNet (the arguments of :func:`sigprop.models.resnet`)
    or, with ``model``, a real architecture.

    Attributes:
        depth: number of residual blocks (for a real architecture: how many it has, for the
            progress bar).
        norm, variant, order, alpha, stages: as in :func:`sigprop.models.resnet`.
        width, batch, image, seeds: channels of the first stage, images per batch, image side
            and seeds; None takes the :class:`FigureConfig`'s value.
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


@dataclass(frozen=True, slots=True)
class FigureConfig:
    """Sizes and seeds of a figure set.

    Attributes:
        name: ``full`` or ``quick``, written in the captions.
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
    zoo_image=64, zoo_batch=8,
)
QUICK = FigureConfig(
    name="quick", width=8, batch=4, image=8, seeds=(0, 1, 2), sweep_seeds=3, spp_depth=48,
    law_depths=(16, 48), sweep_depths=(4, 8, 16, 32, 64), sweep_overflow_depth=64,
    variants_depth=24, stages=3, headline=(32, 4, 8), zoo_image=32, zoo_batch=2,
)


@dataclass(frozen=True, slots=True)
class FigureResult:
    """A rendered figure with its data and caption.

    Attributes:
        name: file stem, e.g. ``sqrt-depth-law``.
        title: a short title for galleries.
        figure: the matplotlib figure (close it when written).
        data: tidy long table with :data:`COLUMNS`.
        caption: what the figure shows, with sizes, seeds and fitted figures.
    """

    name: str
    title: str
    figure: Figure
    data: pd.DataFrame
    caption: str


Traces = Mapping[RunSpec, Trace]


@dataclass(frozen=True, slots=True)
class FigureSpec:
    """One figure of the set: the networks it needs and how to render it from their traces."""

    name: str
    title: str
    runs: tuple[RunSpec, ...]
    render: Callable[[Traces], FigureResult] = field(repr=False)


def measure_run(spec: RunSpec, config: FigureConfig,
                progress: Callable[[int], None] | None = None) -> Trace:
    """Measure ``spec`` once per seed of ``config`` (weights and input) and merge the runs.

    Args:
        spec: the network.
        config: default sizes and the seeds.
        progress: called after every measured block (with the blocks done in that run).

    Returns:
        One trace with a run per seed.

    >>> trace = measure_run(RunSpec(4), QUICK)
    >>> trace.n_blocks, trace.seeds
    (4, (0, 1, 2))
    """
    width = spec.width or config.width
    batch = spec.batch or config.batch
    image = spec.image or config.image
    traces = []
    for seed in spec.seeds or config.seeds:
        net, info = _build(spec, width, seed)
        traces.append(measure(net, InputSpec("gaussian", (batch, 3, image, image), seed),
                              model_info=info, progress=progress))
    return reduce(Trace.merge, traces)


def _build(spec: RunSpec, width: int, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    if spec.model is not None:
        source, _, name = spec.model.partition(":")
        builders = {"torchvision": sources.torchvision_builder, "timm": sources.timm_builder}
        return builders[source](name)(seed)
    net = models.resnet(spec.depth, variant=spec.variant, norm=spec.norm, width=width,
                        stages=spec.stages, alpha=spec.alpha, order=spec.order, seed=seed)
    return net, net.config


def total_blocks(specs: Sequence[FigureSpec], config: FigureConfig) -> int:
    """Blocks measured by :func:`generate` for ``specs`` (each network once), for progress bars.

    >>> total_blocks(figure_specs(QUICK), QUICK) > 0
    True
    """
    unique = {run for spec in specs for run in spec.runs}
    return sum(run.depth * len(run.seeds or config.seeds) for run in unique)


def generate(config: FigureConfig, specs: Sequence[FigureSpec] | None = None,
             progress: Callable[[str], None] | None = None) -> Iterator[FigureResult]:
    """Measure and render the figure set, one figure at a time.

    Args:
        config: :data:`FULL`, :data:`QUICK` or your own sizes.
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
        yield spec.render({run: cache[run] for run in spec.runs})
        needed = {run for later in specs[specs.index(spec) + 1:] for run in later.runs}
        for run in [r for r in cache if r not in needed]:
            del cache[run]


# --------------------------------------------------------------------------------------------
# Tidy data


def tidy(traces: Sequence[Trace], labels: Sequence[str],
         quantities: Mapping[str, Quantity], theory: bool = True) -> pd.DataFrame:
    """Per-block quantities of several traces as one long table with :data:`COLUMNS`.

    Measured rows have ``source="measured"`` and the run's seed; where :func:`theory.predict`
    has a closed form for a quantity (same name as in the table) a ``source="theory"`` row
    follows, with an empty seed.

    Args:
        traces: the traces.
        labels: the ``series`` name of each trace.
        quantities: column name -> function of a block, e.g. ``{"ratio": lambda b: b.ratio}``.
        theory: add the theory rows.

    Returns:
        A pandas DataFrame.
    """
    import pandas as pd

    rows: list[tuple[Any, ...]] = []
    for trace, label in zip(traces, labels, strict=True):
        depth = network_depth(trace)
        for seed, block in trace.blocks():
            for name, quantity in quantities.items():
                rows.append((label, "measured", seed, depth, block.index, block.stage, name,
                             quantity(block)))
        prediction = predict(trace) if theory else None
        if prediction is None:
            continue
        for p in prediction.blocks:
            for name in quantities:
                if name in PREDICTED and math.isfinite(value := PREDICTED[name](p)):
                    rows.append((label, "theory", None, depth, p.index, p.stage, name, value))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["seed"] = frame["seed"].astype("Int64")
    return frame



# --------------------------------------------------------------------------------------------
# The figure set


def _alpha_text(alpha: float) -> str:
    return f"SkipInit, alpha = {alpha:g}"


# One colour per network across the figure set (seaborn's colour-blind palette, by index).
_PALETTE_INDEX = {"BN v2": 0, "unnormalized": 1, "SkipInit, alpha = 0": 2,
                  "SkipInit, alpha = 0.1": 4, "branch / sqrt(d)": 5, "BN v1": 3,
                  "BN v2, 3 stages": 6}


def _colors_for(labels: Sequence[str]) -> list[str]:
    """Fixed colours for the built-in networks; the others take the colours left, in order."""
    colors = palette()
    spare = iter([c for k, c in enumerate(colors) if k not in _PALETTE_INDEX.values()]
                 + ["#000000", "#7b3294", "#a6611a"])
    return [colors[_PALETTE_INDEX[label]] if label in _PALETTE_INDEX else next(spare, "#444444")
            for label in labels]


def _spp_runs(config: FigureConfig) -> dict[str, RunSpec]:
    d = config.spp_depth
    return {
        "BN v2": RunSpec(d),
        "unnormalized": RunSpec(d, norm="none"),
        _alpha_text(0.0): RunSpec(d, norm="skipinit", alpha=0.0),
        _alpha_text(0.1): RunSpec(d, norm="skipinit", alpha=0.1),
    }


def _render_headline(config: FigureConfig, spec: RunSpec) -> Callable[[Traces], FigureResult]:
    def render(traces: Traces) -> FigureResult:
        trace = traces[spec]
        fig = plot_spp(trace)
        data = tidy([trace], ["BN v2"], {k: MEASURED[k] for k in
                                         ("skip_sq_mean", "skip_var", "residual_var", "ratio",
                                          "cosine")})
        b = stats.band(trace, MEASURED["ratio"])
        prediction = predict(trace)
        theory = prediction.blocks[-1].ratio if prediction else math.nan
        caption = (
            f"Signal propagation of a {spec.depth}-block BN ResNet-v2 (one stage), as drawn by "
            f"`sigprop analyze resnet --depth {spec.depth} --width {spec.width or config.width} "
            f"--batch-size {spec.batch} --image-size {spec.image}`. The skip path's "
            "average channel squared mean and variance grow linearly, by "
            f"{fit_text(trace, stats.FitId.SKIP_SQ_MEAN_SLOPE, digits=3)} and "
            f"{fit_text(trace, stats.FitId.SKIP_VAR_SLOPE, digits=3)} per block (1/pi and "
            "1 - 1/pi on an infinite image; zero padding lowers both); the residual/skip ratio "
            "of second moments falls as "
            f"1/(m2_0 + l): {b.mean[0]:.2f} at block 0, {b.mean[-1]:.4f} at block "
            f"{trace.n_blocks - 1} (theory {theory:.4f}); the cosine between skip and output "
            f"approaches 1. Theory dashed. {config.describe(spec, [config.seeds[0]])}")
        return FigureResult("spp-resnet-v2-batchnorm", "SPP of a BN ResNet-v2", fig, data,
                            caption)
    return render


def _render_trio(config: FigureConfig, runs: dict[str, RunSpec]
                 ) -> Callable[[Traces], FigureResult]:
    def render(traces: Traces) -> FigureResult:
        labels = list(runs)
        ordered = [traces[runs[k]] for k in labels]
        fig = plot_spp_trio(ordered, labels, colors=_colors_for(labels))
        data = tidy(ordered, labels, {k: MEASURED[k] for k in
                                      ("skip_m2", "skip_var", "skip_sq_mean", "residual_var")})
        bn, none = traces[runs["BN v2"]], traces[runs["unnormalized"]]
        overflow = none.first_overflow
        caption = (
            f"Signal-propagation plot of four {config.spp_depth}-block ResNets (v2, one stage): "
            "skip-path second moment E[x_l^2], its average channel variance and squared mean, "
            "and the residual branch's average channel variance, against the block index, on "
            "log axes. BN v2 grows linearly (slope of E[x_l^2] "
            f"{fit_text(bn, stats.FitId.SKIP_M2_SLOPE)} per block); the unnormalized "
            f"network grows geometrically, by "
            f"{fit_text(none, stats.FitId.GROWTH_RATE)} per block (2 on an infinite image; "
            "the theory includes zero padding, the rest of the gap is finite width)"
            + (f" and overflows float32 at block {overflow} (vertical line)" if overflow
               is not None else "")
            + "; SkipInit with alpha = 0 is the identity (its residual is exactly 0, so it "
            "has no point on the log axis) and with alpha = 0.1 grows by "
            f"{fit_text(traces[runs[_alpha_text(0.1)]], stats.FitId.GROWTH_RATE, digits=3)} "
            "per block. On "
            "axes that span the unnormalized explosion, the linear growth of BN v2 lies near "
            "the bottom; the single-network SPP and the orderings figure show it on linear "
            f"axes. Theory dashed. {config.describe()}")
        return FigureResult("spp-trio", "SPP of BN, unnormalized and SkipInit", fig, data,
                            caption)
    return render


def _render_law(config: FigureConfig, runs: list[RunSpec]) -> Callable[[Traces], FigureResult]:
    def render(traces: Traces) -> FigureResult:
        ordered = [traces[r] for r in runs]
        labels = [f"d = {r.depth}" for r in runs]
        fig = plot_sqrt_depth_law(ordered, labels)
        data = tidy(ordered, labels, {"ratio": MEASURED["ratio"]})
        fits = "; ".join(f"d = {r.depth}: {fit_text(t, stats.FitId.RATIO_EXPONENT)}"
                         for r, t in zip(runs, ordered, strict=True))
        caption = (
            "The sqrt(depth) law: residual/skip ratio of second moments E[f_l(x_l)^2] / "
            "E[x_l^2] against the block position l + 1, log-log, for BN ResNet-v2 networks of "
            "several depths (one stage). The curves coincide: the ratio depends on the block's "
            "position, not on the network's depth, and follows 1/(m2_0 + l) (dashed), a power "
            "law with exponent -1 at infinite depth (the branch is downscaled by sqrt(l) in "
            "standard deviation). Fitted exponents with 95% intervals, beside the same fit of "
            f"the theory at that depth (the m2_0 offset bends the first blocks): {fits}. "
            f"{config.describe()}")
        return FigureResult("sqrt-depth-law", "The sqrt(depth) law", fig, data, caption)
    return render


def _sweep_runs(config: FigureConfig) -> dict[str, list[RunSpec]]:
    depths, seeds = config.sweep_depths, config.seeds[:config.sweep_seeds]
    return {
        "BN v2": [RunSpec(d, seeds=seeds) for d in depths],
        "unnormalized": [RunSpec(d, norm="none", seeds=seeds) for d in depths
                         if d <= config.sweep_overflow_depth],
        _alpha_text(0.0): [RunSpec(d, norm="skipinit", alpha=0.0, seeds=seeds) for d in depths],
        "branch / sqrt(d)": [RunSpec(d, norm="sqrt-depth", seeds=seeds) for d in depths],
    }


def _render_sweep(config: FigureConfig, runs: dict[str, list[RunSpec]]
                  ) -> Callable[[Traces], FigureResult]:
    import pandas as pd

    theory_names = {"BN v2": "m2_0 + f d", "unnormalized": "(1 + f)^d m2_0, f < 1 with zero "
                    "padding (2^d m2_0 on an infinite image)", _alpha_text(0.0): "m2_0",
                    "branch / sqrt(d)": "(1 + f/d)^d m2_0 ~ e^f m2_0"}

    def render(traces: Traces) -> FigureResult:
        sweeps = {label: [traces[r] for r in specs] for label, specs in runs.items()}
        fig = plot_depth_sweep(sweeps, explosive=["unnormalized"])
        rows: list[tuple[Any, ...]] = []
        for label, ts in sweeps.items():
            for trace in ts:
                last = trace.runs[0].blocks[-1]
                for run in trace.runs:
                    rows.append((label, "measured", run.seed, network_depth(trace), last.index,
                                 last.stage, "final_m2", run.blocks[-1].output.m2))
                prediction = predict(trace)
                if prediction is not None:
                    rows.append((label, "theory", None, network_depth(trace), last.index,
                                 last.stage, "final_m2", prediction.blocks[-1].output_m2))
        data = pd.DataFrame(rows, columns=COLUMNS)
        data["seed"] = data["seed"].astype("Int64")
        bn = sweep_points(sweeps["BN v2"])
        xs = np.array([p.depth for p in bn], dtype=float)
        ys = np.array([p.value for p in bn])
        slope = float(np.polyfit(xs, ys, 1)[0])
        theory_slope = float(np.polyfit(xs, [p.theory for p in bn], 1)[0])
        rules = "; ".join(f"{k}: {v}" for k, v in theory_names.items())
        none = sweep_points(sweeps["unnormalized"])
        first = next((p.depth for p in none if p.overflow), None)
        caption = (
            "Depth sweep: second moment of the skip path after the last block, E[x_d^2] (the "
            "last block's output), against the number of residual blocks d, one line per "
            "variant (geometric mean over seeds with 95% error bars), each with its theory "
            "dashed in "
            f"the same colour ({rules}; m2_0 is the measured skip second moment at block 0). "
            f"BN v2 grows linearly in d (least-squares slope {slope:.2f}, theory "
            f"{theory_slope:.2f} with zero padding); the unnormalized network grows "
            "geometrically"
            + (f"; it is non-finite (float32 overflow) at d = {first}, not drawn" if first else "")
            + f"; deeper unnormalized networks are not measured; SkipInit at alpha = 0 "
            "stays at m2_0 and the 1/sqrt(d) branch scaling ends near e m2_0 at every depth. "
            f"Depths {', '.join(str(d) for d in config.sweep_depths)}. "
            f"{config.describe(seeds=config.seeds[:config.sweep_seeds])}")
        return FigureResult("depth-sweep", "Depth sweep", fig, data, caption)
    return render


def _variant_runs(config: FigureConfig) -> dict[str, RunSpec]:
    d = config.variants_depth
    return {
        "BN-ReLU-Conv": RunSpec(d),
        "ReLU-BN-Conv": RunSpec(d, order="relu-bn"),
        "v1": RunSpec(d, variant="v1"),
        "multi-stage": RunSpec(d, stages=config.stages),
    }


def _render_orderings(config: FigureConfig, runs: dict[str, RunSpec]
                      ) -> Callable[[Traces], FigureResult]:
    def render(traces: Traces) -> FigureResult:
        t = {k: traces[v] for k, v in runs.items()}
        fig = plot_orderings(t["BN-ReLU-Conv"], t["ReLU-BN-Conv"], t["v1"], t["multi-stage"])
        labels = ["BN-ReLU-Conv v2", "ReLU-BN-Conv v2", "BN v1",
                  f"BN v2, {config.stages} stages"]
        data = tidy(list(t.values()), labels, {k: MEASURED[k] for k in
                                               ("skip_m2", "skip_var", "skip_sq_mean")})
        multi = t["multi-stage"]
        slopes = ", ".join(fit_text(multi, stats.FitId.SKIP_M2_SLOPE, s)
                           for s in sorted(multi.by_stage()))
        starts = ", ".join(f"{stats.band(multi, MEASURED['skip_m2']).mean[b[0].index]:.2f}"
                           for s, b in multi.by_stage().items())
        caption = (
            f"Orderings and variants, {config.variants_depth} blocks each, against the block "
            "index, theory dashed. (a, b) BN-ReLU-Conv vs ReLU-BN-Conv branches: the skip "
            "second moment grows by "
            f"{fit_text(t['BN-ReLU-Conv'], stats.FitId.SKIP_M2_SLOPE)} vs "
            f"{fit_text(t['ReLU-BN-Conv'], stats.FitId.SKIP_M2_SLOPE)} per block (1 and 2 on "
            "an infinite image; the theory includes zero padding), and only "
            "BN-ReLU-Conv gives the skip path a mean (squared mean "
            f"{fit_text(t['BN-ReLU-Conv'], stats.FitId.SKIP_SQ_MEAN_SLOPE)} per "
            "block, 1/pi = 0.32 on an infinite image; ReLU-BN-Conv: 0). "
            "(c) post-activation v1 (statistics of the sum before the ReLU) vs pre-activation "
            f"v2: v1 grows by {fit_text(t['v1'], stats.FitId.SKIP_M2_SLOPE)} per block, "
            "roughly linearly "
            "(approximate theory). (d) a "
            f"{config.stages}-stage v2 network (width doubles, resolution halves at every "
            "projection shortcut, dotted): the skip path restarts at every stage (first-block "
            f"second moments {starts}) and grows linearly again (slopes per stage {slopes}; the "
            "later stages run at lower resolution, where zero padding lowers the branch's "
            "gain). "
            f"{config.describe()}")
        return FigureResult("orderings", "Orderings and variants", fig, data, caption)
    return render


def _zoo_runs(config: FigureConfig) -> dict[str, RunSpec]:
    d = config.variants_depth
    return {
        "BN v2": RunSpec(d),
        "BN v1": RunSpec(d, variant="v1"),
        f"BN v2, {config.stages} stages": RunSpec(d, stages=config.stages),
        "unnormalized": RunSpec(d, norm="none"),
        _alpha_text(0.0): RunSpec(d, norm="skipinit", alpha=0.0),
        "branch / sqrt(d)": RunSpec(d, norm="sqrt-depth"),
        **{label: RunSpec(blocks, model=model, image=config.zoo_image, batch=config.zoo_batch)
           for label, model, blocks in _REAL_MODELS},
    }


# Real architectures of the zoo: (legend, source:name, residual blocks).
_REAL_MODELS = (
    ("torchvision resnet50", "torchvision:resnet50", 16),
    ("timm resnet50 (zero-init last BN)", "timm:resnet50", 16),
    ("timm resnetv2_50", "timm:resnetv2_50", 16),
    ("timm nf_resnet50", "timm:nf_resnet50", 16),
    ("timm convnext_atto (layer scale)", "timm:convnext_atto", 12),
)


def _render_zoo(config: FigureConfig, runs: dict[str, RunSpec]
                ) -> Callable[[Traces], FigureResult]:
    def render(traces: Traces) -> FigureResult:
        labels = list(runs)
        ordered = [traces[runs[k]] for k in labels]
        fig = plot_zoo(ordered, labels, colors=_colors_for(labels))
        data = tidy(ordered, labels, {k: MEASURED[k] for k in
                                      ("branch_norm_ratio", "cosine")}, theory=False)
        depths = "; ".join(f"{label}: {stats.effective_depth(t)} of {t.n_blocks}"
                           for label, t in zip(labels, ordered, strict=True))
        caption = (
            "Model zoo: which networks are biased towards the identity at initialization. "
            "Branch/skip norm ratio ||f_l(x_l)|| / ||x_l|| (log axis; dotted: 0.1) and cosine "
            "between skip path and block output against relative depth (l + 1)/n. The legend "
            "gives the effective depth, the number of blocks whose branch moves the skip path "
            f"by at least 10% in norm: {depths}. BN biases "
            "deep blocks towards the identity (norm ratio ~ 1/sqrt(l)); SkipInit at alpha = 0 "
            "makes every block exactly the identity; a 1/sqrt(d) branch scaling makes every "
            "block uniformly close to it; the unnormalized network has no identity bias. "
            "Real architectures, built without weights and measured on "
            f"{config.zoo_batch} Gaussian {config.zoo_image}x{config.zoo_image} images: "
            "timm's resnet50 zero-initializes the last BN of every branch and its nf_resnet50 "
            "the last convolution (SkipInit-like), so their blocks start as exact identities; "
            "convnext_atto's layer scale (1e-6) makes every branch ~1e-6 of its skip path; "
            "torchvision's resnet50 and timm's resnetv2_50 rely on BN alone. "
            f"Built-in ResNets: {config.describe()}")
        return FigureResult("zoo", "Model zoo", fig, data, caption)
    return render


def _render_identity(config: FigureConfig, runs: dict[str, RunSpec]
                     ) -> Callable[[Traces], FigureResult]:
    def render(traces: Traces) -> FigureResult:
        labels = list(runs)
        ordered = [traces[runs[k]] for k in labels]
        fig = plot_identity_bias(ordered, labels, colors=_colors_for(labels))
        data = tidy(ordered, labels, {k: MEASURED[k] for k in
                                      ("cosine", "branch_norm_ratio")})
        bn = stats.band(traces[runs["BN v2"]], MEASURED["cosine"]).mean
        none = stats.band(traces[runs["unnormalized"]], MEASURED["cosine"]).mean
        finite = [v for v in none if math.isfinite(v)]
        caption = (
            f"Identity bias of {config.spp_depth}-block ResNets (v2, one stage): cosine between "
            "the skip operand x_l and the block output x_l + f_l(x_l) (1: the block is the "
            "identity), and the branch/skip norm ratio ||f_l(x_l)|| / ||x_l|| (log axis), "
            "against the block index; theory 1/sqrt(1 + ratio) and sqrt(ratio) dashed. In BN "
            f"v2 the cosine rises from {bn[0]:.3f} to {bn[-1]:.4f}; the unnormalized network "
            f"stays near 1/sqrt(2) = 0.707 (mean {np.mean(finite):.3f} before overflow); "
            "SkipInit is the identity at alpha = 0 (cosine 1, norm ratio exactly 0, not drawn "
            "on the log axis) and close to it at alpha = 0.1 (norm ratio 0.1). "
            f"{config.describe()}")
        return FigureResult("identity-bias", "Identity bias", fig, data, caption)
    return render


def figure_specs(config: FigureConfig) -> list[FigureSpec]:
    """The figure set for ``config``: every figure with the networks it measures.

    >>> [spec.name for spec in figure_specs(QUICK)]  # doctest: +NORMALIZE_WHITESPACE
    ['spp-resnet-v2-batchnorm', 'spp-trio', 'identity-bias', 'sqrt-depth-law', 'depth-sweep',
     'orderings', 'zoo']
    """
    depth, batch, image = config.headline
    headline = RunSpec(depth, batch=batch, image=image, seeds=config.seeds[:1])
    trio = _spp_runs(config)
    identity = {k: trio[k] for k in ("BN v2", "unnormalized", _alpha_text(0.0),
                                     _alpha_text(0.1))}
    law = [RunSpec(d) for d in config.law_depths]
    sweep = _sweep_runs(config)
    variants = _variant_runs(config)
    zoo = _zoo_runs(config)
    # The headline figure is `sigprop analyze resnet` with its defaults: one network, one seed.
    return [
        FigureSpec("spp-resnet-v2-batchnorm", "SPP of a BN ResNet-v2", (headline,),
                   _render_headline(config, headline)),
        FigureSpec("spp-trio", "SPP of BN, unnormalized and SkipInit", tuple(trio.values()),
                   _render_trio(config, trio)),
        FigureSpec("identity-bias", "Identity bias", tuple(identity.values()),
                   _render_identity(config, identity)),
        FigureSpec("sqrt-depth-law", "The sqrt(depth) law", tuple(law),
                   _render_law(config, law)),
        FigureSpec("depth-sweep", "Depth sweep", tuple(r for rs in sweep.values() for r in rs),
                   _render_sweep(config, sweep)),
        FigureSpec("orderings", "Orderings and variants", tuple(variants.values()),
                   _render_orderings(config, variants)),
        FigureSpec("zoo", "Model zoo", tuple(zoo.values()), _render_zoo(config, zoo)),
    ]
