"""What every figure shares: a headless backend, one style, saving and an empty-data placeholder."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")
COLORS = {"best": "#1b7837", "tied": "#7f7f7f", "worse": "#c51b7d", "diverged": "#d73027", "point": "#4c72b0"}


def save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def empty(path: Path, message: str) -> Path:
    """Optuna's habit: no data warns and still renders a (labelled) figure."""
    warnings.warn(message, stacklevel=3)
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return save(fig, path)


def is_numeric(values) -> bool:
    try:
        [float(v) for v in values]
    except (TypeError, ValueError):
        return False
    return True
