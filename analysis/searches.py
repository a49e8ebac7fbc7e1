"""Whole searches read back from the store: what each one spent and found, and the trials of joint searches.

:func:`search_table` gives, per search run (a staged stage, a halving search, an Optuna study), every finished
candidate at its full budget in the order they finished, with the fold-epochs and wall time the search had spent
by then, and a last row (no candidate, no score) for what it spent in all: the data of the anytime figure.
:func:`trial_table` gives every evaluated rung of the trials of joint searches with their sampled values: the
data of parameter importance and interactions.
"""

from __future__ import annotations

import json

import pandas as pd

from mlflow_mnist import tracking

SEARCH_COLUMNS = ["search_run_id", "search", "strategy", "candidate", "finished", "mean", "fold_epochs", "minutes"]
TRIAL_COLUMNS = ["search_run_id", "search", "trial", "mean", "budget", "complete"]


def _tag(name: str) -> str:
    return f"tags.{name}"


def _descendants(runs: pd.DataFrame, root: str) -> pd.DataFrame:
    parent = runs.set_index("run_id")[_tag(tracking.PARENT)].to_dict()
    keep = []
    for run_id in runs["run_id"]:
        node, seen = run_id, 0
        while node in parent and seen < 6:
            node, seen = parent[node], seen + 1
            if node == root:
                keep.append(run_id)
                break
    return runs[runs["run_id"].isin(keep)]


def search_roots(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished top-level search runs: a stage, a single-step stage, a halving or Optuna search."""
    top = runs[_tag(tracking.PARENT)].isna() & runs[_tag(tracking.LEVEL)].isin(["stage", "step"])
    return runs[top & (runs["status"] == "FINISHED")].sort_values("start_time")


def search_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per search: its full-budget candidates as they finished, with the fold-epochs and minutes spent by then."""
    rows = []
    for _, root in search_roots(runs).iterrows():
        below = _descendants(runs, root["run_id"])
        level = below[_tag(tracking.LEVEL)]
        folds = below[(level == "fold") & below["status"].isin(["FINISHED", "FAILED"])].sort_values("end_time")
        candidates = below[(level == "candidate") & (below["status"] == "FINISHED")]
        if _tag(tracking.FINAL_RUNG) in candidates:
            candidates = candidates[candidates[_tag(tracking.FINAL_RUNG)].fillna("true") != "false"]
        start = root["start_time"]
        epochs = folds.get("metrics.epochs_run", pd.Series(0, index=folds.index)).fillna(0)
        spent = pd.DataFrame({"end": folds["end_time"], "fold_epochs": epochs.cumsum()})
        search = {
            "search_run_id": root["run_id"],
            "search": root.get("tags.mlflow.runName", root["run_id"][:8]),
            "strategy": root.get(_tag(tracking.STRATEGY)) or "staged",
        }
        for _, candidate in candidates.sort_values("end_time").iterrows():
            done = spent[spent["end"] <= candidate["end_time"]]
            status = candidate.get(_tag(tracking.STATUS), "ok")
            rows.append(
                {
                    **search,
                    "candidate": candidate.get(_tag(tracking.CANDIDATE), ""),
                    "finished": candidate["end_time"],
                    "mean": candidate.get("metrics.mean_heldout_accuracy") if status == "ok" else float("nan"),
                    "fold_epochs": float(done["fold_epochs"].iloc[-1]) if len(done) else 0.0,
                    "minutes": (candidate["end_time"] - start).total_seconds() / 60,
                }
            )
        if len(spent):  # where the search stopped: what it spent in all, found nothing better
            rows.append(
                {
                    **search,
                    "candidate": "",
                    "finished": root["end_time"],
                    "mean": float("nan"),
                    "fold_epochs": float(spent["fold_epochs"].iloc[-1]),
                    "minutes": (root["end_time"] - start).total_seconds() / 60,
                }
            )
    return pd.DataFrame(rows, columns=SEARCH_COLUMNS)


def trial_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Every evaluated (trial, rung) of Optuna searches: sampled values, the rung's epochs, its mean CV accuracy,
    and whether it was the full budget (``complete``). Pruned trials stop at a low rung; their rows there still
    say which values lost early."""
    if _tag(tracking.SAMPLED) not in runs:
        return pd.DataFrame(columns=TRIAL_COLUMNS)
    rows = []
    for _, root in search_roots(runs).iterrows():
        below = _descendants(runs, root["run_id"])
        trials = below[below[_tag(tracking.SAMPLED)].notna() & (below["status"] == "FINISHED")]
        for _, trial in trials.iterrows():
            if trial.get(_tag(tracking.STATUS), "ok") != "ok":
                continue
            rows.append(
                {
                    "search_run_id": root["run_id"],
                    "search": root.get("tags.mlflow.runName", root["run_id"][:8]),
                    "trial": int(trial[_tag(tracking.TRIAL)]),
                    "mean": trial["metrics.mean_heldout_accuracy"],
                    "budget": int(trial.get(_tag(tracking.BUDGET)) or 0),
                    "complete": trial.get(_tag(tracking.FINAL_RUNG)) != "false",
                    **json.loads(trial[_tag(tracking.SAMPLED)]),
                }
            )
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=TRIAL_COLUMNS)


def trials_for_importance(trials: pd.DataFrame, minimum: int) -> pd.DataFrame:
    """The trials at the highest rung that at least ``minimum`` of them reached: the complete trials when there are
    enough, else a lower rung (with pruning, few trials reach the full budget; importance among them says little)."""
    if trials.empty:
        return trials
    counts = trials.groupby("budget")["trial"].nunique()
    enough = counts[counts >= minimum]
    budget = enough.index.max() if len(enough) else counts.idxmax()
    return trials[trials["budget"] == budget].drop_duplicates("trial", keep="last")
