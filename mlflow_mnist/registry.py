"""Promotion: what the gate reads from the store, and the registry write around it.

``promote`` takes the latest (or a given) FINISHED final run of the experiment and verifies it instead of
trusting its tags: the median seed's test accuracy is read from the metric history as logged while the final was
open, the median model must be the one that seed logged, the data is loaded again (:func:`load_gate_data`) and
must match the final's digests with no test example among the training examples, and the median seed's
LoggedModel predicts the test set here: a different error count refuses. Then, in :func:`decide_and_register`
(the critical section, run under the registered model's lock), it reads ``@champion``, has it predict the same
examples, lets :func:`mlflow_mnist.gate.decide` judge (McNemar's exact test), creates the version with all its
tags and its description in one request, and only then moves the alias: a promote killed at any moment leaves
the alias where it was, or on a complete version.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlflow_mnist import tracking
from mlflow_mnist.final import MEDIAN_ACCURACY
from mlflow_mnist.final_tree import MEDIAN_MODEL, MEDIAN_RUN, TASK, TEST_DIGEST
from mlflow_mnist.gate import (
    ALPHA,
    Champion,
    Decision,
    PromoteInputError,
    PromotionRejected,
    check_min_accuracy,
    decide,
    logged_errors,
    shared_examples,
    show_accuracy,
)

__all__ = ["CHAMPION", "PromoteInputError", "PromotionRejected", "count_test_set_uses", "promote"]

# -- names this module reads and writes (the schema module will hold them) ----------------------------------------
CHAMPION = "champion"
DEFAULT_MIN_ACCURACY = 0.9966  # the task will give its own
DATA_SOURCE = f"{tracking.PREFIX}data_source"  # read: where the final's data was loaded from (every run has it)
SEED_ACCURACY = "test_accuracy"  # read: the metric each seed run logs (final_tree)
# Model version tags. A version this module creates carries every one of VERSION_TAGS ("" where none applies).
TEST_ACCURACY, TEST_ERRORS = "test_accuracy", "test_errors"
VERSION_TEST_DIGEST, VERSION_TEST_SIZE, TEST_SET_USES = "test_digest", "test_size", "test_set_uses"
VERSION_TASK, SOURCE_RUN, FINAL_RUN = "task", "source_run", "final_run"
PREVIOUS_CHAMPION, FORCED = "previous_champion", "forced"
MCNEMAR_CANDIDATE_ONLY, MCNEMAR_CHAMPION_ONLY = "mcnemar_candidate_only", "mcnemar_champion_only"
MCNEMAR_P = "mcnemar_p"
SPREAD = ("mean_test_accuracy", "std_test_accuracy", "min_test_accuracy", "max_test_accuracy")
VERSION_TAGS = (
    TEST_ACCURACY, TEST_ERRORS, *SPREAD, "repeats", "data_digest", VERSION_TASK, VERSION_TEST_DIGEST,
    VERSION_TEST_SIZE, TEST_SET_USES, SOURCE_RUN, FINAL_RUN, "params", PREVIOUS_CHAMPION, FORCED,
    MCNEMAR_CANDIDATE_ONLY, MCNEMAR_CHAMPION_ONLY, MCNEMAR_P,
)  # fmt: skip
UNCHANGED = f"@{CHAMPION} unchanged"


def _tampered(what: str) -> PromotionRejected:
    return PromotionRejected(f"not promoted: {what}: tampered, or not the measured model; {UNCHANGED}")


@dataclass(frozen=True)
class GateData:
    """What the gate needs of a final's data: its training examples, its test examples and their labels."""

    x_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class Candidate:
    """A final run's median seed, as the store recorded it while the final was open."""

    final: Any  # mlflow.entities.Run
    seed_run_id: str
    model_id: str
    accuracy: float
    task: str
    test_digest: str

    @property
    def run_id(self) -> str:
        return self.final.info.run_id


def model_name(task_name: str) -> str:
    return f"mnist-{task_name}-convnet"


