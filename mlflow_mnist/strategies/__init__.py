"""Strategies decide what to evaluate; each is one class in one file, registered here once, by name.

The CLI's ``--strategy`` choices, ``Campaign`` and ``mlflow-mnist strategies`` read :data:`STRATEGIES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlflow_mnist.params import StageError
from mlflow_mnist.strategies.asha import AsyncHalving
from mlflow_mnist.strategies.base import SPACE_FORM, STAGE_FORM, Evaluate, SearchRequest, Strategy
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


def searching(form: str) -> tuple[str, ...]:
    """The registered strategies that take ``form`` (:data:`STAGE_FORM`: a stage's grids; :data:`SPACE_FORM`: trials
    from a named space), in the registry's order."""
    return tuple(name for name, strategy in STRATEGIES.items() if form in strategy.searches)


def check_options(name: str, given: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """Refuse a strategy option (one some strategy reads) that ``name`` does not read, given a value other than its
    default: it would be ignored without a word. ``given`` and ``defaults`` are keyed by `tune`'s argument names;
    arguments no strategy reads are left alone."""
    readers = {option: [n for n, s in STRATEGIES.items() if option in s.options] for option in given}
    for option, value in given.items():
        if readers[option] and option not in STRATEGIES[name].options and value != defaults[option]:
            flag, shown = "--" + option.replace("_", "-"), str(value).lower() if isinstance(value, bool) else value
            raise StageError(
                f"{flag} {shown}: --strategy {name} does not use it (only {', '.join(readers[option])}): leave it out"
            )


def make_strategy(name: str, request: SearchRequest) -> Strategy:
    if name not in STRATEGIES:
        raise StageError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name].from_request(request)


__all__ = [
    "SPACE_FORM",
    "STAGE_FORM",
    "STRATEGIES",
    "Evaluate",
    "SearchRequest",
    "Strategy",
    "check_options",
    "make_strategy",
    "searching",
]
