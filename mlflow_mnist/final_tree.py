"""How ``final`` appears in MLflow: a final run, one child per seed (or the final run itself for one seed).

Each seed run carries its training curves, test accuracy and loss, the confusion matrix (PNG and JSON), the
misclassified test images, the train and test datasets, and its model as a LoggedModel whose test accuracy is
a metric on the model and its test-set probabilities (``test_probabilities.npy``). The final run names its median
seed as its best child (that is the model ``promote`` registers) and carries the spread over seeds, and, when it
ends, the digest of its seed runs' ids as a param (:func:`seed_runs_sha256`: written once, so the gate can tell its
seeds from runs re-parented under it later) and, as its last write, its end time (param ``ended_ms``, written once:
the run's own end_time can be moved). A final that resumes a killed one takes that final's finished seed runs as its
own children (:mod:`mlflow_mnist.final_resume`).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlflow_mnist.final_resume import PROBABILITIES, FinishedSeed, probabilities_bytes
from mlflow_mnist.planning import StoreState
from mlflow_mnist.runs import RunWriter
from mlflow_mnist.schema import (
    CONFIG_RANK,
    CONFIGS,
    DATA_SHA256,
    ENDED_MS,
    ENSEMBLE_ACCURACY,
    ENSEMBLE_ERRORS,
    ENSEMBLE_MODEL,
    FINAL_LEVEL,
    FINAL_SEED_KEY,
    FINAL_SEED_LEVEL,
    FIT_SECONDS,
    MEDIAN_ACCURACY,
    MEDIAN_MODEL,
    MEDIAN_RUN,
    NOTE,
    PARENT,
    PROBABILITIES_SHA256,
    REPEATS,
    RESUMED_FROM,
    SEED,
    SEED_ACCURACY,
    SEED_ERRORS,
    SEED_LOSS,
    SEED_RUNS,
    STAGE,
    STATUS,
    FinalTags,
    TaskRef,
)
from mlflow_mnist.tasks.base import Dataset, Task, dataset_sha256
from mlflow_mnist.worker import FinalResult


def seed_runs_sha256(run_ids) -> str:
    """The digest of a final's seed runs: sha256 of their ids, sorted and comma-separated."""
    return hashlib.sha256(",".join(sorted(run_ids)).encode()).hexdigest()


def confusion_figure(matrix: np.ndarray, classes: tuple[str, ...], title: str):
    import seaborn as sns
    from matplotlib.figure import Figure

    # A figure of its own, outside pyplot: no back end is chosen for the caller's process (a notebook's stays).
    fig = Figure(figsize=(2.5 + 0.5 * len(classes), 2 + 0.5 * len(classes)))
    ax = fig.subplots()
    sns.heatmap(matrix, annot=True, fmt="d", cmap="Blues", cbar=False, xticklabels=classes, yticklabels=classes, ax=ax)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    fig.tight_layout()
    return fig


