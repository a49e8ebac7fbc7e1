"""Noise floor and significance: every candidate's distance from its step's best, tied or not."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis._plotting import COLORS, empty, plt, save
from analysis.stats import ALPHA, NO_EFFECT


def get_noise_info(summary: pd.DataFrame, verdicts: pd.DataFrame) -> pd.DataFrame:
    """One row per candidate: step, delta from the best (accuracy points), class (best/tied/worse/diverged)."""
    info = summary.copy()
    info["class"] = info.apply(
        lambda r: "best" if r["is_best"] else "diverged" if r["diverged"] else "tied" if r["tied"] else "worse", axis=1
    )
    info["verdict"] = info["step"].map(verdicts.set_index("step")["verdict"])
    return info[["step", "step_order", "candidate", "delta", "sem", "p_value", "class", "verdict"]]


def render_noise(info: pd.DataFrame, path: Path, floor: float = -2.0) -> Path:
    """Differences in percentage points; diverged candidates (far below) are drawn at ``floor``."""
    if info.empty:
        return empty(path, "no finished steps to plot")
    steps = list(dict.fromkeys(info.sort_values("step_order")["step"]))
    fig, ax = plt.subplots(figsize=(max(6.5, 1.2 * len(steps) + 3.5), 4.6))
    for cls in ("tied", "worse", "diverged", "best"):
        part = info[info["class"] == cls]
        y = (100 * part["delta"]).clip(lower=floor)
        ax.scatter(
            part["step"].map(steps.index),
            y,
            label=cls,
            color=COLORS[cls],
            s=30,
            marker="x" if cls == "diverged" else "o",
            zorder=3,
        )
    best = info[info["class"] == "best"].set_index("step")
    for i, step in enumerate(steps):
        sem = best.loc[step, "sem"] if step in best.index else float("nan")
        ax.fill_between([i - 0.35, i + 0.35], -200 * sem, 0, color=COLORS["tied"], alpha=0.2, lw=0)
    verdict = info.groupby("step")["verdict"].first()
    labels = [f"{s}\n{'no effect' if verdict[s].startswith(NO_EFFECT) else ''}" for s in steps]
    ax.set_xticks(range(len(steps)), labels, rotation=0, fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylim(floor * 1.08, None)
    ax.set_ylabel("mean accuracy - best mean (points)")
    ax.set_title(
        f"Candidates against their step's best (paired t-test over folds, alpha={ALPHA})\n"
        f"grey band: 2 standard errors of the best; diverged drawn at {floor:g}",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return save(fig, path)


def plot_noise(summary: pd.DataFrame, verdicts: pd.DataFrame, path: Path) -> Path:
    return render_noise(get_noise_info(summary, verdicts), path)
