"""The strategy protocol: what to evaluate next. A strategy calls ``evaluate`` and reads the store's snapshot;
it never touches MLflow, processes or progress bars (scikit-learn's ``_run_search(evaluate_candidates)``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from mlflow_mnist.model import Params
from mlflow_mnist.planning import Group, StoreState

Rows = list[dict[str, Any]]
STRATEGIES = ("staged", "halving", "optuna")  # registered in mlflow_mnist.strategies


class Evaluate(Protocol):
    """Cross-validate ``candidates`` (full hyperparameter dicts) as one group; returns ``cv_results`` rows.

    ``labels`` name the candidates' runs (default: their varied values); ``tags`` are the strategy's notes on
    each candidate (an Optuna trial's number), kept on its run so a restart can read them back.
    """

    def __call__(
        self,
        candidates: Sequence[Params],
        *,
        group: Group,
        labels: Sequence[str] | None = None,
        tags: Sequence[Mapping[str, str]] | None = None,
    ) -> Rows: ...


class Strategy(Protocol):
    """``name`` tags the search run; ``single_group`` says the search is one group (its run is the search run)."""

    name: str
    single_group: bool

    def run(self, evaluate: Evaluate, memory: Callable[[], StoreState]) -> None: ...
