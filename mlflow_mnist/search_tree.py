"""How a search appears in MLflow: a listener that turns the engine's events into nested runs.

    search run (``kernel_size``, ``neurons``, ``optuna``)
      group run (a step: ``neurons_2``)       -- absent when the search is one group, or the group has no run
        candidate run (``neurons_2=15``)      -- from its first fold's start to its last fold's end
          fold runs (``fold 2/3``) with curves, true start/end times and the fold's LoggedModel

Every parent names its best child (tag ``mlflow_mnist.best_child_run_id``, a link in its description) and
carries that child's metrics. Finished folds of an interrupted attempt move under the new candidate run, so
the finished tree is whole; folds that belong to a completed run elsewhere stay there, referenced by id.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mlflow_mnist.params import json_value
from mlflow_mnist.planning import Candidate, FoldTask, Plan, candidate_label, config_hash
from mlflow_mnist.redaction import redact
from mlflow_mnist.results import FoldResult, best_row
from mlflow_mnist.runs import RunWriter
from mlflow_mnist.schema import (
    BEST_FOLD_HELDOUT_ACCURACY,
    BEST_MEAN_ACCURACY,
    BEST_STD_ACCURACY,
    CANDIDATE_LEVEL,
    CHANCE_ACCURACY,
    COLLAPSED_FOLDS,
    CONTINUES,
    CV_REPEATS,
    EPOCHS_RUN,
    FIT_SECONDS,
    FOLD_LEVEL,
    FOLD_PARAM,
    HELDOUT_ACCURACY,
    HELDOUT_LOSS,
    HORIZON_EPOCHS,
    MEAN_FIT_SECONDS,
    MEAN_HELDOUT_ACCURACY,
    MIN_HELDOUT_ACCURACY,
    N_FOLDS,
    PARENT,
    RANK,
    REFERENCE,
    REPEAT_PARAM,
    REUSED,
    SPLIT_SEED,
    STAGE,
    STAGE_LEVEL,
    STATUS,
    STD_HELDOUT_ACCURACY,
    STEP,
    STEP_LEVEL,
    STRATEGY,
    VERSION_PREFIX,
    WORKERS_IDLE_SHARE,
    CandidateTags,
    FoldTags,
    GroupResult,
    GroupTags,
    best_config_tag,
    search_option_params,
    space_tag,
)
from mlflow_mnist.search import SearchOutcome
from mlflow_mnist.spaces import Space

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


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _GroupRuns:
    """The runs of one group while it is open: several are open at once under an asynchronous strategy.

    A candidate's run is made when its first fold is logged, starting when that fold started, and ends when its
    last fold ended: made at the group's start and ended at its close, every candidate showed the whole step's
    duration. A candidate that trains nothing here (its folds reused) starts and ends with the group's start."""

    run_id: str
    started_ms: int
    candidates: dict[int, str] = field(default_factory=dict)  # made so far
    folds: dict[int, list[tuple[str, float]]] = field(default_factory=dict)  # candidate -> (fold run, accuracy)
    ended_ms: dict[int, int] = field(default_factory=dict)  # candidate -> its last logged fold's end
    referenced: dict[int, list[str]] = field(default_factory=dict)  # candidate -> fold runs reused from elsewhere
    logging: list[Future] = field(default_factory=list)  # its folds being logged on the pool
    making: threading.Lock = field(default_factory=threading.Lock)  # one run per candidate, whichever thread asks


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
        neutral: Mapping[str, Any] | None = None,
        space: Space | None = None,
        search_options: Mapping[str, Any] | None = None,
    ):
        self.writer, self.name, self.strategy, self.single_group = writer, name, strategy, single_group
        self.neutral = dict(neutral or {})  # the task's optional hyperparameters at values left out of hashes
        self.space = space
        self.settings_params = dict(settings_params)
        self.search_options = dict(search_options or {})
        self.adopt_run_id = adopt_run_id
        self.root: str | None = None
        self.groups: dict[int, _GroupRuns] = {}  # id(plan) -> its runs, while the group is open
        self.logged_folds: dict[str, str] = {}  # fold key -> run id, for folds this search logged
        self.group_runs: dict[int, str] = {}  # id(group) -> its run, for the search's best child
        self.best_candidate_run: dict[int, str] = {}  # id(group) -> its best candidate's run
        # A fold's run takes about ten requests; against a remote server they wait on the network, not on us, so
        # several folds are logged at once. A group waits for its folds' logging before it closes.
        self.pool = ThreadPoolExecutor(log_threads, thread_name_prefix="log-fold") if log_threads > 1 else None
        # Folds queued for or being logged, each holding its model's bytes: at most two per logging thread. When
        # they are taken the driver blocks, dispatches no new fold, and the workers wait (back-pressure).
        self.slots = threading.BoundedSemaphore(2 * log_threads)
        self.lock = threading.Lock()

    # -- the search run ------------------------------------------------------------------------------------
    def _start_root(self, plan: Plan) -> str:
        level = STEP_LEVEL if self.single_group else STAGE_LEVEL
        tags = {STAGE: self.name, STRATEGY: self.strategy, **({STEP: plan.step} if self.single_group else {})}
        if not self.adopt_run_id:  # `mlflow run` already set these on the run it made
            tags.update(context_tags())
        tags.update({f"{VERSION_PREFIX}{name}": v for name, v in library_versions().items()})
        if self.space is not None:
            tags.update(space_tag(self.space.name, self.space.distributions))
        run_id = self.writer.start(self.name, level, tags=tags, adopt=self.adopt_run_id)
        self.writer.log_params(run_id, {**self.settings_params, **search_option_params(self.search_options)})
        return run_id

    # -- listener ------------------------------------------------------------------------------------------
    def group_started(self, plan: Plan) -> None:
        if self.root is None:
            self.root = self._start_root(plan)
        group = plan.group
        if self.single_group or not group.own_run:
            group_run = self.root
        else:
            group_run = self.writer.start(group.name, STEP_LEVEL, parent=self.root, tags={STAGE: self.name})
        self.group_runs[id(group)] = group_run
        if group.own_run or self.single_group:
            # The carried-in values of the varied parameters: what the step started from.
            incumbent = {k: plan.fixed[k] for k in group.varied if k in plan.fixed}
            group_tags = GroupTags(
                group.step, group.varied, incumbent, plan.plan_hash, group.rung, group.reference_rule
            )
            self.writer.log_tags(group_run, group_tags.tags())
            self.writer.log_params(group_run, {k: v for k, v in plan.fixed.items() if k not in group.varied})
            if group.grid is not None:
                grid = {key: [json_value(v) for v in values] for key, values in group.grid.items()}
                self.writer.log_dict(group_run, grid, "grid.json")
        self.groups[id(plan)] = _GroupRuns(group_run, started_ms=_now_ms())

    def _candidate_run(self, candidate: Candidate, plan: Plan, runs: _GroupRuns, start_ms: int) -> str:
        """The candidate's run, made now (starting at ``start_ms``) if this is its first fold."""
        with runs.making:
            if candidate.index not in runs.candidates:
                runs.candidates[candidate.index] = self._start_candidate(candidate, plan, runs, start_ms)
            return runs.candidates[candidate.index]

    def _start_candidate(self, candidate: Candidate, plan: Plan, runs: _GroupRuns, start_ms: int) -> str:
        group = plan.group
        record = CandidateTags(
            step=plan.step,
            label=candidate.label,
            index=candidate.index,
            config_hash=candidate.config_hash,
            varied=group.varied,
            role=candidate.role,
            rung=group.rung,
            trial=candidate.trial,
            sampled=candidate.sampled,
            search_key=group.search_key,
        )
        # A step's reference is named by the values it holds too: several runs named just "reference", one per
        # step, read as one row twice in a sorted or filtered runs table. The label (its tag) stays "reference".
        name = f"{candidate.label}: {candidate_label(candidate.varied)}" if candidate.role == REFERENCE else None
        run_id = self.writer.start(
            name or candidate.label,
            CANDIDATE_LEVEL,
            parent=runs.run_id,
            tags={STAGE: self.name, **record.tags()},
            start_ms=start_ms,
        )
        self.writer.log_params(run_id, candidate.params)
        runs.folds.setdefault(candidate.index, [])
        referenced = []
        for key in candidate.fold_keys:
            reused = plan.reused.get(key)
            if reused is None:
                continue
            fold_run = reused.run_id or self.logged_folds.get(key, "")
            runs.folds[candidate.index].append((fold_run, reused.accuracy))
            if reused.parent_finished:
                referenced.append(fold_run)
            else:  # a finished fold of an interrupted attempt: it joins the new tree
                self.writer.log_tags(fold_run, {PARENT: run_id})
        if referenced:
            self.writer.log_tags(run_id, {REUSED: ",".join(referenced)})
            runs.referenced[candidate.index] = referenced
        return run_id

    def fold_finished(self, plan: Plan, task: FoldTask, result: FoldResult) -> None:
        runs = self.groups[id(plan)]
        if self.pool is None:
            self._log_fold(plan, runs, task, result)
            return
        for open_runs in self.groups.values():  # a failed upload stops the search at the next fold
            for future in open_runs.logging:
                if future.done() and not future.cancelled() and future.exception() is not None:
                    future.result()
        self.slots.acquire()  # a full queue blocks the driver here
        try:
            future = self.pool.submit(self._log_fold, plan, runs, task, result)
        except BaseException:
            self.slots.release()
            raise
        future.add_done_callback(lambda _: self.slots.release())  # also when cancelled by shutdown
        runs.logging.append(future)

    def _log_fold(self, plan: Plan, runs: _GroupRuns, task: FoldTask, result: FoldResult) -> None:
        candidate = plan.candidates[task.candidate_index]  # a candidate's index is its place in the plan
        parent = self._candidate_run(candidate, plan, runs, start_ms=result.started_ms or _now_ms())
        name = f"fold {task.fold + 1}/{task.n_folds}"
        fold_tags = FoldTags(
            step=task.step,
            fold_key=task.key,
            label=task.label,
            config_hash=config_hash(task.params, self.neutral),
            fold=task.fold,
            repeat=task.repeat,
            status=result.status,
            worker=result.worker,
            error=redact(result.error),
        )
        run_id = self.writer.start(
            f"repeat {task.repeat + 1} {name}" if self.settings_params.get(CV_REPEATS, 1) > 1 else name,
            FOLD_LEVEL,
            parent=parent,
            start_ms=result.started_ms,
            tags={STAGE: self.name, **fold_tags.tags()},
        )
        model_tags = {k: v for k, v in fold_tags.tags().items() if k not in (STATUS,)}
        model_id = self.writer.log_model(run_id, result.model_files, params=task.params, tags=model_tags)
        fold_params = {
            FOLD_PARAM: task.fold,
            REPEAT_PARAM: task.repeat,
            N_FOLDS: task.n_folds,
            SPLIT_SEED: task.split_seed,
        }
        if task.resumable:  # where it sits in its chain: a continued fold's curves start after its first epochs
            fold_params.update({HORIZON_EPOCHS: task.horizon, CONTINUES: task.resume_key or "none"})
        self.writer.log_results(
            run_id,
            params={**task.params, **fold_params, **self.settings_params},
            history=result.history,
            first_step=result.first_epoch + 1,
            metrics={
                FIT_SECONDS: result.fit_seconds,
                EPOCHS_RUN: result.epochs_run,
                HELDOUT_LOSS: result.loss,
                CHANCE_ACCURACY: result.chance,
            },
            scores={HELDOUT_ACCURACY: result.accuracy},
            model_id=model_id,
        )
        self.writer.finish(run_id, "FINISHED" if result.status != "failed" else "FAILED", end_ms=result.ended_ms)
        with self.lock:
            runs.folds.setdefault(task.candidate_index, []).append((run_id, result.accuracy))
            ended = result.ended_ms or _now_ms()
            runs.ended_ms[task.candidate_index] = max(ended, runs.ended_ms.get(task.candidate_index, ended))
            self.logged_folds[task.key] = run_id

    def group_finished(self, plan: Plan, rows: list[dict[str, Any]]) -> None:
        runs = self.groups.pop(id(plan))
        for future in runs.logging:
            future.result()  # a failed upload fails the search, as it would have without threads
        for candidate in plan.candidates:
            self._candidate_run(candidate, plan, runs, start_ms=runs.started_ms)  # one that trained nothing here
            self._finish_candidate(runs, candidate, rows[candidate.index])
        best = best_row(rows)
        winner = plan.candidates[rows.index(best)]
        self.best_candidate_run[id(plan.group)] = runs.candidates[winner.index]
        if not (plan.group.own_run or self.single_group):
            return
        result = GroupResult(dict(winner.varied), best["mean_test_score"], best["candidate"])
        self.writer.log_text(runs.run_id, pd.DataFrame(rows).to_csv(index=False), "cv_results.csv")
        self.writer.log_params(runs.run_id, {f"best_{k}": v for k, v in winner.varied.items()})
        self.writer.log_tags(runs.run_id, result.tags())
        self.writer.log_metrics(
            runs.run_id,
            {BEST_MEAN_ACCURACY: best["mean_test_score"], BEST_STD_ACCURACY: best["std_test_score"]},
        )
        metrics = _candidate_metrics(best)
        self.writer.name_best_child(runs.run_id, runs.candidates[winner.index], winner.label, metrics)
        if runs.run_id != self.root:
            self.writer.finish(runs.run_id)

    def _finish_candidate(self, runs: _GroupRuns, candidate: Candidate, row: Mapping[str, Any]) -> None:
        run_id = runs.candidates[candidate.index]
        self.writer.log_metrics(
            run_id,
            {
                **_candidate_metrics(row),
                CHANCE_ACCURACY: row["chance_score"],  # its folds' mean, as each fold logs its own
                RANK: row["rank_test_score"],
                MEAN_FIT_SECONDS: row["mean_fit_time"],
            },
        )
        self.writer.log_tags(run_id, {STATUS: row["status"], COLLAPSED_FOLDS: row["collapsed_folds"]})
        folds = [(i, a) for i, a in runs.folds.get(candidate.index, []) if a == a]  # NaN: a failed fold
        if folds:
            fold_id, accuracy = max(folds, key=lambda pair: pair[1])
            referenced = runs.referenced.get(candidate.index, [])
            # Reused folds stay under the run that trained them: say so, or the candidate looks empty and its
            # best-fold link seems to open another step's fold by mistake.
            note = (
                f"{len(referenced)} of its {len(candidate.fold_keys)} folds were trained earlier, with this "
                f"configuration, and stay under the runs that trained them: "
                + ", ".join(self.writer.run_link(fold, f"fold run {i + 1}") for i, fold in enumerate(referenced))
                if referenced
                else ""
            )
            label = "best fold (trained earlier)" if fold_id in referenced else "best fold"
            self.writer.name_best_child(run_id, fold_id, label, {BEST_FOLD_HELDOUT_ACCURACY: accuracy}, note=note)
        self.writer.finish(run_id, end_ms=runs.ended_ms.get(candidate.index, runs.started_ms))

    def search_failed(self, error: BaseException) -> None:
        # The writer's closing_on_failure marks the open runs KILLED or FAILED; folds being logged finish first.
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def search_finished(self, outcome: SearchOutcome) -> None:
        if self.root is None:
            return
        best = outcome.best
        if best is not None:
            group = best.group
            if group.own_run and not self.single_group:
                # A stage of steps: its best child is the group (step) run that holds the result.
                metrics = {BEST_MEAN_ACCURACY: best.best["mean_test_score"], **_candidate_metrics(best.best)}
                self.writer.name_best_child(self.root, self.group_runs[id(group)], group.name, metrics)
            elif not self.single_group:
                # Trials hang under the search run: its best child is the best trial at the full budget.
                run_id = self.best_candidate_run[id(group)]
                self.writer.name_best_child(self.root, run_id, best.winner.label, _candidate_metrics(best.best))
            self.writer.log_tags(self.root, best_config_tag(best.winner.params))
        if math.isfinite(outcome.idle_share):
            self.writer.log_metrics(self.root, {WORKERS_IDLE_SHARE: outcome.idle_share})
        self.writer.finish(self.root)
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def _candidate_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    return {
        MEAN_HELDOUT_ACCURACY: row["mean_test_score"],
        STD_HELDOUT_ACCURACY: row["std_test_score"],
        MIN_HELDOUT_ACCURACY: row["min_test_score"],
    }
