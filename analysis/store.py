"""Read a campaign from the tracking store alone into tidy pandas tables.

One row per fold of each step's candidates (:func:`fold_table`), and one row per fold, epoch and metric for
curves (:func:`epoch_table`). A candidate's folds are its child fold runs plus the fold runs it reused from an
earlier step (tag ``mlflow_mnist.reused_fold_runs``), so a reused candidate is never missing from a plot.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pandas as pd

from mlflow_mnist import tracking
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
    "fold",
    "accuracy",
    "status",
    "diverged",
    "reused",
    "fold_run_id",
    "data_digest",
]


def read_runs(client, experiment_names: Iterable[str]) -> list:
    """Every run of the named experiments, all pages."""
    ids = []
    for name in experiment_names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise ValueError(f"experiment {name!r} does not exist in this tracking store")
        ids.append(experiment.experiment_id)
    return tracking.search_all(client, ids)


def _latest_step_runs(runs: list, data_digest: str | None, stage_run_id: str | None) -> list:
    steps = [
        r
        for r in runs
        if r.data.tags.get(tracking.LEVEL) == "step"
        and r.info.status == "FINISHED"
        and (data_digest is None or r.data.tags.get(tracking.DIGEST) == data_digest)
    ]
    if stage_run_id:
        steps = [r for r in steps if stage_run_id in (r.info.run_id, r.data.tags.get(tracking.PARENT))]
    latest: dict[str, object] = {}
    for run in sorted(steps, key=lambda r: r.info.end_time or 0):
        latest[run.data.tags.get(tracking.STEP, run.info.run_name)] = run
    return sorted(latest.values(), key=lambda r: STEP_ORDER.get(r.data.tags.get(tracking.STEP), 99))


def newest_digest(runs: list) -> str | None:
    steps = [r for r in runs if r.data.tags.get(tracking.LEVEL) == "step" and r.info.status == "FINISHED"]
    return max(steps, key=lambda r: r.info.end_time or 0).data.tags.get(tracking.DIGEST) if steps else None


def fold_table(runs: list, data_digest: str | None = None, stage_run_id: str | None = None) -> pd.DataFrame:
    """One row per (step, candidate, fold): the latest finished run of each step, on one data digest.

    ``data_digest`` defaults to the newest step's; ``stage_run_id`` limits the table to one stage run.
    """
    if data_digest is None:
        data_digest = newest_digest(runs)
    by_id = {r.info.run_id: r for r in runs}
    children: dict[str, list] = {}
    for run in runs:
        children.setdefault(run.data.tags.get(tracking.PARENT, ""), []).append(run)
    rows = []
    for step_run in _latest_step_runs(runs, data_digest, stage_run_id):
        tags = step_run.data.tags
        step = tags.get(tracking.STEP, step_run.info.run_name)
        varied = json.loads(tags.get(tracking.VARIED, json.dumps([step])))
        for candidate in children.get(step_run.info.run_id, []):
            if candidate.data.tags.get(tracking.LEVEL) != "candidate":
                continue
            reused_ids = [i for i in candidate.data.tags.get(tracking.REUSED, "").split(",") if i]
            folds = [(r, False) for r in children.get(candidate.info.run_id, [])]
            folds += [(by_id[i], True) for i in reused_ids if i in by_id]
            label = candidate.data.tags.get(tracking.CANDIDATE, candidate.info.run_name)
            value = VALUE_SEPARATOR.join(candidate.data.params.get(k, "?") for k in varied)
            for fold_run, reused in folds:
                if fold_run.info.status != "FINISHED" or fold_run.data.tags.get(tracking.LEVEL) != "fold":
                    continue
                status = fold_run.data.tags.get(tracking.STATUS, "ok")
                rows.append(
                    {
                        "step": step,
                        "step_order": STEP_ORDER.get(step, 99),
                        "stage": tags.get(tracking.STAGE, step),
                        "step_run_id": step_run.info.run_id,
                        "candidate": label,
                        "candidate_index": int(candidate.data.tags.get(f"{tracking.PREFIX}candidate_index", 0)),
                        "varied": ",".join(varied),
                        "value": value,
                        "fold": int(fold_run.data.params.get("fold", 0)),
                        "accuracy": fold_run.data.metrics.get("heldout_accuracy", float("nan")),
                        "status": status,
                        "diverged": status == "diverged",
                        "reused": reused,
                        "fold_run_id": fold_run.info.run_id,
                        "data_digest": data_digest,
                    }
                )
    table = pd.DataFrame(rows, columns=FOLD_COLUMNS)
    return table.sort_values(["step_order", "candidate_index", "fold"], ignore_index=True)


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
                        "fold": record.fold,
                        "epoch": point.step,
                        "metric": metric,
                        "value": point.value,
                    }
                )
    return pd.DataFrame(rows, columns=["step", "candidate", "candidate_index", "fold", "epoch", "metric", "value"])
