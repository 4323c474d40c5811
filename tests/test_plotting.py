"""Plot functions: panels, scales, theory and markers (data drawn, not pixels)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import sigprop
from sigprop import InputSpec, measure
from sigprop.plotting import (
    plot_depth_sweep,
    plot_identity_bias,
    plot_spp,
    plot_spp_trio,
    plot_zoo,
)
from tests.helpers import ScaledBlock

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def traced(depth: int, seeds: int = 1, **kwargs: object) -> sigprop.Trace:
    traces = []
    for seed in range(seeds):
        net = sigprop.models.resnet(depth, width=8, seed=seed, **kwargs)  # type: ignore[arg-type]
        traces.append(measure(net, InputSpec("gaussian", (2, 3, 8, 8), seed=seed),
                              model_info=net.config))
    merged = traces[0]
    for t in traces[1:]:
        merged = merged.merge(t)
    return merged


def legend_text(fig: Figure) -> list[str]:
    """The SPP's legend entries (from its legend panel), unwrapped."""
    legend = fig.axes[-1].get_legend()
    assert legend is not None
    return [t.get_text().replace("\n", " ") for t in legend.get_texts()]


def test_bn_v2_plot_has_theory_and_stage_marks(tmp_path: Path) -> None:
    trace = traced(12, stages=2)
    fig = plot_spp(trace)
    fig.savefig(tmp_path / "spp.png")
    assert (tmp_path / "spp.png").stat().st_size > 10_000
    sq_mean, variance, branch, ratio, identity, key = fig.axes
    assert not key.axison and ratio.get_yscale() == "log" and identity.get_yscale() == "log"
    blocks = trace.runs[0].blocks
    # The published panels: statistics at the end of each block, the branch on its own axis.
    assert np.asarray(sq_mean.get_lines()[0].get_ydata()) == pytest.approx(
        [b.output.sq_mean for b in blocks])
    assert np.asarray(variance.get_lines()[0].get_ydata()) == pytest.approx(
        [b.output.var for b in blocks])
    assert np.asarray(branch.get_lines()[0].get_ydata()) == pytest.approx(
        [b.residual.var for b in blocks])
    assert np.asarray(ratio.get_lines()[0].get_ydata()) == pytest.approx([b.ratio for b in blocks])
    assert np.asarray(identity.get_lines()[0].get_ydata()) == pytest.approx(
        [1 - b.cosine for b in blocks])
    assert [str(line.get_label()) for line in ratio.get_lines()[:2]] == [
        "ResNet-v2 batchnorm, d=12", "_theory"]
    entries = legend_text(fig)
    assert entries[0] == "ResNet-v2 batchnorm, d=12"
    assert entries[1].startswith("theory, m2_l = m2_0 + f l; ratio = f/(m2_0 + f l)")
    assert entries[2] == "stage boundary"
    stage_marks = [line for line in variance.get_lines()
                   if str(line.get_label()).startswith("_child")]
    assert [np.asarray(line.get_xdata())[0] for line in stage_marks] == [6]
    assert [t.get_text() for t in sq_mean.texts] == ["stage 1"]
    title = fig.get_suptitle()
    assert "ResNet-v2 batchnorm, 12 blocks, width 8" in title and "2x3x8x8" in title
    assert title.endswith("1 seed")
    plt.close(fig)


def test_geometric_growth_gets_a_log_axis_and_overflow_is_marked() -> None:
    trace = traced(40, norm="skipinit", alpha=100.0)  # x1e4 per block: overflows in ~20
    first = trace.first_overflow
    assert first is not None
    fig = plot_spp(trace)
    assert fig.axes[1].get_yscale() == "log"
    assert [t.get_text() for t in fig.axes[0].texts] == [f"non-finite from\nblock {first}"]
    # Past the overflow the theory (10^4 per block) would only squash the axis: it stops.
    theory = [line for line in fig.axes[3].get_lines() if line.get_label() == "_theory"]
    assert np.asarray(theory[0].get_xdata()).max() == first - 1
    plt.close(fig)
    fig = plot_spp([traced(4), trace], labels=["BN", "SkipInit 100"])
    assert [t.get_text() for t in fig.axes[0].texts] == [f"SkipInit 100:\nnon-finite from\n"
                                                         f"block {first}"]
    plt.close(fig)


def test_several_seeds_draw_bands_and_overlays_colour_their_theory() -> None:
    bn, skipinit = traced(6, seeds=3), traced(6, seeds=1, norm="skipinit", alpha=0.5)
    fig = plot_spp([bn, skipinit], labels=["BN", "SkipInit"])
    assert len(fig.axes[1].collections) == 1  # the band of the 3-seed trace
    assert legend_text(fig) == ["BN (mean of 3 seeds, 95% band)", "SkipInit",
                                "theory (dashed, in its trace's colour)"]
    lines = fig.axes[3].get_lines()
    measured = {line.get_label(): line.get_color() for line in lines
                if line.get_label() in ("BN", "SkipInit")}
    theory = [line.get_color() for line in lines if line.get_label() == "_theory"]
    assert theory == [measured["BN"], measured["SkipInit"]] and len(set(theory)) == 2
    assert "2 networks" in fig.get_suptitle() and fig.get_suptitle().endswith("1/3 seeds")
    plt.close(fig)


