"""The figure set: `sigprop figures --quick` writes every figure, caption and table, and the
tables show the shapes the theory predicts (the data are tested, not the pixels)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import sigprop
from sigprop import paper
from sigprop.paper import COLUMNS, QUICK
from sigprop_cli.main import app
from tests.helpers import ScaledBlock

NAMES = [spec.name for spec in paper.figure_specs(QUICK)]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("figures")
    result = CliRunner().invoke(app, ["figures", "--quick", "--out", str(out),
                                      "--format", "png,svg"])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert f"wrote {len(NAMES)} figures (quick set)" in result.stdout
    return out


def table(out: Path, name: str) -> pd.DataFrame:
    frame = pd.read_csv(out / f"{name}.csv")
    assert list(frame.columns) == COLUMNS
    return frame


def measured(frame: pd.DataFrame, series: str, quantity: str) -> pd.DataFrame:
    """seed x block table of one measured quantity."""
    rows = frame[(frame.series == series) & (frame.source == "measured")
                 & (frame.quantity == quantity)]
    assert not rows.empty, (series, quantity)
    return rows.pivot(index="seed", columns="block", values="value")


def test_every_figure_caption_and_table_is_written(quick: Path) -> None:
    assert NAMES == ["spp-resnet-v2-batchnorm", "spp-trio", "identity-bias", "normalizer-free",
                     "sqrt-depth-law", "depth-sweep", "finite-size", "orderings", "zoo",
                     "spp-backward"]
    for name in NAMES:
        assert (quick / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (quick / f"{name}.svg").read_text().lstrip().startswith("<?xml")
        caption = (quick / f"{name}.txt").read_text()
        assert "Width" in caption and "Gaussian" in caption and "seed" in caption, name
        assert len(table(quick, name)) > 0
    assert not list(quick.glob("*.pdf"))


def test_spp_trio_shapes(quick: Path) -> None:
    frame = table(quick, "spp-trio")
    assert set(frame.series) == {"BN v2", "unnormalized", "SkipInit, alpha = 0",
                                 "SkipInit, alpha = 0.1"}
    assert set(frame[frame.source == "measured"].seed) == set(QUICK.seeds)
    # Unnormalized: the skip second moment rises geometrically (a line in log space).
    skip = measured(frame, "unnormalized", "skip_m2").to_numpy()
    blocks = np.arange(skip.shape[1])
    for run in np.log(skip):
        slope, intercept = np.polyfit(blocks, run, 1)
        residual = run - (intercept + slope * blocks)
        assert np.exp(slope) > 1.3 and 1 - residual.var() / run.var() > 0.95
    # BN v2: linear growth, about +1 per block (width 8: a loose band).
    bn = measured(frame, "BN v2", "skip_m2").mean().to_numpy()
    assert 0.5 < np.polyfit(blocks, bn, 1)[0] < 1.5
    # SkipInit at alpha = 0: the residual is exactly 0, the skip path does not move.
    assert (measured(frame, "SkipInit, alpha = 0", "residual_var").to_numpy() == 0).all()
    still = measured(frame, "SkipInit, alpha = 0", "skip_m2").to_numpy()
    assert np.allclose(still, still[:, :1])
    # Theory rows: BN v2 skip m2 grows by the zero-padding factor of the quick set's 8x8
    # images, ((9H - 10) / (3 (3H - 2)))^2 = (62/66)^2 per block (1 on an infinite image).
    theory = frame[(frame.series == "BN v2") & (frame.source == "theory")
                   & (frame.quantity == "skip_m2")]
    assert np.allclose(np.diff(theory.value), (62 / 66) ** 2, atol=1e-4)  # CSV: 6 digits
    assert theory.seed.isna().all()


def test_sqrt_depth_law_ratio_falls_as_one_over_l(quick: Path) -> None:
    frame = table(quick, "sqrt-depth-law")
    for depth in QUICK.law_depths:
        ratio = measured(frame, f"d = {depth}", "ratio").to_numpy()
        mean = ratio.mean(axis=0)
        assert mean[:3].mean() > 3 * mean[-3:].mean()
        position = np.log(np.arange(1, ratio.shape[1] + 1))
        exponent = np.polyfit(np.tile(position, len(ratio)), np.log(ratio).ravel(), 1)[0]
        assert -1.3 < exponent < -0.6, (depth, exponent)
        # The drawn straight-line form: skip/residual grows by ~1 per block.
        inverse = measured(frame, f"d = {depth}", "inverse_ratio").to_numpy()
        assert inverse == pytest.approx(1 / ratio, rel=1e-5)
        blocks = np.arange(inverse.shape[1])
        slope = np.polyfit(np.tile(blocks, len(inverse)), inverse.ravel(), 1)[0]
        assert 0.6 < slope < 1.4, (depth, slope)
    caption = (quick / "sqrt-depth-law.txt").read_text()
    assert "slope 1" in caption and "exponent" in caption


def test_depth_sweep_bn_linear_unnormalized_explodes_sqrt_depth_flat(quick: Path) -> None:
    frame = table(quick, "depth-sweep")
    measured_rows = frame[frame.source == "measured"]
    final = measured_rows[measured_rows.quantity == "final_m2"]
    bn = final[final.series == "BN v2"].groupby("depth").value.mean()
    assert list(bn.index) == list(QUICK.sweep_depths)
    slope, intercept = np.polyfit(bn.index, bn.to_numpy(), 1)
    fitted = intercept + slope * bn.index.to_numpy()
    assert 0.6 < slope < 1.4 and np.corrcoef(fitted, bn.to_numpy())[0, 1] ** 2 > 0.9
    # The drawn growth, final over first, is in the table too; the unnormalized network's
    # factor per block stays near its theory (1 + f < 2) at every depth.
    first = measured_rows[measured_rows.quantity == "first_m2"].set_index(
        ["series", "seed", "depth"]).value
    growth = final.set_index(["series", "seed", "depth"]).value / first
    per_block = np.exp(np.log(growth["unnormalized"]).groupby("depth").mean()
                       / growth["unnormalized"].groupby("depth").mean().index)
    assert ((1.3 < per_block) & (per_block < 2.0)).all(), per_block  # width 8: noisy
    # ~e^f (f < 1) at every depth, no trend with d (width 8: single depths are noisy).
    scaled = np.exp(np.log(growth["branch / sqrt(d)"]).groupby("depth").mean())
    assert ((1.2 < scaled) & (scaled < 4.0)).all() and scaled.iloc[-1] / scaled.iloc[0] < 2, scaled
    assert "SkipInit, alpha = 0" not in set(frame.series)
    theory = frame[(frame.series == "BN v2") & (frame.source == "theory")
                   & (frame.quantity == "final_m2")]
    step = (62 / 66) ** 2  # m2_0 + f d, f the zero-padding factor of 8x8 images
    assert np.allclose(theory.value - step * theory.depth,
                       theory.value.iloc[0] - step * theory.depth.iloc[0], atol=1.0)


def test_finite_size_fits_with_intervals_and_padding_theory(quick: Path) -> None:
    frame = table(quick, "finite-size")
    for side in QUICK.finite_images:
        series = f"BN v2, {side}x{side} images"
        for name in ("skip_sq_mean_slope", "skip_var_slope"):
            rows = frame[frame.series == series].set_index(["source", "quantity"]).value
            lo, value, hi = (rows["measured", name + suffix] for suffix in ("_ci_lo", "", "_ci_hi"))
            assert lo < value < hi
            # Zero padding lowers the theory below the infinite-image increments.
            assert 0 < rows["theory", name] < (1 / math.pi if "sq_mean" in name
                                               else 1 - 1 / math.pi)
    theory = frame[(frame.source == "theory") & (frame.quantity == "growth_rate")].value
    assert len(theory) == len(QUICK.finite_widths) and theory.nunique() == 1  # width-free
    assert 1 < theory.iloc[0] < 2
    assert "growth factor per block" in (quick / "finite-size.txt").read_text()


def test_backward_figure_gradient_growth_against_its_closed_form(quick: Path) -> None:
    frame = table(quick, "spp-backward")
    assert set(frame.series) == {"BN v2", "unnormalized", "SkipInit, alpha = 0.25",
                                 "branch / sqrt(d)"}
    growth = {}
    for series in set(frame.series):
        m2 = measured(frame, series, "grad_input_m2").to_numpy()
        growth[series] = float(np.exp(np.log(m2[:, 0] / m2[:, -1]).mean()))
    # Gradients grow towards the input, least with the 1/sqrt(d) branches, most without BN.
    assert growth["unnormalized"] > growth["BN v2"] > growth["branch / sqrt(d)"] > 1
    caption = (quick / "spp-backward.txt").read_text()
    assert "(theory x" in caption and "BN v2 (24 blocks): x" in caption


def test_orderings_and_stage_resets(quick: Path) -> None:
    frame = table(quick, "orderings")
    blocks = np.arange(QUICK.variants_depth)
    slope = {series: np.polyfit(blocks, measured(frame, series, "skip_m2").mean(), 1)[0]
             for series in ("BN-ReLU-Conv v2", "ReLU-BN-Conv v2")}
    assert slope["ReLU-BN-Conv v2"] > 1.4 * slope["BN-ReLU-Conv v2"]
    sq_mean = measured(frame, "ReLU-BN-Conv v2", "skip_sq_mean").mean().to_numpy()
    assert sq_mean[-1] < 0.2 * measured(frame, "BN-ReLU-Conv v2", "skip_sq_mean").mean().iloc[-1]
    multi = frame[(frame.series == f"BN v2, {QUICK.stages} stages")
                  & (frame.source == "measured") & (frame.quantity == "skip_m2")]
    assert sorted(set(multi.stage)) == list(range(QUICK.stages))
    skip = multi.groupby("block").value.mean()
    for stage in range(1, QUICK.stages):
        start = int(multi[multi.stage == stage].block.min())
        assert skip[start] < 0.5 * skip[start - 1]  # the projection resets the skip path


def test_identity_bias_and_zoo(quick: Path) -> None:
    frame = table(quick, "identity-bias")
    assert (measured(frame, "SkipInit, alpha = 0", "one_minus_cosine").to_numpy() == 0).all()
    gap = np.nanmean(measured(frame, "unnormalized", "one_minus_cosine").to_numpy())
    assert 0.15 < gap < 0.45  # 1 - 1/sqrt(2) = 0.29 in theory
    bn = measured(frame, "BN v2", "one_minus_cosine").mean().to_numpy()
    assert bn[-5:].mean() < bn[:5].mean() / 3 and bn[-1] < 0.03
    norm = measured(frame, "SkipInit, alpha = 0.1", "branch_norm_ratio").to_numpy()
    assert 0.08 < norm.mean() < 0.12 and norm.max() < 0.2  # alpha = 0.1 (per block: width 8)
    zoo = table(quick, "zoo")
    assert {"BN v2", "BN v1", "unnormalized", "SkipInit, alpha = 0",
            "branch / sqrt(d)", "NF-ResNet, alpha = 0.2"} <= set(zoo.series)
    nf = measured(zoo, "NF-ResNet, alpha = 0.2", "branch_norm_ratio").mean().to_numpy()
    assert 0.1 < nf[0] < 0.3 and nf[-1] < nf[0]  # visible branches, ~alpha / beta_l
    assert set(zoo.source) == {"measured"}
    assert "effective depth" in (quick / "zoo.txt").read_text()


def test_normalizer_free_family_beside_batch_norm(quick: Path) -> None:
    frame = table(quick, "normalizer-free")
    nf, fixup, nonzero = "NF-ResNet, alpha = 0.2", "Fixup", "Fixup, non-zero last layer"
    assert set(frame.series) == {"BN v2", "SkipInit, alpha = 0.2", nf, fixup, nonzero}
    depth = QUICK.spp_depth
    assert set(frame.depth) == {depth}
    # Fixup with its zero last layers: every block exactly the identity, in theory too.
    assert (measured(frame, fixup, "residual_m2").to_numpy() == 0).all()
    assert (measured(frame, fixup, "one_minus_cosine").to_numpy() == 0).all()
    skip = measured(frame, fixup, "skip_m2").to_numpy()
    assert np.allclose(skip, skip[:, :1], rtol=0, atol=0)
    theory = frame[frame.source == "theory"]
    assert (theory[(theory.series == fixup) & (theory.quantity == "ratio")].value == 0).all()
    # NF: linear growth of about alpha^2 m2_0 per block (8x8 zero padding: a factor f < 1 off),
    # its ratio falling as alpha^2 f / (1 + l alpha^2).
    nf_skip = theory[(theory.series == nf) & (theory.quantity == "skip_m2")].value.to_numpy()
    steps = np.diff(nf_skip)
    assert (0.6 * 0.04 * nf_skip[0] < steps).all() and (steps < 0.04 * nf_skip[0]).all()
    nf_ratio = measured(frame, nf, "ratio").mean().to_numpy()
    assert nf_ratio[:5].mean() > 1.3 * nf_ratio[-5:].mean()
    growth = measured(frame, nf, "skip_m2").mean().to_numpy()
    assert 1.5 < growth[-1] / growth[0] < 1 + 0.04 * depth
    # Fixup without the zero layer: the branch adds 1/d of the skip (times the padding factor).
    ratio = theory[(theory.series == nonzero) & (theory.quantity == "ratio")].value
    assert np.allclose(ratio, ratio.iloc[0], rtol=0.05) and 0.6 / depth < ratio.iloc[0] < 1 / depth
    caption = (quick / "normalizer-free.txt").read_text()
    assert "NF-ResNet" in caption and "Fixup" in caption and "identity" in caption


def test_generation_is_deterministic() -> None:
    specs = [s for s in paper.figure_specs(QUICK) if s.name == "sqrt-depth-law"]
    first, second = (next(paper.generate(QUICK, specs)) for _ in range(2))
    pd.testing.assert_frame_equal(first.data, second.data)
    assert first.caption == second.caption
    plt.close("all")


@pytest.mark.parametrize("args", [["--format", "png,gif"], ["--format", ","],
                                  ["--threads", "0"]])
def test_figures_bad_options_exit_2(args: list[str], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["figures", "--quick", "--out", str(tmp_path), *args])
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stdout + result.stderr
    assert not list(tmp_path.iterdir())


def test_tables_take_traces_of_any_model() -> None:
    """A model without theory or config gives measured rows only, its depth from its blocks."""
    net = torch.nn.Sequential(ScaledBlock(3, 0.5), ScaledBlock(3, 0.5), ScaledBlock(3, 0.0))
    custom = sigprop.measure(net, sigprop.gaussian_input((4, 3, 8, 8), seed=0))
    frame = paper.tidy([custom], ["custom"], {"cosine": lambda b: b.cosine})
    assert set(frame.source) == {"measured"} and set(frame.depth) == {3}
