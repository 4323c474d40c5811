"""Signal-propagation plots (SPP): skip-path and branch statistics against the block index."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sigprop.config import ResNetConfig
from sigprop.plotting._helpers import (
    LINEAR,
    LOG,
    STAGE,
    THEORY,
    Series,
    band_line,
    canvas,
    integer_blocks,
    legend_panel,
    mark_overflow,
    mark_stages,
    outside_legend,
    scale_y,
    series,
    theory_legend_entry,
    theory_line,
)
from sigprop.plotting.quantities import MEASURED, PREDICTED
from sigprop.plotting.style import DOUBLE_COLUMN
from sigprop.theory import Prediction, predict
from sigprop.trace import Trace

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_spp", "plot_spp_trio"]


@dataclass(frozen=True, slots=True)
class _Panel:
    """A data panel of :func:`plot_spp`: one measured quantity and its closed form."""

    title: str
    ylabel: str
    quantity: str  # a name of MEASURED and PREDICTED
    log_from: float  # decades for a log axis, as in scale_y


_PANELS = (
    _Panel("Average channel squared mean", r"$\mathrm{mean}_c\, \mu_c^2(x_{l+1})$",
           "output_sq_mean", 2.0),
    _Panel("Average channel variance", r"$\mathrm{mean}_c\, \sigma_c^2(x_{l+1})$",
           "output_var", 2.0),
    _Panel("Residual branch variance", r"$\mathrm{mean}_c\, \sigma_c^2(f_l(x_l))$",
           "residual_var", 2.0),
    _Panel("Residual / skip", r"$E[f_l(x_l)^2]\, /\, E[x_l^2]$", "ratio", LOG),
    _Panel("Identity bias", r"$1 - \cos(x_l,\ x_l + f_l(x_l))$", "one_minus_cosine", LOG),
)


def plot_spp(
    traces: Trace | Sequence[Trace],
    labels: Sequence[str] | None = None,
    *,
    theory: bool = True,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Signal-propagation plot against block index, in the published style (Brock et al. 2021).

    Five panels: the average channel squared mean and average channel variance at the end of
    each block (the block's output ``x_{l+1}``), the residual branch's average channel variance,
    the residual/skip ratio of second moments, and the identity bias ``1 - cos`` between the
    skip operand and the output (0: the block is the identity; log axis). A sixth panel holds
    the legend, so that it never covers data; the figure's title says what is drawn.

    Several traces (e.g. two architectures) are overlaid, one colour each. With several runs
    (seeds) a trace is drawn as its mean with a 95% confidence band. The theory (docs/theory.md)
    is drawn dashed in its trace's colour for the built-in ResNets; stage boundaries are dotted
    vertical lines, numbered in the first panel; the first block with a non-finite statistic
    (float32 overflow) is marked in red.

    Args:
        traces: one trace or several to overlay.
        labels: legend entry per trace (default: the model's name; for a built-in ResNet its
            variant, norm and depth).
        theory: draw the closed-form predictions where they exist.
        axes: six axes to draw into, the last for the legend (default: a new 2x3 figure with
            a title).

    Returns:
        The figure holding the axes.

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(4, width=4, seed=0),
    ...                         sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0))
    >>> len(plot_spp(trace).axes)
    6
    """
    lines = series([traces] if isinstance(traces, Trace) else list(traces), labels)
    several = len(lines) > 1
    with canvas(axes, len(_PANELS) + 1, 2, (DOUBLE_COLUMN, 4.4)) as (fig, axs):
        data_axes, key = axs[:-1], axs[-1]
        entries = []
        with_theory = False
        for trace, label, color in lines:
            for ax, panel in zip(data_axes, _PANELS, strict=True):
                log = panel.log_from == LOG
                band_line(ax, trace, MEASURED[panel.quantity], color, label, log=log)
            entries.append((data_axes[0].get_lines()[-1], _entry(trace, label)))
            prediction = predict(trace) if theory else None
            if prediction is not None:
                for ax, panel in zip(data_axes, _PANELS, strict=True):
                    theory_line(ax, trace, PREDICTED[panel.quantity],
                                color=color if several else None)
                shown = next((ax.get_lines()[-1] for ax in data_axes
                              if ax.get_lines() and ax.get_lines()[-1].get_label() == "_theory"),
                             None)
                if shown is not None and not several:
                    entries.append((shown, _theory_entry(prediction)))
                with_theory = with_theory or shown is not None
            for k, ax in enumerate(data_axes):
                mark_stages(ax, trace, numbered=k == 0)
            mark_overflow(data_axes, trace, label if several else None)
        for ax, panel in zip(data_axes, _PANELS, strict=True):
            ax.set_title(panel.title)
            ax.set_xlabel("block index $l$")
            ax.set_ylabel(panel.ylabel)
            integer_blocks(ax)
            scale_y(ax, panel.log_from)
        if several and with_theory:  # one entry: the rules of several traces would crowd it
            entries.append((data_axes[0].plot([], [], **{**THEORY, "color": "0.3"})[0],
                            "theory (dashed, in its trace's colour)"))
        if any(t.trace.by_stage().keys() - {0} for t in lines):
            entries.append((data_axes[0].plot([], [], **STAGE)[0], "stage boundary"))
        if axes is None:
            fig.suptitle(_subject(lines), fontsize=9)
        legend_panel(key, entries)
    return fig


