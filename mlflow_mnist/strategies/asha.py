"""Asynchronous successive halving (ASHA, Li et al. 2020, Algorithm 2) with TPE sampling: no worker waits for a
cohort.

A free worker takes the next fold at once. A trial trains its folds at the first rung's epochs and then waits at
that rung. Whenever a worker is free, the highest rung with a trial to promote gives one: a rung that has seen
``n`` trials promotes those among its best ``n // factor`` that have not gone on yet (so nothing goes on before
the rung has seen ``factor`` trials, and a trial passed over may still go on once more trials rank below it);
with nothing to promote a new trial is asked. Once every trial is asked and no trial can still reach a rung, the
rung is *closed* and promotes at least its best one, so a fixed number of trials still ends with one at the full
budget. (Ray Tune's ``AsyncHyperBandScheduler`` decides once, when a trial arrives, and promotes the first
trials to reach a rung whatever they scored: on 2 cores the champion's search carried its first, mediocre
trial through 18 epochs, a sixth of its fold-epochs.) A trial near chance (it learned nothing) goes on only once
its rung has seen ``factor`` trials and none learned.

``promotion="eager"`` also promotes a rung's best while the rung has seen fewer than ``factor`` trials (Optuna's
Hyperband pruner's rule: its first trials run the full budget at once, and one may reach a good score early);
``"quota"``, the default, is Li et al.'s rule above. Eager costs ours less than it costs Optuna (a promoted fold
continues its model) but still trains the first trial, whatever it is, to the full budget.

A promoted trial *continues* each fold from the model that fold saved at the rung before (weights, optimizer,
schedule over the trial's full budget), for the extra epochs only, so the top rung costs what one uninterrupted
training costs. Promotions go to a free worker before new trials.

``top_rung_parts`` > 1 trains the top rung in that many parts per fold, each continuing the checkpoint the part
before saved (at evenly spaced epochs: 12 between 6 and 18 for two parts), where nothing is decided: a trial that
reaches a checkpoint goes on at once. The last rung of a search is usually one trial's folds with nothing else
left to train: three 12-epoch folds on two workers leave one worker idle for the whole third fold (10-13% of the
champion's search on a 2-core AMD EPYC); six 6-epoch parts keep both busy to the end (2.6-3.8% there, in the
same minutes: a lone fold trains 1.3x faster beside an idle core, and each part pays a first epoch's tracing).
The result is the same training (a continued fold equals one trained straight through); the keys differ (they
name the checkpoints), so the count is part of the search's key.

``brackets`` > 1 hedges the first rung (Hyperband's idea, asynchronous): trial ``n`` starts at rung
``n mod brackets``, so some trials are judged first at 2 epochs, others at 6, others only at the full budget.
``warm_start`` configurations (the staged grid's winner, earlier searches' best trials) are the first trials.

The store is the memory: every (trial, rung) is a candidate run with the trial's number, sampled values, rung
and search key. Rerun after a kill, the rungs are rebuilt from the store (a waiting trial may still be promoted:
it continues from the models its folds saved there), a trial cut short is asked again with the same values,
number and bracket and goes on at the rung it was cut short at, and every fold it had finished (continued ones
included, their keys name their whole history) is reused. Optuna is told a trial the moment it waits (pruned:
it may never go on) or completes; one promoted later is told again, complete, when it reaches the full budget.
New trials are numbered after the store's and drawn from a sampler seeded by ``(seed, trials already asked)``:
with the first session's seed, a restarted random stream would draw the configurations it drew before again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from mlflow_mnist.params import Params, StageError
from mlflow_mnist.planning import CandidateRecord, Group, Spec, StoreState
from mlflow_mnist.results import near_chance
from mlflow_mnist.schema import TRIAL_ROLE, Rung
from mlflow_mnist.spaces import Space
from mlflow_mnist.strategies.base import SPACE_FORM, SearchRequest
from mlflow_mnist.strategies.sampling import resumed_seed


def rung_budgets(max_epochs: int, factor: int, min_epochs: int) -> list[int]:
    """Epochs at each rung: ``min_epochs * factor**k`` below ``max_epochs``, then ``max_epochs`` itself."""
    budgets, budget = [], max(1, min_epochs)
    while budget < max_epochs:
        budgets.append(budget)
        budget *= factor
    return [*budgets, max_epochs]


def stops(budgets: Sequence[int], parts: int) -> list[int]:
    """The epochs a trial's folds stop at: the rungs' ``budgets``, with the top rung's training cut into ``parts``
    by checkpoints at (nearly) even steps from the rung before (from scratch for a single rung) to the full budget.
    Raises :class:`StageError` where a part would train no epoch."""
    start = budgets[-2] if len(budgets) > 1 else 0
    span = budgets[-1] - start
    if not 1 <= parts <= span:
        raise StageError(
            f"--top-rung-parts {parts}: the top rung trains {span} epoch(s) past the rung before ({start}), so it "
            f"splits into 1 to {span} parts"
        )
    checkpoints = [start + span * k // parts for k in range(1, parts)]
    return [*budgets[:-1], *checkpoints, budgets[-1]]


def eligible(guessing: Sequence[bool], usable: Sequence[bool], factor: int) -> list[bool]:
    """Which of a rung's trials may go on at all: those with models to continue (``usable``) that learned
    something, or, once the rung has seen ``factor`` trials and none learned (``guessing``: near chance, see
    :func:`~mlflow_mnist.results.near_chance`), any with a model: then this budget may be too short for any, and
    more epochs may tell."""
    all_guessing = len(guessing) >= factor and all(guessing)
    return [ok and (all_guessing or not guess) for guess, ok in zip(guessing, usable, strict=True)]


# Trials drawn at random before TPE models the scores: the seeded start every search over a space shares (its
# draws equal ``sample_configs``'s for the same seed), so rules can be compared on the same configurations.
STARTUP_TRIALS = 8

PROMOTION_RULES = {
    "quota": "a rung promotes its best 1/factor of what it has seen, nothing before it has seen factor trials",
    "eager": "as quota, and a rung's best while it has seen fewer than factor trials (Optuna's pruner's rule)",
}


def promotions(
    scores: Sequence[float],
    *,
    allowed: Sequence[bool],
    promoted: Sequence[bool],
    factor: int,
    closed: bool,
    eager: bool = False,
) -> list[int]:
    """The trials a rung promotes now, best first, as indices into what it has seen (``scores``, in arrival
    order): those among its best ``n // factor`` of the ``n`` seen (ranked among the ``allowed``, earlier first on
    ties) that have not gone on yet; a ``closed`` rung (no trial can reach it any more), or an ``eager`` one,
    promotes at least its best one."""
    quota = max(len(scores) // factor, 1 if closed or eager else 0)
    ranked = sorted((i for i, ok in enumerate(allowed) if ok), key=lambda i: -scores[i])
    return [i for i in ranked[:quota] if not promoted[i]]


@dataclass
class _Trial:
    number: int  # the trial's number in the store (Optuna's own restarts with every study)
    bracket: int
    params: Params  # the values sampled, in the space's encoding
    trial: object = None  # the live optuna.trial.Trial, until Optuna is told its end
    rung: int = 0  # index into the budgets
    chain: tuple = ()  # (key, first key) per split of its last finished rung
    last: object = None  # its last finished Pending, while the session holds its models
    scores: dict[int, float] = field(default_factory=dict)  # epochs -> mean CV, Optuna's intermediate values


@dataclass
class _Result:
    """A trial waiting at a rung it finished."""

    state: _Trial
    score: float
    guessing: bool
    usable: bool  # healthy: every fold left a model to continue from
    promoted: bool = False


class AsyncHalving:
    name = "asha"
    searches = frozenset({SPACE_FORM})
    by_rungs = True
    help = (
        "asynchronous successive halving with TPE over --space: no worker waits, promoted trials continue their "
        "models; --brackets hedges the first rung, --promotion eager lets a rung's first best go on, "
        "--warm-start starts from the experiment's best, --top-rung-parts splits the last rung's folds to fill "
        "the workers"
    )
    options = frozenset(
        {"trials", "halving_factor", "min_epochs", "brackets", "promotion", "top_rung_parts", "warm_start"}
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
        promotion: str = "quota",
        top_rung_parts: int = 1,
        seed: int = 0,
        overrides: Params | None = None,
        search_key: str = "",
        warm_start: int = 0,
        starts: Callable[[StoreState], list[Params]] | None = None,
    ):
        self.space, self.n_trials, self.factor, self.seed = space, n_trials, factor, seed
        self.overrides, self.search_key = dict(overrides or {}), search_key
        if min_epochs > space.max_epochs:
            raise StageError(
                f"--min-epochs {min_epochs}: the space {space.name!r} trains at most {space.max_epochs} epochs; give "
                f"1 to {space.max_epochs}, or 0 for {max(1, space.max_epochs // factor**2)} (its budget / factor**2)"
            )
        rungs = rung_budgets(space.max_epochs, factor, min_epochs or max(1, space.max_epochs // factor**2))
        self.top_rung_parts = top_rung_parts
        self.budgets = stops(rungs, top_rung_parts)  # every stop, checkpoints included: the run tree's rungs
        # Stops where nothing is decided: bracket b still starts at stop b (the checkpoints follow the last rung
        # below the top, so a top bracket starts at the first checkpoint and goes on from there).
        self.checkpoints = range(len(rungs) - 1, len(self.budgets) - 1)
        # A bracket starts its trials at one of the rungs: there are no more brackets than rungs to start at.
        if not 1 <= brackets <= len(rungs):
            raise StageError(
                f"--brackets {brackets}: the space {space.name!r} has {len(rungs)} rung(s) here "
                f"({', '.join(map(str, rungs))} epochs) for trials to start at; give 1 to {len(rungs)}"
            )
        self.brackets = brackets
        if promotion not in PROMOTION_RULES:
            raise StageError(f"unknown promotion rule {promotion!r}: choose one of {', '.join(PROMOTION_RULES)}")
        self.promotion = promotion
        self.warm_start, self.starts = warm_start, starts
        self.search_name = f"{self.name}:{space.name}"
        self.rungs: dict[tuple[int, int], list[_Result]] = {}  # (bracket, rung) -> the trials it has seen
        self.asked = 0  # trials asked so far, the store's included
        self.study = None

    @classmethod
    def from_request(cls, request: SearchRequest) -> AsyncHalving:
        space = request.need_space(cls.name)
        parts = (cls.name, space.name, request.factor, request.seed, request.min_epochs, request.brackets)
        # Defaults add nothing to the key, so that searches stored before an option resume as before.
        if request.promotion != "quota":
            parts += (request.promotion,)
        if request.top_rung_parts != 1:
            parts += (f"top_rung_parts={request.top_rung_parts}",)
        key = request.search_key(*parts)
        return cls(
            space,
            n_trials=request.trials,
            factor=request.factor,
            min_epochs=request.min_epochs,
            brackets=request.brackets,
            promotion=request.promotion,
            top_rung_parts=request.top_rung_parts,
            seed=request.seed,
            overrides=request.overrides,
            search_key=key,
            warm_start=request.warm_start,
            starts=request.warm_configs,
        )

    @property
    def search_options(self) -> dict[str, object]:
        return {
            "trials": self.n_trials,
            "halving_factor": self.factor,
            "rung_epochs": ",".join(map(str, self.budgets)),
            "brackets": self.brackets,
            "promotion": self.promotion,
            "top_rung_parts": self.top_rung_parts,
            "warm_start": self.warm_start,
        }

    # -- the study --------------------------------------------------------------------------------------------
    def make_study(self, asked_before: int = 0):
        """A fresh study; ``asked_before`` trials already in the store give its sampler a seed of its own."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        seed = resumed_seed(self.seed, asked_before)
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=STARTUP_TRIALS)
        return optuna.create_study(direction="maximize", sampler=sampler)

    def past_trials(self, state: StoreState) -> list[CandidateRecord]:
        return [
            c
            for c in state.candidates
            if c.tags.search_key == self.search_key and c.tags.trial is not None and c.tags.rung is not None
        ]

    def remember(self, study, records: list[CandidateRecord]) -> tuple[int, dict[str, _Trial]]:
        """Rebuild the rungs from the store's trials and tell ``study`` each that waits or completed; enqueue the
        ones cut short. Returns how many were told, and each enqueued trial (by its sampled values) with the rung
        it goes on at, so it goes on as the same trial where it was."""
        by_values: dict[str, list[CandidateRecord]] = {}
        for record in sorted(records, key=lambda r: r.tags.trial):
            by_values.setdefault(json.dumps(record.tags.sampled, sort_keys=True), []).append(record)
        told, resumed = 0, {}
        for values, group in by_values.items():
            # One finished run per rung (a rung cut short and rerun leaves two runs, one finished).
            finished = sorted(
                {r.tags.rung.index: r for r in group if r.finished}.values(), key=lambda r: r.tags.rung.index
            )
            bracket = min(r.tags.rung.index for r in group) - 1
            started = max(r.tags.rung.index for r in group) - 1
            # It goes on past its last finished rung: the parts past a checkpoint are queued together, so a later
            # one may have started while the one it continues was cut short.
            top = min(started, finished[-1].tags.rung.index) if finished else bracket
            state = _Trial(group[0].tags.trial, bracket, dict(group[0].tags.sampled), rung=top)
            for record in finished:
                rung = record.tags.rung.index - 1
                state.scores[record.tags.rung.budget] = self._score(record.score)
                if rung < len(self.budgets) - 1:
                    result = self._see(state, rung, record.score, record.status, record.chance)
                    result.promoted = rung < top
            if not finished or finished[-1].tags.rung.index - 1 < top:
                # Cut short at its first rung, or promoted and cut short at the next: asked again with the same
                # values, it goes on at that rung and finds every fold it had finished there.
                study.enqueue_trial(state.params, skip_if_exists=True)
                resumed[values] = state
                continue
            complete = top == len(self.budgets) - 1
            study.add_trial(self._frozen(state, complete))
            told += 1
        return told, resumed

    def _frozen(self, state: _Trial, complete: bool):
        """``state`` as a finished Optuna trial: complete at the full budget, else pruned where it waits."""
        import optuna

        return optuna.trial.create_trial(
            params=state.params,
            distributions=self.space.distributions,
            value=state.scores[self.budgets[-1]] if complete else None,
            intermediate_values=dict(state.scores),
            state=optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState.PRUNED,
        )

    @staticmethod
    def _score(value: float) -> float:
        return value if math.isfinite(value) else 0.0

    @classmethod
    def _rung_score(cls, score: float, status: str) -> float:
        """What a rung ranks a trial by: its mean CV when healthy, 0 otherwise."""
        return cls._score(score) if status == "ok" else 0.0

    def _see(self, state: _Trial, rung: int, score: float, status: str, chance: float) -> _Result:
        """``state`` waits at ``rung`` (an index) with what it scored there: near chance, or with no healthy
        model at all, it learned nothing."""
        usable = status == "ok"
        result = _Result(state, self._rung_score(score, status), not usable or near_chance(score, chance), usable)
        self.rungs.setdefault((state.bracket, rung), []).append(result)
        return result

    def next_promotion(self, busy: Sequence[_Trial]) -> _Result | None:
        """The waiting trial to promote now, from the highest rung that has one (Li et al.'s order); None when no
        rung has one. ``busy``: the trials training now (they may still reach a rung, which keeps it open)."""
        chosen: tuple[int, _Result] | None = None
        for bracket in range(self.brackets):
            closed = self.asked >= self.n_trials  # no new trial will come ...
            for rung in range(bracket, len(self.budgets) - 1):
                # ... nor any trial from below: none trains there, none waits to be promoted from there.
                closed = closed and not any(s.bracket == bracket and s.rung <= rung for s in busy)
                seen = self.rungs.get((bracket, rung), [])
                if rung in self.checkpoints:  # nothing decided here: every trial with models goes on
                    picks = [i for i, result in enumerate(seen) if result.usable and not result.promoted]
                else:
                    picks = promotions(
                        [r.score for r in seen],
                        allowed=eligible([r.guessing for r in seen], [r.usable for r in seen], self.factor),
                        promoted=[r.promoted for r in seen],
                        factor=self.factor,
                        closed=closed,
                        eager=self.promotion == "eager",
                    )
                if picks and (chosen is None or rung > chosen[0]):
                    chosen = (rung, seen[picks[0]])
                closed = closed and not picks
        return chosen[1] if chosen else None

    def _spec(self, state: _Trial) -> Spec:
        budget = self.budgets[state.rung]
        return Spec(
            self.space.config(state.params, epochs=budget, overrides=self.overrides),
            label=f"trial {state.number} ({budget} epochs)",
            role=TRIAL_ROLE,
            trial=state.number,
            sampled=dict(state.params),
            horizon=self.budgets[-1],
            resume=state.chain,
            resume_epochs=self.budgets[state.rung - 1] if state.chain else 0,
        )

    def _group(self, state: _Trial) -> Group:
        budget, count = self.budgets[state.rung], len(self.budgets)
        checkpoint = ", a checkpoint" if state.rung in self.checkpoints else ""
        return Group(
            name=f"trial {state.number} rung {state.rung + 1}/{count}: {budget} epochs{checkpoint}",
            step=self.search_name,
            varied=self.space.names,
            own_run=False,
            rung=Rung(state.rung + 1, count, budget),
            search_key=self.search_key,
        )

    def _chain_from_store(self, session, state: _Trial) -> tuple:
        """The fold keys a trial of an earlier session continues from at ``state.rung``: planned rung by rung
        from its first (pure; the folds are the store's)."""
        chain: tuple = ()
        for rung in range(state.bracket, state.rung):
            step = replace(state, rung=rung, chain=chain)
            chain = session.plan(self._spec(step), group=self._group(step)).candidates[0].chain()
        return chain

    def run(self, session, memory: Callable[[], StoreState]) -> None:
        import optuna

        past = self.past_trials(memory())
        numbers = {record.tags.trial for record in past}
        study = self.study = self.make_study(asked_before=len(numbers))
        self.rungs = {}
        self.asked, resumed = self.remember(study, past)
        for config in self._warm_configs(memory(), already=self.asked):
            study.enqueue_trial(config, skip_if_exists=True)
        in_flight: dict[int, tuple[_Trial, int]] = {}  # a group in the engine -> its trial and rung
        next_number = max(numbers, default=-1) + 1
        waiting: list[_Result] = []  # arrived since Optuna was last told

        def start(state: _Trial) -> None:
            if state.rung > state.bracket and not state.chain:
                state.chain = self._chain_from_store(session, state)  # its models are in the store
            # From a checkpoint on nothing is decided: every part to the top is queued now, one priority for all
            # (first parts first), and the engine holds each fold's next part until that fold's checkpoint is in.
            first = state.rung
            last = len(self.budgets) - 1 if first in self.checkpoints else first
            for rung in range(first, last + 1):
                state.rung = rung
                pending = session.submit([self._spec(state)], group=self._group(state), priority=first)
                in_flight[id(pending)] = (state, rung)
                state.chain = pending.plan.candidates[0].chain()

        def training() -> list[_Trial]:  # the trials with a group in the engine
            return [state for state, _ in in_flight.values()]

        def ask() -> _Trial:
            nonlocal next_number
            trial = study.ask(self.space.distributions)
            state = resumed.pop(json.dumps(trial.params, sort_keys=True), None)
            if state is None:
                bracket = next_number % self.brackets
                state, next_number = _Trial(next_number, bracket, dict(trial.params), rung=bracket), next_number + 1
            state.trial = trial
            self.asked += 1
            return state

        while True:
            # Free workers: promotions first (highest rung first), then new trials.
            while session.free_workers > 0:
                promotion = self.next_promotion(training())
                if promotion is not None:
                    promotion.promoted = True
                    promotion.state.rung += 1
                    start(promotion.state)
                elif self.asked < self.n_trials:
                    start(ask())
                else:
                    break
            for result in waiting:  # passed over for now: Optuna sees it pruned (it may still go on)
                if not result.promoted:
                    self._release(session, result.state)
                    if result.state.trial is not None:
                        study.tell(result.state.trial, state=optuna.trial.TrialState.PRUNED)
                        result.state.trial = None
            waiting.clear()
            # While there is work to give (a trial to ask, one waiting to be promoted behind the folds queued
            # before it), come back as soon as a worker is free: the last fold of a rung must not train alone
            # beside an idle worker. After that, only for finished rungs.
            more = self.asked < self.n_trials or self.next_promotion(training()) is not None
            finished = session.wait(until_free=more)
            if finished is None:
                if more:
                    continue
                break
            state, rung = in_flight.pop(id(finished))
            self._release(session, state)  # the rung before: continued, its models are no longer needed
            row, budget = finished.rows[0], self.budgets[rung]
            state.scores[budget] = self._rung_score(row["mean_test_score"], row["status"])
            if state.trial is not None:
                state.trial.report(state.scores[budget], budget)
            if rung in self.checkpoints:  # its next part is queued already: nothing to decide
                self._see(state, rung, row["mean_test_score"], row["status"], row["chance_score"]).promoted = True
                state.last = finished
                continue
            if rung == len(self.budgets) - 1:
                if state.trial is not None:
                    study.tell(state.trial, state.scores[budget])
                else:  # told pruned while it waited at a rung below
                    study.add_trial(self._frozen(state, complete=True))
                session.release(finished)
                continue
            state.chain, state.last = finished.plan.candidates[0].chain(), finished
            waiting.append(self._see(state, rung, row["mean_test_score"], row["status"], row["chance_score"]))

    @staticmethod
    def _release(session, state: _Trial) -> None:
        """Let the session forget ``state``'s saved models (a later promotion loads them from the store)."""
        if state.last is not None:
            session.release(state.last)
            state.last = None

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
