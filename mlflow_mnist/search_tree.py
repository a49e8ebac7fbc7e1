"""How a search appears in MLflow: a listener that turns the engine's events into nested runs.

    search run (``kernel_size``, ``neurons``, ``optuna``)
      group run (a step: ``neurons_2``)       -- absent when the search is one group, or the group has no run
        candidate run (``neurons_2=15``)
          fold runs (``fold 2/3``) with curves, true start/end times and the fold's LoggedModel

Every parent names its best child (tag ``mlflow_mnist.best_child_run_id``, a link in its description) and
carries that child's metrics. Finished folds of an interrupted attempt move under the new candidate run, so
the finished tree is whole; folds that belong to a completed run elsewhere stay there, referenced by id.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pandas as pd

from mlflow_mnist.planning import Candidate, FoldTask, Plan, config_hash
from mlflow_mnist.results import FoldResult, best_row
from mlflow_mnist.runs import RunWriter
from mlflow_mnist.tracking import (
    BEST_CONFIG,
    BEST_PARAMS,
    BEST_SCORE,
    CANDIDATE,
    CONFIG_HASH,
    FINAL_RUNG,
    FOLD_KEY,
    INCUMBENT,
    PARENT,
    PLAN_HASH,
    PREFIX,
    REUSED,
    STAGE,
    STATUS,
    STEP,
    STRATEGY,
    VARIED,
    redact,
)

LIBRARIES = ("mlflow", "keras", "tensorflow", "scikit-learn", "scikeras", "numpy", "optuna")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in LIBRARIES:
        for dist in (name, f"{name}-cpu"):
            try:
                found[name] = version(dist)
                break
            except PackageNotFoundError:
                continue
    return found


def context_tags() -> dict[str, str]:
    """MLflow's own context tags (user, source, git commit); a repository URL loses any credentials in it."""
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_REPO_URL

    tags = resolve_tags()
    if MLFLOW_GIT_REPO_URL in tags:
        tags[MLFLOW_GIT_REPO_URL] = redact(tags[MLFLOW_GIT_REPO_URL])
    return tags


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class SearchTree:
    """The run-tree listener of one search; the search run is created when the first group is planned."""

    def __init__(
        self,
        writer: RunWriter,
        *,
        name: str,
        strategy: str,
        single_group: bool,
        settings_params: Mapping[str, Any],
        adopt_run_id: str | None = None,
        log_threads: int = 1,
    ):
        self.writer, self.name, self.strategy, self.single_group = writer, name, strategy, single_group
        self.settings_params = dict(settings_params)
        self.adopt_run_id = adopt_run_id
        self.root: str | None = None
        self.group_run: str | None = None
        self.candidate_runs: dict[int, str] = {}
        self.fold_runs: dict[int, list[tuple[str, float]]] = {}  # candidate index -> (fold run id, accuracy)
        self.last_group: tuple[str, str, dict[str, float]] | None = None
        self.best: tuple[tuple, str, str, dict, dict[str, float]] | None = None  # rank, run, label, params, metrics
        self.joint = False  # candidates straight under the search run (Optuna's trials)
        # A fold's run takes about ten requests; against a remote server they wait on the network, not on us, so
        # several folds are logged at once. A group waits for its folds' logging before it closes.
        self.pool = ThreadPoolExecutor(log_threads, thread_name_prefix="log-fold") if log_threads > 1 else None
        self.pending: list[Future] = []
        self.lock = threading.Lock()

    # -- the search run ------------------------------------------------------------------------------------
    def _start_root(self, plan: Plan) -> str:
        level = "step" if self.single_group else "stage"
        tags = {STAGE: self.name, STRATEGY: self.strategy, **({STEP: plan.step} if self.single_group else {})}
        if not self.adopt_run_id:  # `mlflow run` already set these on the run it made
            tags.update(context_tags())
        tags.update({f"{PREFIX}version.{name}": v for name, v in library_versions().items()})
        run_id = self.writer.start(self.name, level, tags=tags, adopt=self.adopt_run_id)
        self.writer.log_params(run_id, self.settings_params)
        return run_id

    # -- listener ------------------------------------------------------------------------------------------
    def group_started(self, plan: Plan) -> None:
        if self.root is None:
            self.root = self._start_root(plan)
        group = plan.group
        if self.single_group:
            self.group_run = self.root
        elif group.own_run:
            self.group_run = self.writer.start(
                group.name, "step", parent=self.root, tags={STAGE: self.name, STEP: group.step, **group.tags}
            )
        else:
            self.group_run = self.root
        if group.own_run or self.single_group:
            # The carried-in values of the varied parameters: the reference the analysis compares against.
            incumbent = {k: _json_value(plan.fixed[k]) for k in group.varied if k in plan.fixed}
            self.writer.log_tags(
                self.group_run,
                {PLAN_HASH: plan.plan_hash, VARIED: json.dumps(list(group.varied)), INCUMBENT: json.dumps(incumbent)},
            )
            self.writer.log_params(self.group_run, {k: v for k, v in plan.fixed.items() if k not in group.varied})
            if group.grid is not None:
                grid = {key: [_json_value(v) for v in values] for key, values in group.grid.items()}
                self.writer.log_dict(self.group_run, grid, "grid.json")
        self.candidate_runs = {c.index: self._start_candidate(c, plan) for c in plan.candidates}

    def _start_candidate(self, candidate: Candidate, plan: Plan) -> str:
        run_id = self.writer.start(
            candidate.label,
            "candidate",
            parent=self.group_run,
            tags={
                STAGE: self.name,
                STEP: plan.step,
                CONFIG_HASH: candidate.config_hash,
                CANDIDATE: candidate.label,
                VARIED: json.dumps(list(plan.group.varied)),
                f"{PREFIX}candidate_index": candidate.index,
                **plan.group.tags,
                **candidate.tags,
            },
        )
        self.writer.log_params(run_id, candidate.params)
        self.fold_runs[candidate.index] = []
        referenced = []
        for key in candidate.fold_keys:
            record = plan.reused.get(key)
            if record is None:
                continue
            self.fold_runs[candidate.index].append((record.run_id, record.accuracy))
            if record.parent_finished:
                referenced.append(record.run_id)
            else:  # a finished fold of an interrupted attempt: it joins the new tree
                self.writer.log_tags(record.run_id, {PARENT: run_id})
        if referenced:
            self.writer.log_tags(run_id, {REUSED: ",".join(referenced)})
        return run_id

    def fold_finished(self, plan: Plan, task: FoldTask, result: FoldResult) -> None:
        if self.pool is None:
            self._log_fold(task, result)
        else:
            self.pending.append(self.pool.submit(self._log_fold, task, result))

    def _wait_for_folds(self) -> None:
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()  # a failed upload fails the search, as it would have without threads

    def _log_fold(self, task: FoldTask, result: FoldResult) -> None:
        parent = self.candidate_runs[task.candidate_index]
        name = f"fold {task.fold + 1}/{task.n_folds}"
        run_id = self.writer.start(
            f"repeat {task.repeat + 1} {name}" if self.settings_params.get("cv_repeats", 1) > 1 else name,
            "fold",
            parent=parent,
            start_ms=result.started_ms,
            tags={
                STAGE: self.name,
                STEP: task.step,
                FOLD_KEY: task.key,
                CANDIDATE: task.label,
                f"{PREFIX}fold": task.fold,
                f"{PREFIX}repeat": task.repeat,
                f"{PREFIX}worker": result.worker,
                STATUS: result.status,
                CONFIG_HASH: config_hash(task.params),
                f"{PREFIX}diverged": result.status == "diverged",
                **({f"{PREFIX}error": result.error[:500]} if result.error else {}),
            },
        )
        model_id = self.writer.log_model(
            run_id,
            result.model_files,
            params=task.params,
            tags={FOLD_KEY: task.key, CANDIDATE: task.label, f"{PREFIX}fold": task.fold, STEP: task.step},
        )
        fold_params = {"fold": task.fold, "repeat": task.repeat, "n_folds": task.n_folds, "split_seed": task.split_seed}
        self.writer.log_results(
            run_id,
            params={**task.params, **fold_params, **self.settings_params},
            history=result.history,
            metrics={
                "fit_seconds": result.fit_seconds,
                "epochs_run": result.epochs_run,
                "heldout_loss": result.loss,
                "chance_accuracy": result.chance,
            },
            scores={"heldout_accuracy": result.accuracy},
            model_id=model_id,
        )
        self.writer.finish(run_id, "FINISHED" if result.status != "failed" else "FAILED", end_ms=result.ended_ms)
        with self.lock:
            self.fold_runs[task.candidate_index].append((run_id, result.accuracy))

    def group_finished(self, plan: Plan, rows: list[dict[str, Any]]) -> None:
        self._wait_for_folds()
        for candidate in plan.candidates:
            self._finish_candidate(candidate, rows[candidate.index])
        best = best_row(rows)
        winner = plan.candidates[[r["candidate"] for r in rows].index(best["candidate"])]
        metrics = _candidate_metrics(best)
        if plan.group.tags.get(FINAL_RUNG) != "false":  # a low rung of successive halving decides nothing
            self.joint = self.joint or not plan.group.own_run
            rank = (best["status"] != "ok", -best["mean_test_score"], best["std_test_score"])
            entry = (rank, self.candidate_runs[winner.index], winner.label, winner.params, metrics)
            # Staged steps carry forward, so the last step's best is the stage's; a joint search keeps its best.
            if not self.joint or self.best is None or rank < self.best[0]:
                self.best = entry
        if plan.group.own_run or self.single_group:
            self.writer.log_text(self.group_run, pd.DataFrame(rows).to_csv(index=False), "cv_results.csv")
            self.writer.log_params(self.group_run, {f"best_{k}": v for k, v in winner.varied.items()})
            best_params = json.dumps({k: _json_value(v) for k, v in winner.varied.items()})
            self.writer.log_tags(
                self.group_run,
                {
                    BEST_PARAMS: best_params,
                    BEST_SCORE: repr(best["mean_test_score"]),
                    f"{PREFIX}best_candidate": best["candidate"],
                },
            )
            self.writer.log_metrics(
                self.group_run,
                {"best_mean_accuracy": best["mean_test_score"], "best_std_accuracy": best["std_test_score"]},
            )
            self.writer.name_best_child(self.group_run, self.candidate_runs[winner.index], winner.label, metrics)
            if self.group_run != self.root:
                self.writer.finish(self.group_run)
                self.last_group = (
                    self.group_run,
                    plan.group.name,
                    {"best_mean_accuracy": best["mean_test_score"], **metrics},
                )

    def _finish_candidate(self, candidate: Candidate, row: Mapping[str, Any]) -> None:
        run_id = self.candidate_runs[candidate.index]
        self.writer.log_metrics(
            run_id,
            {**_candidate_metrics(row), "rank": row["rank_test_score"], "mean_fit_seconds": row["mean_fit_time"]},
        )
        self.writer.log_tags(run_id, {STATUS: row["status"], f"{PREFIX}collapsed_folds": row["collapsed_folds"]})
        folds = [(i, a) for i, a in self.fold_runs.get(candidate.index, []) if a == a]  # NaN: a failed fold
        if folds:
            fold_id, accuracy = max(folds, key=lambda pair: pair[1])
            self.writer.name_best_child(run_id, fold_id, "best fold", {"best_fold_heldout_accuracy": accuracy})
        self.writer.finish(run_id)

    def search_failed(self, error: BaseException) -> None:
        # The writer's closing_on_failure marks the open runs KILLED or FAILED; folds being logged finish first.
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def search_finished(self, outcomes) -> None:
        if self.root is None:
            return
        if self.joint and self.best is not None:
            # Trials hang under the search run: its best child is the best trial at the full budget.
            _, run_id, label, _, metrics = self.best
            self.writer.name_best_child(self.root, run_id, label, metrics)
        elif self.last_group is not None and not self.single_group:
            # A stage hands on its last group's best (carry-forward): that is the stage's best child.
            run_id, name, metrics = self.last_group
            self.writer.name_best_child(self.root, run_id, name, metrics)
        if self.best is not None:
            params = {k: _json_value(v) for k, v in self.best[3].items()}
            self.writer.log_tags(self.root, {BEST_CONFIG: json.dumps(params)[:5000]})
        self.writer.finish(self.root)
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def _candidate_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    return {
        "mean_heldout_accuracy": row["mean_test_score"],
        "std_heldout_accuracy": row["std_test_score"],
        "min_heldout_accuracy": row["min_test_score"],
    }
