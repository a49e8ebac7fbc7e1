"""The seed's way: its steps in order, each varying one group over its grid, everything else fixed at the best
values earlier steps left in the tracking store (carry-forward), with ``--overrides`` on top."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from mlflow_mnist.model import Params
from mlflow_mnist.planning import (
    FoldRecord,
    Group,
    Plan,
    SearchSettings,
    StoreState,
    plan_candidates,
    resolve_fixed_params,
)
from mlflow_mnist.stages import Step
from mlflow_mnist.strategies.base import Evaluate


def step_group(step: Step, fixed: Params) -> Group:
    return Group(name=step.name, step=step.name, varied=step.varied, fixed=fixed, grid=step.grid)


def step_candidates(step: Step, fixed: Params) -> list[Params]:
    return [{**fixed, **varied} for varied in step.candidates()]


def plan_step(step: Step, fixed: Params, settings: SearchSettings, done: Mapping[str, FoldRecord]) -> Plan:
    """Every grid point of ``step`` on top of ``fixed``; fold tasks only for what ``done`` lacks. Pure."""
    return plan_candidates(step_group(step, fixed), step_candidates(step, fixed), settings, done)


class StagedGrid:
    """One evaluate call per step; a step's fixed values come from the store as it stands before the step."""

    name = "staged"

    def __init__(self, steps: Sequence[Step], *, overrides: Params, epochs: int):
        self.steps, self.overrides, self.epochs = list(steps), dict(overrides), epochs

    @property
    def single_group(self) -> bool:
        return len(self.steps) == 1

    def fixed_for(self, step: Step, state: StoreState) -> Params:
        return resolve_fixed_params(step.name, state.step_bests, self.overrides, self.epochs)

    def run(self, evaluate: Evaluate, memory: Callable[[], StoreState]) -> None:
        for step in self.steps:
            fixed = self.fixed_for(step, memory())
            evaluate(step_candidates(step, fixed), group=step_group(step, fixed))
