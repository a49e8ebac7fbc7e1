"""Read a campaign from the tracking store alone into tidy pandas tables.

``mlflow.search_runs`` gives every run as one DataFrame row (it pages for us). From it, one row per split of
each step's candidates (:func:`fold_table`), and one row per fold, epoch and metric for curves
(:func:`epoch_table`). A candidate's folds are its child fold runs, failed ones included (the search ranks a
candidate with a failed fold last, and so must the analysis), plus the fold runs it reused from an earlier
step (tag ``mlflow_mnist.reused_fold_runs``), so a reused candidate is never missing from a plot.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pandas as pd

from mlflow_mnist import tracking
from mlflow_mnist.planning import format_value
from mlflow_mnist.stages import STEP_ORDER

VALUE_SEPARATOR = " | "  # kernel sizes contain commas
FOLD_COLUMNS = [
    "step",
    "step_order",
    "stage",
    "step_run_id",
    "candidate",
    "candidate_index",
    "varied",
    "value",
    "is_incumbent",
    "fold",
    "repeat",
    "split",
    "n_folds",
    "n_splits",
    "accuracy",
    "chance",
    "status",
    "diverged",
    "reused",
    "fold_run_id",
    "data_digest",
]
RESULT_STATUSES = ("FINISHED", "FAILED")  # a KILLED or RUNNING fold is an interruption, not a result


def _tag(name: str) -> str:
    return f"tags.{name}"


def read_runs(client, experiment_names: Iterable[str] | None) -> pd.DataFrame:
    """Every run of the named experiments (``None``: of every experiment) in ``client``'s store as one
    DataFrame (``mlflow.search_runs``, all pages)."""
    import mlflow

    ids = None
    if experiment_names is not None:
        ids = []
        for name in experiment_names:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise ValueError(f"experiment {name!r} does not exist in this tracking store")
            ids.append(experiment.experiment_id)
    # mlflow.search_runs reads the process-wide store: point it at the client's for this one call.
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        runs = mlflow.search_runs(experiment_ids=ids, search_all_experiments=ids is None, max_results=1_000_000)
    finally:
        mlflow.set_tracking_uri(previous)
    for column in (_tag(tracking.LEVEL), _tag(tracking.PARENT), _tag(tracking.DIGEST), _tag(tracking.SETTINGS_KEY)):
        if column not in runs:
            runs[column] = None
    return runs


def _get(row: pd.Series, column: str, default=None):
    value = row.get(column, default)
    return default if value is None or (isinstance(value, float) and value != value) else value


def _finished_steps(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[(runs[_tag(tracking.LEVEL)] == "step") & (runs["status"] == "FINISHED")]


def newest_step(runs: pd.DataFrame) -> pd.Series | None:
    steps = _finished_steps(runs)
    return None if steps.empty else steps.sort_values("end_time").iloc[-1]


def _latest_step_runs(
    runs: pd.DataFrame, data_digest: str | None, settings_key: str | None, stage_run_id: str | None
) -> list[pd.Series]:
    steps = _finished_steps(runs)
    if data_digest is not None:
        steps = steps[steps[_tag(tracking.DIGEST)] == data_digest]
    if settings_key is not None:
        steps = steps[steps[_tag(tracking.SETTINGS_KEY)] == settings_key]
    if stage_run_id:
        steps = steps[(steps["run_id"] == stage_run_id) | (steps[_tag(tracking.PARENT)] == stage_run_id)]
    latest: dict[str, pd.Series] = {}
    for _, run in steps.sort_values("end_time").iterrows():
        latest[_get(run, _tag(tracking.STEP), run.get("tags.mlflow.runName"))] = run
    return sorted(latest.values(), key=lambda r: STEP_ORDER.get(_get(r, _tag(tracking.STEP)), 99))


def _incumbent(step_run: pd.Series, varied: list[str]) -> str | None:
    """The carried-in value of the step's varied parameters, formatted as candidate values are."""
    text = _get(step_run, _tag("mlflow_mnist.incumbent"))
    if not text:
        return None
    values = json.loads(text)
    if set(values) != set(varied):
        return None
    return VALUE_SEPARATOR.join(
        format_value(tuple(values[k]) if isinstance(values[k], list) else values[k]) for k in varied
    )


