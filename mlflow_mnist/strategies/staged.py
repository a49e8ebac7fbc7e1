"""The seed's way: its steps in order, each varying one group over its grid, everything else fixed at the best
values earlier steps left in the tracking store (carry-forward), with ``--overrides`` on top.

Each step also trains its *reference*, the carried-in configuration, afresh (new training seeds) as one more
candidate: the analysis compares every grid point with it, and it is fixed before any score of the step is
seen. Reusing the previous step's winning folds instead is cheaper but biased (they were chosen for being
best): ``--reuse-reference`` keeps that older behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from mlflow_mnist.params import Params
from mlflow_mnist.planning import (
    CarryForward,
    FoldRecord,
    Group,
    Plan,
    SearchSettings,
    Spec,
    StoreState,
    carry_forward,
    plan_candidates,
    resolve_fixed_params,
)
from mlflow_mnist.schema import FRESH, REFERENCE, REUSED_RULE
from mlflow_mnist.stages import Step
from mlflow_mnist.strategies.base import STAGE_FORM, Evaluate, SearchRequest
from mlflow_mnist.tasks.base import Task

REFERENCE_LABEL = "reference"


def step_group(step: Step, fixed: Params, *, reference: bool = False, carry: CarryForward | None = None) -> Group:
    rule = FRESH if reference else REUSED_RULE
    return Group(
        name=step.name,
        step=step.name,
        varied=step.varied,
        fixed=fixed,
        grid=step.grid,
        reference_rule=rule,
        carry=carry,
    )


def step_candidates(step: Step, fixed: Params, *, reference: bool = False) -> list[Spec]:
    """The step's grid points on top of ``fixed``; with ``reference``, the carried-in configuration last, as a
    candidate of its own (its folds get their own keys, hence new training seeds)."""
    specs = [Spec({**fixed, **varied}) for varied in step.candidates()]
    # The step's name makes the reference's keys its own: the next step's reference (often the same
    # configuration) is trained afresh again, never one selected for winning here.
    if reference:
        specs.append(Spec(dict(fixed), label=REFERENCE_LABEL, role=REFERENCE, replicate=f"{REFERENCE}:{step.name}"))
    return specs


def plan_step(
    step: Step, fixed: Params, settings: SearchSettings, done: Mapping[str, FoldRecord], *, reference: bool = False
) -> Plan:
    """Every grid point of ``step`` on top of ``fixed``; fold tasks only for what ``done`` lacks. Pure."""
    group = step_group(step, fixed, reference=reference)
    return plan_candidates(group, step_candidates(step, fixed, reference=reference), settings, done)


class StagedGrid:
    """One evaluate call per step; a step's fixed values come from the store as it stands before the step."""

    name = "staged"
    searches = frozenset({STAGE_FORM})
    by_rungs = False
    help = "the task's steps in order, each over its grid, with carry-forward (--stage)"
    options = frozenset({"reuse_reference"})
    carries_forward = True
    space = None

    def __init__(self, task: Task, steps: Sequence[Step], *, overrides: Params, epochs: int, reference: bool = True):
        self.task, self.steps, self.overrides, self.epochs = task, list(steps), dict(overrides), epochs
        self.reference = reference
        self.search_name = steps[0].name if len(steps) == 1 else ""

    @property
    def search_options(self) -> dict[str, object]:
        return {}  # a step's grid and its reference rule are on its own run (params, tags)

    @classmethod
    def from_request(cls, request: SearchRequest) -> StagedGrid:
        strategy = cls(
            request.task,
            request.need_steps(cls.name),
            overrides=request.overrides,
            epochs=request.epochs,
            reference=not request.reuse_reference,
        )
        strategy.search_name = request.stage
        return strategy

    @property
    def single_group(self) -> bool:
        return len(self.steps) == 1

    def fixed_for(self, step: Step, state: StoreState) -> Params:
        return resolve_fixed_params(
            self.task, step.name, state.step_bests, overrides=self.overrides, epochs=self.epochs
        )

    def carry_for(self, step: Step, state: StoreState) -> CarryForward:
        """What :meth:`fixed_for` takes from earlier steps, and the later steps it does not see: shown, not keyed."""
        return carry_forward(self.task, step.name, state.step_bests, overrides=self.overrides, varied=step.varied)

    def fresh_reference(self, step: Step, state: StoreState) -> bool:
        """Retrain the reference, unless told not to or the step already finished in the store under the old rule:
        resuming a finished step keeps the rule it ran with, so a store made before references were retrained
        resumes without training anything."""
        done = state.step_bests.get(step.name)
        return self.reference and (done is None or done.reference_rule == FRESH)

    def run(self, evaluate: Evaluate, memory: Callable[[], StoreState]) -> None:
        for step in self.steps:
            state = memory()
            fixed, fresh = self.fixed_for(step, state), self.fresh_reference(step, state)
            group = step_group(step, fixed, reference=fresh, carry=self.carry_for(step, state))
            evaluate(step_candidates(step, fixed, reference=fresh), group=group)
