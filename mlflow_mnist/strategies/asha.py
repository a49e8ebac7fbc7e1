"""Asynchronous successive halving (ASHA, Li et al. 2020; Ray Tune's ``AsyncHyperBandScheduler``) with TPE
sampling: no worker waits for a cohort.

A free worker takes the next fold at once. A trial trains its folds at the first rung's epochs; when its rung
finishes it is promoted the moment it ranks in the best ``1/factor`` of what that rung has seen so far (Ray's
rule: at or above the rung's ``1 - 1/factor`` quantile), else it stops and a new trial is asked. One exception:
a trial near chance (it learned nothing) goes on only once its rung has seen ``factor`` trials and none learned,
although the first trials to reach a rung otherwise always go on. A promoted
trial *continues* each fold from the model that fold saved at the rung before (weights, optimizer, schedule
over the trial's full budget), for the extra epochs only, so the top rung costs what one uninterrupted
training costs. Promotions go to a free worker before new trials.

``brackets`` > 1 hedges the first rung (Hyperband's idea, asynchronous): trial ``n`` starts at rung
``n mod brackets``, so some trials are judged first at 2 epochs, others at 6, others only at the full budget.
``warm_start`` configurations (the staged grid's winner, earlier searches' best trials) are the first trials.

The store is the memory: every (trial, rung) is a candidate run with the trial's number, sampled values, rung
and search key. Rerun after a kill, the study is told every trial that stopped or completed, a trial cut short is
asked again with the same values, number and bracket, and every fold it had finished (continued ones included,
their keys name their whole history) is reused. New trials are numbered after the store's and drawn from a
sampler seeded by ``(seed, trials already asked)``: with the first session's seed, a restarted random stream
would draw the configurations it drew before again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mlflow_mnist.params import Params
from mlflow_mnist.planning import CandidateRecord, Group, Spec, StoreState
from mlflow_mnist.results import near_chance
from mlflow_mnist.schema import TRIAL_ROLE, Rung
from mlflow_mnist.spaces import Space
from mlflow_mnist.strategies.base import SearchRequest
from mlflow_mnist.strategies.sampling import resumed_seed


def rung_budgets(max_epochs: int, factor: int, min_epochs: int) -> list[int]:
    """Epochs at each rung: ``min_epochs * factor**k`` below ``max_epochs``, then ``max_epochs`` itself."""
    budgets, budget = [], max(1, min_epochs)
    while budget < max_epochs:
        budgets.append(budget)
        budget *= factor
    return [*budgets, max_epochs]


def promotable(score: float, seen: Sequence[float], factor: int) -> bool:
    """Whether ``score`` is in the best ``1/factor`` of ``seen`` (which includes it): at or above the rung's
    ``1 - 1/factor`` quantile. The first trials to reach a rung always go on, as in Ray Tune's ASHA."""
    return score >= float(np.quantile(np.asarray(seen, float), 1 - 1 / factor))


def worth_promoting(
    score: float, guessing: bool, seen: Sequence[float], seen_guessing: Sequence[bool], factor: int
) -> bool:
    """:func:`promotable`, except for a trial that learned (next to) nothing (``guessing``: near chance,
    :func:`~mlflow_mnist.results.near_chance`): it goes on only once its rung has seen ``factor`` trials and none
    of them learned (``seen_guessing``, which includes it): then this budget may be too short for any, and more
    epochs may tell. Without this the first trials to reach a rung, which always rank at its top, carry a trial
    that learned nothing to the full budget (a bad learning rate drawn first costs a whole trial's epochs)."""
    if guessing and not (len(seen_guessing) >= factor and all(seen_guessing)):
        return False
    return promotable(score, seen, factor)


@dataclass
class _Trial:
    trial: object  # optuna.trial.Trial
    number: int  # the trial's number in the store (Optuna's own restarts with every study)
    bracket: int
    rung: int  # index into the budgets
    chain: tuple = ()  # (key, first key) per split of its last finished rung
    last: object = None  # its last finished Pending (whose saved models the next rung continues)


