"""Whole searches read back from the store: what each one spent and found, and the trials of joint searches.

:func:`search_table` gives, per search run (a staged stage, a halving search, an Optuna study), every finished
candidate at its full budget in the order they finished, with the fold-epochs and wall time the search had spent
by then, and a last row (no candidate, no score) for what it spent in all: the data of the anytime figure.
:func:`trial_table` gives every evaluated rung of the trials of joint searches with their sampled values: the
data of parameter importance and interactions.
"""

from __future__ import annotations

import pandas as pd

from analysis.store import metric_column, param_column, tag_column
from mlflow_mnist import schema

SEARCH_COLUMNS = [
    "search_run_id",
    "search",
    "strategy",
    "candidate",
    "trial",
    "finished",
    "mean",
    "fold_epochs",
    "minutes",
]
TRIAL_COLUMNS = ["search_run_id", "search", "trial", "mean", "budget", "complete", "status"]


def _descendants(runs: pd.DataFrame, root: str) -> pd.DataFrame:
    parent = runs.set_index("run_id")[tag_column(schema.PARENT)].to_dict()
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
    top = runs[tag_column(schema.PARENT)].isna() & runs[tag_column(schema.LEVEL)].isin(
        [schema.STAGE_LEVEL, schema.STEP_LEVEL]
    )
    return runs[top & (runs["status"] == "FINISHED")].sort_values("start_time")


