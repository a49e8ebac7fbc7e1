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
twice. New trials come from a sampler seeded by ``(seed, trials already asked)``: with the first session's
seed, a restarted random stream would draw its configurations again. No second database: Optuna's own storage
would be a second source of truth that a killed driver can leave behind the store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

from mlflow_mnist.params import Params
from mlflow_mnist.planning import CandidateRecord, Group, Spec, StoreState
from mlflow_mnist.schema import TRIAL_ROLE, Rung
from mlflow_mnist.spaces import Space
from mlflow_mnist.strategies.base import SPACE_FORM, Evaluate, SearchRequest, numbered
from mlflow_mnist.strategies.sampling import resumed_seed


def rungs(max_epochs: int, factor: int, count: int = 3) -> list[int]:
    """Epoch budgets of the pruner's rungs: ``max_epochs / factor**k`` where that divides evenly (2, 6, 18 for 18
    epochs; 2, 6 for 6), so they fall exactly on the pruner's own rungs."""
    return [max_epochs // factor**k for k in reversed(range(count)) if max_epochs % factor**k == 0]


class OptunaSearch:
    """TPE over ``space``; ``n_trials`` in all (store's included), ``batch`` trials in flight at a time."""

    name = "optuna"
    searches = frozenset({SPACE_FORM})
    by_rungs = True
    help = "TPE over --space with successive-halving pruning over epochs; --trials in all"
    options = frozenset({"trials", "halving_factor"})
    single_group = False
    carries_forward = False

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
    ):
        self.space, self.n_trials, self.overrides = space, n_trials, dict(overrides or {})
        self.batch, self.factor, self.seed, self.search_key = max(1, batch), factor, seed, search_key
        self.budgets = rungs(space.max_epochs, factor)
        self.search_name = f"{self.name}:{space.name}"
        self.study = None

    @classmethod
    def from_request(cls, request: SearchRequest) -> OptunaSearch:
        space = request.need_space(cls.name)
        return cls(
            space,
            n_trials=request.trials,
            overrides=request.overrides,
            batch=request.batch,
            factor=request.factor,
            seed=request.seed,
            search_key=request.search_key(cls.name, space.name, request.factor, request.seed, ""),
        )

    @property
    def search_options(self) -> dict[str, object]:
        rung_epochs = ",".join(map(str, self.budgets))
        return {"trials": self.n_trials, "halving_factor": self.factor, "rung_epochs": rung_epochs, "batch": self.batch}

    def make_study(self, asked_before: int = 0):
        """A fresh study; ``asked_before`` trials already in the store give its sampler a seed of its own."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        seed = resumed_seed(self.seed, asked_before)
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=self.batch * 2)
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=self.budgets[0], reduction_factor=self.factor, min_early_stopping_rate=0
        )
        return optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)

    def past_trials(self, state: StoreState) -> list[CandidateRecord]:
        """This search's evaluated (trial, rung) candidates in the store's snapshot."""
        return [
            c
            for c in state.candidates
            if c.tags.search_key == self.search_key and c.tags.trial is not None and c.tags.rung is not None
        ]

    def remember(self, study, records: list[CandidateRecord]) -> int:
        """Tell ``study`` the store's finished trials and enqueue the unfinished; returns how many were told."""
        import optuna

        # A trial is its sampled values: numbers restart with every study, values do not.
        by_trial: dict[str, list[CandidateRecord]] = {}
        for record in sorted(records, key=lambda r: r.tags.trial):
            by_trial.setdefault(json.dumps(record.tags.sampled, sort_keys=True), []).append(record)
        told = 0
        for group in by_trial.values():
            finished = sorted((r for r in group if r.finished), key=lambda r: r.tags.rung.budget)
            reached = max(r.tags.rung.budget for r in group)
            sampled = group[0].tags.sampled
            if not finished or reached > finished[-1].tags.rung.budget:
                study.enqueue_trial(sampled, skip_if_exists=True)  # cut short: finished folds are reused
                continue
            values = {r.tags.rung.budget: (r.score if math.isfinite(r.score) else 0.0) for r in finished}
            top = finished[-1].tags.rung.budget
            complete = top == self.budgets[-1]
            study.add_trial(
                optuna.trial.create_trial(
                    params=sampled,
                    distributions=self.space.distributions,
                    value=values[top] if complete else None,
                    intermediate_values=values,
                    state=optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState.PRUNED,
                )
            )
            told += 1
        return told

    def _evaluate(self, evaluate: Evaluate, trials: list, budget: int, rung: int) -> list[dict]:
        specs = [
            Spec(
                self.space.config(t.params, epochs=budget, overrides=self.overrides),
                label=f"trial {t.number} ({budget} epochs)",
                role=TRIAL_ROLE,
                trial=t.number,
                sampled=dict(t.params),
            )
            for t in trials
        ]
        group = Group(
            name=f"{numbered('trial', (t.number for t in trials))} rung {rung}: {budget} epochs",
            step=self.search_name,
            varied=self.space.names,
            own_run=False,
            rung=Rung(rung, len(self.budgets), budget),
            search_key=self.search_key,
        )
        return evaluate(specs, group=group)

    def run(self, evaluate: Evaluate, memory: Callable[[], StoreState]) -> None:
        import optuna

        past = self.past_trials(memory())
        study = self.study = self.make_study(asked_before=len({record.tags.trial for record in past}))
        done = self.remember(study, past)
        while done < self.n_trials:
            trials = [study.ask(self.space.distributions) for _ in range(min(self.batch, self.n_trials - done))]
            for rung, budget in enumerate(self.budgets, start=1):
                rows = self._evaluate(evaluate, trials, budget, rung)
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