def misclassified_figure(images: list, y_true, y_pred, classes: tuple[str, ...], limit: int = 36):
    """A grid of the first ``limit`` misclassified examples; ``images[i]`` is example i as a 2-D image."""
    from matplotlib.figure import Figure

    wrong = np.flatnonzero(y_true != y_pred)[:limit]
    columns = max(1, min(6, len(wrong)))
    rows = max(1, math.ceil(len(wrong) / columns))
    fig = Figure(figsize=(1.6 * columns, 1.9 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, wrong, strict=False):
        ax.imshow(images[index], cmap="gray_r")
        ax.set_title(f"#{index}: {classes[y_true[index]]} as {classes[y_pred[index]]}", fontsize=8)
    if not len(wrong):
        axes[0, 0].text(0.5, 0.5, "no errors", ha="center", va="center")
    fig.suptitle(f"{int((y_true != y_pred).sum())} misclassified test examples (true as predicted)", fontsize=9)
    fig.tight_layout()
    return fig


class _LazyImages:
    """Examples turned into images only where a figure shows them."""

    def __init__(self, task: Task, examples: np.ndarray):
        self.task, self.examples = task, examples

    def __getitem__(self, index: int) -> np.ndarray:
        return self.task.as_image(self.examples[index])


class FinalTree:
    """Writes one ``final`` invocation: its run, its seed runs, their models and figures."""

    def __init__(self, writer: RunWriter, *, task: Task, data: Dataset, test_dataset=None):
        self.writer, self.task, self.data, self.test_dataset = writer, task, data, test_dataset
        self.parent: str | None = None
        self.model_ids: dict[str, str | None] = {}

    def start(
        self,
        configs: Sequence[Mapping[str, Any]],
        state: StoreState,
        *,
        repeats: int,
        settings_params: Mapping[str, Any],
        adopt_run_id: str | None = None,
        source_search: str | None = None,
    ) -> str:
        sources = {name: best.run_id for name, best in state.step_bests.items()}
        if source_search:  # a joint search's best configuration, not the staged carry-forward
            sources = {"search": source_search}
        final_tags = FinalTags(
            TaskRef(self.task.name, self.data.variant), self.data.digest("test"), len(self.data.y_test), sources
        )
        self.parent = self.writer.start(FINAL_LEVEL, FINAL_LEVEL, tags=final_tags.tags(), adopt=adopt_run_id)
        # The final's params are its best configuration's; with several, each seed run logs its own.
        several = {CONFIGS: len(configs)} if len(configs) > 1 else {}
        data = {DATA_SHA256: dataset_sha256(self.data)}  # what the gate checks the data it loads against
        self.writer.log_params(self.parent, {**configs[0], **settings_params, REPEATS: repeats, **several, **data})
        self.writer.log_dataset(self.parent, self.test_dataset, context="test")
        self.repeats, self.configs, self.sources = repeats, list(configs), sources
        return self.parent

    def _description(self, summary: Mapping[str, Any], ensemble: tuple[float, int] | None) -> str:
        """What the final is, for its page in the UI: what it trained, where the configuration came from, what the
        test said (``ensemble``: the seeds' ensemble's accuracy and errors, if any), and what to run next."""
        n_test, n_seeds = len(self.data.y_test), summary["n_repeats"]
        median = summary[MEDIAN_ACCURACY]
        median_errors = round((1 - median) * n_test)
        where = ", ".join(self.writer.run_link(run, name) for name, run in self.sources.items())
        configs = f"the best {len(self.configs)} configurations" if len(self.configs) > 1 else "the best configuration"
        lines = [
            f"Trained {configs} (from {where or 'the task start'}) on all {len(self.data.y_train):,} training "
            f"examples with {n_seeds} seed(s), each tested once on the {n_test:,} test examples: median seed "
            f"{median:.4%} ({median_errors} errors)"
            + (f", the seeds' ensemble {ensemble[0]:.4%} ({ensemble[1]} errors)" if ensemble else "")
            + ".",
            "Next: `mlflow-mnist promote` gates it and registers the model if it passes.",
        ]
        return "\n\n".join(lines)

    def seed_finished(self, result: FinalResult, *, key: str = "") -> str:
        """Log one seed (on its own child run, or on the final run when there is one seed); ``key`` is its
        :func:`~mlflow_mnist.planning.final_seed_key`, by which a later final takes it should this one be killed."""
        if self.repeats == 1:
            run_id = self.parent
        else:
            tags, name = {STAGE: FINAL_LEVEL, SEED: result.seed, FINAL_SEED_KEY: key}, f"seed {result.seed}"
            if len(self.configs) > 1:
                rank = result.config_index + 1
                tags[CONFIG_RANK], name = rank, f"seed {result.seed} (configuration {rank})"
            run_id = self.writer.start(
                name, FINAL_SEED_LEVEL, parent=self.parent, tags=tags, start_ms=result.started_ms
            )
            if len(self.configs) > 1:
                self.writer.log_params(run_id, self.configs[result.config_index])
            self.writer.log_dataset(run_id, self.test_dataset, context="test")
        self._log_result(run_id, result)
        if run_id != self.parent:
            self.writer.finish(run_id, end_ms=result.ended_ms)
        return run_id

    def take_seeds(self, seeds: Sequence[FinishedSeed]) -> None:
        """Move seeds a killed final finished under this one (they are its seeds now: the gate counts a final's
        children), and say on this final where they came from."""
        for seed in seeds:
            self.writer.log_tags(seed.run_id, {PARENT: self.parent})
            self.model_ids[seed.run_id] = seed.model_id
        if seeds:
            self.writer.log_tags(self.parent, {RESUMED_FROM: ",".join(sorted({seed.final_id for seed in seeds}))})

    def _log_result(self, run_id: str, result: FinalResult) -> None:
        from sklearn.metrics import confusion_matrix

        data = self.data
        matrix = confusion_matrix(data.y_test, result.predictions, labels=range(data.n_classes))
        title = f"test accuracy {result.test_accuracy:.4%} (seed {result.seed})"
        self.writer.log_figure(run_id, confusion_figure(matrix, data.class_names, title), "confusion_matrix.png")
        if len(data.x_test) and self.task.as_image(data.x_test[0]) is not None:  # image-like examples only
            images = _LazyImages(self.task, data.x_test)
            figure = misclassified_figure(images, data.y_test, result.predictions, data.class_names)
            self.writer.log_figure(run_id, figure, "misclassified.png")
        matrix_json = {
            "labels": list(data.class_names),
            "rows": "true class",
            "columns": "predicted class",
            "matrix": matrix.tolist(),
        }
        self.writer.log_dict(run_id, matrix_json, "confusion_matrix.json")
        if result.probabilities is not None:  # what a later final needs to take this seed without retraining it
            content = probabilities_bytes(result.probabilities)
            self.writer.log_bytes(run_id, content, PROBABILITIES)
            self.writer.log_params(run_id, {PROBABILITIES_SHA256: hashlib.sha256(content).hexdigest()})
        model_id = self.writer.log_model(run_id, result.model_files, tags={SEED: result.seed, STAGE: FINAL_LEVEL})
        self.writer.log_results(
            run_id,
            tags={STATUS: result.status, SEED: result.seed},
            history=result.history,
            metrics={SEED_LOSS: result.test_loss, FIT_SECONDS: result.fit_seconds, SEED_ERRORS: result.errors},
            scores={SEED_ACCURACY: result.test_accuracy},
            model_id=model_id,
        )
        self.model_ids[run_id] = model_id

    def finish(
        self, summary: Mapping[str, Any], *, ensemble: tuple[dict[str, bytes], float, int] | None = None
    ) -> None:
        """Close the final run: spread over seeds, the median seed, and the seeds' ensemble as a LoggedModel of
        its own (its test accuracy a metric of that model)."""
        numbers = {k: v for k, v in summary.items() if isinstance(v, float) and k != ENSEMBLE_ACCURACY}
        median_run = summary["median_run_id"]
        # Its seeds are found by their parent tag, which anyone can set: a param, written once, says which they were.
        self.writer.log_params(self.parent, {SEED_RUNS: seed_runs_sha256(self.model_ids)})
        self.writer.log_metrics(self.parent, numbers)
        tags = {MEDIAN_RUN: median_run}
        if self.model_ids.get(median_run):
            tags[MEDIAN_MODEL] = self.model_ids[median_run]
        if ensemble is not None:
            files, accuracy, errors = ensemble
            model_id = self.writer.log_model(
                self.parent, files, tags={STAGE: FINAL_LEVEL}, model_type="pyfunc-seed-ensemble"
            )
            self.writer.log_metrics(self.parent, {ENSEMBLE_ACCURACY: accuracy}, model_id=model_id)
            self.writer.log_metrics(self.parent, {ENSEMBLE_ERRORS: errors})
            tags[ENSEMBLE_MODEL] = model_id
        self.writer.log_tags(self.parent, tags)
        self.writer.log_dict(self.parent, summary["seeds"], "test_accuracy_by_seed.json")
        description = self._description(summary, ensemble[1:] if ensemble else None)
        if median_run != self.parent:
            name = f"median seed ({summary[MEDIAN_ACCURACY]:.4%})"
            self.writer.name_best_child(self.parent, median_run, name, {}, note=description)
        else:
            self.writer.log_tags(self.parent, {NOTE: description})
        # Last: the end as a write-once param (the run's end_time can be moved through the API), then the same time
        # as the run's end_time. Every metric, tag and model of the final and its seeds (taken ones too) is before it.
        ended = int(time.time() * 1000)
        self.writer.log_params(self.parent, {ENDED_MS: ended})
        self.writer.finish(self.parent, end_ms=ended)
