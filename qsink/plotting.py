"""The one place matplotlib is set up: headless (Agg) figures, laid out and saved the same way.

Profile plots (:mod:`qsink.measure.plots`) and leaderboard and study plots (:mod:`qsink.results`)
both draw through this module, below the stages so that either may use it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: every figure is written to a file
import matplotlib.pyplot as plt  # noqa: E402

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]  # one per model group in scatter plots


def save_figure(fig, path: Path) -> Path:
    """Lay out, write (creating the folder) and close a figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["MARKERS", "plt", "save_figure"]
