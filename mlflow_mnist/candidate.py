"""What a final offers for promotion, read from the store and verified before any registry write.

The gate does not trust a final's tags: :func:`final_run` finds a FINISHED final of the experiment,
:func:`read_candidate` (its median seed's model) or :func:`read_ensemble` (its seeds' ensemble) read the model and
the accuracy the store recorded while the final was open (:func:`final_end`: the end it logged once), and
:func:`load_gate_data` loads its data again, checked against what the final wrote once. :func:`verify_candidate`
then checks the gate's local copy of the model's files (:mod:`mlflow_mnist.model_check`; for the ensemble, its
members) and has it predict the test set: a different error count refuses. :mod:`mlflow_mnist.registry` does the
rest (the champion, the decision, the registered copy).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlflow_mnist import model_files, tracking
from mlflow_mnist.final_tree import seed_runs_sha256
from mlflow_mnist.gate import (
    PromoteInputError,
    PromotionRejected,
    logged_errors,
    shared_examples,
)
from mlflow_mnist.model_check import KERAS_FILE, ModelFilesRefused, check_model_folder
from mlflow_mnist.model_files import LocalModel
from mlflow_mnist.schema import (
    CHAMPION,
    CLASSES,
    DATA_DIGEST_PARAM,
    DATA_SHA256,
    DATA_SOURCE,
    DIGEST,
    ENDED_MS,
    ENSEMBLE_ACCURACY,
    ENSEMBLE_KIND,
    ENSEMBLE_MODEL,
    FINAL_LEVEL,
    FINAL_SEED_LEVEL,
    LEVEL,
    LOGGED_MODEL_ID,
    MEDIAN_ACCURACY,
    MEDIAN_KIND,
    MEDIAN_MODEL,
    MEDIAN_RUN,
    MODEL_SHA256,
    PARENT,
    REPEATS,
    SEED_ACCURACY,
    SEED_RUNS,
    TASK_PARAM,
    TEST_DIGEST,
    TaskRef,
    as_int,
    effective_param,
)
from mlflow_mnist.seal import SEAL_KEY_ENV, RunSeal
from mlflow_mnist.tasks import DEFAULT_TASK, Task, get_task
from mlflow_mnist.tasks.base import dataset_sha256

UNCHANGED = f"@{CHAMPION} unchanged"


def _tampered(what: str) -> PromotionRejected:
    return PromotionRejected(f"not promoted: {what}: tampered, or not the measured model; {UNCHANGED}")


@dataclass(frozen=True)
class GateData:
    """What the gate needs of a final's data: its training examples, its test examples and their labels, and the
    classes' names (label k is ``class_names[k]``: what column k of the model's answer means)."""

    x_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Candidate:
    """What a final offers for promotion (its median seed's model, or its seeds' ensemble), as the store recorded
    it while the final was open."""

    final: Any  # mlflow.entities.Run
    seed_run_id: str  # the run that logged the model: the median seed's, or the final's for the ensemble
    model_id: str
    accuracy: float
    task: TaskRef
    test_digest: str
    kind: str = MEDIAN_KIND
    members: tuple[str, ...] = ()  # the ensemble's: the seed runs whose models it must hold, no other
    files_sha256: str | None = None  # the model's model_sha256 param: its files' digest when the final logged them
    recorded: bool = False  # its run recorded it as its own (logged_model_id): made by a version that logs a digest

    @property
    def run_id(self) -> str:
        return self.final.info.run_id


def final_task(final) -> TaskRef:
    """The task and classes of a final (stores made before tasks existed: the default task's)."""
    return TaskRef.parse(final.data.tags, legacy_task=DEFAULT_TASK)


def gate_task(final, spec: str = "") -> Task:
    """The task of ``final``: the one ``spec`` names (``promote --task``, a registered name or
    ``package.module:attr`` as ``tune`` and ``final`` were given it), which must be the task the final ran, else the
    registered task of the name the final recorded. A recorded name is never imported as ``module:attr``: that
    would let anyone who can set a tag make promote import a module of their choosing (a file planted in the
    artifact store under the working directory, which ``python -m`` puts on ``sys.path``)."""
    from mlflow_mnist.tasks import available_tasks

    ref, final_id = final_task(final), final.info.run_id
    if ":" in ref.name or not ref.name.strip():
        raise _tampered(f"final run {final_id}'s task tag {ref.name[:80]!r} is not a task's name")
    if spec:
        task = get_task(spec)
        if task.name != ref.name:
            raise PromoteInputError(
                f"--task {spec} is task {task.name!r} but final run {final_id} ran task {ref.name!r}: give that "
                f"task, or leave out --task for a registered one"
            )
        return task
    if ref.name not in available_tasks():
        raise PromoteInputError(
            f"final run {final_id} ran task {ref.name!r}, which is not registered here: give it as --task "
            f"package.module:attr, as tune and final were given it, or install its package"
        )
    return get_task(ref.name)


def load_gate_data(final, task: Task) -> GateData:
    """The final's data, loaded by its ``task`` (:func:`gate_task`) from where its run says, and checked against
    the digests the run logged once (:func:`check_written_once`): tags that point elsewhere cannot substitute
    other data."""
    tags, ref = final.data.tags, final_task(final)
    check_written_once(final)
    source = tags.get(DATA_SOURCE, "")
    classes = "all" if ref.variant == "all" else ",".join(ref.variant.split("v"))
    data = task.load("" if source == "keras" else source, classes=classes)  # keras: its download
    # The task's digests are 64 bits: two datasets made to collide there (one with test images among its training
    # images) differ in the full sha256 the final logged as a param. Finals made before it have only the digests.
    recorded = final.data.params.get(DATA_SHA256)
    same_arrays = recorded is None or recorded == dataset_sha256(data)
    if data.digest("train") != tags.get(DIGEST) or data.digest("test") != tags.get(TEST_DIGEST) or not same_arrays:
        raise PromotionRejected(
            f"not promoted: the data at {source or 'the default location'} is no longer what final run "
            f"{final.info.run_id} was trained and tested on (digests differ): restore it, or promote a final "
            f"made on this data; {UNCHANGED}"
        )
    return GateData(data.x_train, data.x_test, data.y_test, tuple(data.class_names))


def check_written_once(final) -> None:
    """The final's task, classes and data digests in its tags agree with what the run wrote once: its params
    (``task``, ``classes``, ``data_digest``: MLflow refuses to change a param; through ``mlflow run``, the values it
    used, :func:`~mlflow_mnist.schema.effective_param`) and its one test dataset input
    (inputs are only ever added). Tags can be set by anyone who can write the store; without this, two tags made
    a model trained on test images pass the leak check, and a test set of the model's choosing its accuracy."""
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    tags, params, ref, final_id = final.data.tags, final.data.params, final_task(final), final.info.run_id
    tested_on = {
        entry.dataset.digest
        for entry in (final.inputs.dataset_inputs if final.inputs else [])
        if any(tag.key == MLFLOW_DATASET_CONTEXT and tag.value == "test" for tag in entry.tags)
    }
    # A final run through `mlflow run` holds the -P values as params (classes '' for the default) and what the
    # command used beside them (effective_classes).
    task, classes = effective_param(params, TASK_PARAM), effective_param(params, CLASSES)
    if (task, classes) != (ref.name, ref.variant):
        said = f"its params {task} on {classes}"
        raise _tampered(f"final run {final_id}'s tags say task {ref.name} on {ref.variant}, {said}")
    if params.get(DATA_DIGEST_PARAM) != tags.get(DIGEST):
        raise _tampered(f"final run {final_id}'s training-data digest tag differs from its data_digest param")
    if tested_on != {tags.get(TEST_DIGEST)}:
        raise _tampered(
            f"final run {final_id}'s test digest tag is not the digest of the one test dataset it logged "
            f"({len(tested_on)} logged)"
        )


def predicted_labels(model_uri: str, examples: np.ndarray) -> np.ndarray:
    """The labels a model predicts for ``examples`` (any pyfunc flavour: probabilities or labels); ``model_uri``
    is anything ``mlflow.pyfunc.load_model`` takes: the gate passes its local copies' folders."""
    import mlflow.pyfunc

    with tracking.quiet_downloads():
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


#: (a model's local folder, examples) -> the labels it predicts: :func:`predicted_labels`, or a test's stand-in.
Predict = Callable[[str, np.ndarray], np.ndarray]


# -- the final run --------------------------------------------------------------------------------------------
def _experiment_with_a_final(client, *, but: str) -> str | None:
    """The name of the experiment, other than ``but``, with the newest finished final run; None if none has one
    (a user who tuned into a new experiment after a final looked for it in the wrong one)."""
    from mlflow_mnist.paging import experiment_batches

    batches = experiment_batches(client, but=but)
    newest = [run for batch in batches if (run := tracking.latest_final_run(client, batch)) is not None]
    if not newest:
        return None
    latest = max(newest, key=lambda run: run.info.end_time or 0)
    return client.get_experiment(latest.info.experiment_id).name


def final_run(client, experiment_id: str, run_id: str | None):
    """The given run, checked to be a FINISHED final run of this experiment, or the experiment's latest one."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        final = tracking.latest_final_run(client, experiment_id)
        if final is None:
            newest_first = ["attributes.start_time DESC"]
            unfinished = client.search_runs(
                [experiment_id], f"tags.`{LEVEL}` = '{FINAL_LEVEL}'", max_results=1, order_by=newest_first
            )
            here = f"no finished final run in experiment {client.get_experiment(experiment_id).name!r}"
            if unfinished:  # one is training, or was killed: "run final first" would be the wrong advice
                run = unfinished[0].info
                raise PromoteInputError(  # nothing to judge yet: a usage mistake (exit 2), not the gate's verdict
                    f"{here}: the latest, {run.run_id}, is {run.status}; wait for it to finish, or run the same "
                    f"`mlflow-mnist final` again if it was killed (it resumes)"
                )
            elsewhere = _experiment_with_a_final(client, but=experiment_id)
            hint = f"pass --experiment {elsewhere!r} (it has one), or " if elsewhere else ""
            raise PromoteInputError(f"{here}: {hint}run `mlflow-mnist final` first")
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
    if final.data.tags.get(LEVEL) != FINAL_LEVEL or final.info.status != "FINISHED":
        level, status = final.data.tags.get(LEVEL, "untagged"), final.info.status
        raise PromoteInputError(
            f"--run-id {run_id} is a {status} {level} run, not a FINISHED final run: pass a final run's id"
        )
    return final


def _experiment_name(client, experiment_id: str) -> str:
    try:
        return client.get_experiment(experiment_id).name
    except Exception:  # noqa: BLE001 - only for the message
        return f"id {experiment_id}"


def final_end(final) -> int | None:
    """When the final ended (ms): the param it logged as its last write (``ended_ms``, written once). A finished
    run's end_time can be set again through the API (``set_terminated``), and would move every "while the final was
    open" window; finals made before the param existed have only it, and are judged by it as before. A final that
    has the ``data_sha256`` param but not this one did not end: refused."""
    recorded = final.data.params.get(ENDED_MS)
    if recorded is None and DATA_SHA256 in final.data.params:
        # Made by a version that logs its end as its last write (data_sha256 came with it, logged as it starts):
        # without it, the final never ended. Killed, then marked FINISHED through the API; its end_time is not its.
        raise PromotionRejected(
            f"not promoted: final run {final.info.run_id} has no {ENDED_MS} param, which `final` logs as its last "
            f"write: it did not end (killed, then marked FINISHED); run `final` again to resume it; {UNCHANGED}"
        )
    if recorded is None:
        return final.info.end_time
    ended = as_int(recorded)
    if ended is None:
        raise _tampered(f"final run {final.info.run_id}'s {ENDED_MS} param {recorded[:40]!r} is not a time")
    return ended


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

    tags, final_id, end = final.data.tags, final.info.run_id, final_end(final)
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
    _made_while_open(model, final)
    recorded = _check_recorded(client, seed_id, model_id, final_id)
    accuracy = seeds[seed_id]
    lower_middle = sorted(seeds.values())[(len(seeds) - 1) // 2]
    median = logged_while_open(client, final_id, MEDIAN_ACCURACY, end)
    if not accuracy == lower_middle == median:
        raise _tampered(
            f"final run {final_id} logged a median test accuracy of {median:.4%}, its median seed run {seed_id} "
            f"{accuracy:.4%}, and the lower middle of its {len(seeds)} seeds is {lower_middle:.4%}"
        )
    return Candidate(
        final, seed_id, model_id, accuracy, final_task(final), tags.get(TEST_DIGEST, ""),
        files_sha256=model.params.get(MODEL_SHA256), recorded=recorded,
    )  # fmt: skip


def read_ensemble(client, final) -> Candidate:
    """The final's seeds as one model: the LoggedModel the final logged itself, with the accuracy it logged for
    that model while open. Its files are checked on the gate's local copy (:func:`verify_candidate`), before
    anything loads them."""
    from mlflow.exceptions import MlflowException

    tags, final_id = final.data.tags, final.info.run_id
    model_id = tags.get(ENSEMBLE_MODEL, "")
    if not model_id:
        raise PromotionRejected(
            f"not promoted: final run {final_id} has no seed ensemble (it needs --repeats 2 or more, every seed "
            f"with a model): promote its median seed instead; {UNCHANGED}"
        )
    seeds = _seed_accuracies(client, final)  # its seeds are the ones it trained, none added later
    try:
        model = client.get_logged_model(model_id)
    except MlflowException:
        raise _tampered(f"model {model_id} is not in this store") from None
    if model.source_run_id != final_id or str(model.experiment_id) != str(final.info.experiment_id):
        raise _tampered(f"model {model_id} was logged by run {model.source_run_id}, not by final run {final_id}")
    _made_while_open(model, final)
    recorded = _check_recorded(client, final_id, model_id, final_id)
    accuracy = logged_while_open(client, final_id, ENSEMBLE_ACCURACY, final_end(final))
    return Candidate(
        final, final_id, model_id, accuracy, final_task(final), tags.get(TEST_DIGEST, ""), ENSEMBLE_KIND, tuple(seeds),
        files_sha256=model.params.get(MODEL_SHA256), recorded=recorded,
    )  # fmt: skip


def _check_recorded(client, run_id: str, model_id: str, final_id: str) -> bool:
    """Whether ``run_id`` recorded the model it logged (``logged_model_id``, written once); if so, it must be
    ``model_id``: a model anyone created naming the run as its source while the final was open, with files of
    their own, would otherwise pass for the final's. Runs of versions before the record: False."""
    recorded = client.get_run(run_id).data.params.get(LOGGED_MODEL_ID)
    if recorded is not None and recorded != model_id:
        raise _tampered(f"final run {final_id}'s tag names model {model_id}, but run {run_id} logged model {recorded}")
    return recorded is not None


def _check_ensemble_files(client, candidate: Candidate, copy: LocalModel) -> None:
    """The ensemble's members (in the gate's local ``copy``, whose shape :func:`check_model_folder` checked) are
    the Keras files of the final's own seed models, no other: a member swapped for another model would otherwise
    be measured and registered as this final's ensemble."""
    import hashlib

    from mlflow_mnist.ensemble import SEED_PREFIX

    final, model_id = candidate.final, candidate.model_id
    members = sorted(
        hashlib.sha256(path.read_bytes()).hexdigest()
        for path in copy.folder.glob(f"artifacts/{SEED_PREFIX}*/{KERAS_FILE}")
        if path.is_file()
    )
    seeds = []
    for run_id in candidate.members:
        recorded = client.get_run(run_id).data.params.get(LOGGED_MODEL_ID)
        if recorded is not None:  # the seed's own model, as it recorded it: models others made do not count
            seed_models = [client.get_logged_model(recorded)]
        else:  # a seed of a version before the record: the models naming it, made while the final was open
            seed_models = client.search_logged_models(
                experiment_ids=[str(final.info.experiment_id)], filter_string=f"source_run_id = '{run_id}'"
            )
        for seed_model in seed_models:
            if _created_while_open(seed_model, final):
                try:
                    files = tracking.logged_model_files(
                        client, seed_model.model_id, require_digest=recorded is not None
                    )
                except tracking.ModelFilesChanged as error:
                    raise _tampered(f"a seed of the ensemble: {error}") from None
                if (keras := files.get(KERAS_FILE)) is not None:
                    seeds.append(hashlib.sha256(keras).hexdigest())
    if not members or members != sorted(seeds):
        raise _tampered(
            f"the ensemble model {model_id}'s {len(members)} members are not the {len(seeds)} models of final "
            f"run {final.info.run_id}'s seeds"
        )


def _created_while_open(model, final) -> bool:
    """Whether the model was created before the final ended: its source run can be named by anyone creating a
    model (``create_logged_model(source_run_id=...)``), its creation time is the store's own clock."""
    end, created = final_end(final), model.creation_timestamp
    return end is not None and created is not None and created <= end


def _made_while_open(model, final) -> None:
    if not _created_while_open(model, final):
        raise _tampered(
            f"model {model.model_id} was created after final run {final.info.run_id} ended, not by the final"
        )


def check_sealed(client, final, seal: RunSeal | None) -> None:
    """With a seal key, the final and each of its seed runs must carry a seal it verifies: runs forged whole
    through the API (every record consistent, because the forger wrote them all) carry none."""
    if seal is None:
        return
    children = tracking.search_all(client, [final.info.experiment_id], f"tags.`{PARENT}` = '{final.info.run_id}'")
    for run in [final, *(child for child in children if child.data.tags.get(LEVEL) == FINAL_SEED_LEVEL)]:
        if not seal.verifies(run):
            which = "final run" if run is final else f"run {run.info.run_id}, a seed of final run"
            raise PromotionRejected(
                f"not promoted: {which} {final.info.run_id} has no valid seal of the key in ${SEAL_KEY_ENV} (written "
                f"before the key was set, with another key, by someone else, or changed since): run `mlflow-mnist "
                f"final` again with this key, or `mlflow-mnist seal-runs` if you trust the store; {UNCHANGED}"
            )


def _seed_accuracies(client, final) -> dict[str, float]:
    """Each seed run's test accuracy logged while the final was open; as many seeds as its ``repeats`` param
    (params are write-once: a seed run added later shows up as one too many), and the very runs its
    ``seed_runs_sha256`` param names (a run re-parented in place of one of them does not count as its seed)."""
    final_id, end = final.info.run_id, final_end(final)
    repeats = int(final.data.params.get(REPEATS, "1") or 1)
    if repeats == 1:
        seed_ids = [final_id]
    else:
        children = tracking.search_all(client, [final.info.experiment_id], f"tags.`{PARENT}` = '{final_id}'")
        seed_ids = [run.info.run_id for run in children if run.data.tags.get(LEVEL) == FINAL_SEED_LEVEL]
    if len(seed_ids) != repeats:
        raise _tampered(f"final run {final_id} trained {repeats} seed(s) but has {len(seed_ids)} seed runs")
    recorded = final.data.params.get(SEED_RUNS)
    # A final made before it recorded its seeds has no such param: its parent tags are all there is to go on.
    if recorded is not None and recorded != seed_runs_sha256(seed_ids):
        raise _tampered(
            f"the seed runs of final run {final_id} are not the ones it recorded when it ended ({SEED_RUNS})"
        )
    return {seed: logged_while_open(client, seed, SEED_ACCURACY, end) for seed in seed_ids}


def download_candidate(stack: contextlib.ExitStack, candidate: Candidate, location: str) -> LocalModel:
    """The candidate's local copy (:func:`mlflow_mnist.model_files.local_copy`, removed when ``stack`` closes). A
    download MLflow refuses (a symbolic link out of the folder: "resolved path is outside the artifact directory";
    files that vanish midway) is the model's folder tampered with, not a store that is down; a failure to reach
    the store (requests' errors) stays what it is."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    from mlflow_mnist.redaction import redact, shorten

    try:
        return stack.enter_context(model_files.local_copy(location, label="candidate"))
    except RequestException:
        raise
    except (MlflowException, OSError) as error:
        reason = " ".join(line.strip("# ") for line in str(error).splitlines() if line.strip("# "))
        reason = shorten(redact(reason or type(error).__name__), 300)
        raise _tampered(f"the files of model {candidate.model_id} cannot be downloaded ({reason})") from None


def verify_candidate(
    client, candidate: Candidate, data: GateData, copy: LocalModel, *, predict: Predict = predicted_labels
) -> np.ndarray:
    """The candidate model's predictions on the test set, when they make exactly the logged number of errors:
    made by its local ``copy`` (once its shape, for the ensemble its code and members, and its digest against the
    ``model_sha256`` the final logged with it have been checked on that copy), the files
    :func:`decide_and_register` then registers, whatever happens to the artifact store meanwhile."""
    shared = shared_examples(data.x_train, data.x_test)
    if shared:
        raise PromotionRejected(
            f"not promoted: {shared} of the {len(data.x_test)} test examples of final run {candidate.run_id} are also "
            f"among its training examples: its test accuracy is not a test; remove them from the training data and "
            f"train a new final; {UNCHANGED}"
        )
    try:  # before anything loads it: loading runs what its MLmodel names
        check_model_folder(copy.folder, kind=candidate.kind)
    except ModelFilesRefused as error:
        raise _tampered(f"the {candidate.kind} model {candidate.model_id}'s files: {error}") from None
    if candidate.kind == ENSEMBLE_KIND:
        _check_ensemble_files(client, candidate, copy)
    # Any other change (its environment files, which `mlflow models serve` installs from; weights that keep the
    # logged error count): the final logged the folder's digest with it. Older finals' models have none.
    if candidate.recorded and candidate.files_sha256 is None:
        raise _tampered(f"the {candidate.kind} model {candidate.model_id} has no {MODEL_SHA256} param")
    if candidate.files_sha256 is not None and copy.sha256 != candidate.files_sha256:
        raise _tampered(
            f"the files of the {candidate.kind} model {candidate.model_id} are not the ones final run "
            f"{candidate.run_id} logged (their sha256 is not the model's {MODEL_SHA256} param): changed since"
        )
    predictions = predict(str(copy.folder), data.x_test)
    n, errors = len(data.y_test), int(np.sum(predictions != data.y_test))
    expected = logged_errors(candidate.accuracy, n)
    if expected != errors:
        said = f"{expected} errors" if expected is not None else "no whole number of errors"
        raise _tampered(
            f"final run {candidate.run_id} logged test accuracy {candidate.accuracy:.4%} ({said} in {n}) but its "
            f"model {candidate.model_id} makes {errors} errors on those examples now"
        )
    return predictions
