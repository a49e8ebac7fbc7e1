"""Promotion: the gate and the registry write, together.

``promote`` registers the median seed's LoggedModel of the latest (or a given) final run as a new version of
``mnist-<digits>-convnet`` and moves alias ``@champion`` to it only when the gate allows.
"""

from __future__ import annotations

import json
import math
from typing import Any

from mlflow_mnist import tracking
from mlflow_mnist.final import MEDIAN_ACCURACY
from mlflow_mnist.final_tree import MEDIAN_MODEL, MEDIAN_RUN, TASK

CHAMPION = "champion"
TEST_ACCURACY = "test_accuracy"


class PromotionRejected(RuntimeError):
    """The gate said no; the alias stays where it was."""


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


def register_champion(client, name: str, final_run, accuracy: float, alias: str = CHAMPION):
    """A new model version from the final run's median LoggedModel, described and tagged, then the alias moved."""
    import mlflow
    from mlflow.exceptions import MlflowException

    tags_of_run = final_run.data.tags
    model_run = tags_of_run.get(MEDIAN_RUN, final_run.info.run_id)
    model_id = tags_of_run.get(MEDIAN_MODEL)
    metrics, params = final_run.data.metrics, final_run.data.params
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Seed convnet tuned by mlflow-mnist; @champion is served.")
    tags = {
        TEST_ACCURACY: repr(accuracy),
        "mean_test_accuracy": repr(metrics.get("mean_test_accuracy")),
        "std_test_accuracy": repr(metrics.get("std_test_accuracy")),
        "min_test_accuracy": repr(metrics.get("min_test_accuracy")),
        "max_test_accuracy": repr(metrics.get("max_test_accuracy")),
        "repeats": params.get("repeats", "1"),
        "data_digest": tags_of_run.get(tracking.DIGEST, ""),
        "source_run": model_run,
        "final_run": final_run.info.run_id,
        "params": json.dumps({k: v for k, v in params.items() if k not in ("task", "data_digest")})[:5000],
    }
    source = f"models:/{model_id}" if model_id else f"runs:/{model_run}/model"
    version = mlflow.register_model(source, name, tags=tags)
    client.update_model_version(
        name,
        version.version,
        description=(
            f"Median of {tags['repeats']} seed(s): test accuracy {accuracy:.4%} "
            f"(mean {metrics.get('mean_test_accuracy', 0):.4%}, "
            f"min {metrics.get('min_test_accuracy', 0):.4%}, max {metrics.get('max_test_accuracy', 0):.4%}); "
            f"data {tags['data_digest']}; run {model_run}."
        ),
    )
    client.set_registered_model_alias(name, alias, version.version)
    return version


def promote(
    client,
    experiment_id: str,
    *,
    name: str | None = None,
    min_accuracy: float = 0.9966,
    force: bool = False,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Register the latest (or given) final run's median model and move ``@champion`` to it if the gate allows."""
    from mlflow.exceptions import MlflowException

    final = client.get_run(run_id) if run_id else tracking.latest_final_run(client, experiment_id)
    if final is None:
        raise PromotionRejected("no finished final run in this experiment: run `mlflow-mnist final` first")
    accuracy = final.data.metrics.get(MEDIAN_ACCURACY, math.nan)
    name = name or model_name(final.data.tags.get(TASK, "2v7"))
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
        champion_accuracy = float(current.tags.get(TEST_ACCURACY, "nan"))
    except MlflowException:
        current, champion_accuracy = None, None
    accepted, reason = promotion_decision(accuracy, min_accuracy, champion_accuracy, force)
    if not accepted:
        raise PromotionRejected(f"not promoted: {reason}; @{CHAMPION} unchanged")
    version = register_champion(client, name, final, accuracy)
    return {
        "name": name,
        "version": version.version,
        "accuracy": accuracy,
        "reason": reason,
        "previous": current.version if current else None,
    }
