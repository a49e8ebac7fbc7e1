"""Parameter importance across the campaign: how far each step's parameter moved accuracy, against the spread
pure noise would give for that many candidates, coloured by the step's verdict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis._plotting import COLORS, empty, plt, save
from analysis.stats import ALPHA, importance


def get_importance_info(summary: pd.DataFrame, verdicts: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    return importance(summary, verdicts, folds).sort_values("spread", ascending=True, ignore_index=True)


def render_importance(info: pd.DataFrame, path: Path) -> Path:
    if info.empty:
        return empty(path, "no finished steps to plot")
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(info) + 2.2))
    spread = 100 * info["spread"]
    ax.barh(info["step"], spread, color=[COLORS.get(v, COLORS["undecided"]) for v in info["verdict"]])
    noise = 100 * info["noise_spread"]
    ax.scatter(noise, info["step"], marker="|", s=250, color="black", label="spread pure noise would give")
    for y, row in enumerate(info.itertuples()):
        ax.text(100 * row.spread, y, f"  {row.verdict}", va="center", fontsize=8)
    ax.set_xscale("symlog", linthresh=0.5)
    ax.set_xlim(0, max(1.0, float(np.nanmax(spread)) * 3))
    ax.set_xlabel("spread of candidates' mean accuracy (points, log scale past 0.5)")
    ax.set_title(
        "Parameter importance: spread between a step's best and worst candidate\n"
        f"black tick: the spread pure noise exceeds only {ALPHA:.0%} of the time (studentized range)\n"
        "label and colour: the step's verdict",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="lower right")
    return save(fig, path)


def plot_importance(summary: pd.DataFrame, verdicts: pd.DataFrame, folds: pd.DataFrame, path: Path) -> Path:
    return render_importance(get_importance_info(summary, verdicts, folds), path)