class AsyncHalving:
    name = "asha"
    help = (
        "asynchronous successive halving with TPE over --space: no worker waits, promoted trials continue their "
        "models; --brackets hedges the first rung, --warm-start starts from the experiment's best"
    )
    single_group = False
    carries_forward = False

    def __init__(
        self,
        space: Space,
        *,
        n_trials: int,
        factor: int = 3,
        min_epochs: int = 0,
        brackets: int = 1,
        seed: int = 0,
        overrides: Params | None = None,
        search_key: str = "",
        warm_start: int = 0,
        starts: Callable[[StoreState], list[Params]] | None = None,
    ):
        self.space, self.n_trials, self.factor, self.seed = space, n_trials, factor, seed
        self.overrides, self.search_key = dict(overrides or {}), search_key
        self.budgets = rung_budgets(space.max_epochs, factor, min_epochs or max(1, space.max_epochs // factor**2))
        self.brackets = max(1, min(brackets, len(self.budgets)))
        self.warm_start, self.starts = warm_start, starts
        self.search_name = f"{self.name}:{space.name}"
        self.seen: dict[tuple[int, int], list[float]] = {}  # (bracket, rung) -> scores seen there
        self.guessing: dict[tuple[int, int], list[bool]] = {}  # ... and whether each learned nothing
        self.study = None

    @classmethod
    def from_request(cls, request: SearchRequest) -> AsyncHalving:
        space = request.need_space()
        parts = (cls.name, space.name, request.factor, request.seed, request.min_epochs, request.brackets)
        key = request.search_key(*parts)
        return cls(
            space,
            n_trials=request.trials,
            factor=request.factor,
            min_epochs=request.min_epochs,
            brackets=request.brackets,
            seed=request.seed,
            overrides=request.overrides,
            search_key=key,
            warm_start=request.warm_start,
            starts=request.warm_configs,
        )

    # -- the study --------------------------------------------------------------------------------------------
    def make_study(self, asked_before: int = 0):
        """A fresh study; ``asked_before`` trials already in the store give its sampler a seed of its own."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        seed = resumed_seed(self.seed, asked_before)
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=8)
        return optuna.create_study(direction="maximize", sampler=sampler)

    def past_trials(self, state: StoreState) -> list[CandidateRecord]:
        return [
            c
            for c in state.candidates
            if c.tags.search_key == self.search_key and c.tags.trial is not None and c.tags.rung is not None
        ]

    def remember(self, study, records: list[CandidateRecord]) -> tuple[int, dict[str, tuple[int, int]]]:
        """Tell ``study`` the store's stopped and completed trials; enqueue the ones cut short. Returns how many
        were told, and the number and bracket of each enqueued trial (by its sampled values), so it goes on as the
        same trial where it was."""
        import optuna

        by_values: dict[str, list[CandidateRecord]] = {}
        for record in sorted(records, key=lambda r: r.tags.trial):
            by_values.setdefault(json.dumps(record.tags.sampled, sort_keys=True), []).append(record)
        told, resumed = 0, {}
        for values, group in by_values.items():
            finished = sorted((r for r in group if r.finished), key=lambda r: r.tags.rung.index)
            bracket = min(r.tags.rung.index for r in group) - 1
            top = max(r.tags.rung.index for r in group)
            if not finished or finished[-1].tags.rung.index < top:
                # Cut short, or promoted and cut short at the next rung: asked again with the same values, it
                # finds every fold it had finished (continued ones too: their keys name their history).
                study.enqueue_trial(group[0].tags.sampled, skip_if_exists=True)
                resumed[values] = (group[0].tags.trial, bracket)
                continue
            for record in finished:
                self._see((bracket, record.tags.rung.index - 1), record.score, record.status, record.chance)
            last = finished[-1]
            complete = last.tags.rung.index == len(self.budgets)
            study.add_trial(
                optuna.trial.create_trial(
                    params=last.tags.sampled,
                    distributions=self.space.distributions,
                    value=self._score(last.score) if complete else None,
                    intermediate_values={r.tags.rung.budget: self._score(r.score) for r in finished},
                    state=optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState.PRUNED,
                )
            )
            told += 1
        return told, resumed

    @staticmethod
    def _score(value: float) -> float:
        return value if math.isfinite(value) else 0.0

    def _see(self, rung: tuple[int, int], score: float, status: str, chance: float) -> bool:
        """Remember a trial's result at ``rung`` (bracket, rung index); returns whether it learned nothing: near
        chance, or no healthy model at all."""
        guessing = status != "ok" or near_chance(score, chance)
        self.seen.setdefault(rung, []).append(self._score(score) if status == "ok" else 0.0)
        self.guessing.setdefault(rung, []).append(guessing)
        return guessing

    # -- the loop ---------------------------------------------------------------------------------------------
    def _spec(self, state: _Trial) -> Spec:
        budget = self.budgets[state.rung]
        return Spec(
            self.space.config(state.trial.params, epochs=budget, overrides=self.overrides),
            label=f"trial {state.number} ({budget} epochs)",
            role=TRIAL_ROLE,
            trial=state.number,
            sampled=dict(state.trial.params),
            horizon=self.budgets[-1],
            resume=state.chain,
            resume_epochs=self.budgets[state.rung - 1] if state.chain else 0,
        )

    def _group(self, state: _Trial) -> Group:
        budget, count = self.budgets[state.rung], len(self.budgets)
        return Group(
            name=f"trial {state.number} rung {state.rung + 1}/{count}: {budget} epochs",
            step=self.search_name,
            varied=self.space.names,
            own_run=False,
            rung=Rung(state.rung + 1, count, budget),
            search_key=self.search_key,
        )

    def run(self, session, memory: Callable[[], StoreState]) -> None:
        import optuna

        past = self.past_trials(memory())
        numbers = {record.tags.trial for record in past}
        study = self.study = self.make_study(asked_before=len(numbers))
        done, resumed = self.remember(study, past)
        for config in self._warm_configs(memory(), already=done):
            study.enqueue_trial(config, skip_if_exists=True)
        in_flight: dict[int, _Trial] = {}
        asked, next_number = done, max(numbers, default=-1) + 1

        def start(state: _Trial) -> None:
            pending = session.submit([self._spec(state)], group=self._group(state), priority=state.rung)
            in_flight[id(pending)] = state

        while True:
            # A new trial only for a worker that would otherwise idle: queued promotions come first (priority).
            while session.free_workers > 0 and asked < self.n_trials:
                trial = study.ask(self.space.distributions)
                values = json.dumps(trial.params, sort_keys=True)
                if values in resumed:
                    number, bracket = resumed.pop(values)
                else:
                    number, bracket, next_number = next_number, next_number % self.brackets, next_number + 1
                start(_Trial(trial, number, bracket, bracket))
                asked += 1
            # While trials are left, come back as soon as a worker is free (the last fold of a rung must not
            # train alone beside an idle worker); after that, only for finished rungs.
            finished = session.wait(until_free=asked < self.n_trials)
            if finished is None:
                if asked < self.n_trials:
                    continue
                break
            state = in_flight.pop(id(finished))
            row, rung = finished.rows[0], (state.bracket, state.rung)
            guessing = self._see(rung, row["mean_test_score"], row["status"], row["chance_score"])
            score = self.seen[rung][-1]
            state.trial.report(score, self.budgets[state.rung])
            if state.last is not None:
                session.release(state.last)  # the rung before: continued, its models are no longer needed
            if state.rung == len(self.budgets) - 1:
                study.tell(state.trial, score)
                session.release(finished)
            # A diverged or failed fold left no model to continue from: such a trial stops wherever it ranks.
            elif row["status"] == "ok" and worth_promoting(
                score, guessing, self.seen[rung], self.guessing[rung], self.factor
            ):
                state.chain, state.last, state.rung = finished.plan.candidates[0].chain(), finished, state.rung + 1
                start(state)
            else:
                study.tell(state.trial, state=optuna.trial.TrialState.PRUNED)
                session.release(finished)

    def _warm_configs(self, state: StoreState, *, already: int) -> list[Params]:
        """The first trials: the experiment's best configurations, as values of this space (those that fit)."""
        if not self.warm_start or self.starts is None or already:
            return []
        configs = []
        for config in self.starts(state):
            encoded = self.space.encode(config)
            if encoded and encoded not in configs:
                configs.append(encoded)
        return configs[: self.warm_start]
