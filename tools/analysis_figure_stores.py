"""Two synthetic stores through the real campaign, engine and run tree (no training: a scripted fold worker),
then the analysis report of each, into OUT/{campaign,sample}/.

    .venv/bin/python tools/analysis_figure_stores.py OUT     (the figures docs/analysis.md shows)

campaign: the seed's 18 steps (stage all), 3 folds, fresh references, accuracies near 0.99 with seed noise
    (0.1 points per fold, from the fold's key, so a fresh reference differs from its grid twin), a few real
    effects, a diverging learning rate, a kernel that collapses on one fold, one lost fold.
sample: the same 18 steps as a 1-epoch 2-fold run on the sample: accuracies near 0.85 with 3 points of noise,
    slow settings at 0.52-0.56 (two classes, chance 0.51).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from analysis.report import build_report
from mlflow_mnist import schema, tracking
from mlflow_mnist.strategies import StagedGrid
from mlflow_mnist.tasks import get_task
from mlflow_mnist.testing import fold_result, open_campaign, run, tiny_dataset

MNIST = get_task("mnist")


def noise(task, sd: float) -> float:
    seed = int(hashlib.sha256(task.key.encode()).hexdigest()[:8], 16)
    return float(np.random.default_rng(seed).normal(0, sd))


def campaign_score(task):
    p = task.params
    accuracy = 0.991 + [0.0005, -0.0015, 0.001][task.fold] + noise(task, 0.001)
    accuracy -= 0.02 * (p["activation_1"] in ("softmax", "sigmoid", "hard_sigmoid"))
    accuracy -= 0.004 * (p["optimizer"] == "Adadelta") + 0.005 * (p["dropout_rate_2"] == 0.9)
    accuracy += 0.002 * (p["kernel_size"] == (5, 5))
    if p["kernel_size"] == (1, 1) and task.fold == 0:
        accuracy = 0.51
    status = "diverged" if p["learn_rate"] == 0.3 else "ok"
    return min(accuracy, 1.0), status


def sample_score(task):
    p = task.params
    slow = p["learn_rate"] == 0.001 or p["optimizer"] in ("Adadelta", "Adagrad") or p["neurons_1"] == 1
    if slow:
        return 0.51 + abs(noise(task, 0.025)), "ok"
    accuracy = 0.85 + [0.02, -0.02][task.fold] + noise(task, 0.03)
    accuracy -= 0.15 * (p["activation_2"] == "softmax")
    return min(accuracy, 1.0), "ok"


def make(uri: str, score, *, folds: int, epochs: int, lost: bool) -> None:
    campaign = open_campaign(uri, dataset=tiny_dataset(), experiment="mnist", folds=folds, epochs=epochs, task="mnist")
    request = campaign.request(stage="all", steps=tuple(MNIST.steps_of("all")))

    def worker(task):
        accuracy, status = score(task)
        result = fold_result(task, accuracy, epochs=epochs, status=status)
        result.history = {"val_accuracy": [accuracy - 0.01 * (epochs - e) for e in range(epochs)]}
        result.chance = 0.51
        return result

    run(campaign, StagedGrid.from_request(request), worker=worker, with_model=False)
    if lost:
        client = tracking.connect(uri)
        runs = client.search_runs(
            [client.get_experiment_by_name("mnist").experiment_id],
            f"tags.`{schema.LEVEL}` = '{schema.FOLD_LEVEL}' and params.dropout_rate_2 = '0.1' "
            f"and params.{schema.FOLD_PARAM} = '1'",
        )
        client.delete_run(runs[0].info.run_id)  # one fold that never finished


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "out",
        type=Path,
        help="folder to write campaign/ and sample/ into (made where missing; a store already in one is reused)",
    )
    out = parser.parse_args(argv).out
    for name, score, folds, epochs, lost in (
        ("campaign", campaign_score, 3, 6, True),
        ("sample", sample_score, 2, 1, False),
    ):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{folder}/mlflow.db"
        if not (folder / "mlflow.db").exists():
            make(uri, score, folds=folds, epochs=epochs, lost=lost)
        report = build_report(tracking.connect(uri), ["mnist"], folder / "report")
        print(name, report.html_path)
        print(report.verdicts[["step", "verdict", "reference_state", "sentence"]].to_string())


if __name__ == "__main__":
    main()
