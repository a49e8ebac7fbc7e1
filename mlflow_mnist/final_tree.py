"""How ``final`` appears in MLflow: a final run, one child per seed (or the final run itself for one seed).

Each seed run carries its training curves, test accuracy and loss, the confusion matrix (PNG and JSON), the
misclassified test images, the train and test datasets, and its model as a LoggedModel whose test accuracy is
a metric on the model. The final run names its median seed as its best child (that is the model ``promote``
registers) and carries the spread over seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from mlflow_mnist.data import Task
from mlflow_mnist.planning import StoreState
from mlflow_mnist.runs import RunWriter
from mlflow_mnist.tracking import PREFIX, STAGE, STATUS
from mlflow_mnist.worker import FinalResult

MEDIAN_RUN = f"{PREFIX}median_run_id"
MEDIAN_MODEL = f"{PREFIX}median_model_id"
TASK = f"{PREFIX}task"
TEST_DIGEST, TEST_SIZE = f"{PREFIX}test_digest", f"{PREFIX}test_size"  # which test set the accuracy is on


def confusion_figure(matrix: np.ndarray, digits: tuple[int, ...], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(2.5 + 0.5 * len(digits), 2 + 0.5 * len(digits)))
    sns.heatmap(matrix, annot=True, fmt="d", cmap="Blues", cbar=False, xticklabels=digits, yticklabels=digits, ax=ax)
    ax.set(xlabel="predicted digit", ylabel="true digit", title=title)
    fig.tight_layout()
    return fig


def misclassified_figure(x: np.ndarray, y_true, y_pred, digits: tuple[int, ...], limit: int = 36):
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
    return fig


class FinalTree:
    """Writes one ``final`` invocation: its run, its seed runs, their models and figures."""

    def __init__(self, writer: RunWriter, *, task: Task, test_dataset=None):
        self.writer, self.task, self.test_dataset = writer, task, test_dataset
        self.parent: str | None = None
        self.model_ids: dict[str, str | None] = {}

    def start(
        self,
        params: Mapping[str, Any],
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
        self.parent = self.writer.start(
            "final",
            "final",
            tags={
                STAGE: "final",
                TASK: settings_params.get("task", ""),
                TEST_DIGEST: self.task.digest("test"),
                TEST_SIZE: len(self.task.y_test),
                f"{PREFIX}source_step_runs": json.dumps(sources)[:5000],
            },
            adopt=adopt_run_id,
        )
        self.writer.log_params(self.parent, {**params, **settings_params, "repeats": repeats})
        self.writer.log_dataset(self.parent, self.test_dataset, context="test")
        self.repeats = repeats
        return self.parent

    def seed_finished(self, result: FinalResult) -> str:
        """Log one seed (on its own child run, or on the final run when there is one seed)."""
        if self.repeats == 1:
            run_id = self.parent
        else:
            run_id = self.writer.start(
                f"seed {result.seed}",
                "final_seed",
                parent=self.parent,
                tags={STAGE: "final", f"{PREFIX}seed": result.seed},
                start_ms=result.started_ms,
            )
            self.writer.log_dataset(run_id, self.test_dataset, context="test")
        self._log_result(run_id, result)
        if run_id != self.parent:
            self.writer.finish(run_id, end_ms=result.ended_ms)
        return run_id

    def _log_result(self, run_id: str, result: FinalResult) -> None:
        from sklearn.metrics import confusion_matrix

        task = self.task
        matrix = confusion_matrix(task.y_test, result.predictions, labels=range(task.n_classes))
        title = f"test accuracy {result.test_accuracy:.4%} (seed {result.seed})"
        self.writer.log_figure(run_id, confusion_figure(matrix, task.digits, title), "confusion_matrix.png")
        figure = misclassified_figure(task.x_test, task.y_test, result.predictions, task.digits)
        self.writer.log_figure(run_id, figure, "misclassified.png")
        matrix_json = {
            "labels": list(task.digits),
            "rows": "true digit",
            "columns": "predicted digit",
            "matrix": matrix.tolist(),
        }
        self.writer.log_dict(run_id, matrix_json, "confusion_matrix.json")
        model_id = self.writer.log_model(
            run_id, result.model_files, tags={f"{PREFIX}seed": result.seed, STAGE: "final"}
        )
        self.writer.log_results(
            run_id,
            tags={STATUS: result.status, f"{PREFIX}seed": result.seed},
            history=result.history,
            metrics={"test_loss": result.test_loss, "fit_seconds": result.fit_seconds, "test_errors": result.errors},
            scores={"test_accuracy": result.test_accuracy},
            model_id=model_id,
        )
        self.model_ids[run_id] = model_id

    def finish(self, summary: Mapping[str, Any]) -> None:
        numbers = {k: v for k, v in summary.items() if isinstance(v, float)}
        median_run = summary["median_run_id"]
        self.writer.log_metrics(self.parent, numbers)
        tags = {MEDIAN_RUN: median_run}
        if self.model_ids.get(median_run):
            tags[MEDIAN_MODEL] = self.model_ids[median_run]
        self.writer.log_tags(self.parent, tags)
        self.writer.log_dict(self.parent, summary["seeds"], "test_accuracy_by_seed.json")
        if median_run != self.parent:
            name = f"median seed ({summary['median_test_accuracy']:.4%})"
            self.writer.name_best_child(self.parent, median_run, name, {})
        self.writer.finish(self.parent)