def test_all_zero_ratio_keeps_a_linear_axis() -> None:
    fig = plot_spp(traced(4, norm="skipinit"))
    assert fig.axes[3].get_yscale() == "linear" and fig.axes[4].get_yscale() == "linear"
    plt.close(fig)


def test_plot_into_given_axes_and_argument_errors() -> None:
    trace = traced(3)
    fig, axes = plt.subplots(1, 6)
    assert plot_spp(trace, axes=list(axes)) is fig
    with pytest.raises(ValueError, match="got 1 labels for 2 traces"):
        plot_spp([trace, trace], labels=["a"])
    with pytest.raises(ValueError, match="draws 6 panels, got 2 axes"):
        plot_spp(trace, axes=list(axes[:2]))
    plt.close("all")


@pytest.mark.parametrize(("depth", "overlaid", "kwargs"), [
    (3, 1, {}), (64, 1, {"variant": "v1", "stages": 4}), (16, 6, {"stages": 2}),
    (24, 3, {"norm": "nf"}),
], ids=["short", "v1-four-stages", "six-traces", "nf-three-traces"])
def test_legends_stay_on_the_canvas_and_off_the_data(depth: int, overlaid: int,
                                                     kwargs: dict[str, object]) -> None:
    # The legend's bounding box, after layout: inside the figure, outside every data panel.
    trace = traced(depth, **kwargs)  # type: ignore[arg-type]
    fig = plot_spp([trace] * overlaid, labels=[f"network number {k} with a long name"
                                               for k in range(overlaid)])
    fig.canvas.draw()
    legend = fig.axes[-1].get_legend()
    assert legend is not None
    box, canvas_box = legend.get_window_extent(), fig.bbox
    assert canvas_box.x0 <= box.x0 and box.x1 <= canvas_box.x1
    assert canvas_box.y0 <= box.y0 and box.y1 <= canvas_box.y1
    assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes[:-1])
    theory = 2 if overlaid == 1 else overlaid + 1
    assert len(legend.get_texts()) == theory + (1 if kwargs.get("stages") else 0)
    plt.close(fig)


def test_panels_take_traces_and_axes() -> None:
    trace = traced(6, seeds=2)
    fig, axes = plt.subplots(1, 2)
    assert plot_zoo([trace, trace], ["BN", "BN 2"], groups=["a", "b"], axes=list(axes)) is fig
    assert plot_identity_bias([trace], axes=list(axes)) is fig
    default = "ResNet-v2 batchnorm, d=6"
    assert default in [line.get_label() for line in axes[0].get_lines()]
    with pytest.raises(ValueError, match="got 1 labels for 2 traces"):
        plot_zoo([trace, trace], ["a"])
    with pytest.raises(ValueError, match="needs at least one trace"):
        plot_identity_bias([])
    with pytest.raises(ValueError, match="draws 4 panels, got 2 axes"):
        plot_spp_trio([trace], axes=list(axes))
    with pytest.raises(ValueError, match="not in sweeps"):
        plot_depth_sweep({"BN": [trace]}, explosive=["none"])
    plt.close("all")


def test_zoo_takes_traces_of_any_model_in_small_multiples() -> None:
    """Not only built-in ResNets: a model without theory or config is drawn."""
    net = torch.nn.Sequential(ScaledBlock(3, 0.5), ScaledBlock(3, 0.5), ScaledBlock(3, 0.0))
    custom = sigprop.measure(net, sigprop.gaussian_input((4, 3, 8, 8), seed=0))
    zero = sigprop.measure(torch.nn.Sequential(ScaledBlock(3, 0.0), ScaledBlock(3, 0.0)),
                           sigprop.gaussian_input((4, 3, 8, 8), seed=0))
    fig = plot_zoo([custom, traced(6), zero], ["custom", "BN v2", "zero"],
                   groups=["mine", "built-in", "mine"])
    mine, built_in = fig.axes
    assert [mine.get_title(), built_in.get_title()] == ["mine", "built-in"]
    legend = mine.get_legend()
    assert legend is not None
    texts = [t.get_text().replace("\n", " ") for t in legend.get_texts()]
    assert texts[0] == "custom: 2/3"  # branch 0.5 x skip in norm twice, then exactly 0
    assert texts[1] == r"zero: 0/2 (branch $\equiv 0$: bottom edge)"
    norm_ratio = np.asarray(mine.get_lines()[0].get_ydata())
    assert np.allclose(norm_ratio[:2], 0.5) and np.isnan(norm_ratio[2])  # log axis: 0 not drawn
    edge = next(line for line in mine.get_lines() if str(line.get_label()).startswith("zero"))
    assert np.asarray(edge.get_ydata()) == pytest.approx([mine.get_ylim()[0]] * 2)
    # Colours restart in each panel; legends under the panels do not meet or leave the canvas.
    assert mine.get_lines()[0].get_color() == built_in.get_lines()[0].get_color()
    fig.canvas.draw()
    boxes = [ax.get_legend().get_window_extent() for ax in fig.axes]
    assert not boxes[0].overlaps(boxes[1])
    assert all(fig.bbox.x0 <= b.x0 and b.x1 <= fig.bbox.x1 and b.y0 >= fig.bbox.y0
               for b in boxes)
    with pytest.raises(ValueError, match="got 1 groups for 3 traces"):
        plot_zoo([custom, traced(6), zero], groups=["a"])
    plt.close("all")


