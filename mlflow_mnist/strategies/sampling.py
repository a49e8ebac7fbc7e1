"""Configurations drawn at random from a search space (Optuna's RandomSampler, seeded): what successive
halving over a space and random search evaluate. Shared helper, not a strategy."""

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
