"""The test seam: a search wired with in-memory data, a throwaway store, no campaign lock and, if wanted, a
stand-in for training, through the same Campaign, engine and run tree users run. Tests and benchmarks use it
instead of rebuilding the wiring by hand.

    campaign = open_campaign(store_uri, task="digits", dataset=tiny_dataset(), folds=3, epochs=6)
    outcome = run(campaign, strategy, worker=lambda fold: fold_result(fold, accuracy=0.9))
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from mlflow_mnist.campaign import Campaign
from mlflow_mnist.executors import SerialExecutor
from mlflow_mnist.executors.base import Executor
from mlflow_mnist.planning import FoldTask
from mlflow_mnist.results import FoldResult
from mlflow_mnist.search import SearchOutcome
from mlflow_mnist.tasks.base import Dataset, array_digest


def tiny_dataset(
    *, n_classes: int = 2, n_train: int = 60, n_test: int = 20, shape: tuple[int, ...] = (8, 8), seed: int = 0
) -> Dataset:
    """Random uint8 examples with balanced labels: enough for planning, folds and the run tree, not for learning."""
    rng = np.random.default_rng(seed)
    names = tuple(str(c) for c in range(n_classes))
    x_train = rng.integers(0, 256, (n_train, *shape), dtype=np.uint8)
    x_test = rng.integers(0, 256, (n_test, *shape), dtype=np.uint8)
    y_train = (np.arange(n_train) % n_classes).astype(np.uint8)
    y_test = (np.arange(n_test) % n_classes).astype(np.uint8)
    return Dataset(
        x_train,
        y_train,
        x_test,
        y_test,
        class_names=names,
        variant="all",
        source="memory",
        train_digest=array_digest(x_train, y_train),
        test_digest=array_digest(x_test, y_test),
    )


def open_campaign(store_uri: str, *, dataset: Dataset, experiment: str = "test", **settings: Any) -> Campaign:
    """A campaign on ``dataset`` in the store at ``store_uri`` (settings as :meth:`Campaign.open` takes them)."""
    os.environ["MLFLOW_TRACKING_URI"] = store_uri
    os.environ.pop("MLFLOW_RUN_ID", None)
    return Campaign.open(dataset=dataset, experiment=experiment, **settings)


def run(
    campaign: Campaign,
    strategy,
    *,
    worker: Callable[[FoldTask], FoldResult] | None = None,
    with_model: bool = True,
    executor: Executor | None = None,
) -> SearchOutcome:
    """``strategy`` on ``executor`` (default: this process, serial), no lock, no progress bar; ``worker``
    replaces training."""
    with executor or SerialExecutor() as executor:
        return campaign.search(
            strategy, executor=executor, with_model=with_model, progress=False, lock=False, worker=worker
        )


def fold_result(fold: FoldTask, accuracy: float, *, epochs: int | None = None, status: str = "ok") -> FoldResult:
    """What a worker would return for ``fold`` had it scored ``accuracy`` (curves flat at that value)."""
    epochs = epochs or int(fold.params.get("epochs", 1))
    return FoldResult(
        fold.key,
        fold.step,
        fold.candidate_index,
        fold.fold,
        accuracy,
        0.1,
        0.01,
        epochs,
        status,
        history={"val_accuracy": [accuracy] * epochs},
        chance=1.0 / max(2, fold.n_classes),
    )