def fold_table(
    runs: pd.DataFrame,
    data_digest: str | None = None,
    stage_run_id: str | None = None,
    settings_key: str | None = None,
) -> pd.DataFrame:
    """One row per (step, candidate, split): the latest finished run of each step, on one data digest and
    one set of campaign settings (by default those of the newest finished step)."""
    newest = newest_step(runs)
    if newest is not None:
        data_digest = data_digest or _get(newest, _tag(tracking.DIGEST))
        settings_key = settings_key or _get(newest, _tag(tracking.SETTINGS_KEY))
    by_id = runs.set_index("run_id", drop=False)
    children = {parent: group for parent, group in runs.groupby(_tag(tracking.PARENT))}
    rows = []
    for step_run in _latest_step_runs(runs, data_digest, settings_key, stage_run_id):
        step = _get(step_run, _tag(tracking.STEP), step_run.get("tags.mlflow.runName"))
        varied = json.loads(_get(step_run, _tag(tracking.VARIED), json.dumps([step])))
        incumbent = _incumbent(step_run, varied)
        candidates = children.get(step_run["run_id"], runs.iloc[:0])
        for _, candidate in candidates[candidates[_tag(tracking.LEVEL)] == "candidate"].iterrows():
            reused_ids = [i for i in (_get(candidate, _tag(tracking.REUSED), "") or "").split(",") if i]
            own = children.get(candidate["run_id"], runs.iloc[:0])
            folds = [(r, False) for _, r in own.iterrows()]
            folds += [(by_id.loc[i], True) for i in reused_ids if i in by_id.index]
            value = VALUE_SEPARATOR.join(str(_get(candidate, f"params.{k}", "?")) for k in varied)
            for fold_run, reused in folds:
                if fold_run["status"] not in RESULT_STATUSES or _get(fold_run, _tag(tracking.LEVEL)) != "fold":
                    continue
                status = _get(fold_run, _tag(tracking.STATUS), "ok")
                n_folds = int(_get(fold_run, "params.n_folds", 3))
                fold, repeat = int(_get(fold_run, "params.fold", 0)), int(_get(fold_run, "params.repeat", 0))
                rows.append(
                    {
                        "step": step,
                        "step_order": STEP_ORDER.get(step, 99),
                        "stage": _get(step_run, _tag(tracking.STAGE), step),
                        "step_run_id": step_run["run_id"],
                        "candidate": _get(candidate, _tag(tracking.CANDIDATE), candidate.get("tags.mlflow.runName")),
                        "candidate_index": int(_get(candidate, _tag(f"{tracking.PREFIX}candidate_index"), 0)),
                        "varied": ",".join(varied),
                        "value": value,
                        "is_incumbent": value == incumbent,
                        "fold": fold,
                        "repeat": repeat,
                        "split": repeat * n_folds + fold,
                        "n_folds": n_folds,
                        "n_splits": n_folds * int(_get(fold_run, "params.cv_repeats", 1)),
                        "accuracy": float(_get(fold_run, "metrics.heldout_accuracy", float("nan"))),
                        "chance": float(_get(fold_run, "metrics.chance_accuracy", 0.5)),
                        "status": status,
                        "diverged": status == "diverged",
                        "reused": reused,
                        "fold_run_id": fold_run["run_id"],
                        "data_digest": data_digest,
                    }
                )
    table = pd.DataFrame(rows, columns=FOLD_COLUMNS)
    return table.sort_values(["step_order", "candidate_index", "split"], ignore_index=True)


def epoch_table(client, folds: pd.DataFrame, metrics: tuple[str, ...] = ("val_accuracy",)) -> pd.DataFrame:
    """Per-epoch curves of the fold runs in ``folds``: step, candidate, fold, epoch, metric, value."""
    rows = []
    for record in folds.itertuples():
        for metric in metrics:
            for point in client.get_metric_history(record.fold_run_id, metric):
                rows.append(
                    {
                        "step": record.step,
                        "candidate": record.candidate,
                        "candidate_index": record.candidate_index,
                        "fold": record.split,
                        "epoch": point.step,
                        "metric": metric,
                        "value": point.value,
                    }
                )
    return pd.DataFrame(rows, columns=["step", "candidate", "candidate_index", "fold", "epoch", "metric", "value"])
