"""The strategy protocol: what to evaluate next. A strategy calls ``evaluate`` and reads the store's snapshot;
it never touches MLflow, processes or progress bars (scikit-learn's ``_run_search(evaluate_candidates)``).

Every strategy is built the same way, from a :class:`SearchRequest` (what the user asked for), so the CLI, the
Python API and ``Campaign`` wire any registered strategy without knowing which it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from mlflow_mnist.params import Params, StageError
from mlflow_mnist.planning import Group, Spec, StoreState
from mlflow_mnist.spaces import Space
from mlflow_mnist.stages import Step
from mlflow_mnist.tasks.base import Task

Rows = list[dict[str, Any]]

#: What a strategy searches (:attr:`Strategy.searches`): a stage's grids (``--stage``), or trials drawn from a named
#: space (``--space``, ``--trials``). The API's refusals and note, `mlflow-mnist strategies` and the benchmarks read it.
STAGE_FORM, SPACE_FORM = "stage", "space"


class Evaluate(Protocol):
    """Cross-validate ``candidates`` (full hyperparameter dicts, or :class:`Spec` with a label, role or trial)
    as one group; returns ``cv_results`` rows in the candidates' order."""

    def __call__(self, candidates: Sequence[Params | Spec], *, group: Group) -> Rows: ...


@dataclass(frozen=True)
class SearchRequest:
    """What the user asked for, whichever strategy runs it.

    ``steps`` are the staged steps of ``--stage`` (empty without one); ``space`` the joint-search space;
    ``batch`` how many trials may be in flight (twice the workers); ``search_key(*parts)`` names a joint search
    so that a rerun continues it; ``reuse_reference`` keeps the old, cheaper reference rule of staged steps;
    ``warm_configs(state)`` lists the experiment's best configurations, best first, for ``warm_start``.
    """

    task: Task
    epochs: int
    overrides: Params = field(default_factory=dict)
    stage: str = ""
    steps: tuple[Step, ...] = ()
    space: Space | None = None
    trials: int = 20
    factor: int = 3
    batch: int = 4
    seed: int = 0
    search_key: Callable[..., str] = lambda *parts: ""
    reuse_reference: bool = False
    min_epochs: int = 0  # successive halving's first rung (0: the space's budget / factor**2)
    brackets: int = 1  # first rungs to hedge over (Hyperband's brackets)
    promotion: str = "quota"  # ASHA's promotion rule (mlflow_mnist.strategies.asha.PROMOTION_RULES)
    top_rung_parts: int = 1  # ASHA: parts each fold of the top rung trains in, checkpointed between
    warm_start: int = 0  # how many of the experiment's best configurations start a joint search
    warm_configs: Callable[[StoreState], list[Params]] = lambda state: []

    def need_steps(self, strategy: str) -> tuple[Step, ...]:
        if not self.steps:
            if not (first := next(iter(self.task.stages), "")):
                raise StageError(
                    f"--strategy {strategy} runs a stage, and task {self.task.name} has none: search one of its "
                    f"spaces with a joint strategy (see `mlflow-mnist spaces` and `mlflow-mnist strategies`)"
                )
            raise StageError(f"--stage is required for --strategy {strategy}: e.g. --stage {first} (see `stages`)")
        return self.steps

    def need_space(self, strategy: str) -> Space:
        if self.space is None and self.steps:
            raise StageError(
                f"--strategy {strategy} searches a space, not a stage: leave out --stage {self.stage} "
                "(see `mlflow-mnist spaces`)"
            )
        if self.space is None:
            raise StageError(f"--strategy {strategy} searches a space: give --space (see `mlflow-mnist spaces`)")
        return self.space


class Strategy(Protocol):
    """``name`` tags the search run; ``help`` is the CLI's line; ``options`` names the ``tune`` options it reads;
    ``searches`` the forms it takes (:data:`STAGE_FORM`, :data:`SPACE_FORM`); ``by_rungs`` says a search over a
    space trains its trials on an epoch budget that grows rung by rung, not at the space's full budget at once;
    ``single_group`` says the search is one group (its run is the search run); ``carries_forward`` says the
    search's result is its last group's best (each group builds on the one before) rather than the best of all its
    groups; ``search_options`` (trials, rung ratio, ...) are logged on the search run, so the UI says how it
    searched."""

    name: ClassVar[str]
    help: ClassVar[str]
    # The `tune` options it reads beyond the campaign's and its stage or space: another option given a value of
    # its own would be ignored, so `tune` refuses it (strategies.check_options).
    options: ClassVar[frozenset[str]]
    searches: ClassVar[frozenset[str]]
    by_rungs: ClassVar[bool]
    single_group: bool
    carries_forward: bool
    search_name: str
    space: Space | None  # the joint-search space, kept on the search run; None for staged steps
    search_options: dict[str, Any]  # what shaped the search beyond the campaign: params of its search run

    @classmethod
    def from_request(cls, request: SearchRequest) -> Strategy: ...

    def run(self, evaluate: Evaluate, memory: Callable[[], StoreState]) -> None: ...


def numbered(noun: str, numbers: Iterable[int]) -> str:
    """A group's name from the numbers of its members: ``trial 1``, ``trials 0-3``, ``trials 0, 3``,
    ``trials 0-2, 5``. A pruned batch's survivors need not be contiguous, so a range is written only where every
    number in it is there."""
    ordered = sorted(set(numbers))
    spans: list[list[int]] = []
    for number in ordered:
        if spans and number == spans[-1][-1] + 1:
            spans[-1].append(number)
        else:
            spans.append([number])
    written = ", ".join(str(span[0]) if len(span) == 1 else f"{span[0]}-{span[-1]}" for span in spans)
    return f"{noun}{'' if len(ordered) == 1 else 's'} {written}"