def load_gate_data(final) -> GateData:
    """The final's data, loaded from where its run says and checked against its digests.

    The only place promotion knows what the data is (MNIST: ``data_source`` and the digits in ``task``, e.g.
    ``2v7``); the task plug-in's loader replaces it.
    """
    from mlflow_mnist.data import load_task

    tags = final.data.tags
    source, variant = tags.get(DATA_SOURCE, ""), tags.get(TASK, "")
    digits = "all" if variant == "all" else ",".join(variant.split("v"))
    task = load_task("" if source == "keras" else source, digits)  # "keras": the default download
    if task.digest("train") != tags.get(tracking.DIGEST) or task.digest("test") != tags.get(TEST_DIGEST):
        raise PromotionRejected(
            f"not promoted: the data at {source or 'the default location'} is no longer what final run "
            f"{final.info.run_id} was trained and tested on (digests differ): restore it, or promote a final "
            f"made on this data; {UNCHANGED}"
        )
    return GateData(task.x_train, task.x_test, task.y_test)


def predicted_labels(model_uri: str, examples: np.ndarray) -> np.ndarray:
    """The labels a logged model predicts for ``examples`` (any pyfunc flavour: probabilities or labels)."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(model_uri)
    # Keras draws a progress bar on stdout and TensorFlow warns of retracing for a second model: not for users.
    tensorflow_log = logging.getLogger("tensorflow")
    level = tensorflow_log.level
    tensorflow_log.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            output = np.asarray(model.predict(examples))
    finally:
        tensorflow_log.setLevel(level)
    if output.ndim == 2:
        return np.nan_to_num(output.astype(float), nan=0.0).argmax(axis=1)  # as the worker scored it
    return output.astype(np.int64).ravel()


Predict = Callable[[str, np.ndarray], np.ndarray]


# -- the final run --------------------------------------------------------------------------------------------
def final_run(client, experiment_id: str, run_id: str | None):
    """The given run, checked to be a FINISHED final run of this experiment, or the experiment's latest one."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        final = tracking.latest_final_run(client, experiment_id)
        if final is None:
            raise PromotionRejected("no finished final run in this experiment: run `mlflow-mnist final` first")
        return final
    try:
        final = client.get_run(run_id)
    except MlflowException:
        raise PromoteInputError(f"--run-id {run_id} is not a run in this tracking store: check the id") from None
    if final.info.experiment_id != str(experiment_id):
        theirs, ours = _experiment_name(client, final.info.experiment_id), _experiment_name(client, experiment_id)
        raise PromoteInputError(
            f"--run-id {run_id} is a run of experiment {theirs!r}, not of {ours!r}: pass a final run of {ours!r} "
            f"(or --experiment {theirs})"
        )
    if final.data.tags.get(tracking.LEVEL) != "final" or final.info.status != "FINISHED":
        level, status = final.data.tags.get(tracking.LEVEL, "untagged"), final.info.status
        raise PromoteInputError(
            f"--run-id {run_id} is a {status} {level} run, not a FINISHED final run: pass a final run's id"
        )
    return final


def _experiment_name(client, experiment_id: str) -> str:
    try:
        return client.get_experiment(experiment_id).name
    except Exception:  # noqa: BLE001 - only for the message
        return f"id {experiment_id}"


def logged_while_open(client, run_id: str, key: str, end_ms: int | None) -> float:
    """The one value of metric ``key`` that ``run_id`` logged before ``end_ms`` (when its final ended).

    MLflow keeps every value ever logged; later ones (a re-logged "better" accuracy) are ignored here, and two
    different values inside the window mean someone wrote one with a forged timestamp.
    """
    values = {m.value for m in client.get_metric_history(run_id, key) if end_ms is not None and m.timestamp <= end_ms}
    if len(values) != 1:
        found = "no value" if not values else f"{len(values)} different values"
        raise _tampered(f"run {run_id} logged {found} of {key} while its final was open")
    return values.pop()


