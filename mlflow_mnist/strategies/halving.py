"""Successive halving over epochs (Jamieson & Talwalkar 2016; scikit-learn's ``HalvingGridSearchCV`` shape):
every candidate trains a few epochs, the best third trains three times longer, and so on up to the full
budget, where the survivors are ranked as usual.

It halves any candidate list: each of the seed's staged steps (carry-forward as in :class:`StagedGrid`), or a
set sampled from a search space. Each rung is one evaluate call and one run in the tree (``kernel_size rung
1/2: 2 epochs``), so a rung shows what it trained, and a restart replays finished rungs from the store for free
(their folds are reused by key) and goes on mid-rung. Only the last rung of a step is the step's result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

from mlflow_mnist.model import Params
from mlflow_mnist.planning import Group, StoreState
from mlflow_mnist.stages import Step
from mlflow_mnist.strategies.base import Evaluate, Rows
from mlflow_mnist.strategies.staged import StagedGrid, step_candidates, step_group
from mlflow_mnist.tracking import BUDGET, FINAL_RUNG, RUNG


def rung_budgets(n_candidates: int, max_epochs: int, factor: int) -> list[int]:
    """Epochs per rung: ``max_epochs / factor**k`` down from the last rung, one halving per factor of candidates."""
    halvings = int(math.floor(math.log(max(n_candidates, 1)) / math.log(factor) + 1e-9))
    budgets = [max(1, round(max_epochs / factor ** (halvings - k))) for k in range(halvings + 1)]
    return sorted(set(budgets))  # few epochs leave fewer distinct rungs


def halve(
    evaluate: Evaluate,
    candidates: Sequence[Params],
    *,
    group: Group,
    factor: int,
    labels: Sequence[str] | None = None,
    incumbent: Params | None = None,
) -> Rows:
    """Successive halving of ``candidates`` (each at its own full ``epochs``); returns the last rung's rows.

    ``incumbent``, when it is one of the candidates, skips the low rungs and meets the survivors in the last:
    the store already holds its folds at the full budget, so it costs nothing there.
    """
    max_epochs = max(c["epochs"] for c in candidates)
    budgets = rung_budgets(len(candidates), max_epochs, factor)
    names = list(labels) if labels else [None] * len(candidates)
    alive = [i for i, c in enumerate(candidates) if c != incumbent]
    rows: Rows = []
    for rung, budget in enumerate(budgets, start=1):
        last = rung == len(budgets)
        if last and incumbent is not None and incumbent in candidates:
            alive = sorted(set(alive) | {list(candidates).index(incumbent)})
        rung_group = replace(
            group,
            name=f"{group.name} rung {rung}/{len(budgets)}: {budget} epochs",
            step=group.step if last else f"{group.step}@rung{rung}",
            tags={**group.tags, RUNG: str(rung), BUDGET: str(budget), FINAL_RUNG: str(last).lower()},
        )
        rung_candidates = [{**candidates[i], "epochs": budget if not last else candidates[i]["epochs"]} for i in alive]
        rung_labels = [names[i] for i in alive] if labels else None
        rows = evaluate(rung_candidates, group=rung_group, labels=rung_labels)
        if last:
            break
        keep = max(1, math.ceil(len(alive) / factor))
        ranked = sorted(range(len(alive)), key=lambda j: rows[j]["rank_test_score"])
        alive = sorted(alive[j] for j in ranked[:keep])
    return rows


class SuccessiveHalving:
    """``--strategy halving``: the seed's steps, each halved (carry-forward between them), or ``n`` configurations
    sampled from a space and halved once."""

    name = "halving"
    single_group = False

    def __init__(
        self,
        *,
        steps: Sequence[Step] = (),
        sample: Callable[[], tuple[list[Params], list[str]]] | None = None,
        sample_group: Group | None = None,
        overrides: Params | None = None,
        epochs: int = 6,
        factor: int = 3,
    ):
        self.steps, self.sample, self.sample_group = list(steps), sample, sample_group
        self.staged = StagedGrid(self.steps, overrides=overrides or {}, epochs=epochs)
        self.factor = factor

    def run(self, evaluate: Evaluate, memory: Callable[[], StoreState]) -> None:
        for step in self.steps:
            fixed = self.staged.fixed_for(step, memory())
            candidates = step_candidates(step, fixed)
            halve(evaluate, candidates, group=step_group(step, fixed), factor=self.factor, incumbent=fixed)
        if self.sample is not None:
            candidates, labels = self.sample()
            halve(evaluate, candidates, group=self.sample_group, factor=self.factor, labels=labels)
