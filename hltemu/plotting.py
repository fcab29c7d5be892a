"""What every figure of hltemu shares (the ``plots`` extra: matplotlib, mplhep): the backend and
style, a grid of panels, a log pT axis, and a safe save.  Imported only by the modules that
draw (``hltemu.jec.derive_plots``, ``hltemu.study.online_offline_plots``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hltemu.outputs import atomic_output


def pyplot() -> tuple[Any, Any]:
    """``(matplotlib.pyplot, mplhep)`` with the Agg backend (no display) and the CMS style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use(mplhep.style.CMS)
    return plt, mplhep


def grid(plt: Any, n: int, ncols: int = 3, size: float = 6.0) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels in rows of ``ncols`` (each ``size`` x 5/6 ``size`` inches);
    returns the figure and the ``n`` visible axes."""
    nrows = max(math.ceil(n / ncols), 1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * 5 / 6 * nrows),
                             squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def log_x(ax: Any) -> None:
    """A log pT axis with plain major labels (10, 100, 1000) and no minor ones."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def save(plt: Any, fig: Any, path: Path) -> Path:
    """Lay out and write ``fig`` as a PNG (80 dpi) at ``path``, only whole (a temporary name,
    renamed when written), and close it."""
    fig.tight_layout()
    with atomic_output(Path(path), "figure") as tmp:
        fig.savefig(tmp.path, format="png", dpi=80)
    plt.close(fig)
    return Path(path)
