"""Read a campaign from the tracking store alone into tidy pandas tables.

``mlflow.search_runs`` gives every run as one DataFrame row (it pages for us). From it, one row per split of
each step's candidates (:func:`fold_table`), and one row per fold, epoch and metric for curves
(:func:`epoch_table`). A candidate's folds are its child fold runs, failed ones included (the search ranks a
candidate with a failed fold last, and so must the analysis), plus the fold runs it reused from an earlier
step (tag ``mlflow_mnist.reused_fold_runs``), so a reused candidate is never missing from a plot.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from mlflow_mnist import schema
from mlflow_mnist.params import format_value

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
    "role",
    "is_reference",
    "reference_reused",
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


def tag_column(name: str) -> str:
    """The column of tag ``name`` in :func:`read_runs`' table (MLflow's ``search_runs`` naming)."""
    return f"tags.{name}"


def param_column(name: str) -> str:
    """The column of param ``name`` in :func:`read_runs`' table."""
    return f"params.{name}"


def metric_column(name: str) -> str:
    """The column of metric ``name`` in :func:`read_runs`' table."""
    return f"metrics.{name}"


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
    for column in (
        tag_column(schema.LEVEL),
        tag_column(schema.PARENT),
        tag_column(schema.DIGEST),
        tag_column(schema.SETTINGS_KEY),
    ):
        if column not in runs:
            runs[column] = None
    return runs


def _get(row: pd.Series, column: str, default=None):
    value = row.get(column, default)
    return default if value is None or (isinstance(value, float) and value != value) else value


