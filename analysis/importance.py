"""Parameter importance across the campaign: how far each step's parameter moved accuracy, against noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis._plotting import COLORS, empty, plt, save
from analysis.stats import importance


def get_importance_info(summary: pd.DataFrame) -> pd.DataFrame:
    return importance(summary).sort_values("effect", ascending=True, ignore_index=True)


def render_importance(info: pd.DataFrame, path: Path) -> Path:
    if info.empty:
        return empty(path, "no finished steps to plot")
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(info) + 1.6))
    colors = [COLORS["best"] if r > 2 else COLORS["tied"] for r in info["ratio"]]
    ax.barh(info["step"], 100 * info["effect"], color=colors)
    ax.scatter(200 * info["noise"], info["step"], marker="|", s=250, color="black", label="2 x noise (SE of a mean)")
    for y, (effect, ratio) in enumerate(zip(info["effect"], info["ratio"], strict=True)):
        ax.text(
            100 * effect, y, f"  {ratio:.1f}x noise" if np.isfinite(ratio) else "  (one fold)", va="center", fontsize=8
        )
    ax.set_xlabel("spread of candidates' mean accuracy (percentage points)")
    ax.set_title(
        "Parameter importance: spread of healthy candidates against the noise of one mean\n"
        "(green: more than twice the noise; per-candidate significance is in the noise-floor figure)",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="lower right")
    return save(fig, path)


def plot_importance(summary: pd.DataFrame, path: Path) -> Path:
    return render_importance(get_importance_info(summary), path)
