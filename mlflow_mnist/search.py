"""The search engine: a strategy calls ``evaluate``; ``evaluate`` plans, runs the folds on an executor and tells
its listeners (the MLflow run tree, the progress bar) about each one.

This is scikit-learn's ``BaseSearchCV.fit`` shape: ``_run_search(evaluate_candidates)`` decides *what*,
``joblib.Parallel`` over ``_fit_and_score`` decides *where*. Here the strategy decides what
(:mod:`mlflow_mnist.strategies`), the executor where (:mod:`mlflow_mnist.executors`), the listeners how it
shows (:mod:`mlflow_mnist.search_tree`, :class:`Progress`). None of them knows the others' insides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mlflow_mnist.executors import Executor
from mlflow_mnist.params import Params
from mlflow_mnist.planning import (
    Candidate,
    FoldRecord,
    FoldTask,
    Group,
    Plan,
    SearchSettings,
    Spec,
    StepBest,
    StoreState,
    plan_candidates,
)
from mlflow_mnist.results import FoldResult, best_row, cv_results
from mlflow_mnist.strategies import Strategy


@dataclass
class GroupOutcome:
    """What one evaluate call found: its ``cv_results`` rows, the best row and its candidate, how much it
    trained, and whether it decides anything (a low rung of successive halving does not)."""

    group: Group
    rows: list[dict[str, Any]]
    best: dict[str, Any]
    winner: Candidate
    trained: int
    reused: int

    @property
    def step(self) -> str:
        return self.group.step

    @property
    def counts(self) -> bool:
        return self.group.counts


@dataclass
class SearchOutcome:
    """A whole search: every group's outcome and the search's result, by the one rule that every reader uses
    (:func:`search_best`)."""

    groups: list[GroupOutcome]
    best: GroupOutcome | None
    run_id: str | None = None  # the search run, once the run tree has made it

    @property
    def trained(self) -> int:
        return sum(g.trained for g in self.groups)

    @property
    def reused(self) -> int:
        return sum(g.reused for g in self.groups)


def search_best(groups: Sequence[GroupOutcome], *, carries_forward: bool) -> GroupOutcome | None:
    """The search's result: the last deciding group's best when each group builds on the one before (staged
    steps), else the best deciding group's best by :func:`~mlflow_mnist.results.rank_key`, first evaluated
    first on exact ties."""
    deciding = [g for g in groups if g.counts]
    if not deciding:
        return None
    if carries_forward:
        return deciding[-1]
    best = best_row([g.best for g in deciding])
    return next(g for g in deciding if g.best is best)


class Listener(Protocol):
    """Told about the search as it happens; the run tree and the progress bar are listeners."""

    def group_started(self, plan: Plan) -> None: ...

    def fold_finished(self, plan: Plan, task: FoldTask, result: FoldResult) -> None: ...

    def group_finished(self, plan: Plan, rows: list[dict[str, Any]]) -> None: ...

    def search_finished(self, outcome: SearchOutcome) -> None: ...

    def search_failed(self, error: BaseException) -> None:
        """Stopped by an error or Ctrl-C; open runs are closed by the writer, not here."""


class Memory:
    """The campaign's memory during a search: the store's snapshot, read once when the search starts (that is
    how it resumes), then kept up to date with what the search itself computes, so the store is not read again.
    A strategy and the planner see the same state."""

    def __init__(self, read: Callable[[], StoreState]):
        self.read, self._state = read, None

    def __call__(self) -> StoreState:
        if self._state is None:
            self._state = self.read()
        return self._state

    def record(self, plan: Plan, results: Mapping[str, FoldResult | FoldRecord], outcome: GroupOutcome) -> None:
        """What a finished group adds: its trained folds (reusable by key) and, when it decides, its step's best."""
        state = self()
        for key, result in results.items():
            if isinstance(result, FoldResult) and result.status in ("ok", "diverged") and key not in state.folds:
                state.folds[key] = FoldRecord(
                    key, result.accuracy, result.fit_seconds, result.status, chance=result.chance
                )
        if outcome.counts:
            best = outcome.best
            state.step_bests[plan.step] = StepBest(
                plan.step,
                dict(outcome.winner.varied),
                best["mean_test_score"],
                reference_rule=plan.group.reference_rule,
            )


def run_search(
    strategy: Strategy,
    *,
    settings: SearchSettings,
    executor: Executor,
    worker: Callable[[FoldTask], FoldResult],
    read_state: Callable[[], StoreState],
    listeners: Sequence[Listener] = (),
) -> SearchOutcome:
    """Run ``strategy`` to the end; every fold goes through ``executor`` as ``worker(task)``.

    The store is read once, when the search starts (``read_state``); each evaluate call is planned against that
    memory and what the search has computed since (so finished folds anywhere in the experiment are reused)
    before any run of that call is created: a bad value fails early and cleanly.
    """
    memory = Memory(read_state)
    outcomes: list[GroupOutcome] = []

    def evaluate(candidates: Sequence[Params | Spec], *, group: Group) -> list[dict[str, Any]]:
        plan = plan_candidates(group, candidates, settings, memory().folds)
        for listener in listeners:
            listener.group_started(plan)
        results: dict[str, FoldResult | FoldRecord] = dict(plan.reused)
        tasks = {task.key: task for task in plan.to_train}
        for result in executor.map_unordered(worker, tasks.values()):
            results[result.key] = result
            for listener in listeners:
                listener.fold_finished(plan, tasks[result.key], result)
        rows = cv_results(plan, results)
        for listener in listeners:
            listener.group_finished(plan, rows)
        best = best_row(rows)
        winner = plan.candidates[rows.index(best)]
        outcome = GroupOutcome(plan.group, rows, best, winner, len(tasks), len(plan.reused))
        memory.record(plan, results, outcome)
        outcomes.append(outcome)
        return rows

    try:
        strategy.run(evaluate, memory)
    except BaseException as error:
        for listener in listeners:
            listener.search_failed(error)
        raise
    outcome = SearchOutcome(outcomes, search_best(outcomes, carries_forward=strategy.carries_forward))
    for listener in listeners:
        listener.search_finished(outcome)
    return outcome


class Progress:
    """A tqdm bar per group naming candidate, fold, status and accuracy, with tqdm's ETA."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.bar = enabled, None

    def group_started(self, plan: Plan) -> None:
        from tqdm.auto import tqdm

        n_folds = len(plan.candidates[0].fold_keys) if plan.candidates else 0
        self.bar = tqdm(
            total=len(plan.to_train),
            desc=plan.group.name,
            unit="fold",
            disable=not self.enabled or not plan.to_train,
            dynamic_ncols=True,
        )
        if self.enabled:
            self.bar.write(
                f"{plan.group.name}: {len(plan.candidates)} candidates x {n_folds} folds, "
                f"{len(plan.to_train)} to train, {len(plan.reused)} reused from the store"
            )

    def fold_finished(self, plan: Plan, task: FoldTask, result: FoldResult) -> None:
        repeated = len(plan.candidates[task.candidate_index].fold_keys) > task.n_folds
        where = f"{f'repeat {task.repeat + 1} ' if repeated else ''}fold {task.fold + 1}/{task.n_folds}"
        self.bar.set_postfix_str(f"{task.label} {where}: {result.status} {result.accuracy:.4f}")
        self.bar.update()

    def group_finished(self, plan: Plan, rows: list[dict[str, Any]]) -> None:
        self.bar.close()

    def search_finished(self, outcome: SearchOutcome) -> None:
        pass

    def search_failed(self, error: BaseException) -> None:
        if self.bar is not None:
            self.bar.close()  # before the one-line message, so that line is the last one printed