def _finished_steps(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished step runs that decide something (not the low rungs of successive halving)."""
    steps = runs[(runs[tag_column(schema.LEVEL)] == schema.STEP_LEVEL) & (runs["status"] == "FINISHED")]
    deciding = [schema.counts(schema.tags_of_row(row)) for _, row in steps.iterrows()]
    return steps[pd.Series(deciding, index=steps.index, dtype=bool)] if len(steps) else steps


def newest_step(runs: pd.DataFrame) -> pd.Series | None:
    steps = _finished_steps(runs)
    return None if steps.empty else steps.sort_values("end_time").iloc[-1]


def _latest_step_runs(
    runs: pd.DataFrame, data_digest: str | None, settings_key: str | None, stage_run_id: str | None
) -> list[pd.Series]:
    steps = _finished_steps(runs)
    if data_digest is not None:
        steps = steps[steps[tag_column(schema.DIGEST)] == data_digest]
    if settings_key is not None:
        steps = steps[steps[tag_column(schema.SETTINGS_KEY)] == settings_key]
    if stage_run_id:
        steps = steps[(steps["run_id"] == stage_run_id) | (steps[tag_column(schema.PARENT)] == stage_run_id)]
    latest: dict[str, pd.Series] = {}
    for _, run in steps.sort_values("end_time").iterrows():
        latest[schema.step_name(schema.tags_of_row(run)) or run.get(tag_column(schema.RUN_NAME))] = run
    # The order the campaign ran its steps in (each step's latest run): no task's step list is needed.
    return sorted(latest.values(), key=lambda r: r["start_time"])


def _incumbent(step_run: pd.Series, varied: list[str]) -> str | None:
    """The carried-in value of the step's varied parameters, formatted as candidate values are."""
    values = schema.GroupTags.parse(schema.tags_of_row(step_run)).incumbent
    if not values or set(values) != set(varied):
        return None
    return VALUE_SEPARATOR.join(format_value(values[k]) for k in varied)


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
        data_digest = data_digest or _get(newest, tag_column(schema.DIGEST))
        settings_key = settings_key or _get(newest, tag_column(schema.SETTINGS_KEY))
    by_id = runs.set_index("run_id", drop=False)
    children = {parent: group for parent, group in runs.groupby(tag_column(schema.PARENT))}
    rows = []
    for order, step_run in enumerate(_latest_step_runs(runs, data_digest, settings_key, stage_run_id)):
        group_tags = schema.GroupTags.parse(schema.tags_of_row(step_run))
        step = group_tags.step or step_run.get(tag_column(schema.RUN_NAME))
        varied = list(group_tags.varied) or [step]
        incumbent = _incumbent(step_run, varied)
        candidates = children.get(step_run["run_id"], runs.iloc[:0])
        candidates = candidates[candidates[tag_column(schema.LEVEL)] == schema.CANDIDATE_LEVEL]
        records = {
            row["run_id"]: schema.CandidateTags.parse(schema.tags_of_row(row)) for _, row in candidates.iterrows()
        }
        # The reference is fixed before any score: the carried-in configuration trained afresh in this step.
        # Stores made before that rule compared with the carried-in grid point, whose folds came from the step
        # before (selected for winning there): still used, and flagged as reused.
        fresh = any(record.role == schema.REFERENCE for record in records.values())
        for _, candidate in candidates.iterrows():
            record = records[candidate["run_id"]]
            reused_ids = [i for i in (_get(candidate, tag_column(schema.REUSED), "") or "").split(",") if i]
            own = children.get(candidate["run_id"], runs.iloc[:0])
            folds = [(r, False) for _, r in own.iterrows()]
            folds += [(by_id.loc[i], True) for i in reused_ids if i in by_id.index]
            value = VALUE_SEPARATOR.join(str(_get(candidate, param_column(k), "?")) for k in varied)
            is_incumbent = record.role != schema.REFERENCE and value == incumbent
            is_reference = record.role == schema.REFERENCE if fresh else is_incumbent
            for fold_run, reused in folds:
                if (
                    fold_run["status"] not in RESULT_STATUSES
                    or _get(fold_run, tag_column(schema.LEVEL)) != schema.FOLD_LEVEL
                ):
                    continue
                status = _get(fold_run, tag_column(schema.STATUS), "ok")
                n_folds = int(_get(fold_run, param_column(schema.N_FOLDS), 3))
                fold = int(_get(fold_run, param_column(schema.FOLD_PARAM), 0))
                repeat = int(_get(fold_run, param_column(schema.REPEAT_PARAM), 0))
                rows.append(
                    {
                        "step": step,
                        "step_order": order,
                        "stage": _get(step_run, tag_column(schema.STAGE), step),
                        "step_run_id": step_run["run_id"],
                        "candidate": record.label,
                        "candidate_index": record.index,
                        "varied": ",".join(varied),
                        "value": value,
                        "role": record.role,
                        "is_incumbent": is_incumbent,
                        "is_reference": is_reference,
                        "reference_reused": is_reference and not fresh,
                        "fold": fold,
                        "repeat": repeat,
                        "split": repeat * n_folds + fold,
                        "n_folds": n_folds,
                        "n_splits": n_folds * int(_get(fold_run, param_column(schema.CV_REPEATS), 1)),
                        "accuracy": float(_get(fold_run, metric_column(schema.HELDOUT_ACCURACY), float("nan"))),
                        # What guessing scores; unknown (NaN) for folds logged without it, never assumed 0.5.
                        "chance": float(_get(fold_run, metric_column(schema.CHANCE_ACCURACY), float("nan"))),
                        "status": status,
                        "diverged": status == "diverged",
                        "reused": reused,
                        "fold_run_id": fold_run["run_id"],
                        "data_digest": data_digest,
                    }
                )
    table = pd.DataFrame(rows, columns=FOLD_COLUMNS)
    return table.sort_values(["step_order", "candidate_index", "split"], ignore_index=True)


def held_values(runs: pd.DataFrame, folds: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Per step of ``folds``, the values its run held fixed, as logged (its params: not the ones it varied)."""
    by_id, prefix = runs.set_index("run_id"), param_column("")
    held = {}
    for step, step_run_id in folds.drop_duplicates("step")[["step", "step_run_id"]].itertuples(index=False):
        row = by_id.loc[step_run_id] if step_run_id in by_id.index else pd.Series(dtype=object)
        params = row[[c for c in row.index if c.startswith(prefix)]].dropna()
        held[step] = {column.removeprefix(prefix): str(value) for column, value in params.items()}
    return held


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