def read_candidate(client, final) -> Candidate:
    """The final's median seed: its run must be the final or one of its seeds, its model that seed's, and its
    accuracy the lower middle of the seeds' accuracies, all as logged while the final was open."""
    from mlflow.exceptions import MlflowException

    tags, final_id, end = final.data.tags, final.info.run_id, final.info.end_time
    seed_id, model_id = tags.get(MEDIAN_RUN, ""), tags.get(MEDIAN_MODEL, "")
    if not seed_id or not model_id:
        raise PromotionRejected(
            f"not promoted: final run {final_id} names no median seed model (tags {MEDIAN_RUN}, {MEDIAN_MODEL}): "
            f"its median seed diverged, or `final` did not make it; {UNCHANGED}"
        )
    seeds = _seed_accuracies(client, final)
    if seed_id not in seeds:
        raise _tampered(f"run {seed_id} is not a seed of final run {final_id}")
    try:
        model = client.get_logged_model(model_id)
    except MlflowException:
        raise _tampered(f"model {model_id} is not in this store") from None
    if model.source_run_id != seed_id or str(model.experiment_id) != str(final.info.experiment_id):
        raise _tampered(
            f"model {model_id} was logged by run {model.source_run_id}, not by the median seed run {seed_id} of "
            f"final run {final_id}"
        )
    accuracy = seeds[seed_id]
    lower_middle = sorted(seeds.values())[(len(seeds) - 1) // 2]
    median = logged_while_open(client, final_id, MEDIAN_ACCURACY, end)
    if not accuracy == lower_middle == median:
        raise _tampered(
            f"final run {final_id} logged a median test accuracy of {median:.4%}, its median seed run {seed_id} "
            f"{accuracy:.4%}, and the lower middle of its {len(seeds)} seeds is {lower_middle:.4%}"
        )
    return Candidate(final, seed_id, model_id, accuracy, tags.get(TASK, ""), tags.get(TEST_DIGEST, ""))


def _seed_accuracies(client, final) -> dict[str, float]:
    """Each seed run's test accuracy logged while the final was open; as many seeds as its ``repeats`` param
    (params are write-once: a seed run added later shows up as one too many)."""
    final_id, end = final.info.run_id, final.info.end_time
    repeats = int(final.data.params.get("repeats", "1") or 1)
    if repeats == 1:
        seed_ids = [final_id]
    else:
        children = tracking.search_all(client, [final.info.experiment_id], f"tags.`{tracking.PARENT}` = '{final_id}'")
        seed_ids = [run.info.run_id for run in children if run.data.tags.get(tracking.LEVEL) == "final_seed"]
    if len(seed_ids) != repeats:
        raise _tampered(f"final run {final_id} trained {repeats} seed(s) but has {len(seed_ids)} seed runs")
    return {seed: logged_while_open(client, seed, SEED_ACCURACY, end) for seed in seed_ids}


def verify_candidate(candidate: Candidate, data: GateData, predict: Predict) -> np.ndarray:
    """The candidate model's predictions on the test set, when they make exactly the logged number of errors."""
    shared = shared_examples(data.x_train, data.x_test)
    if shared:
        raise PromotionRejected(
            f"not promoted: {shared} of the {len(data.x_test)} test images of final run {candidate.run_id} are also "
            f"among its training images: its test accuracy is not a test; remove them from the training data and "
            f"train a new final; {UNCHANGED}"
        )
    predictions = predict(f"models:/{candidate.model_id}", data.x_test)
    n, errors = len(data.y_test), int(np.sum(predictions != data.y_test))
    expected = logged_errors(candidate.accuracy, n)
    if expected != errors:
        said = f"{expected} errors" if expected is not None else "no whole number of errors"
        raise _tampered(
            f"final run {candidate.run_id} logged test accuracy {candidate.accuracy:.4%} ({said} in {n}) but its "
            f"model {candidate.model_id} makes {errors} errors on those images now"
        )
    return predictions


def count_test_set_uses(client, test_digest: str) -> int:
    """How many FINISHED finals in the whole store (every experiment, deleted ones too) were scored on this test
    set: each is a look at it, whatever experiment it was filed under."""
    from mlflow.entities import ViewType

    if not re.fullmatch(r"[0-9a-f]{1,64}", test_digest or ""):
        return 1
    experiments, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ALL, max_results=1000, page_token=token)
        experiments += [e.experiment_id for e in page]
        token = page.token
        if not token:
            break
    query = f"tags.`{tracking.LEVEL}` = 'final' and attributes.status = 'FINISHED'"
    query += f" and tags.`{TEST_DIGEST}` = '{test_digest}'"
    found = 0
    for start in range(0, len(experiments), 100):
        token = None
        while True:
            page = client.search_runs(
                experiments[start : start + 100], query, ViewType.ALL, max_results=1000, page_token=token
            )
            found += len(page)
            token = page.token
            if not token:
                break
    return max(1, found)


