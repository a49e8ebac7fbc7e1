"""The search engine: a strategy calls ``evaluate``; ``evaluate`` plans, runs the folds on an executor and tells
its listeners (the MLflow run tree, the progress bar) about each one.

This is scikit-learn's ``BaseSearchCV.fit`` shape: ``_run_search(evaluate_candidates)`` decides *what*,
``joblib.Parallel`` over ``_fit_and_score`` decides *where*. Here the strategy decides what
(:mod:`mlflow_mnist.strategies`), the executor where (:mod:`mlflow_mnist.executors`), the listeners how it
shows (:mod:`mlflow_mnist.search_tree`, :mod:`mlflow_mnist.progress`). None of them knows the others' insides.

``evaluate`` waits for its group; an asynchronous strategy (ASHA) uses the :class:`Session` behind it directly:
``submit`` several groups, ``wait`` for whichever finishes first, and keep every worker busy meanwhile.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
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


class SearchFailed(RuntimeError):
    """Every fold a search trained failed (raised, rather than scored): the task's model or data breaks the task
    contract, not one configuration; the search stops instead of reporting a best of NaN."""


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
    idle_share: float = float("nan")  # the workers' idle share while folds were to train (nan: none trained)

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


FENCE_SECONDS = 1.0


@dataclass
class Pending:
    """One group in the engine: its plan, its results so far, the folds still out, and, once every fold is in,
    its outcome. ``priority``: higher goes to a free worker first (a promoted rung before a new trial)."""

    plan: Plan
    results: dict[str, FoldResult | FoldRecord]
    tasks: dict[str, FoldTask]
    left: set[str]
    priority: int = 0
    outcome: GroupOutcome | None = None

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.outcome.rows if self.outcome else []


@dataclass
class IdleClock:
    """Busy fold-seconds against worker-seconds since the first fold was sent: the workers' idle share."""

    workers: int
    started: float | None = None
    busy: float = 0.0

    def begin(self) -> None:
        if self.started is None:
            self.started = time.monotonic()

    def finished(self, result: FoldResult) -> None:
        if result.started_ms is not None and result.ended_ms is not None:
            self.busy += max(0.0, (result.ended_ms - result.started_ms) / 1000)

    @property
    def idle_share(self) -> float:
        if self.started is None:
            return float("nan")
        capacity = self.workers * (time.monotonic() - self.started)
        return max(0.0, 1 - self.busy / capacity) if capacity > 0 else float("nan")


