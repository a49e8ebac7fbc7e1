"""Promotion: the gate and the registry write, together.

``promote`` registers the median seed's LoggedModel of the latest (or a given) final run as a new version of
``mnist-<digits>-convnet`` and moves alias ``@champion`` to it only when the gate allows: the median test
accuracy reaches ``--min-accuracy``, is not below the champion's (``--force`` skips this check only), and was
measured on the champion's own test set (a new test set is a new registered model). Every line it prints
gives the accuracy's standard error on that test set, and it counts how often the test set has been used.
"""

from __future__ import annotations

import json
import math
from typing import Any

from mlflow_mnist import tracking
from mlflow_mnist.final import MEDIAN_ACCURACY
from mlflow_mnist.final_tree import MEDIAN_MODEL, MEDIAN_RUN, TASK, TEST_DIGEST, TEST_SIZE

CHAMPION = "champion"
TEST_ACCURACY = "test_accuracy"
VERSION_TEST_DIGEST, VERSION_TEST_SIZE, TEST_SET_USES = "test_digest", "test_size", "test_set_uses"


class PromotionRejected(RuntimeError):
    """The gate said no; the alias stays where it was."""


def standard_error(accuracy: float, n_test: int | None) -> float:
    """Binomial standard error of an accuracy measured on ``n_test`` images (2,060 at 99.66%: 0.13 points)."""
    if not n_test or not math.isfinite(accuracy):
        return math.nan
    return math.sqrt(accuracy * (1 - accuracy) / n_test)


def _accuracy(accuracy: float, n_test: int | None) -> str:
    se = standard_error(accuracy, n_test)
    return f"{accuracy:.4%}" + (f" (+/-{100 * se:.2f} points on {n_test} test images)" if se == se else "")


def promotion_decision(
    accuracy: float,
    min_accuracy: float,
    champion_accuracy: float | None,
    force: bool = False,
    *,
    has_champion: bool | None = None,
    n_test: int | None = None,
) -> tuple[bool, str]:
    """The gate: at least ``min_accuracy``, and not below the current champion unless forced.

    A champion without a valid accuracy cannot be compared with: it is kept unless forced.
    """
    has_champion = champion_accuracy is not None if has_champion is None else has_champion
    shown = _accuracy(accuracy, n_test)
    if not math.isfinite(accuracy) or accuracy < min_accuracy:
        return False, f"test accuracy {shown} is below --min-accuracy {min_accuracy:.4%}"
    valid_champion = champion_accuracy is not None and math.isfinite(champion_accuracy)
    if has_champion and not valid_champion and not force:
        return False, (
            f"test accuracy {shown} cannot be compared: the current champion has no valid test accuracy; "
            f"pass --force to replace it anyway"
        )
    if valid_champion and accuracy < champion_accuracy and not force:
        return False, (
            f"test accuracy {shown} is below the current champion's {champion_accuracy:.4%}: "
            f"pass --force to replace it anyway"
        )
    return True, f"test accuracy {shown} passes (threshold {min_accuracy:.4%})"


def model_name(task_name: str) -> str:
    return f"mnist-{task_name}-convnet"


def register_champion(client, name: str, final_run, accuracy: float, alias: str = CHAMPION, *, test_set_uses: int = 1):
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
        "task": tags_of_run.get(TASK, ""),
        VERSION_TEST_DIGEST: tags_of_run.get(TEST_DIGEST, ""),
        VERSION_TEST_SIZE: tags_of_run.get(TEST_SIZE, ""),
        TEST_SET_USES: str(test_set_uses),
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


def _final_run(client, experiment_id: str, run_id: str | None):
    """The given run, checked to be a FINISHED final run, or the experiment's latest one."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        final = tracking.latest_final_run(client, experiment_id)
        if final is None:
            raise PromotionRejected("no finished final run in this experiment: run `mlflow-mnist final` first")
        return final
    try:
        final = client.get_run(run_id)
    except MlflowException:
        raise PromotionRejected(f"--run-id {run_id} is not a run in this tracking store: check the id") from None
    if final.data.tags.get(tracking.LEVEL) != "final" or final.info.status != "FINISHED":
        level, status = final.data.tags.get(tracking.LEVEL, "untagged"), final.info.status
        raise PromotionRejected(
            f"--run-id {run_id} is a {status} {level} run, not a FINISHED final run: pass a final run's id"
        )
    return final


def test_set_uses(client, experiment_id: str, test_digest: str) -> int:
    """How many finished finals of this experiment were evaluated on this test set."""
    if not test_digest:
        return 1
    runs = tracking.search_all(
        client,
        [experiment_id],
        f"tags.`{tracking.LEVEL}` = 'final' and attributes.status = 'FINISHED' "
        f"and tags.`{TEST_DIGEST}` = '{test_digest}'",
    )
    return max(1, len(runs))


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

    final = _final_run(client, experiment_id, run_id)
    accuracy = final.data.metrics.get(MEDIAN_ACCURACY, math.nan)
    task = final.data.tags.get(TASK, "2v7")
    name = name or model_name(task)
    test_digest, n_test = final.data.tags.get(TEST_DIGEST, ""), int(final.data.tags.get(TEST_SIZE, 0) or 0) or None
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        current = None
    champion_accuracy = None
    if current is not None:
        champion_task = current.tags.get("task")
        if champion_task and champion_task != task:
            raise PromotionRejected(
                f"not promoted: run {final.info.run_id} is a {task} final but {name}@{CHAMPION} is a {champion_task} "
                f"model: promote it under its own --name; @{CHAMPION} unchanged"
            )
        champion_digest = current.tags.get(VERSION_TEST_DIGEST, "")
        if champion_digest != test_digest:
            raise PromotionRejected(
                f"not promoted: its test accuracy is on test set {test_digest or 'unknown'} ({n_test or '?'} images), "
                f"the champion's on {champion_digest or 'an unrecorded one'}: accuracies on different test sets "
                f"cannot be compared, even with --force; register it as a new model with --name; "
                f"@{CHAMPION} unchanged"
            )
        try:
            champion_accuracy = float(current.tags.get(TEST_ACCURACY, "nan"))
        except ValueError:
            champion_accuracy = math.nan
    accepted, reason = promotion_decision(
        accuracy, min_accuracy, champion_accuracy, force, has_champion=current is not None, n_test=n_test
    )
    if not accepted:
        raise PromotionRejected(f"not promoted: {reason}; @{CHAMPION} unchanged")
    uses = test_set_uses(client, experiment_id, test_digest)
    version = register_champion(client, name, final, accuracy, test_set_uses=uses)
    warning = ""
    if uses > 1:
        warning = (
            f"warning: this test set has scored {uses} finals in this experiment; choosing among them by test "
            f"accuracy makes the winner's accuracy optimistic (test-set reuse): decide on CV, test once"
        )
    return {
        "name": name,
        "version": version.version,
        "accuracy": accuracy,
        "reason": reason,
        "previous": current.version if current else None,
        "warning": warning,
    }
