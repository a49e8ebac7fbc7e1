"""What every figure shares: a headless backend, one style, verdict colours, saving, an empty-data placeholder."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")
#: One colour per verdict, in every figure.
COLORS = {
    "reference": "#1b7837",
    "better": "#2166ac",
    "practically equivalent": "#7f7f7f",
    "undecided": "#e08214",
    "worse": "#c51b7d",
    "unstable": "#8c510a",
    "diverged": "#d73027",
    "failed": "#d73027",
    "incomplete": "#bababa",
    "point": "#9e9ac8",
    "effect": "#2166ac",
    "no practical effect": "#7f7f7f",
}
MARKERS = {"unstable": "v", "diverged": "x", "failed": "x", "incomplete": "s"}


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
