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
from mlflow_mnist.model import Params
from mlflow_mnist.planning import FoldRecord, FoldTask, Group, Plan, SearchSettings, StoreState, plan_candidates
from mlflow_mnist.results import FoldResult, best_row, cv_results
from mlflow_mnist.strategies import Strategy


@dataclass
class GroupOutcome:
    """What one evaluate call found: its ``cv_results`` rows, the best row, and how much it trained."""

    step: str
    rows: list[dict[str, Any]]
    best: dict[str, Any]
    trained: int
    reused: int


class Listener(Protocol):
    """Told about the search as it happens; the run tree and the progress bar are listeners."""

    def group_started(self, plan: Plan) -> None: ...

    def fold_finished(self, plan: Plan, task: FoldTask, result: FoldResult) -> None: ...

    def group_finished(self, plan: Plan, rows: list[dict[str, Any]]) -> None: ...

    def search_finished(self, outcomes: list[GroupOutcome]) -> None: ...

    def search_failed(self, error: BaseException) -> None:
        """Stopped by an error or Ctrl-C; open runs are closed by the writer, not here."""


class Memory:
    """The store's snapshot, read once per group: a strategy and the planner see the same state."""

    def __init__(self, read: Callable[[], StoreState]):
        self.read, self._state = read, None

    def __call__(self) -> StoreState:
        if self._state is None:
            self._state = self.read()
        return self._state

    def forget(self) -> None:
        self._state = None


def run_search(
    strategy: Strategy,
    *,
    settings: SearchSettings,
    executor: Executor,
    worker: Callable[[FoldTask], FoldResult],
    read_state: Callable[[], StoreState],
    listeners: Sequence[Listener] = (),
) -> list[GroupOutcome]:
    """Run ``strategy`` to the end; every fold goes through ``executor`` as ``worker(task)``.

    Each evaluate call is planned against the store as it stands (so finished folds anywhere in the
    experiment are reused) before any run of that call is created: a bad value fails early and cleanly.
    """
    memory = Memory(read_state)
    outcomes: list[GroupOutcome] = []

    def evaluate(
        candidates: Sequence[Params],
        *,
        group: Group,
        labels: Sequence[str] | None = None,
        tags: Sequence[Mapping[str, str]] | None = None,
    ) -> list[dict[str, Any]]:
        plan = plan_candidates(group, candidates, settings, memory().folds, labels, tags)
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
        memory.forget()  # what this group logged is part of the next group's store
        outcomes.append(GroupOutcome(plan.step, rows, best_row(rows), len(tasks), len(plan.reused)))
        return rows

    try:
        strategy.run(evaluate, memory)
    except BaseException as error:
        for listener in listeners:
            listener.search_failed(error)
        raise
    for listener in listeners:
        listener.search_finished(outcomes)
    return outcomes


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

    def search_finished(self, outcomes: list[GroupOutcome]) -> None:
        pass

    def search_failed(self, error: BaseException) -> None:
        if self.bar is not None:
            self.bar.close()  # before the one-line message, so that line is the last one printed
