"""Staged search spaces as data: a *step* varies one group of hyperparameters over a grid with everything else
fixed; a *stage* is one or more steps run in order. A task lists its steps (in the order a staged campaign
runs them) and names its stages; :class:`~mlflow_mnist.tasks.base.Task` looks them up.

Grids keep their listing order, which is also the last tie-break when two candidates score exactly the same.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from mlflow_mnist.params import Params


@dataclass(frozen=True)
class Step:
    """One hyperparameter group and its grid, e.g. ``neurons_1`` over 1, 5, ..., 30."""

    name: str
    grid: dict[str, tuple]

    @property
    def varied(self) -> tuple[str, ...]:
        return tuple(self.grid)

    def candidates(self) -> list[Params]:
        """Grid points in listing order (first key slowest), each a dict of the varied values.

        ``itertools.product`` keeps the listing order of keys and values, which users read and which is the last
        tie-break; scikit-learn's ParameterGrid sorts keys instead.
        """
        return [dict(zip(self.grid, point, strict=True)) for point in itertools.product(*self.grid.values())]


def grid_step(name: str, values: Iterable, key: str | None = None) -> Step:
    """A step varying one hyperparameter (``key``, by default the step's own name) over ``values``."""
    return Step(name, {key or name: tuple(values)})
