"""The campaign's best mean CV accuracy after each step, in the seed's order, with its 95% interval."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis._plotting import COLORS, empty, plt, save


def get_progression_info(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per step: the best candidate's mean and interval, and whether the step's effect was detected."""
    columns = ["step", "candidate", "mean", "ci_low", "ci_high", "no_effect"]
    if summary.empty:
        return pd.DataFrame(columns=columns)
    best = summary[summary["is_best"]].sort_values("step_order")
    tied_all = summary.groupby("step")["tied"].all()
    return best.assign(no_effect=best["step"].map(tied_all))[columns].reset_index(drop=True)


def render_progression(info: pd.DataFrame, path: Path) -> Path:
    if info.empty:
        return empty(path, "no finished steps to plot")
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(info) + 2), 4))
    x = range(len(info))
    ax.fill_between(x, info["ci_low"], info["ci_high"], color=COLORS["tied"], alpha=0.25, label="95% interval")
    ax.plot(x, info["mean"], marker="o", color=COLORS["best"], label="best mean CV accuracy")
    for i, row in info.iterrows():
        ax.annotate(
            row["candidate"] + (" (no detectable effect)" if row["no_effect"] else ""),
            (i, row["mean"]),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize=7,
            rotation=10,
        )
    ax.set_xticks(list(x), info["step"], rotation=30, ha="right")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("Campaign progression (seed's step order)", fontsize=11)
    ax.legend(fontsize=8, loc="lower right")
    return save(fig, path)


def plot_progression(summary: pd.DataFrame, path: Path) -> Path:
    return render_progression(get_progression_info(summary), path)
