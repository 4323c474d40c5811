"""``sigprop plot``: re-render saved runs (stats.json) as one signal-propagation plot."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ._errors import UsageError, reports_usage_errors
from ._files import write_files
from ._options import STATS_JSON

if TYPE_CHECKING:
    import sigprop

SUFFIXES = (".png", ".svg", ".pdf")


def load(path: Path) -> sigprop.Trace:
    """Read a stats.json (or the stats.json inside a folder); usage error if it is not one."""
    import sigprop

    if path.is_dir():
        path = path / STATS_JSON
    try:
        trace = sigprop.Trace.from_json(path)
    except FileNotFoundError as e:
        raise UsageError(f"{path}: no such file; pass the stats.json written by "
                         "`sigprop analyze` (or its --out folder)") from e
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read it ({e})") from e
    except sigprop.TraceFormatError as e:
        where = "" if str(e).startswith(str(path)) else f"{path}: "  # from_json names the file
        raise UsageError(f"{where}{e}; pass a stats.json written by `sigprop analyze`") from e
    if not trace.runs or trace.n_blocks == 0:
        raise UsageError(f"{path}: holds no measured blocks; nothing to plot")
    lengths = {len(run.blocks) for run in trace.runs}
    if len(lengths) > 1:
        raise UsageError(f"{path}: its runs have different numbers of blocks {sorted(lengths)}; "
                         "runs of one file must measure the same network")
    return trace


@reports_usage_errors
def plot_command(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(
        help="stats.json files written by `sigprop analyze` (or their folders); several are "
        "overlaid, one colour each.", show_default=False)],
    out: Annotated[Path, typer.Option(
        help="Image to write; the format follows the suffix: .png, .svg or .pdf.",
        show_default=False)],
    label: Annotated[list[str] | None, typer.Option(
        help="Legend entry of each file, in order (repeat once per file; default: the model "
        "and its depth).", show_default=False)] = None,
    theory: Annotated[bool, typer.Option(
        help="Draw the closed-form theory of the built-in ResNets.")] = True,
    backward: Annotated[bool, typer.Option(
        "--backward", help="Draw the backward plot (spp-backward.png: gradient second moments "
        "and residual/skip gradient ratio) of files measured with --backward.")] = False,
) -> None:
    """Overlay saved runs (stats.json) in one signal-propagation plot.

    Example: sigprop plot bn/stats.json skipinit/stats.json --label BN --label SkipInit --out
    both.png
    """
    if out.suffix.lower() not in SUFFIXES:
        raise UsageError(f"--out {str(out)!r} has no image suffix: use one of "
                         f"{', '.join(SUFFIXES)}, e.g. --out spp.png")
    if label and len(label) != len(files):
        raise UsageError(f"got {len(label)} --label for {len(files)} files: give one per file, "
                         "in order, or none")
    traces = [load(path) for path in files]
    if backward:
        lacking = [str(path) for path, trace in zip(files, traces, strict=True)
                   if not trace.has_gradients]
        if lacking:
            raise UsageError(f"{lacking[0]}: has no gradient statistics; measure it with "
                             "`sigprop analyze ... --backward`, or plot without --backward")
    if out.parent.exists() and not out.parent.is_dir():
        raise UsageError(f"cannot write --out {str(out)!r}: {str(out.parent)!r} is a file, not a "
                         "folder")
    if not out.parent.is_dir():
        raise UsageError(f"cannot write --out {str(out)!r}: folder {str(out.parent)!r} does not "
                         "exist")
    import matplotlib.pyplot as plt

    from sigprop.plotting import plot_spp, plot_spp_backward

    draw = plot_spp_backward if backward else plot_spp
    fig = draw(traces, labels=label or None, theory=theory)
    metadata = {".svg": {"Date": None}, ".pdf": {"CreationDate": None}}.get(out.suffix.lower())

    def write(path: Path) -> None:
        with plt.rc_context({"svg.hashsalt": "sigprop"}):  # reproducible SVG element ids
            fig.savefig(path, metadata=metadata)

    try:
        write_files(out.parent, {out.name: write})
    finally:
        plt.close(fig)
    typer.echo(f"wrote {out} ({len(traces)} run file{'s' if len(traces) > 1 else ''})")
