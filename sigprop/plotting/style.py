"""The look of every sigprop figure: a style context, its palette and the paper's figure widths."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["DOUBLE_COLUMN", "SINGLE_COLUMN", "palette", "style"]

#: Width in inches of a single-column figure of a two-column paper.
SINGLE_COLUMN = 3.4
#: Width in inches of a double-column (full-width) figure.
DOUBLE_COLUMN = 7.0


def palette() -> list[str]:
    """seaborn's colour-blind-safe palette as hex strings: the colour cycle of :func:`style`.

    >>> palette()[:2]
    ['#0173b2', '#de8f05']
    """
    import seaborn as sns

    return list(sns.color_palette("colorblind").as_hex())


@contextmanager
def style() -> Iterator[None]:
    """sigprop's plotting style (colour-blind-safe palette, paper-sized fonts), as a context.

    Every plot function of :mod:`sigprop.plotting` draws inside it; matplotlib's global style is
    left as it was.

    >>> import matplotlib.pyplot as plt
    >>> with style():
    ...     plt.rcParams["font.size"]
    8.0
    """
    import matplotlib.pyplot as plt
    import seaborn as sns
    from cycler import cycler

    with sns.axes_style("ticks"), plt.rc_context({
        "axes.prop_cycle": cycler(color=palette()),
        "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7,
        "xtick.labelsize": 7, "ytick.labelsize": 7, "lines.linewidth": 1.3,
        "axes.spines.top": False, "axes.spines.right": False, "savefig.dpi": 200,
        "savefig.bbox": "tight",
    }):
        yield
