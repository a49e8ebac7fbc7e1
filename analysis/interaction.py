"""Interaction heatmap of two parameters, wherever one grid varied both (the seed's epochs x batch_size)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis._plotting import empty, save, sns, subplots
from analysis.store import VALUE_SEPARATOR


def steps_with_two_parameters(summary: pd.DataFrame) -> list[str]:
    return [s for s, v in summary.groupby("step", sort=False)["varied"].first().items() if v.count(",") == 1]


def get_interaction_info(summary: pd.DataFrame, step: str) -> pd.DataFrame:
    """Mean accuracy pivoted: rows = first varied parameter, columns = second (grid points only: the step's
    retrained reference repeats one of them)."""
    part = summary[summary["step"] == step]
    if "role" in part:
        part = part[part["role"] != "reference"]
    first, second = part["varied"].iloc[0].split(",")
    values = part["value"].str.split(VALUE_SEPARATOR, regex=False, expand=True)
    tidy = pd.DataFrame({first: values[0], second: values[1], "mean": part["mean"].to_numpy()})
    return tidy.pivot_table(index=first, columns=second, values="mean", aggfunc="first", sort=False)


def render_interaction(info: pd.DataFrame, step: str, path: Path) -> Path:
    if info.empty:
        return empty(path, f"no two-parameter grid in step {step}")
    fig, ax = subplots(figsize=(1.2 * info.shape[1] + 2.5, 0.8 * info.shape[0] + 1.8))
    sns.heatmap(info, annot=True, fmt=".4f", cmap="viridis", ax=ax, cbar_kws={"label": "mean held-out accuracy"})
    ax.set_title(f"{step}: interaction", fontsize=11)
    return save(fig, path)


def plot_interaction(summary: pd.DataFrame, step: str, path: Path) -> Path:
    return render_interaction(get_interaction_info(summary, step), step, path)