# -- the champion and the critical section --------------------------------------------------------------------
def read_champion(client, name: str, candidate: Candidate, data: GateData, predict: Predict) -> Champion | None:
    """``@champion`` as the gate can use it: its predictions on the candidate's test set, or why it has none.

    A champion of another task or with valid tags on another test set refuses outright (even ``--force`` cannot
    compare the incomparable: a new test set is a new registered model).
    """
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    tags, number = version.tags, str(version.version)
    task = tags.get(VERSION_TASK, "")
    if task and task != candidate.task:
        raise PromotionRejected(
            f"not promoted: run {candidate.run_id} is a {candidate.task} final but {name}@{CHAMPION} is a {task} "
            f"model: promote it under its own --name; {UNCHANGED}"
        )
    accuracy = _as_float(tags.get(TEST_ACCURACY))
    size = int(tags[VERSION_TEST_SIZE]) if tags.get(VERSION_TEST_SIZE, "").isdigit() else 0
    missing = [
        key
        for key, ok in (
            (TEST_ACCURACY, 0 <= accuracy <= 1),
            (VERSION_TEST_DIGEST, bool(tags.get(VERSION_TEST_DIGEST))),
            (VERSION_TEST_SIZE, size > 0),
            (VERSION_TASK, bool(task)),
        )
        if not ok
    ]
    if missing:
        return Champion(number, f"its tags lack a valid {', '.join(missing)}")
    if tags[VERSION_TEST_DIGEST] != candidate.test_digest:
        raise PromotionRejected(
            f"not promoted: its test accuracy is on test set {candidate.test_digest} ({len(data.y_test)} images), "
            f"the champion's on {tags[VERSION_TEST_DIGEST]} ({size}): accuracies on different test sets cannot be "
            f"compared, even with --force; register it as a new model with --name; {UNCHANGED}"
        )
    try:
        predictions = predict(f"models:/{name}/{number}", data.x_test)
    except Exception as error:  # noqa: BLE001 - any load failure makes the champion incomparable, said in one line
        return Champion(number, f"its model cannot be loaded ({type(error).__name__})")
    errors = int(np.sum(predictions != data.y_test))
    if logged_errors(accuracy, size) != errors:
        return Champion(number, f"its test_accuracy tag {accuracy:.4%} is not what its model scores ({errors} errors)")
    return Champion(number, predictions=predictions)


def _as_float(text: str | None) -> float:
    try:
        return float(text) if text is not None else math.nan
    except ValueError:
        return math.nan


def version_tags(candidate: Candidate, decision: Decision, *, n_test: int, uses: int, previous: str) -> dict[str, str]:
    """Every tag of a new version (VERSION_TAGS, each present), written with it in one request."""
    final, paired = candidate.final, decision.paired
    metrics, params = final.data.metrics, final.data.params
    tags = {
        TEST_ACCURACY: repr(candidate.accuracy),
        TEST_ERRORS: str(logged_errors(candidate.accuracy, n_test)),
        **{key: repr(metrics.get(key)) for key in SPREAD},
        "repeats": params.get("repeats", "1"),
        "data_digest": final.data.tags.get(tracking.DIGEST, ""),
        VERSION_TASK: candidate.task,
        VERSION_TEST_DIGEST: candidate.test_digest,
        VERSION_TEST_SIZE: str(n_test),
        TEST_SET_USES: str(uses),
        SOURCE_RUN: candidate.seed_run_id,
        FINAL_RUN: candidate.run_id,
        "params": json.dumps({k: v for k, v in params.items() if k not in ("task", "data_digest")})[:5000],
        PREVIOUS_CHAMPION: previous,
        FORCED: str(decision.forced).lower(),
        MCNEMAR_CANDIDATE_ONLY: str(paired.candidate_only) if paired else "",
        MCNEMAR_CHAMPION_ONLY: str(paired.champion_only) if paired else "",
        MCNEMAR_P: repr(paired.p_value) if paired else "",
    }
    return tags


