"""Optuna's ask/tell over a whole search space at once, with hopeless trials pruned early.

The loop belongs to us (Optuna's ask/tell): a batch of trials is asked (TPE with the constant liar, so a batch
spreads out), cross-validated through ``evaluate`` at a few epochs, and told; the pruner stops the trials that
lag the others at that rung; the rest go on at three times the epochs, up to the full budget.

**The pruner** is Optuna's ``SuccessiveHalvingPruner`` (asynchronous successive halving) with epochs as the
resource: rungs at ``max_epochs / 9``, ``/ 3`` and the full budget, and a trial continues only while it is in
the best third of the trials that reached its rung. Not the Wilcoxon pruner made for CV folds: with 3 folds a
paired signed-rank test cannot reach significance (its smallest one-sided p-value over 3 pairs is 0.125), so it
would never prune; what separates the losers early here is epochs, not folds.

**The MLflow store is the memory.** Every evaluated (trial, rung) is a run tagged with the trial's number, its
sampled values and the search's key. On restart a fresh study is told, from the store, every trial that reached
the full budget (complete) and every trial that stopped below it with no run at a higher rung (pruned: a
promoted trial's next-rung runs are created before anything trains there). A trial cut short by the kill is
asked again with the same values (``enqueue_trial``): the folds it had finished are reused, nothing trains
twice. No second database: Optuna's own storage would be a second source of truth that a killed driver can
leave behind the store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mlflow_mnist.model import Params
from mlflow_mnist.planning import Group, StoreState
from mlflow_mnist.spaces import Space
from mlflow_mnist.strategies.base import Evaluate
from mlflow_mnist.tracking import BUDGET, FINAL_RUNG, LEVEL, RUNG, SAMPLED, SEARCH_KEY, STATUS, TRIAL


@dataclass(frozen=True)
class TrialRecord:
    """One (trial, rung) run as the store remembers it; ``finished`` False for a run cut short."""

    number: int
    sampled: Params
    budget: int
    mean: float
    status: str
    finished: bool = True


def rungs(max_epochs: int, factor: int, count: int = 3) -> list[int]:
    """Epoch budgets of the pruner's rungs: ``max_epochs / factor**k`` where that divides evenly (2, 6, 18 for 18
    epochs; 2, 6 for 6), so they fall exactly on the pruner's own rungs."""
    return [max_epochs // factor**k for k in reversed(range(count)) if max_epochs % factor**k == 0]


class OptunaSearch:
    """TPE over ``space``; ``n_trials`` in all (store's included), ``batch`` trials in flight at a time."""

    name = "optuna"
    single_group = False

    def __init__(
        self,
        space: Space,
        *,
        n_trials: int,
        overrides: Params | None = None,
        batch: int = 4,
        factor: int = 3,
        seed: int = 0,
        search_key: str = "",
        past_trials: Callable[[], list[TrialRecord]] = list,
    ):
        self.space, self.n_trials, self.overrides = space, n_trials, dict(overrides or {})
        self.batch, self.factor, self.seed, self.search_key = max(1, batch), factor, seed, search_key
        self.budgets = rungs(space.max_epochs, factor)
        self.past_trials = past_trials
        self.study = None

    def make_study(self):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=self.seed, constant_liar=True, n_startup_trials=self.batch * 2)
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=self.budgets[0], reduction_factor=self.factor, min_early_stopping_rate=0
        )
        return optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)

    def remember(self, study) -> int:
        """Tell ``study`` the store's finished trials and enqueue the unfinished; returns how many were told."""
        import optuna

        # A trial is its sampled values: numbers restart with every study, values do not.
        by_trial: dict[str, list[TrialRecord]] = {}
        for record in sorted(self.past_trials(), key=lambda r: r.number):
            by_trial.setdefault(json.dumps(record.sampled, sort_keys=True), []).append(record)
        told = 0
        for records in by_trial.values():
            finished = sorted((r for r in records if r.finished), key=lambda r: r.budget)
            reached = max(r.budget for r in records)
            if not finished or reached > finished[-1].budget:
                study.enqueue_trial(records[0].sampled, skip_if_exists=True)  # cut short: finished folds are reused
                continue
            values = {r.budget: (r.mean if math.isfinite(r.mean) else 0.0) for r in finished}
            top = finished[-1].budget
            complete = top == self.budgets[-1]
            study.add_trial(
                optuna.trial.create_trial(
                    params=records[0].sampled,
                    distributions=self.space.distributions,
                    value=values[top] if complete else None,
                    intermediate_values=values,
                    state=optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState.PRUNED,
                )
            )
            told += 1
        return told

    def _evaluate(self, evaluate: Evaluate, trials: list, budget: int, rung: int, first: int) -> list[dict]:
        configs = [self.space.config(t.params, epochs=budget, overrides=self.overrides) for t in trials]
        group = Group(
            name=f"trials {first}-{first + len(trials) - 1} rung {rung}: {budget} epochs",
            step=f"{self.name}:{self.space.name}"
            if budget == self.budgets[-1]
            else f"{self.name}:{self.space.name}@{budget}",
            varied=self.space.names,
            own_run=False,
            tags={
                RUNG: str(rung),
                BUDGET: str(budget),
                FINAL_RUNG: str(budget == self.budgets[-1]).lower(),
                SEARCH_KEY: self.search_key,
            },
        )
        labels = [f"trial {t.number} ({budget} epochs)" for t in trials]
        tags = [{TRIAL: str(t.number), SAMPLED: json.dumps(t.params)} for t in trials]
        return evaluate(configs, group=group, labels=labels, tags=tags)

    def run(self, evaluate: Evaluate, memory: Callable[[], StoreState]) -> None:
        import optuna

        study = self.study = self.make_study()
        done = self.remember(study)
        while done < self.n_trials:
            trials = [study.ask(self.space.distributions) for _ in range(min(self.batch, self.n_trials - done))]
            first = trials[0].number
            for rung, budget in enumerate(self.budgets, start=1):
                rows = self._evaluate(evaluate, trials, budget, rung, first)
                values = [row["mean_test_score"] if row["status"] == "ok" else 0.0 for row in rows]
                for trial, value in zip(trials, values, strict=True):
                    trial.report(value, budget)
                # The batch finished its rung together, so it is judged best first: Optuna's (asynchronous)
                # pruner compares a trial only with those judged before it at that rung, and the first one judged
                # is always promoted. Best first, a trial goes on only if it is in the best third of all of them.
                survivors = []
                for trial, value in sorted(zip(trials, values, strict=True), key=lambda pair: -pair[1]):
                    if budget == self.budgets[-1]:
                        study.tell(trial, value)
                    elif trial.should_prune():
                        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    else:
                        survivors.append(trial)
                trials = sorted(survivors, key=lambda t: t.number)
                if not trials:
                    break
            done += min(self.batch, self.n_trials - done)

    @staticmethod
    def sampled_configs(
        space: Space, n: int, *, seed: int, overrides: Params | None = None
    ) -> tuple[list[Params], list[str]]:
        """``n`` configurations drawn at random from ``space`` (Optuna's RandomSampler), for successive halving."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        trials = [study.ask(space.distributions) for _ in range(n)]
        return [space.config(t.params, overrides=overrides) for t in trials], [f"sample {t.number}" for t in trials]


def trial_records(runs: Sequence, search_key: str) -> list[TrialRecord]:
    """The store's evaluated (trial, rung) runs of one search, from its candidate runs' tags and metrics."""
    records = []
    for run in runs:
        tags = run.data.tags
        if tags.get(LEVEL) != "candidate" or tags.get(SEARCH_KEY) != search_key or TRIAL not in tags:
            continue
        mean = run.data.metrics.get("mean_heldout_accuracy", math.nan)
        status = tags.get(STATUS, "ok")
        finished = run.info.status == "FINISHED"
        score = mean if status == "ok" else 0.0
        records.append(
            TrialRecord(int(tags[TRIAL]), json.loads(tags[SAMPLED]), int(tags[BUDGET]), score, status, finished)
        )
    return records