def _entry(trace: Trace, label: str) -> str:
    """A trace's legend entry: its label and, with several seeds, what the band is."""
    runs = len(trace.runs)
    return label + (f" (mean of {runs} seeds, 95% band)" if runs > 1 else "")


def _theory_entry(prediction: Prediction) -> str:
    kind = "theory" if prediction.exact or "approximately" in prediction.rule \
        else "approximate theory"
    return f"{kind}, {prediction.rule}"


def _subject(lines: Sequence[Series]) -> str:
    """What the figure shows: the network(s), the input and the seeds."""
    trace = lines[0].trace
    shape = "x".join(str(n) for n in trace.input.shape)
    seeds = sorted({len(t.trace.runs) for t in lines})
    seed_text = "/".join(str(n) for n in seeds) + (" seed" if seeds == [1] else " seeds")
    config = ResNetConfig.of(trace.model)
    if len(lines) > 1:
        what = f"{len(lines)} networks"
    elif config is not None:
        what = (f"ResNet-{config.variant} {config.norm}, {config.depth} blocks, "
                f"width {config.width}")
    else:
        what = f"{lines[0].label}, {trace.n_blocks} blocks"
    return f"Signal propagation: {what}; {trace.input.kind} input {shape}; {seed_text}"


_EXPLODING_DECADES = 3.0
"""A trace whose skip second moment grows by more than this many decades (or overflows) is
drawn in the explosion panel only: on shared axes it would squash the others."""


def _explodes(trace: Trace) -> bool:
    if trace.first_overflow is not None:
        return True
    levels = [b.skip.m2 for _, b in trace.blocks() if b.skip.m2 > 0]
    return bool(levels) and max(levels) / min(levels) > 10**_EXPLODING_DECADES


_TRIO = (
    ("Skip path: average channel variance", r"$\mathrm{mean}_c\,\sigma_c^2(x_l)$", "skip_var"),
    ("Skip path: average channel squared mean", r"$\mathrm{mean}_c\,\mu_c^2(x_l)$",
     "skip_sq_mean"),
    ("Residual branch: average channel variance", r"$\mathrm{mean}_c\,\sigma_c^2(f_l(x_l))$",
     "residual_var"),
)


def plot_spp_trio(traces: Sequence[Trace], labels: Sequence[str] | None = None, *,
                  colors: Sequence[str] | None = None, axes: Sequence[Axes] | None = None
                  ) -> Figure:
    """Signal-propagation plot of several networks: the explosion apart, the rest on linear axes.

    The first panel is the skip second moment of every trace on a log axis (regular decade
    ticks), where a geometric explosion is a straight line. The other three, on linear axes,
    hold the traces that do not explode (growth under 10^3 and no overflow): the skip path's
    average channel variance and squared mean and the residual branch's average channel
    variance, where linear growth and exact zeros (SkipInit at alpha = 0) can be seen. One
    colour per trace (mean over runs with a 95% band); the padding-corrected theory dashed in
    the trace's colour; the first non-finite block of an overflowing network marked.

    Args:
        traces: the traces to overlay.
        labels: legend entry per trace (default: from the model, as in
            :func:`sigprop.plotting.plot_spp`).
        colors: colour per trace (default: sigprop's palette in order).
        axes: the four panels, in the order above (default: a new 2x2 figure, 7 in wide).

    Returns:
        The figure, with the legend under the panels (in the first panel when ``axes`` are
        given).

    >>> import sigprop
    >>> trace = sigprop.measure(sigprop.models.resnet(4, width=4, seed=0),
    ...                         sigprop.InputSpec("gaussian", (2, 3, 8, 8), 0))
    >>> [ax.get_yscale() for ax in plot_spp_trio([trace], ["BN v2"]).axes]
    ['log', 'linear', 'linear', 'linear']
    """
    lines = series(traces, labels, colors)
    with canvas(axes, len(_TRIO) + 1, 2, (DOUBLE_COLUMN, 5.0)) as (fig, axs):
        explosion, linear = axs[0], axs[1:]
        for trace, label, color in lines:
            band_line(explosion, trace, MEASURED["skip_m2"], color, label, log=True)
            theory_line(explosion, trace, PREDICTED["skip_m2"], color=color)
            mark_overflow([explosion], trace, label)
            if _explodes(trace):
                continue
            for ax, (_, _, name) in zip(linear, _TRIO, strict=True):
                band_line(ax, trace, MEASURED[name], color, label)
                if name in PREDICTED:
                    theory_line(ax, trace, PREDICTED[name], color=color)
        explosion.set_title("Skip path: second moment (log axis)")
        explosion.set_ylabel(r"$E[x_l^2]$")
        scale_y(explosion, LOG)
        for ax, (title, ylabel, _) in zip(linear, _TRIO, strict=True):
            ax.set_title(title + ("" if any(not _explodes(t.trace) for t in lines) else
                                  " (every network explodes)"))
            ax.set_ylabel(ylabel)
            scale_y(ax, LINEAR)
        for ax in axs:
            ax.set_xlabel("block index $l$")
            integer_blocks(ax)
        theory_legend_entry(explosion, "theory (dashed, in its network's colour)")
        outside_legend(fig, explosion, axes is None, ncol=3)
    return fig
