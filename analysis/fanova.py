"""Joint searches: which parameters mattered (Optuna's fANOVA on the trials read back from the store) and how the
two most important ones interact (each trial a point, coloured by its mean CV accuracy): what a one-at-a-time
grid cannot see."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis._plotting import empty, is_numeric, save, subplots

MIN_TRIALS = 4


def get_importance_info(trials: pd.DataFrame, distributions: dict) -> pd.DataFrame:
    """fANOVA importance of each searched parameter (sums to 1) over the given trials (one rung of each)."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator

    names = [n for n in distributions if n in trials]
    if len(trials) < MIN_TRIALS or not names:
        return pd.DataFrame(columns=["parameter", "importance"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for row in trials.itertuples():
        params = {n: getattr(row, n) for n in names}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions={n: distributions[n] for n in names}, value=row.mean)
        )
    scores = optuna.importance.get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    return pd.DataFrame({"parameter": list(scores), "importance": list(scores.values())})


def render_importance(info: pd.DataFrame, path: Path, search: str, which: str = "") -> Path:
    """fANOVA's importances of ``search``'s parameters; ``which`` says what trials they are from (in the title)."""
    if info.empty:
        return empty(path, f"{search}: fewer than {MIN_TRIALS} trials: no importance yet")
    title = f"{search}: parameter importance" + (f" ({which})" if which else "")
    ordered = info.sort_values("importance")
    fig, ax = subplots(figsize=(7, 0.35 * len(ordered) + 1.6))
    ax.barh(ordered["parameter"], ordered["importance"], color="#2166ac")
    ax.set_xlabel("share of the variance in mean CV accuracy (fANOVA)")
    ax.set_title(title, fontsize=10)
    return save(fig, path)


def get_interaction_info(trials: pd.DataFrame, importance: pd.DataFrame) -> pd.DataFrame:
    """The two most important parameters of each given trial, its mean CV accuracy at the trials' budget, and
    which trial scored highest there (``is_best``: at a low rung, not the search's best, which the label says)."""
    if len(importance) < 2:
        return pd.DataFrame(columns=["x", "y", "mean", "is_best", "budget"])
    first, second = importance.sort_values("importance", ascending=False)["parameter"].iloc[:2]
    means = trials["mean"].reset_index(drop=True)
    return pd.DataFrame(
        {
            "x": trials[first].to_numpy(),
            "y": trials[second].to_numpy(),
            "mean": means,
            "is_best": means.index == means.idxmax() if means.notna().any() else False,
            "budget": trials["budget"].to_numpy() if "budget" in trials else None,
        }
    ).assign(x_name=first, y_name=second)


def render_interaction(info: pd.DataFrame, path: Path, search: str, which: str = "") -> Path:
    """The trials of ``search`` over its two most important parameters, coloured by mean CV accuracy."""
    if info.empty:
        return empty(path, f"{search}: fewer than two parameters with importance: no interaction to show")
    title = f"{search}: the two most important parameters" + (f" ({which})" if which else "")
    fig, ax = subplots(figsize=(6.5, 5))
    x, y = info["x"], info["y"]
    numeric_x, numeric_y = is_numeric(x), is_numeric(y)
    xs = x.astype(float) if numeric_x else x.astype("category").cat.codes
    ys = y.astype(float) if numeric_y else y.astype("category").cat.codes
    points = ax.scatter(xs, ys, c=info["mean"], cmap="viridis", s=45, edgecolors="black", linewidths=0.3)
    best = info["is_best"].to_numpy()
    budget = info["budget"].max()
    label = "highest mean CV" + (f" at {budget:.0f} epochs" if pd.notna(budget) else "")
    ax.scatter(xs[best], ys[best], marker="*", s=250, color="red", label=label)
    fig.colorbar(points, ax=ax, label="mean CV accuracy")
    if not numeric_x:
        ax.set_xticks(range(x.nunique()), list(x.astype("category").cat.categories))
    if not numeric_y:
        ax.set_yticks(range(y.nunique()), list(y.astype("category").cat.categories))
    ax.set(xlabel=info["x_name"].iloc[0], ylabel=info["y_name"].iloc[0])
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return save(fig, path)