def decide_and_register(
    client,
    name: str,
    candidate: Candidate,
    data: GateData,
    predictions: np.ndarray,
    *,
    min_accuracy: float,
    force: bool,
    alpha: float = ALPHA,
    uses: int = 1,
    predict: Predict = predicted_labels,
):
    """The critical section: read the champion, decide, create the version (tags and description in the same
    request), then move the alias. Run it under the registered model's lock; returns (version, decision,
    previous champion version or None)."""
    from mlflow.exceptions import MlflowException

    champion = read_champion(client, name, candidate, data, predict)
    decision = decide(data.y_test, predictions, min_accuracy=min_accuracy, champion=champion, force=force, alpha=alpha)
    if not decision.accepted:
        raise PromotionRejected(f"not promoted: {decision.reason}; {UNCHANGED}")
    try:
        client.create_registered_model(name, description="Tuned by mlflow-mnist; @champion is the served version.")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    n = len(data.y_test)
    metrics = candidate.final.data.metrics
    description = (
        f"Median of {candidate.final.data.params.get('repeats', '1')} seed(s): test accuracy "
        f"{show_accuracy(candidate.accuracy, n)}, verified by the gate (mean "
        f"{metrics.get('mean_test_accuracy', math.nan):.4%}, min {metrics.get('min_test_accuracy', math.nan):.4%}, "
        f"max {metrics.get('max_test_accuracy', math.nan):.4%}); final run {candidate.run_id}. Gate: {decision.reason}."
    )
    previous = champion.version if champion else None
    version = client.create_model_version(
        name,
        f"models:/{candidate.model_id}",
        run_id=candidate.seed_run_id,
        tags=version_tags(candidate, decision, n_test=n, uses=uses, previous=previous or ""),
        description=description,
        model_id=candidate.model_id,
    )
    # Last, and only now: a promote killed before this line leaves the alias where it was.
    client.set_registered_model_alias(name, CHAMPION, version.version)
    return version, decision, previous


@contextlib.contextmanager
def registry_lock(client, name: str, *, notify: Callable[[str], None] | None = None):
    """The store's lock on registered model ``name`` (:class:`mlflow_mnist.lock.RegistryLock`): one promotion at
    a time. Yields a client whose writes first check that the lock is still held; a lock held by another
    promotion, or lost midway, refuses in one line."""
    from mlflow_mnist.lock import LockError, RegistryLock

    lock = RegistryLock(client, name, command="mlflow-mnist promote", notify=notify)
    try:
        lock.acquire()
    except LockError as error:
        raise PromotionRejected(f"not promoted: {error}; {UNCHANGED}") from None
    try:
        yield lock.fenced(client)
    except LockError as error:  # lost while deciding or writing: the alias was not moved
        raise PromotionRejected(f"not promoted: {error}; {UNCHANGED}") from None
    finally:
        lock.release()


def promote(
    client,
    experiment_id: str,
    *,
    name: str | None = None,
    min_accuracy: float = DEFAULT_MIN_ACCURACY,
    force: bool = False,
    run_id: str | None = None,
    alpha: float = ALPHA,
    predict: Predict = predicted_labels,
    notify: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Verify the latest (or given) final run's median model and make it ``@champion`` if the gate allows.

    Returns what the CLI prints: ``name``, ``version``, ``accuracy``, ``reason`` (the gate's line, with the
    McNemar counts when there was a champion), ``previous``, ``paired``, ``test_set_uses`` and ``warning``.
    ``notify`` receives a line when the registered model's lock makes it wait. Raises
    :class:`PromoteInputError` for a bad threshold or run id and :class:`PromotionRejected` when the gate says no
    or another promotion holds the lock; the alias is then where it was.
    """
    min_accuracy = check_min_accuracy(min_accuracy)
    final = final_run(client, experiment_id, run_id)
    candidate = read_candidate(client, final)
    data = load_gate_data(final)
    predictions = verify_candidate(candidate, data, predict)
    name = name or model_name(candidate.task)
    uses = count_test_set_uses(client, candidate.test_digest)
    with registry_lock(client, name, notify=notify) as fenced:
        version, decision, previous = decide_and_register(
            fenced, name, candidate, data, predictions, min_accuracy=min_accuracy, force=force, alpha=alpha,
            uses=uses, predict=predict,
        )  # fmt: skip
    warning = ""
    if uses > 1:
        warning = (
            f"warning: this test set has scored {uses} finals in this tracking store; choosing among them by test "
            f"accuracy makes the winner's accuracy optimistic (test-set reuse): decide on CV, test once"
        )
    return {
        "name": name,
        "version": str(version.version),
        "accuracy": candidate.accuracy,
        "reason": decision.reason,
        "previous": previous,
        "paired": decision.paired,
        "test_set_uses": uses,
        "warning": warning,
    }
