"""Writing a matplotlib figure as a PNG: the headless backend and the atomic write every stage's plots share
(training curves, Kaplan-Meier curves, pretraining losses). matplotlib is imported only when a plot is drawn."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from pipeline.formats import atomic_path


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display on a cluster node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """The figure as a PNG written atomically, then closed (figures left open pile up over a run)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
