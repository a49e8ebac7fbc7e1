"""The seed's search space, as data: 18 steps in the seed's order, grouped into the stages users type.

A *step* varies one hyperparameter group over a grid with everything else fixed; a *stage* is one or more
steps run in order (``init_mode`` is init_mode_1 then init_mode_2). Grids keep the seed's listing order,
which is also the last tie-break when two candidates score exactly the same.
"""

from __future__ import annotations

import ast
import itertools
import re
from dataclasses import dataclass
from typing import Any

from mlflow_mnist.model import ACTIVATIONS, INITIALIZERS, KNOWN, OPTIMIZERS, HyperparameterError, Params


@dataclass(frozen=True)
class Step:
    """One hyperparameter group and its grid, e.g. ``neurons_1`` over 1, 5, ..., 30."""

    name: str
    grid: dict[str, tuple]

    @property
    def varied(self) -> tuple[str, ...]:
        return tuple(self.grid)

    def candidates(self) -> list[Params]:
        """Grid points in the seed's order (first key slowest), each a dict of the varied values.

        ``itertools.product`` keeps the seed's order of keys and values, which users read and which is the last
        tie-break; scikit-learn's ParameterGrid sorts keys instead.
        """
        return [dict(zip(self.grid, point, strict=True)) for point in itertools.product(*self.grid.values())]


def _step(name: str, values, key: str | None = None) -> Step:
    return Step(name, {key or name: tuple(values)})


_DROPOUTS = tuple(round(0.1 * i, 1) for i in range(10))
_NEURONS = (1, 5, 10, 15, 20, 25, 30)

#: The seed's 18 steps, in its order (stages.md).
STEPS: tuple[Step, ...] = (
    _step("batch_size", (10, 20, 40, 60, 80, 100)),
    _step("optimizer", OPTIMIZERS),
    _step("momentum", (0.0, 0.2, 0.4, 0.6, 0.8, 0.9)),
    _step("learn_rate", (0.001, 0.01, 0.1, 0.2, 0.3)),
    _step("init_mode_1", INITIALIZERS),
    _step("init_mode_2", INITIALIZERS),
    *(_step(f"activation_{i}", ACTIVATIONS) for i in (1, 2, 3, 4)),
    _step("dropout_rate_1", _DROPOUTS),
    _step("dropout_rate_2", _DROPOUTS),
    _step("neurons_1", _NEURONS),
    _step("neurons_2", _NEURONS),
    _step("neurons_3", (5, 10, 15, 20, 25, 30)),
    _step("kernel_size", ((1, 1), (3, 3), (5, 5), (7, 7))),
    _step("pool_size", ((1, 1), (2, 2), (3, 3), (5, 5))),
    Step("epochs", {"epochs": (20,), "batch_size": (20, 40, 60)}),
)
STEP_ORDER = {step.name: index for index, step in enumerate(STEPS)}
_BY_NAME = {step.name: step for step in STEPS}

#: Stage names users type -> the steps they run, in order.
STAGES: dict[str, tuple[str, ...]] = {
    "batch_size": ("batch_size",),
    "optimizer": ("optimizer",),
    "momentum": ("momentum",),
    "learn_rate": ("learn_rate",),
    "init_mode": ("init_mode_1", "init_mode_2"),
    "activation": tuple(f"activation_{i}" for i in (1, 2, 3, 4)),
    "dropout": ("dropout_rate_1", "dropout_rate_2"),
    "neurons": ("neurons_1", "neurons_2", "neurons_3"),
    "kernel_size": ("kernel_size",),
    "pool_size": ("pool_size",),
    "epochs": ("epochs",),
    "all": tuple(step.name for step in STEPS),
}


class StageError(ValueError):
    """Unknown stage or malformed overrides; the message lists what is allowed."""


def steps_of(stage: str) -> list[Step]:
    """The steps of a stage; a single step's own name (``neurons_2``) is accepted too."""
    if stage in STAGES:
        return [_BY_NAME[name] for name in STAGES[stage]]
    if stage in _BY_NAME:
        return [_BY_NAME[stage]]
    raise StageError(f"unknown stage {stage!r}: choose one of {', '.join(STAGES)} (or a step such as neurons_2)")


def get_step(name: str) -> Step:
    if name not in _BY_NAME:
        raise StageError(f"unknown step {name!r}: known steps are {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


_SPLIT_OVERRIDES = re.compile(r",\s*(?=[A-Za-z_]\w*\s*=)")


def parse_value(text: str) -> Any:
    """``"10"`` -> 10, ``"0.1"`` -> 0.1, ``"(5,5)"`` / ``"5x5"`` -> (5, 5), anything else stays a string."""
    text = text.strip()
    if re.fullmatch(r"\d+\s*x\s*\d+", text):
        return tuple(int(part) for part in text.split("x"))
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return tuple(value) if isinstance(value, list) else value


def parse_overrides(text: str | None) -> Params:
    """``"neurons_3=10,kernel_size=(5,5)"`` -> {"neurons_3": 10, "kernel_size": (5, 5)}."""
    overrides: Params = {}
    if not text or not text.strip():
        return overrides
    for item in _SPLIT_OVERRIDES.split(text.strip()):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise StageError(f"override {item!r} is not KEY=VALUE: write e.g. 'neurons_3=10,epochs=8'")
        if key not in KNOWN:
            raise HyperparameterError(f"unknown hyperparameter {key!r} in overrides: known are {', '.join(KNOWN)}")
        overrides[key] = parse_value(value)
    return overrides
