"""The variant figures: orderings of the branch and stages, and the model zoo."""

from __future__ import annotations

from sigprop import stats
from sigprop.paper.config import FigureConfig, RunSpec
from sigprop.paper.methods import NF_LABEL
from sigprop.paper.networks import skipinit_label
from sigprop.paper.spec import FigureSpec, Rendering, Traces
from sigprop.paper.tables import measured, tidy
from sigprop.plotting import MEASURED, fit_text, plot_orderings, plot_zoo

__all__ = ["orderings_figure", "zoo_figure"]


def orderings_figure(config: FigureConfig) -> FigureSpec:
    """BN-ReLU-Conv vs ReLU-BN-Conv, v1 vs v2, and the stages of a multi-stage network."""
    d = config.variants_depth
    runs = {
        "BN-ReLU-Conv v2": RunSpec(d),
        "ReLU-BN-Conv v2": RunSpec(d, order="relu-bn"),
        "BN v1": RunSpec(d, variant="v1"),
        f"BN v2, {config.stages} stages": RunSpec(d, stages=config.stages),
    }

    def render(traces: Traces) -> Rendering:
        bn_relu, relu_bn, v1, multi = (traces[run] for run in runs.values())
        fig = plot_orderings(bn_relu, relu_bn, v1, multi)
        data = tidy([bn_relu, relu_bn, v1, multi], list(runs),
                    measured("skip_m2", "skip_var", "skip_sq_mean"))
        slopes = ", ".join(fit_text(multi, stats.FitId.SKIP_M2_SLOPE, s)
                           for s in sorted(multi.by_stage()))
        starts = ", ".join(f"{stats.band(multi, MEASURED['skip_m2']).mean[b[0].index]:.2f}"
                           for s, b in multi.by_stage().items())
        caption = (
            f"Orderings and variants, {config.variants_depth} blocks each, against the block "
            "index, theory dashed. (a, b) BN-ReLU-Conv vs ReLU-BN-Conv branches: the skip "
            "second moment grows by "
            f"{fit_text(bn_relu, stats.FitId.SKIP_M2_SLOPE)} vs "
            f"{fit_text(relu_bn, stats.FitId.SKIP_M2_SLOPE)} per block (1 and 2 on "
            "an infinite image; the theory includes zero padding), and only "
            "BN-ReLU-Conv gives the skip path a mean (squared mean "
            f"{fit_text(bn_relu, stats.FitId.SKIP_SQ_MEAN_SLOPE)} per "
            "block, 1/pi = 0.32 on an infinite image; ReLU-BN-Conv: 0). "
            "(c) post-activation v1 vs pre-activation v2, skip path x_l (in v1 the previous "
            "block's sum after its ReLU): v1 grows by "
            f"{fit_text(v1, stats.FitId.SKIP_M2_SLOPE)} per block, roughly linearly; its "
            "theory (dashed in its colour) is approximate: it ignores what the ReLU after "
            "each addition clips. (d) a "
            f"{config.stages}-stage v2 network (width doubles, resolution halves at every "
            "projection shortcut, dotted): the skip path restarts at every stage (first-block "
            f"second moments {starts}) and grows linearly again (slopes per stage {slopes}; the "
            "later stages run at lower resolution, where zero padding lowers the branch's "
            "gain). "
            f"{config.describe()}")
        return fig, data, caption

    return FigureSpec("orderings", "Orderings and variants", tuple(runs.values()), render)


# Real architectures of the zoo: (legend, source:name, residual blocks).
_REAL_MODELS = (
    ("torchvision resnet50", "torchvision:resnet50", 16),
    ("timm resnet50 (zero-init last BN)", "timm:resnet50", 16),
    ("timm resnetv2_50", "timm:resnetv2_50", 16),
    ("timm nf_resnet50", "timm:nf_resnet50", 16),
    ("timm convnext_atto (layer scale)", "timm:convnext_atto", 12),
)
_CONVNEXT = _REAL_MODELS[-1][0]


def _zoo_group(label: str, run: RunSpec) -> str:
    """The zoo panel of a network: real architectures, built-in with BN or without."""
    if run.model is not None:
        return "Real architectures"
    return "Built-in, batch norm" if label.startswith("BN") else "Built-in, no normalization"


def zoo_figure(config: FigureConfig) -> FigureSpec:
    """Which networks, built-in and real, are biased towards the identity."""
    d = config.variants_depth
    runs = {
        "BN v2": RunSpec(d),
        "BN v1": RunSpec(d, variant="v1"),
        f"BN v2, {config.stages} stages": RunSpec(d, stages=config.stages),
        "unnormalized": RunSpec(d, norm="none"),
        skipinit_label(0.0): RunSpec(d, norm="skipinit", alpha=0.0),
        "branch / sqrt(d)": RunSpec(d, norm="sqrt-depth"),
        NF_LABEL: RunSpec(d, norm="nf", alpha=0.2),
        **{label: RunSpec(blocks, model=model, image=config.zoo_image, batch=config.zoo_batch)
           for label, model, blocks in _REAL_MODELS},
    }

    def render(traces: Traces) -> Rendering:
        named = {label: traces[run] for label, run in runs.items()}
        groups = [_zoo_group(label, run) for label, run in runs.items()]
        fig = plot_zoo(list(named.values()), list(named), groups=groups)
        data = tidy(list(named.values()), list(named), measured("branch_norm_ratio", "cosine"),
                    theory=False)
        depths = "; ".join(f"{label}: {stats.effective_depth(t)} of {t.n_blocks}"
                           for label, t in named.items())
        ratios = [b.branch_norm_ratio for _, b in named[_CONVNEXT].blocks()]
        convnext = (min(ratios), max(ratios))
        caption = (
            "Model zoo: which networks are biased towards the identity at initialization, in "
            "three panels: built-in ResNets with batch norm, built-in ResNets without it, "
            "real architectures. Branch/skip norm ratio ||f_l(x_l)|| / ||x_l|| against the "
            "block index (log axis; dotted: 0.1; the cosine between skip path and output, "
            "1/sqrt(1 + r^2) for a norm ratio r and an independent branch, is in the CSV). "
            "Branches "
            "that are exactly 0 are drawn as triangles on the bottom edge. The legends give the "
            "effective depth, the number of blocks whose branch moves the skip path by at least "
            f"10% in norm: {depths}. BN biases "
            "deep blocks towards the identity (norm ratio ~ 1/sqrt(l)); SkipInit at alpha = 0 "
            "makes every block exactly the identity; a 1/sqrt(d) branch scaling makes every "
            "block uniformly close to it; the unnormalized network has no identity bias; the "
            "built-in NF-ResNet (alpha = 0.2, gains not zeroed) shows the signal that timm's "
            "nf_resnet50 hides: its norm ratio falls as alpha sqrt(f / (1 + l alpha^2)), like "
            "BN's. "
            "Real architectures, built without weights and measured on "
            f"{config.zoo_batch} Gaussian {config.zoo_image}x{config.zoo_image} images: "
            "timm's resnet50 zero-initializes the last BN of every branch and its nf_resnet50 "
            "the last convolution (SkipInit-like), so their blocks start as exact identities; "
            "convnext_atto's layer scale (gamma = 1e-6) makes its branch/skip norm ratios "
            f"{convnext[0]:.2g} to {convnext[1]:.2g}; "
            "torchvision's resnet50 and timm's resnetv2_50 rely on BN alone. "
            f"Built-in ResNets: {config.describe()}")
        return fig, data, caption

    return FigureSpec("zoo", "Model zoo", tuple(runs.values()), render)
