"""Search spaces for joint searches, as data: each dimension's range (an Optuna distribution) and why it is there.

A task names its spaces; a space's ``max_epochs`` is the resource that successive halving and pruning spend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from mlflow_mnist.params import Params
from mlflow_mnist.schema import EPOCHS


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter. ``decode`` turns a sampled value into the model's (Optuna's categorical
    choices must be plain values: a pair travels as ``"5x5"``)."""

    name: str
    distribution: BaseDistribution
    why: str
    decode: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class Space:
    """A named set of dimensions over ``base`` (values the space does not search), with a resource of epochs."""

    name: str
    dimensions: tuple[Dimension, ...]
    base: Params = field(default_factory=dict)
    max_epochs: int = 6
    about: str = ""

    @property
    def distributions(self) -> dict[str, BaseDistribution]:
        return {d.name: d.distribution for d in self.dimensions}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions)

    def encode(self, config: Params) -> Params:
        """The values of a full configuration this space could have sampled (pairs as ``"5x5"``), dimension by
        dimension; a value outside a dimension's range is left out (the sampler draws that one)."""
        sampled = {}
        for dimension in self.dimensions:
            if dimension.name not in config:
                continue
            value = config[dimension.name]
            if dimension.decode is not None and isinstance(value, tuple):
                value = "x".join(map(str, value))
            if fits(dimension.distribution, value):
                sampled[dimension.name] = value
        return sampled

    def config(self, sampled: Params, *, epochs: int | None = None, overrides: Params | None = None) -> Params:
        """A full hyperparameter dict: base < sampled values (decoded) < overrides, at ``epochs``."""
        decoders = {d.name: d.decode for d in self.dimensions if d.decode is not None}
        decoded = {key: decoders[key](value) if key in decoders else value for key, value in sampled.items()}
        return {**self.base, **decoded, **(overrides or {}), EPOCHS: epochs or self.max_epochs}


def fits(distribution: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` is one the distribution can sample (a choice, or a number in its range)."""
    choices = getattr(distribution, "choices", None)
    if choices is not None:
        return value in choices
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(distribution, IntDistribution) and int(value) != value:
        return False
    return distribution.low <= value <= distribution.high


def decode_pair(text: Any) -> tuple[int, int]:
    """``"5x5"`` -> (5, 5)."""
    return tuple(int(v) for v in str(text).split("x"))


def pairs(*sides: int) -> CategoricalDistribution:
    """Square pairs as categorical choices ``"3x3"``, ``"5x5"``; decode them with :func:`decode_pair`."""
    return CategoricalDistribution([f"{s}x{s}" for s in sides])


def describe(distribution: BaseDistribution) -> str:
    """A distribution as users read it: ``one of a, b`` or ``0.001 to 0.3 (log scale)``."""
    choices = getattr(distribution, "choices", None)
    if choices is not None:
        return "one of " + ", ".join(map(str, choices))
    scale = " (log scale)" if getattr(distribution, "log", False) else ""
    return f"{distribution.low} to {distribution.high}{scale}"
