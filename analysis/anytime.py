"""The anytime figure: each search's best mean CV accuracy so far against the compute it had spent (fold-epochs)
and the wall time, one line per search, so strategies compare at equal compute (Optuna's optimisation history)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis._plotting import empty, save, subplots


def get_anytime_info(searches: pd.DataFrame) -> pd.DataFrame:
    """Per search, the running best mean CV accuracy after each full-budget candidate it finished, to its end."""
    if searches.empty:
        return searches.assign(best_so_far=pd.Series(dtype=float))
    ordered = searches.sort_values(["search_run_id", "finished"], kind="stable")  # a tie keeps the table's order
    # cummax skips a NaN score (a failed candidate, the search's closing row) but leaves it NaN: carry the best on
    best = ordered.groupby("search_run_id")["mean"].cummax().groupby(ordered["search_run_id"]).ffill()
    return ordered.assign(best_so_far=best).dropna(subset=["best_so_far"]).reset_index(drop=True)


def render_anytime(info: pd.DataFrame, path: Path) -> Path:
    if info.empty:
        return empty(path, "no finished searches to plot")
    fig, axes = subplots(1, 2, figsize=(13.5, 4.6), sharey=True)
    for _, part in info.groupby("search_run_id", sort=False):
        label = f"{part['search'].iloc[0]} ({part['strategy'].iloc[0]})"
        for ax, x in zip(axes, ("fold_epochs", "minutes"), strict=True):
            ax.step(part[x], part["best_so_far"], where="post", marker="o", ms=3, label=label)
    axes[0].set(xlabel="fold-epochs trained", ylabel="best mean CV accuracy so far", xlim=(0, None))
    axes[1].set(xlabel="wall time (minutes)", xlim=(0, None))
    low = info["best_so_far"].quantile(0.05)
    axes[0].set_ylim(max(0.0, low - 0.002), min(1.0, info["best_so_far"].max() + 0.001))
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))  # beside the data, never over it
    fig.suptitle(
        "Anytime performance: the best configuration each search had found, against what it spent", fontsize=10
    )
    return save(fig, path)


def plot_anytime(searches: pd.DataFrame, path: Path) -> Path:
    return render_anytime(get_anytime_info(searches), path)
