"""Learning curves of one step's candidates: held-out accuracy per epoch, mean over folds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis._plotting import empty, plt, save, sns


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
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(info, x="epoch", y="value", hue="candidate", marker="o", ax=ax, palette="viridis")
    ax.set(ylabel="held-out accuracy (mean over folds)", title=f"{step}: learning curves")
    low = info["value"].quantile(0.1)
    ax.set_ylim(max(0.0, low - 0.01), min(1.0, info["value"].max() + 0.005))
    ax.legend(fontsize=7, title=None, ncol=2)
    return save(fig, path)


def plot_curves(epochs: pd.DataFrame, step: str, path: Path) -> Path:
    return render_curves(get_curves_info(epochs, step), step, path)
