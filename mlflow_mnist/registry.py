"""Train the campaign's best configuration, test it once, and promote it to ``@champion`` in the registry.

``final`` gathers the best value of every completed step (the search's carry-forward rule), trains on the whole
training set and evaluates once on the test set. With ``repeats`` > 1 it trains one model per seed as child runs,
so users see how much of a test accuracy is luck. ``promote`` gates on the *median* seed, not the luckiest.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_mnist.model import Params, make_classifier
from mlflow_mnist.search import FINAL, configure_threads, divergence_guard, execute, model_files, training_diverged

CHAMPION = "champion"
TEST_ACCURACY = "test_accuracy"
MEDIAN_ACCURACY = "median_test_accuracy"
MEDIAN_RUN = "mlflow_mnist.median_run_id"


class PromotionRejected(RuntimeError):
    """The gate said no; the alias stays where it was."""


@dataclass
class FinalResult:
    seed: int
    test_accuracy: float
    test_loss: float
    fit_seconds: float
    status: str
    errors: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    predictions: np.ndarray | None = None
    model_files: dict[str, bytes] | None = None


def train_final(
    params: Params,
    x_train,
    y_train,
    x_test,
    y_test,
    n_classes: int,
    seed: int,
    precision: str = "float32",
    steps_per_execution: int = 32,
    threads: int = 1,
) -> FinalResult:
    """Fit on the whole training set, then score the test set once (no test data during training)."""
    configure_threads(threads)
    import keras

    keras.utils.set_random_seed(seed)
    onehot = np.eye(n_classes, dtype="float32")
    start = time.perf_counter()
    classifier = make_classifier(params, n_classes, steps_per_execution, precision=precision)
    classifier.set_params(callbacks=[divergence_guard(n_classes)])
    classifier.fit(x_train, onehot[y_train])
    fit_seconds = time.perf_counter() - start
    model = classifier.model_
    history = {name: [float(v) for v in values] for name, values in classifier.history_.items()}
    probabilities = np.nan_to_num(model.predict(x_test, verbose=0, batch_size=512), nan=0.0)
    loss = float(keras.losses.categorical_crossentropy(onehot[y_test], probabilities).numpy().mean())
    predictions = probabilities.argmax(axis=1)
    diverged = training_diverged(history.get("loss", []), n_classes)
    files = None if diverged else model_files(model, x_test[:2])
    keras.backend.clear_session()
    errors = int(np.sum(predictions != y_test))
    return FinalResult(
        seed,
        1 - errors / len(y_test),
        loss,
        fit_seconds,
        "diverged" if diverged else "ok",
        errors,
        history,
        predictions,
        files,
    )


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    matrix = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def plot_confusion(matrix: np.ndarray, digits: tuple[int, ...], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(2.5 + 0.5 * len(digits), 2 + 0.5 * len(digits)))
    sns.heatmap(matrix, annot=True, fmt="d", cmap="Blues", cbar=False, xticklabels=digits, yticklabels=digits, ax=ax)
    ax.set(xlabel="predicted digit", ylabel="true digit", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_misclassified(x: np.ndarray, y_true, y_pred, digits: tuple[int, ...], path: Path, limit: int = 36) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wrong = np.flatnonzero(y_true != y_pred)[:limit]
    columns = max(1, min(6, len(wrong)))
    rows = max(1, math.ceil(len(wrong) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, wrong, strict=False):
        ax.imshow(x[index], cmap="gray_r")
        ax.set_title(f"#{index}: {digits[y_true[index]]} as {digits[y_pred[index]]}", fontsize=8)
    if not len(wrong):
        axes[0, 0].text(0.5, 0.5, "no errors", ha="center", va="center")
    fig.suptitle(f"{int((y_true != y_pred).sum())} misclassified test images (true as predicted)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_final(campaign, repeats: int = 1, n_jobs: int = 0, progress: bool = True) -> dict[str, Any]:
    """Train ``repeats`` seeds of the store's best configuration and log them; returns the summary."""
    from tqdm.auto import tqdm

    from mlflow_mnist import tracking
    from mlflow_mnist.search import resolve_fixed_params

    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be at least 1")
    state = campaign.read_state()
    params = resolve_fixed_params(FINAL, state.step_bests, campaign.overrides, campaign.settings.epochs)
    task = campaign.task
    logger = campaign.logger()
    tracking.close_stale_runs(campaign.client, campaign.experiment_id, keep=[campaign.adopt_run_id or ""])
    with logger.closing_on_failure(tracking.tracking_uri()):
        parent = logger.start_final(params, state, repeats, campaign.stage_params, campaign.adopt_run_id)
        test_dataset = campaign.dataset("test")  # digest and profile computed once for the parent and every seed
        logger.log_dataset(parent, test_dataset, context="test")
        seeds = [campaign.settings.split_seed + k for k in range(repeats)]
        calls = [
            (
                params,
                task.x_train,
                task.y_train,
                task.x_test,
                task.y_test,
                task.n_classes,
                s,
                campaign.settings.precision,
            )
            for s in seeds
        ]
        results = []
        with tqdm(total=repeats, desc="final", unit="seed", disable=not progress) as bar:
            for result in execute(train_final, calls, n_jobs if repeats > 1 else 1):
                run_id = parent if repeats == 1 else logger.start_seed(parent, result.seed, test_dataset)
                log_final_result(logger, run_id, result, task)
                if run_id != parent:
                    logger.finish(run_id)
                results.append((result, run_id))
                bar.set_postfix_str(f"seed {result.seed}: test accuracy {result.test_accuracy:.4f}")
                bar.update()
        summary = summarize(results)
        logger.finish_final(parent, summary)
    return {**summary, "run_id": parent, "params": params}


