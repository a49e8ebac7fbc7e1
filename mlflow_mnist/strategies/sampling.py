"""Configurations drawn at random from a search space (Optuna's RandomSampler, seeded): what successive
halving over a space and random search evaluate; the seed of a resumed study's sampler. Shared helpers, not a
strategy."""

from __future__ import annotations

from mlflow_mnist.params import Params
from mlflow_mnist.planning import Spec
from mlflow_mnist.schema import SAMPLE
from mlflow_mnist.spaces import Space


def sample_configs(
    space: Space, n: int, *, seed: int, overrides: Params | None = None, epochs: int | None = None
) -> list[Spec]:
    """``n`` configurations of ``space``, the same ones for the same seed (so a rerun reuses their folds)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trials = [study.ask(space.distributions) for _ in range(n)]
    return [
        Spec(
            space.config(t.params, overrides=overrides, epochs=epochs),
            label=f"sample {t.number}",
            role=SAMPLE,
            trial=t.number,
            sampled=dict(t.params),
        )
        for t in trials
    ]


def resumed_seed(seed: int, asked_before: int) -> int:
    """The sampler seed of a study that resumes a search with ``asked_before`` trials already in the store.

    A fresh search (``asked_before`` 0) keeps ``seed``, so its draws never change. A resumed study is told the
    store's trials but its sampler starts its random stream again: with the same seed its first draws would be
    the configurations the first session drew, asked a second time. A seed of its own, the same for the same
    point of resumption, draws new ones."""
    if not asked_before:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, asked_before]).generate_state(1)[0])
