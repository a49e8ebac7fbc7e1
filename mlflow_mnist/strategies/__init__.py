"""Strategies decide what to evaluate; each is one class in one file, registered here by name."""

from __future__ import annotations

from mlflow_mnist.strategies.base import STRATEGIES, Evaluate, Strategy
from mlflow_mnist.strategies.halving import SuccessiveHalving
from mlflow_mnist.strategies.optuna import OptunaSearch, trial_records
from mlflow_mnist.strategies.staged import StagedGrid

__all__ = ["STRATEGIES", "Evaluate", "OptunaSearch", "StagedGrid", "Strategy", "SuccessiveHalving", "trial_records"]
