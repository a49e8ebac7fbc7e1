"""Strategies decide what to evaluate; each is one class in one file, registered here once, by name.

The CLI's ``--strategy`` choices, ``Campaign`` and ``mlflow-mnist strategies`` read :data:`STRATEGIES`.
"""

from __future__ import annotations

from mlflow_mnist.params import StageError
from mlflow_mnist.strategies.asha import AsyncHalving
from mlflow_mnist.strategies.base import Evaluate, SearchRequest, Strategy
from mlflow_mnist.strategies.halving import SuccessiveHalving
from mlflow_mnist.strategies.optuna import OptunaSearch
from mlflow_mnist.strategies.random import RandomSearch
from mlflow_mnist.strategies.staged import StagedGrid

STRATEGIES: dict[str, type[Strategy]] = {
    StagedGrid.name: StagedGrid,
    SuccessiveHalving.name: SuccessiveHalving,
    OptunaSearch.name: OptunaSearch,
    RandomSearch.name: RandomSearch,
    AsyncHalving.name: AsyncHalving,
}


def make_strategy(name: str, request: SearchRequest) -> Strategy:
    if name not in STRATEGIES:
        raise StageError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name].from_request(request)


__all__ = ["STRATEGIES", "Evaluate", "SearchRequest", "Strategy", "make_strategy"]