def test_trio_gives_the_explosion_its_own_panel_and_the_rest_linear_axes() -> None:
    bn, skipinit = traced(24), traced(24, norm="skipinit")
    exploding = traced(24, norm="none")
    assert exploding.runs[0].blocks[-1].skip.m2 / exploding.runs[0].blocks[0].skip.m2 > 1e3
    fig = plot_spp_trio([bn, exploding, skipinit], ["BN", "none", "SkipInit 0"])
    log_axis, variance, sq_mean, branch = fig.axes
    assert log_axis.get_yscale() == "log"
    assert [ax.get_yscale() for ax in (variance, sq_mean, branch)] == ["linear"] * 3
    assert {line.get_label() for line in log_axis.get_lines()} >= {"BN", "none", "SkipInit 0"}
    # The exploding network is not on the linear panels; SkipInit's zero branch is drawn as 0.
    assert [line.get_label() for line in branch.get_lines()
            if not str(line.get_label()).startswith("_")] == ["BN", "SkipInit 0"]
    zero = next(line for line in branch.get_lines() if line.get_label() == "SkipInit 0")
    assert np.asarray(zero.get_ydata()) == pytest.approx(np.zeros(24))
    # Theory in each network's colour; decade ticks evenly spaced on the log axis.
    theory = [line.get_color() for line in log_axis.get_lines() if line.get_label() == "_theory"]
    measured = [line.get_color() for line in log_axis.get_lines()
                if line.get_label() in ("BN", "none", "SkipInit 0")]
    assert theory == measured
    decades = np.diff(np.log10(log_axis.yaxis.get_majorticklocs()))
    assert len(set(np.round(decades, 9))) == 1
    plt.close(fig)


def test_legends_under_the_panels_keep_to_the_canvas() -> None:
    # Five long entries asked for in five columns: fewer columns, inside the figure's width.
    trace = traced(6)
    labels = [f"a network with a rather long name, number {k}" for k in range(5)]
    fig = plot_identity_bias([trace] * 5, labels)
    fig.canvas.draw()
    (below,) = fig.legends
    box = below.get_window_extent()
    assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y0 >= fig.bbox.y0
    assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes)
    assert fig.axes[0].get_yscale() == "log"
    gap = np.asarray(fig.axes[0].get_lines()[0].get_ydata())
    assert gap == pytest.approx([1 - b.cosine for b in trace.runs[0].blocks])
    plt.close(fig)


def test_lines_and_bands_stop_where_the_first_seed_overflows() -> None:
    # Seeds 0 and 3 of this network overflow at blocks 26 and 28: past block 25 a mean would
    # average the surviving seed only, so line, band and theory end there.
    trace = traced(40, seeds=4, norm="skipinit", alpha=30.0)
    ends = sorted(r.first_overflow or 0 for r in trace.runs)
    assert trace.first_overflow == ends[0] < ends[-1]
    fig = plot_spp(trace)
    for ax in fig.axes[:-1]:
        drawn = [line for line in ax.get_lines() if len(np.asarray(line.get_xdata())) > 2]
        assert drawn and all(np.asarray(line.get_xdata()).max() == ends[0] - 1
                             for line in drawn), ax.get_title()
        for band in ax.collections:
            assert np.asarray(band.get_paths()[0].vertices)[:, 0].max() == ends[0] - 1
    plt.close(fig)


def test_notebook_display_trace_plot_report_and_audit_tables() -> None:
    from sigprop.audit import audit
    from sigprop.stats import report

    trace = traced(8)
    fig = trace.plot(theory=False)
    assert len(fig.axes) == 6 and not any(line.get_label() == "_theory"
                                          for line in fig.axes[3].get_lines())
    plt.close(fig)
    result = report(trace)
    table = result._repr_html_()
    assert table.startswith("<table><caption>theory vs measurement")
    assert table.count("<tr>") == 1 + len(result.verdicts)  # header + one row per verdict
    for verdict in result.verdicts:
        assert f"<td>{verdict.outcome.value}</td>" in table
    findings = audit(trace, result=result)
    assert isinstance(findings, list) and findings == list(findings)
    rows = findings._repr_html_()
    assert rows.count("<tr>") == 1 + len(findings)
    assert all(f"<td>{f.id}</td><td>{f.status.value}</td>" in rows for f in findings)
