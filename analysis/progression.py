"""The campaign's best mean CV accuracy after each step, in the seed's order, with its 95% interval."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis._plotting import COLORS, empty, plt, save


def get_progression_info(summary: pd.DataFrame, verdicts: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per step: the best candidate's mean and interval, and the step's verdict."""
    columns = ["step", "candidate", "value", "mean", "ci_low", "ci_high", "verdict"]
    if summary.empty:
        return pd.DataFrame(columns=columns)
    best = summary[summary["is_best"]].sort_values("step_order")
    verdict = verdicts.set_index("step")["verdict"] if verdicts is not None else {}
    return best.assign(verdict=best["step"].map(verdict))[columns].reset_index(drop=True)


def render_progression(info: pd.DataFrame, path: Path) -> Path:
    if info.empty:
        return empty(path, "no finished steps to plot")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(info) + 3), 4.8))
    x = list(range(len(info)))
    ax.fill_between(x, info["ci_low"], info["ci_high"], color=COLORS["practically equivalent"], alpha=0.25)
    ax.plot(x, info["mean"], color="#333333", lw=1, zorder=2)
    for i, row in info.iterrows():
        color = COLORS.get(row["verdict"], COLORS["undecided"])
        ax.scatter(i, row["mean"], color=color, s=40, zorder=3)
    # The chosen value goes in the tick label, under the step name: no text over the curve or the axis label.
    ax.set_xticks(x, [f"{r.step}\n{r.value}" for r in info.itertuples()], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("best mean CV accuracy")
    ax.set_title("Campaign progression: each step's chosen value (95% interval shaded)", fontsize=10)
    handles = [
        plt.Line2D([], [], color=COLORS[v], marker="o", ls="", label=f"step verdict: {v}")
        for v in dict.fromkeys(info["verdict"].dropna())
    ]
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="lower right")
    return save(fig, path)


def plot_progression(summary: pd.DataFrame, verdicts: pd.DataFrame, path: Path) -> Path:
    return render_progression(get_progression_info(summary, verdicts), path)