def search_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per search: its full-budget candidates as they finished, with the fold-epochs and minutes spent by then
    (a staged reference's, or an unhealthy candidate's, mean is NaN: not a configuration the search can choose)."""
    rows = []
    for _, root in search_roots(runs).iterrows():
        below = _descendants(runs, root["run_id"])
        level = below[tag_column(schema.LEVEL)]
        finished = below["status"].isin(["FINISHED", "FAILED"])
        folds = below[(level == schema.FOLD_LEVEL) & finished].sort_values("end_time")
        candidates = below[(level == schema.CANDIDATE_LEVEL) & (below["status"] == "FINISHED")]
        deciding = [schema.counts(schema.tags_of_row(row)) for _, row in candidates.iterrows()]
        candidates = (
            candidates[pd.Series(deciding, index=candidates.index, dtype=bool)] if len(candidates) else candidates
        )
        # A candidate's score is known when its last fold ends: its run closes with its whole group (a staged step
        # closes every grid point at its end, which drew the step as one vertical jump). Reused folds cost nothing.
        # A candidate without fold runs under it (every fold reused, as in a stage run again) is scored at its
        # own end. Mapped only where there are folds: pandas casts an empty lookup's dates to floats, and fails.
        last_fold = folds.groupby(tag_column(schema.PARENT))["end_time"].max()
        scored_at = candidates["end_time"].copy()
        trained_here = candidates["run_id"].isin(last_fold.index)
        if trained_here.any():
            scored_at[trained_here] = candidates.loc[trained_here, "run_id"].map(last_fold)
        start = root["start_time"]
        epochs = folds.get(metric_column(schema.EPOCHS_RUN), pd.Series(0, index=folds.index)).fillna(0)
        spent = pd.DataFrame({"end": folds["end_time"], "fold_epochs": epochs.cumsum()})
        search = {
            "search_run_id": root["run_id"],
            "search": root.get(tag_column(schema.RUN_NAME), root["run_id"][:8]),
            "strategy": root.get(tag_column(schema.STRATEGY)) or "staged",
        }
        for _, candidate in candidates.assign(scored_at=scored_at).sort_values("scored_at").iterrows():
            done = spent[spent["end"] <= candidate["scored_at"]]
            status = candidate.get(tag_column(schema.STATUS), "ok")
            tags = schema.CandidateTags.parse(schema.tags_of_row(candidate))
            # A staged step's reference is a second training of a configuration already scored: the search never
            # chooses it, so its score is compute spent, not a best found (else the luckier of two draws counts).
            chosen_from = status == "ok" and tags.role != schema.REFERENCE
            rows.append(
                {
                    **search,
                    "candidate": candidate.get(tag_column(schema.CANDIDATE), ""),
                    # A joint search's trial number (None for a grid point): what names one draw across searches.
                    "trial": tags.trial,
                    "finished": candidate["scored_at"],
                    "mean": candidate.get(metric_column(schema.MEAN_HELDOUT_ACCURACY)) if chosen_from else float("nan"),
                    "fold_epochs": float(done["fold_epochs"].iloc[-1]) if len(done) else 0.0,
                    "minutes": (candidate["scored_at"] - start).total_seconds() / 60,
                }
            )
        if len(spent):  # where the search stopped: what it spent in all, found nothing better
            rows.append(
                {
                    **search,
                    "candidate": "",
                    "trial": None,
                    "finished": root["end_time"],
                    "mean": float("nan"),
                    "fold_epochs": float(spent["fold_epochs"].iloc[-1]),
                    "minutes": (root["end_time"] - start).total_seconds() / 60,
                }
            )
    return pd.DataFrame(rows, columns=SEARCH_COLUMNS)


def trial_table(runs: pd.DataFrame, *, every_status: bool = False) -> pd.DataFrame:
    """Every evaluated (trial, rung) of Optuna searches: sampled values, the rung's epochs, its mean CV accuracy,
    whether it was the full budget (``complete``) and the candidate's ``status``. Pruned trials stop at a low rung;
    their rows there still say which values lost early. A rung whose candidate is not healthy (diverged, failed,
    unstable: its mean ranks nothing) is left out, unless ``every_status``: `export-study` keeps every trial."""
    if tag_column(schema.SAMPLED) not in runs:
        return pd.DataFrame(columns=TRIAL_COLUMNS)
    rows = []
    for _, root in search_roots(runs).iterrows():
        below = _descendants(runs, root["run_id"])
        trials = below[below[tag_column(schema.SAMPLED)].notna() & (below["status"] == "FINISHED")]
        for _, trial in trials.iterrows():
            record = schema.CandidateTags.parse(schema.tags_of_row(trial))
            status = trial.get(tag_column(schema.STATUS), "ok")
            if record.trial is None or (status != "ok" and not every_status):
                continue
            rows.append(
                {
                    "search_run_id": root["run_id"],
                    "search": root.get(tag_column(schema.RUN_NAME), root["run_id"][:8]),
                    "trial": record.trial,
                    "mean": trial[metric_column(schema.MEAN_HELDOUT_ACCURACY)],
                    "budget": record.rung.budget if record.rung else int(trial.get(param_column(schema.EPOCHS)) or 0),
                    "complete": record.rung is None or record.rung.counts,
                    "status": status if isinstance(status, str) else "unknown",  # a run without the tag
                    **record.sampled,
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


def search_spaces(runs: pd.DataFrame, trials: pd.DataFrame) -> dict[str, dict]:
    """Each joint search's space (its distributions, as the search run keeps them), by search run id.

    Searches made before the space was kept on the run get one inferred from the values their trials sampled:
    categories as seen, numbers over the range seen (fANOVA needs a distribution per parameter)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    spaces = {}
    by_id = runs.set_index("run_id")
    for search_run_id, part in trials.groupby("search_run_id", sort=False):
        kept = (
            schema.parse_space(schema.tags_of_row(by_id.loc[search_run_id])) if search_run_id in by_id.index else None
        )
        if kept is not None:
            spaces[search_run_id] = kept[1]
            continue
        inferred = {}
        for column in part.columns.difference(TRIAL_COLUMNS):
            values = part[column].dropna()
            if values.empty:
                continue
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                low, high = float(values.min()), float(values.max())
                inferred[column] = FloatDistribution(low, high if high > low else low + 1e-9)
            else:
                inferred[column] = CategoricalDistribution(sorted({str(v) for v in values}))
        spaces[search_run_id] = inferred
    return spaces