def summarize(results: list[tuple[FinalResult, str]]) -> dict[str, Any]:
    """Mean/std/min/max over seeds, and the median seed (the lower middle one for an even count)."""
    accuracies = [r.test_accuracy for r, _ in results]
    ordered = sorted(results, key=lambda pair: pair[0].test_accuracy)
    median_result, median_run = ordered[(len(ordered) - 1) // 2]
    return {
        "mean_test_accuracy": statistics.fmean(accuracies),
        "std_test_accuracy": float(np.std(accuracies)),
        "min_test_accuracy": min(accuracies),
        "max_test_accuracy": max(accuracies),
        MEDIAN_ACCURACY: median_result.test_accuracy,
        "median_run_id": median_run,
        "mean_fit_seconds": statistics.fmean(r.fit_seconds for r, _ in results),
        "n_repeats": len(results),
        "seeds": {str(r.seed): r.test_accuracy for r, _ in results},
    }


def log_final_result(logger, run_id: str, result: FinalResult, task) -> None:
    matrix = confusion(task.y_test, result.predictions, task.n_classes)
    with tempfile.TemporaryDirectory() as tmp:
        title = f"test accuracy {result.test_accuracy:.4%} (seed {result.seed})"
        confusion_png = plot_confusion(matrix, task.digits, Path(tmp, "confusion_matrix.png"), title)
        errors_png = plot_misclassified(
            task.x_test, task.y_test, result.predictions, task.digits, Path(tmp, "misclassified.png")
        )
        Path(tmp, "confusion_matrix.json").write_text(
            json.dumps(
                {
                    "labels": list(task.digits),
                    "rows": "true digit",
                    "columns": "predicted digit",
                    "matrix": matrix.tolist(),
                }
            )
        )
        for path in (confusion_png, errors_png, Path(tmp, "confusion_matrix.json")):
            logger.client.log_artifact(run_id, str(path))
    logger.log_result(run_id, result)


def promotion_decision(
    accuracy: float, min_accuracy: float, champion_accuracy: float | None, force: bool = False
) -> tuple[bool, str]:
    """The gate: at least ``min_accuracy``, and not below the current champion unless forced."""
    if not math.isfinite(accuracy) or accuracy < min_accuracy:
        return False, f"test accuracy {accuracy:.4%} is below --min-accuracy {min_accuracy:.4%}"
    if champion_accuracy is not None and accuracy < champion_accuracy and not force:
        return False, (
            f"test accuracy {accuracy:.4%} is below the current champion's {champion_accuracy:.4%}: "
            f"pass --force to replace it anyway"
        )
    return True, f"test accuracy {accuracy:.4%} passes (threshold {min_accuracy:.4%})"


def model_name(task_name: str) -> str:
    return f"mnist-{task_name}-convnet"


def promote(
    client,
    experiment_id: str,
    name: str | None = None,
    min_accuracy: float = 0.9966,
    force: bool = False,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Register the latest (or given) final run's median model and move ``@champion`` to it if the gate allows."""
    from mlflow.exceptions import MlflowException

    from mlflow_mnist import tracking

    final = client.get_run(run_id) if run_id else tracking.latest_final_run(client, experiment_id)
    if final is None:
        raise PromotionRejected("no finished final run in this experiment: run `mlflow-mnist final` first")
    accuracy = final.data.metrics.get(MEDIAN_ACCURACY, math.nan)
    name = name or model_name(final.data.tags.get(f"{tracking.PREFIX}task", "2v7"))
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
        champion_accuracy = float(current.tags.get(TEST_ACCURACY, "nan"))
    except MlflowException:
        current, champion_accuracy = None, None
    accepted, reason = promotion_decision(accuracy, min_accuracy, champion_accuracy, force)
    if not accepted:
        raise PromotionRejected(f"not promoted: {reason}; @{CHAMPION} unchanged")
    version = tracking.register_champion(client, name, final, accuracy, CHAMPION)
    return {
        "name": name,
        "version": version.version,
        "accuracy": accuracy,
        "reason": reason,
        "previous": current.version if current else None,
    }
