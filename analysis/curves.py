"""Learning curves of one step's candidates: held-out accuracy per epoch, mean over folds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis._plotting import empty, save, sns, subplots


def get_curves_info(epochs: pd.DataFrame, step: str, metric: str = "val_accuracy") -> pd.DataFrame:
    part = epochs[(epochs["step"] == step) & (epochs["metric"] == metric)]
    return (
        part.groupby(["candidate_index", "candidate", "epoch"], as_index=False)["value"]
        .mean()
        .sort_values(["candidate_index", "epoch"], ignore_index=True)
    )


def render_curves(info: pd.DataFrame, step: str, path: Path) -> Path:
    if info.empty:
        return empty(path, f"no per-epoch curves for step {step}")
    fig, ax = subplots(figsize=(7, 4))
    sns.lineplot(info, x="epoch", y="value", hue="candidate", marker="o", ax=ax, palette="viridis")
    title = f"{step}: learning curves"
    # The early epochs' lows would flatten every curve: they may fall off the axis, but no candidate's last epoch
    # does (a candidate far below the others is part of what the step found), and what is cut is said.
    last = info.groupby("candidate_index")["value"].last()
    low = max(0.0, min(float(info["value"].quantile(0.1)), float(last.min())) - 0.01)
    ax.set_ylim(low, min(1.0, info["value"].max() + 0.005))
    if (cut := int((info["value"] < low).sum())) > 0:
        title += f"\n({cut} early point(s) below {low:.3f} not shown; every last epoch is)"
    ax.set(ylabel="held-out accuracy (mean over folds)", title=title)
    ax.legend(fontsize=7, title=None, ncol=2)
    return save(fig, path)


def plot_curves(epochs: pd.DataFrame, step: str, path: Path) -> Path:
    return render_curves(get_curves_info(epochs, step), step, path)
