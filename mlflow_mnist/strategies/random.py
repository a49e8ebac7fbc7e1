"""Random search (Bergstra & Bengio 2012): ``--trials`` configurations drawn at random from ``--space``, each
cross-validated at the full budget. The baseline every HPO comparison needs: a strategy that beats it has
learned something about the space.

Draws are seeded by ``--seed``, so a rerun draws the same configurations and reuses their finished folds; asking
for more ``--trials`` draws the same first ones again, then new ones.
"""

from __future__ import annotations

from collections.abc import Callable

from mlflow_mnist.planning import Group, StoreState
from mlflow_mnist.spaces import Space
from mlflow_mnist.strategies.base import SPACE_FORM, Evaluate, SearchRequest, numbered
from mlflow_mnist.strategies.sampling import sample_configs


class RandomSearch:
    name = "random"
    searches = frozenset({SPACE_FORM})
    by_rungs = False
    help = "--trials configurations drawn at random from --space, each at the full budget"
    options = frozenset({"trials"})
    single_group = False
    carries_forward = False

    def __init__(self, space: Space, *, n_trials: int, batch: int, seed: int, overrides: dict, search_key: str):
        self.space, self.n_trials, self.batch, self.seed = space, n_trials, max(1, batch), seed
        self.overrides, self.search_key = dict(overrides), search_key
        self.search_name = f"{self.name}:{space.name}"

    @property
    def search_options(self) -> dict[str, object]:
        return {"trials": self.n_trials, "batch": self.batch}

    @classmethod
    def from_request(cls, request: SearchRequest) -> RandomSearch:
        space = request.need_space(cls.name)
        return cls(
            space,
            n_trials=request.trials,
            batch=request.batch,
            seed=request.seed,
            overrides=request.overrides,
            search_key=request.search_key(cls.name, space.name, request.seed),
        )

    def run(self, evaluate: Evaluate, memory: Callable[[], StoreState]) -> None:
        specs = sample_configs(self.space, self.n_trials, seed=self.seed, overrides=self.overrides)
        for first in range(0, len(specs), self.batch):
            batch = specs[first : first + self.batch]
            group = Group(
                name=numbered("sample", range(first, first + len(batch))),
                step=self.search_name,
                varied=self.space.names,
                own_run=False,
                search_key=self.search_key,
            )
            evaluate(batch, group=group)
