"""Strategies decide what to evaluate; each is one class in one file, registered here by name."""

from __future__ import annotations

from mlflow_mnist.strategies.base import Evaluate, Strategy
from mlflow_mnist.strategies.staged import StagedGrid

STRATEGIES = ("staged",)

__all__ = ["STRATEGIES", "Evaluate", "StagedGrid", "Strategy"]
