"""Successive halving over epochs (Jamieson & Talwalkar 2016; scikit-learn's ``HalvingGridSearchCV`` shape):
every candidate trains a few epochs, the best third trains three times longer, and so on up to the full
budget, where the survivors are ranked as usual.

It halves any candidate list: each of the task's staged steps (carry-forward as in :class:`StagedGrid`), or a
set sampled from a search space. Each rung is one evaluate call and one run in the tree (``kernel_size rung
1/2: 2 epochs``), so a rung shows what it trained, and a restart replays finished rungs from the store for free
(their folds are reused by key) and goes on mid-rung. Only the last rung of a step is the step's result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

from mlflow_mnist.params import Params
from mlflow_mnist.planning import Group, Spec, StoreState
from mlflow_mnist.schema import EPOCHS, Rung
from mlflow_mnist.spaces import Space
from mlflow_mnist.strategies.base import SPACE_FORM, STAGE_FORM, Evaluate, Rows, SearchRequest
from mlflow_mnist.strategies.sampling import sample_configs
from mlflow_mnist.strategies.staged import StagedGrid, step_candidates, step_group


def rung_budgets(n_candidates: int, max_epochs: int, factor: int) -> list[int]:
    """Epochs per rung: ``max_epochs / factor**k`` down from the last rung, one halving per factor of candidates."""
    halvings = int(math.floor(math.log(max(n_candidates, 1)) / math.log(factor) + 1e-9))
    budgets = [max(1, round(max_epochs / factor ** (halvings - k))) for k in range(halvings + 1)]
    return sorted(set(budgets))  # few epochs leave fewer distinct rungs


def halve(
    evaluate: Evaluate,
    candidates: Sequence[Spec],
    *,
    group: Group,
    factor: int,
    incumbent: Params | None = None,
) -> Rows:
    """Successive halving of ``candidates`` (each at its own full ``epochs``); returns the last rung's rows.

    ``incumbent``, when it is one of the candidates, skips the low rungs and meets the survivors in the last: it
    is the configuration carried in, known to be good, and where an earlier step trained it at the full budget the
    store holds its folds, so it costs nothing there (in a campaign's first step it is trained there).
    """
    max_epochs = max(c.params[EPOCHS] for c in candidates)
    budgets = rung_budgets(len(candidates), max_epochs, factor)
    positions = [i for i, c in enumerate(candidates) if c.params == incumbent]
    alive = [i for i in range(len(candidates)) if i not in positions[:1]]
    rows: Rows = []
    for index, budget in enumerate(budgets, start=1):
        last = index == len(budgets)
        if last and positions:
            alive = sorted(set(alive) | {positions[0]})
        rung_group = replace(
            group,
            name=f"{group.name} rung {index}/{len(budgets)}: {budget} epochs",
            rung=Rung(index, len(budgets), budget),
            carry=group.carry if index == 1 else None,  # said once, when the step starts
        )
        at_budget = [
            replace(candidates[i], params={**candidates[i].params, EPOCHS: budget}) if not last else candidates[i]
            for i in alive
        ]
        rows = evaluate(at_budget, group=rung_group)
        if last:
            break
        keep = max(1, math.ceil(len(alive) / factor))
        ranked = sorted(range(len(alive)), key=lambda j: rows[j]["rank_test_score"])
        alive = sorted(alive[j] for j in ranked[:keep])
    return rows


class SuccessiveHalving:
    """``--strategy halving``: the task's steps, each halved (carry-forward between them), or ``--trials``
    configurations sampled from ``--space`` and halved once."""

    name = "halving"
    searches = frozenset({STAGE_FORM, SPACE_FORM})
    by_rungs = True
    help = "successive halving over epochs: of --stage's steps, else of --trials configurations from --space"
    options = frozenset({"trials", "halving_factor"})
    carries_forward = False  # set per instance: halving steps carry forward like the staged grid

    def __init__(
        self,
        *,
        staged: StagedGrid | None = None,
        sample: Callable[[], list[Spec]] | None = None,
        sample_group: Group | None = None,
        factor: int = 3,
        search_name: str = "halving",
        space: Space | None = None,
        trials: int | None = None,
    ):
        self.staged, self.sample, self.sample_group, self.factor = staged, sample, sample_group, factor
        self.carries_forward = staged is not None
        self.single_group = False
        self.search_name = search_name
        self.space = space
        self.trials = trials  # configurations sampled from ``space``; None for the task's steps

    @property
    def search_options(self) -> dict[str, object]:
        return {"halving_factor": self.factor, **({"trials": self.trials} if self.trials is not None else {})}

    @classmethod
    def from_request(cls, request: SearchRequest) -> SuccessiveHalving:
        if request.steps:
            staged = StagedGrid(request.task, request.steps, overrides=request.overrides, epochs=request.epochs)
            return cls(staged=staged, factor=request.factor, search_name=f"{request.stage} (halving)")
        space = request.need_space(cls.name)
        key = request.search_key(cls.name, space.name, request.factor, request.seed, request.trials)
        group = Group(name=f"halving:{space.name}", step=f"halving:{space.name}", varied=space.names, search_key=key)

        def sample() -> list[Spec]:
            return sample_configs(space, request.trials, seed=request.seed, overrides=request.overrides)

        name, factor, trials = f"halving:{space.name}", request.factor, request.trials
        return cls(sample=sample, sample_group=group, factor=factor, search_name=name, space=space, trials=trials)

    def run(self, evaluate: Evaluate, memory: Callable[[], StoreState]) -> None:
        if self.staged is not None:
            for step in self.staged.steps:
                state = memory()
                fixed, carry = self.staged.fixed_for(step, state), self.staged.carry_for(step, state)
                specs = step_candidates(step, fixed)
                group = step_group(step, fixed, carry=carry)
                halve(evaluate, specs, group=group, factor=self.factor, incumbent=fixed)
        if self.sample is not None:
            halve(evaluate, self.sample(), group=self.sample_group, factor=self.factor)