class Session:
    """The engine as a strategy sees it: groups go in (:meth:`submit`), finished groups come out (:meth:`wait`),
    and in between every worker gets the next fold of whichever group has the highest priority.

    Folds that continue an earlier rung's fold get its saved model attached on their way to a worker: from the
    folds this search trained, else from the store (``load_checkpoint``), so a rerun continues too. A group may
    be submitted before the group it continues has finished: each of its folds is held back only until the fold
    it continues is in, not the whole group (so a trial's next part fills a worker the moment one fold is done).
    """

    def __init__(
        self,
        *,
        settings: SearchSettings,
        executor: Executor,
        worker: Callable[[FoldTask], FoldResult],
        memory: Memory,
        listeners: Sequence[Listener] = (),
        load_checkpoint: Callable[[str], Mapping[str, bytes] | None] | None = None,
        fence: Callable[[], None] | None = None,
    ):
        self.settings, self.executor, self.worker, self.memory = settings, executor, worker, memory
        self.listeners, self.load_checkpoint, self.fence = list(listeners), load_checkpoint, fence
        self.n_workers = max(1, executor.n_workers)
        self.outcomes: list[GroupOutcome] = []
        self.clock = IdleClock(self.n_workers)
        self._queue: list[tuple[int, int, FoldTask, Pending]] = []  # (-priority, order, task, group)
        self._unfinished: set[str] = set()  # keys of the folds queued, held or running
        self._held: dict[str, list[tuple[int, int, FoldTask, Pending]]] = {}  # by the key of the fold they continue
        self._order = itertools.count()
        self._running: dict[Any, tuple[FoldTask, Pending]] = {}  # executor handle -> (task, group)
        self._finished: deque[Pending] = deque()
        self._checkpoints: dict[str, Mapping[str, bytes]] = {}
        self.first_failure: FoldResult | None = None  # the first fold that raised, unless any fold scored
        self.scored = False  # a fold trained or reused with a score (ok, or diverged)

    # -- what strategies call ---------------------------------------------------------------------------------
    def submit(self, candidates: Sequence[Params | Spec], *, group: Group, priority: int = 0) -> Pending:
        """Plan ``candidates`` as one group (validated before any run exists) and queue its folds."""
        plan = plan_candidates(group, candidates, self.settings, self.memory().folds)
        for listener in self.listeners:
            listener.group_started(plan)
        tasks = {task.key: task for task in plan.to_train}
        pending = Pending(plan, dict(plan.reused), tasks, set(tasks), priority)
        for task in tasks.values():
            entry = (-priority, next(self._order), task, pending)
            if task.resume_key in self._unfinished:  # its checkpoint is still to come
                self._held.setdefault(task.resume_key, []).append(entry)
            else:
                heapq.heappush(self._queue, entry)
        self._unfinished.update(tasks)
        if not tasks:
            self._complete(pending)
        return pending

    def plan(self, candidate: Spec, *, group: Group) -> Plan:
        """What :meth:`submit` would plan for ``candidate``, queuing nothing (pure): the fold keys a trial paused
        in an earlier session continues from."""
        return plan_candidates(group, [candidate], self.settings, self.memory().folds)

    def wait(self, *, until_free: bool = False) -> Pending | None:
        """The next group whose folds are all in (in the order they completed); None when nothing is left, or,
        with ``until_free``, as soon as a worker has nothing to do: an asynchronous strategy then gives it work
        at once instead of letting it idle until a whole group is in."""
        while not self._finished:
            if not self._queue and not self._running:
                return None
            self._dispatch()
            if until_free and self.free_workers > 0:
                return None
            # Wake up now and then to check the campaign lock: a driver that lost it stops within about a
            # second, even while a fold trains for minutes (that fold is trained again by the next holder).
            for handle in self.executor.wait_first(list(self._running), timeout=FENCE_SECONDS):
                task, pending = self._running.pop(handle)
                self._fold_done(task, pending, self.executor.result(handle))
            if self.fence is not None:
                self.fence()
        return self._finished.popleft()

    def evaluate(self, candidates: Sequence[Params | Spec], *, group: Group) -> list[dict[str, Any]]:
        """Cross-validate ``candidates`` as one group and wait for it: the synchronous strategies' call."""
        pending = self.submit(candidates, group=group)
        while pending.outcome is None:
            if self.wait() is None:
                break
        self._finished.clear()  # nobody else waits on a synchronous strategy's groups
        return pending.rows

    __call__ = evaluate  # a session is the ``evaluate`` a strategy receives

    @property
    def free_workers(self) -> int:
        """Workers that would have nothing to do once the queued folds are out (negative: folds still wait). Folds
        held for a checkpoint do not count: each is released as the fold it continues ends, freeing a worker."""
        return self.n_workers - len(self._running) - len(self._queue)

    def release(self, pending: Pending) -> None:
        """Forget the saved models of ``pending``'s folds: no later rung will continue them."""
        for candidate in pending.plan.candidates:
            for key in candidate.fold_keys:
                self._checkpoints.pop(key, None)

    # -- inside ----------------------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while self._queue and len(self._running) < self.n_workers:
            _, _, task, pending = heapq.heappop(self._queue)
            if task.resume_key:
                task = replace(task, checkpoint=self._checkpoint(task.resume_key))
            self.clock.begin()
            self._running[self.executor.submit(self.worker, task)] = (task, pending)

    def _checkpoint(self, key: str) -> Mapping[str, bytes] | None:
        files = self._checkpoints.get(key)
        if files is None and self.load_checkpoint is not None:
            files = self.load_checkpoint(key)
        return files

    def _fold_done(self, task: FoldTask, pending: Pending, result: FoldResult) -> None:
        self.clock.finished(result)
        if result.status == "failed":
            self.first_failure = self.first_failure or result
        else:
            self.scored = True
        pending.results[result.key] = result
        pending.left.discard(result.key)
        if task.resumable and result.model_files:
            self._checkpoints[result.key] = result.model_files
        self._unfinished.discard(task.key)
        for entry in self._held.pop(task.key, []):  # a fold that left no model: theirs fail, saying so
            heapq.heappush(self._queue, entry)
        for listener in self.listeners:
            listener.fold_finished(pending.plan, task, result)
        if not pending.left:
            self._complete(pending)

    def _complete(self, pending: Pending) -> None:
        plan = pending.plan
        self.scored = self.scored or bool(plan.reused)  # only scored folds are kept for reuse
        rows = cv_results(plan, pending.results)
        for listener in self.listeners:
            listener.group_finished(plan, rows)
        best = best_row(rows)
        winner = plan.candidates[rows.index(best)]
        pending.outcome = GroupOutcome(plan.group, rows, best, winner, len(pending.tasks), len(plan.reused))
        self.memory.record(plan, pending.results, pending.outcome)
        self.outcomes.append(pending.outcome)
        self._finished.append(pending)


def run_search(
    strategy: Strategy,
    *,
    settings: SearchSettings,
    executor: Executor,
    worker: Callable[[FoldTask], FoldResult],
    read_state: Callable[[], StoreState],
    listeners: Sequence[Listener] = (),
    load_checkpoint: Callable[[str], Mapping[str, bytes] | None] | None = None,
    fence: Callable[[], None] | None = None,
) -> SearchOutcome:
    """Run ``strategy`` to the end; every fold goes through ``executor`` as ``worker(task)``.

    The store is read once, when the search starts (``read_state``); each group is planned against that
    memory and what the search has computed since (so finished folds anywhere in the experiment are reused)
    before any run of that group is created: a bad value fails early and cleanly.
    """
    session = Session(
        settings=settings,
        executor=executor,
        worker=worker,
        memory=Memory(read_state),
        listeners=listeners,
        load_checkpoint=load_checkpoint,
        fence=fence,
    )
    try:
        strategy.run(session, session.memory)
        if session.first_failure is not None and not session.scored:
            raise SearchFailed(failure_line(session.first_failure))
    except BaseException as error:
        for listener in listeners:
            listener.search_failed(error)
        raise
    outcomes = session.outcomes
    best = search_best(outcomes, carries_forward=strategy.carries_forward)
    outcome = SearchOutcome(outcomes, best, idle_share=session.clock.idle_share)
    for listener in listeners:
        listener.search_finished(outcome)
    return outcome


def failure_line(result: FoldResult) -> str:
    """One line for a search whose every fold failed: the first fold's error (redacted, shortened) and the fix."""
    from mlflow_mnist.redaction import error_line

    error = error_line(result.error or "no error recorded")
    return (
        f"every fold failed, the first ({result.step}, fold {result.fold + 1}) with {error}: the task's model or data "
        f"breaks the task contract (docs/tasks.md, build_model); fix the task and run the command again"
    )
