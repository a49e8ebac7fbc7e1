"""Promotion: the champion, the decision and the registry write around them.

``promote`` takes the latest (or a given) FINISHED final run of the experiment and verifies it instead of
trusting its tags (:mod:`mlflow_mnist.candidate`): the median seed's test accuracy is read from the metric history
as logged while the final was open, the median model must be the one that seed logged, the data is loaded again and
must match the final's digests with no test example among the training examples, and the candidate
LoggedModel's files are downloaded once and hashed (:mod:`mlflow_mnist.model_files`): that local copy is checked
(its shape: a model folder ``final`` writes, :mod:`mlflow_mnist.model_check`; the ensemble's members), predicts
the test set here (a different error count refuses), and is what gets
registered. Then, in :func:`decide_and_register` (the critical section, run under the registered model's lock), it
reads ``@champion`` (its files checked against the digest its registered copy recorded), has it predict the
same examples, lets :func:`mlflow_mnist.gate.decide` judge (McNemar's exact test), uploads the verified copy as a
new LoggedModel (what it verified written once, as the copy's params), creates the version on it with all its tags
and its description in one request, reads the version's files back and checks their digest, and only then moves
the alias: a promote killed at any moment leaves the alias where it was, or on a complete version whose files are
the ones the gate verified.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_mnist import model_files
from mlflow_mnist.candidate import (
    UNCHANGED,
    Candidate,
    GateData,
    Predict,
    check_sealed,
    download_candidate,
    final_run,
    gate_task,
    load_gate_data,
    predicted_labels,
    read_candidate,
    read_ensemble,
    verify_candidate,
)
from mlflow_mnist.gate import (
    ALPHA,
    Champion,
    Decision,
    PromoteInputError,
    PromotionRejected,
    check_min_accuracy,
    decide,
    logged_errors,
    show_accuracy,
)
from mlflow_mnist.model_check import ModelFilesRefused, check_model_folder
from mlflow_mnist.model_files import LocalModel
from mlflow_mnist.paging import all_pages, experiment_batches
from mlflow_mnist.schema import (
    CHAMPION,
    COPY_FOR,
    COPY_OF,
    COPY_RECORD,
    DATA_DIGEST_PARAM,
    DATA_SHA256,
    DECIDED_BY_FORCE,
    DECIDED_BY_GATE,
    DIGEST,
    ENDED_MS,
    ENSEMBLE_KIND,
    MAX_TEST_ACCURACY,
    MEAN_TEST_ACCURACY,
    MEDIAN_KIND,
    MIN_TEST_ACCURACY,
    PROBABILITIES_SHA256,
    REPEATS,
    SEAL,
    SEED_RUNS,
    SPREAD,
    TASK_PARAM,
    TEST_DIGEST,
    VERSION_CLASS_NAMES,
    VERSION_DATA_DIGEST,
    VERSION_DECIDED_BY,
    VERSION_FINAL_RUN,
    VERSION_MCNEMAR_CANDIDATE_ONLY,
    VERSION_MCNEMAR_CHAMPION_ONLY,
    VERSION_MCNEMAR_P,
    VERSION_MIN_ACCURACY,
    VERSION_MODEL_KIND,
    VERSION_MODEL_SHA256,
    VERSION_PARAMS,
    VERSION_PREVIOUS_CHAMPION,
    VERSION_REPEATS,
    VERSION_SOURCE_RUN,
    VERSION_TASK,
    VERSION_TASK_VARIANT,
    VERSION_TEST_ACCURACY,
    VERSION_TEST_DIGEST,
    VERSION_TEST_ERRORS,
    VERSION_TEST_SET_USES,
    VERSION_TEST_SIZE,
    VERSION_VERIFIED_MODEL,
    TaskRef,
)
from mlflow_mnist.seal import SEAL_KEY_ENV, RunSeal
from mlflow_mnist.tasks import DEFAULT_TASK
from mlflow_mnist.tracking import FINISHED_FINALS

__all__ = [
    "CHAMPION", "ChampionUnverified", "PromoteInputError", "PromotionRejected", "count_test_set_uses", "load_champion",
    "promote",
]  # fmt: skip

#: Every tag a version this module creates carries ("" where none applies).
VERSION_TAGS = (
    VERSION_TEST_ACCURACY, VERSION_TEST_ERRORS, *SPREAD, VERSION_REPEATS, VERSION_DATA_DIGEST, VERSION_TASK,
    VERSION_TASK_VARIANT, VERSION_MODEL_KIND, VERSION_CLASS_NAMES, VERSION_MIN_ACCURACY, VERSION_TEST_DIGEST,
    VERSION_TEST_SIZE, VERSION_TEST_SET_USES, VERSION_SOURCE_RUN, VERSION_FINAL_RUN, VERSION_PARAMS,
    VERSION_PREVIOUS_CHAMPION, VERSION_DECIDED_BY, VERSION_MCNEMAR_CANDIDATE_ONLY, VERSION_MCNEMAR_CHAMPION_ONLY,
    VERSION_MCNEMAR_P, VERSION_MODEL_SHA256, VERSION_VERIFIED_MODEL,
)  # fmt: skip
# A final's params that are not its configuration, left out of the version's "params" tag.
NOT_CONFIGURATION = (TASK_PARAM, DATA_DIGEST_PARAM, SEED_RUNS, DATA_SHA256, ENDED_MS, PROBABILITIES_SHA256)
MODEL_KINDS = {"median": MEDIAN_KIND, "ensemble": ENSEMBLE_KIND}


def count_test_set_uses(client, test_digest: str) -> int:
    """How many FINISHED finals in the whole store (every experiment, deleted ones too) were scored on this test
    set: each is a look at it, whatever experiment it was filed under."""
    from mlflow.entities import ViewType

    if not re.fullmatch(r"[0-9a-f]{1,64}", test_digest or ""):
        return 1
    query = f"{FINISHED_FINALS} and tags.`{TEST_DIGEST}` = '{test_digest}'"
    found = 0
    for batch in experiment_batches(client, view_type=ViewType.ALL):
        found += len(
            all_pages(
                lambda token, batch=batch: client.search_runs(
                    batch, query, ViewType.ALL, max_results=1000, page_token=token
                )
            )
        )
    return max(1, found)


# -- the champion and the critical section --------------------------------------------------------------------
@dataclass(frozen=True)
class GateRecord:
    """What the gate verified when it registered a version (``values``, named as the version's tags), and whether
    they are its registered copy's write-once params or, for a version without them, its tags."""

    values: Mapping[str, str]
    from_copy: bool

    @property
    def holder(self) -> str:
        return "its copy's params" if self.from_copy else "its tags"

    def name(self, key: str) -> str:
        return f"its copy's {key} param" if self.from_copy else f"its {key} tag"


def source_model_id(version) -> str | None:
    """The LoggedModel ``version``'s source names (``models:/<id>``, fixed when the version is created): the SQL
    registry keeps no ``model_id``, so this is where a version's copy is found."""
    match = re.fullmatch(r"models:/([^/@]+)", version.source or "")
    return match.group(1) if match else None


def gate_record(client, version) -> GateRecord:
    """What the gate verified when it registered ``version``: the params of the copy it registered
    (:func:`register_copy`), the LoggedModel the version's source names (``models:/<copy id>``, fixed when the
    version is created; the SQL registry keeps no ``model_id``). A LoggedModel's params cannot be changed, a
    version's tags can (the digest set to swapped files' digest, the test digest to another test set's): where the
    tags disagree with the params they are ignored. A version whose source holds no such params (registered before
    promote recorded them, or by hand) has only its tags, read as before. Raises ``MlflowException`` when the
    source model cannot be read (deleted)."""
    copy_id = source_model_id(version)
    params = client.get_logged_model(copy_id).params if copy_id else {}
    # Every LoggedModel of ours has a model_sha256 param (its files' digest); only a copy names the model it verified.
    if VERSION_VERIFIED_MODEL not in params:
        return GateRecord(dict(version.tags), from_copy=False)
    return GateRecord({key: params.get(key, "") for key in COPY_RECORD}, from_copy=True)


def read_champion(client, name: str, candidate: Candidate, data: GateData, predict: Predict) -> Champion | None:
    """``@champion`` as the gate can use it: its predictions on the candidate's test set, or why it has none.

    What the gate verified is read from its registered copy's params (:func:`gate_record`; a version registered
    before them, from its tags). Its files are downloaded once; when their digest is not the recorded
    ``model_sha256`` (they were changed after the gate verified them) it cannot be compared, and otherwise that
    hashed copy predicts. A champion of another task, or verified on another test set, refuses outright (even
    ``--force`` cannot compare the incomparable: a new test set is a new registered model).
    """
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    number = str(version.version)
    try:
        record = gate_record(client, version)
    except MlflowException as error:
        return Champion(number, f"its source model {version.source} cannot be read ({error.error_code})")
    tags = record.values
    task = TaskRef.parse_version(tags, legacy_task=DEFAULT_TASK)
    if task is not None and task != candidate.task:
        ours, theirs = f"{candidate.task.name} {candidate.task.variant}", f"{task.name} {task.variant}"
        raise PromotionRejected(
            f"not promoted: run {candidate.run_id} is a {ours} final but {name}@{CHAMPION} is a {theirs} "
            f"model: promote it under its own --name; {UNCHANGED}"
        )
    accuracy = _as_float(tags.get(VERSION_TEST_ACCURACY))
    size = int(tags[VERSION_TEST_SIZE]) if tags.get(VERSION_TEST_SIZE, "").isdigit() else 0
    missing = [
        key
        for key, ok in (
            (VERSION_TEST_ACCURACY, 0 <= accuracy <= 1),
            (VERSION_TEST_DIGEST, bool(tags.get(VERSION_TEST_DIGEST))),
            (VERSION_TEST_SIZE, size > 0),
            (VERSION_TASK, task is not None),
        )
        if not ok
    ]
    if missing:
        return Champion(number, f"{record.holder} lack a valid {', '.join(missing)}")
    if tags[VERSION_TEST_DIGEST] != candidate.test_digest:
        raise PromotionRejected(
            f"not promoted: its test accuracy is on test set {candidate.test_digest} ({len(data.y_test)} examples), "
            f"the champion's on {tags[VERSION_TEST_DIGEST]} ({size}): accuracies on different test sets cannot be "
            f"compared, even with --force; register it as a new model with --name; {UNCHANGED}"
        )
    verified_sha256 = tags.get(VERSION_MODEL_SHA256, "")
    try:
        with model_files.local_copy(client.get_model_version_download_uri(name, number), label="champion") as copy:
            # A version registered before the gate hashed what it registers has no digest: as before, only its
            # accuracy tag is checked against what its files score (below).
            if unverified := _unverified_files(copy, record, verified_sha256):
                return Champion(number, f"its files {unverified}")
            predictions = predict(str(copy.folder), data.x_test)
    except Exception as error:  # noqa: BLE001 - any load failure makes the champion incomparable, said in one line
        return Champion(number, f"its model cannot be loaded ({type(error).__name__})")
    errors = int(np.sum(predictions != data.y_test))
    if logged_errors(accuracy, size) != errors:
        said = f"{record.name(VERSION_TEST_ACCURACY)} {accuracy:.4%}"
        return Champion(number, f"{said} is not what its model scores ({errors} errors)")
    return Champion(number, predictions=predictions)


class ChampionUnverified(RuntimeError):
    """``@champion`` cannot be loaded as the model the gate verified; the message is one line saying why."""


class NoChampion(ChampionUnverified):
    """The registered model named has no ``@champion`` (a name mistyped, or nothing promoted yet): a mistake in
    what was asked (exit 2), not a finding about files."""


@contextlib.contextmanager
def verified_champion(client, name: str) -> Iterator[tuple[str, LocalModel]]:
    """``name@champion``'s version number and a local copy of its files (removed on exit) whose digest is the
    ``model_sha256`` the gate recorded (:func:`gate_record`: its registered copy's param; for a version registered
    before it, the version's tag) and whose shape is a model ``final`` writes; :class:`ChampionUnverified` when
    there is no champion, no digest to check against, or other files."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        raise NoChampion(
            f"{name!r} has no @{CHAMPION} ({error.error_code}): check the name, or promote a final first"
        ) from None
    number = str(version.version)
    try:
        record = gate_record(client, version)
    except MlflowException as error:
        raise ChampionUnverified(
            f"the source model {version.source} of {name!r} version {number} (@{CHAMPION}) cannot be read "
            f"({error.error_code}): nothing to check its files against; promote a final again"
        ) from None
    verified_sha256 = record.values.get(VERSION_MODEL_SHA256, "")
    if not verified_sha256:
        raise ChampionUnverified(
            f"{name!r} version {number} (@{CHAMPION}) has no {VERSION_MODEL_SHA256} tag (not registered by a "
            f"promote that hashes what it registers): nothing to check its files against; promote a final again"
        )
    with model_files.local_copy(client.get_model_version_download_uri(name, number), label="champion") as copy:
        if unverified := _unverified_files(copy, record, verified_sha256):
            raise ChampionUnverified(f"the files of {name!r} version {number} (@{CHAMPION}) {unverified}; not used")
        yield number, copy


def load_champion(client, name: str):
    """``name@champion`` as an ``mlflow.pyfunc`` model, loaded whole (Keras, the seed ensemble) from the files the
    gate verified (:func:`verified_champion`), the copy then removed."""
    import mlflow.pyfunc

    with verified_champion(client, name) as (_, copy):
        return mlflow.pyfunc.load_model(str(copy.folder))


def export_champion(client, name: str, out: Path) -> tuple[str, str]:
    """Write ``name@champion``'s verified files (:func:`verified_champion`) into the new folder ``out``, to serve
    them from there (``mlflow models serve -m <out>``: MLflow's own ``models:/`` serving reads the artifact store as
    it is now). Returns the version number and the files' digest, read again from ``out``. ``out`` must not exist
    (or be an empty folder); it is written whole or not at all."""
    import shutil
    import tempfile

    out = Path(out)
    check_export_folder(out)
    with verified_champion(client, name) as (number, copy):
        staging = None
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))

            def not_model_files(folder: str, names: list[str]) -> set[str]:
                """Only the files the digest covers: MLflow's registered_model_meta at the top is not the model's,
                and anyone who can write the artifact store can put anything in it."""
                return model_files.NOT_MODEL_FILES & set(names) if Path(folder) == copy.folder else set()

            shutil.copytree(copy.folder, staging, dirs_exist_ok=True, ignore=not_model_files)
            if model_files.tree_sha256(staging) != copy.sha256:
                raise ChampionUnverified(f"the files written to {staging} are not the ones verified; not exported")
            if out.is_dir():
                out.rmdir()  # empty, checked above; a file put there since fails here, and nothing is replaced
            staging.rename(out)
        except OSError as error:
            raise PromoteInputError(
                f"--out {out} cannot be written ({error.strerror or type(error).__name__}): name a folder you can write"
            ) from None
        finally:
            if staging is not None and staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return number, copy.sha256


def check_export_folder(out: Path) -> None:
    """Refuse, before the store is read, a destination that holds anything or is a link: nothing of the user's is
    replaced, and the files land where ``out`` says."""
    if out.is_symlink() or (out.exists() and not (out.is_dir() and not any(out.iterdir()))):
        raise PromoteInputError(f"--out {out} already exists and is not an empty folder: name a new folder")


def _unverified_files(copy: LocalModel, record: GateRecord, verified_sha256: str) -> str:
    """Why a champion's downloaded ``copy`` is not the model the gate verified ("" when it is): other files than
    the recorded digest (none recorded: not checked), or not a model folder ``final`` writes (checked before
    anything loads it)."""
    if verified_sha256 and copy.sha256 != verified_sha256:
        return (
            f"are not the ones the gate verified (their sha256 is not {record.name(VERSION_MODEL_SHA256)}: changed "
            f"in the artifact store after it was registered)"
        )
    try:
        check_model_folder(copy.folder, kind=None, earlier_code=True)
    except ModelFilesRefused as error:
        return f"are not a model final writes ({error})"
    return ""


def _as_float(text: str | None) -> float:
    try:
        return float(text) if text is not None else math.nan
    except ValueError:
        return math.nan


def version_tags(
    candidate: Candidate,
    decision: Decision,
    *,
    n_test: int,
    uses: int,
    previous: str,
    model_sha256: str,
    class_names: tuple[str, ...] = (),
    min_accuracy: float = math.nan,
) -> dict[str, str]:
    """Every tag of a new version (VERSION_TAGS, each present), written with it in one request."""
    final, paired = candidate.final, decision.paired
    metrics, params = final.data.metrics, final.data.params
    tags = {
        VERSION_TEST_ACCURACY: repr(candidate.accuracy),
        VERSION_TEST_ERRORS: str(logged_errors(candidate.accuracy, n_test)),
        **{key: repr(metrics.get(key)) for key in SPREAD},
        VERSION_REPEATS: params.get(REPEATS, "1"),
        VERSION_DATA_DIGEST: final.data.tags.get(DIGEST, ""),
        **candidate.task.version_tags(),
        VERSION_MODEL_KIND: candidate.kind,
        VERSION_CLASS_NAMES: json.dumps(list(class_names)) if class_names else "",
        VERSION_MIN_ACCURACY: repr(min_accuracy),
        VERSION_TEST_DIGEST: candidate.test_digest,
        VERSION_TEST_SIZE: str(n_test),
        VERSION_TEST_SET_USES: str(uses),
        VERSION_SOURCE_RUN: candidate.seed_run_id,
        VERSION_FINAL_RUN: candidate.run_id,
        VERSION_PARAMS: json.dumps({k: v for k, v in params.items() if k not in NOT_CONFIGURATION})[:5000],
        VERSION_PREVIOUS_CHAMPION: previous,
        VERSION_DECIDED_BY: DECIDED_BY_FORCE if decision.forced else DECIDED_BY_GATE,
        VERSION_MCNEMAR_CANDIDATE_ONLY: str(paired.candidate_only) if paired else "",
        VERSION_MCNEMAR_CHAMPION_ONLY: str(paired.champion_only) if paired else "",
        VERSION_MCNEMAR_P: repr(paired.p_value) if paired else "",
        VERSION_MODEL_SHA256: model_sha256,
        VERSION_VERIFIED_MODEL: candidate.model_id,
    }
    return tags


def copy_name(name: str) -> str:
    """The LoggedModel name of registered model ``name``'s copies."""
    return "registered-" + re.sub(r"[/:.%\"']", "-", name)  # what a LoggedModel's name may not contain


def drop_unused_copies(client, name: str, experiment_id: str) -> int:
    """Delete the copies made for ``name`` in ``experiment_id`` that no version of ``name`` uses (left by a promote
    killed or refused after its upload, before its version); returns how many. Call it holding the registered
    model's lock: no other promote of ``name`` is then between its upload and its version. Copies without the
    ``COPY_FOR`` tag (made before it) are left as they are."""
    quote = next((mark for mark in "'\"" if mark not in name), None)
    if quote is None:  # a name no filter string can quote: leave its copies (harmless, and visible as unused)
        return 0
    versions = all_pages(lambda token: client.search_model_versions(f"name = {quote}{name}{quote}", page_token=token))
    used = {source_model_id(version) for version in versions}
    unused = [
        model.model_id
        for model in all_pages(
            lambda token: client.search_logged_models(
                [experiment_id], filter_string=f"name = '{copy_name(name)}'", page_token=token
            )
        )
        if model.tags.get(COPY_FOR) == name and model.model_id not in used
    ]
    for model_id in unused:
        client.delete_logged_model(model_id)
    return len(unused)


def register_copy(client, name: str, candidate: Candidate, verified: LocalModel, *, record: Mapping[str, str]) -> str:
    """A new LoggedModel (``registered-<name>``, tags ``copy_of``: the candidate's id, ``copy_for``: ``name``)
    holding the gate's verified local copy, byte for byte; returns its id. The version is created on it rather than
    on the candidate's own folder, which stays writable: files swapped there after verification must not become
    what ``@champion`` serves. ``record`` (what the gate verified, :data:`~mlflow_mnist.schema.COPY_RECORD`)
    becomes its params, in the request that creates it: written once, what :func:`gate_record` reads back."""
    model = client.create_logged_model(
        experiment_id=str(candidate.final.info.experiment_id),
        name=copy_name(name),
        source_run_id=candidate.seed_run_id,
        tags={COPY_OF: candidate.model_id, COPY_FOR: name},
        params=dict(record),
    )
    try:
        client.log_model_artifacts(model.model_id, str(verified.folder))
    except BaseException:
        with contextlib.suppress(Exception):  # a copy left unfinished is harmless: no version points at it
            client.finalize_logged_model(model.model_id, "FAILED")
        raise
    client.finalize_logged_model(model.model_id, "READY")
    return model.model_id


def check_registered(client, name: str, version: str, verified: LocalModel) -> None:
    """The files the registry serves for ``version``, downloaded once more, are the ones the gate verified."""
    with model_files.local_copy(client.get_model_version_download_uri(name, version), label="registered") as copy:
        if copy.sha256 != verified.sha256:
            raise PromotionRejected(
                f"not promoted: the files of version {version}, read back from the registry, are not the ones the "
                f"gate verified (changed while it was registered): run promote again; {UNCHANGED}"
            )


def link_version_to_model(client, name: str, version: str, model_id: str) -> None:
    """The logged model's ``mlflow.modelVersions`` tag names ``version`` of ``name``: the MLflow UI reads it to show
    a model's versions (without it the champion's own model page said "Not registered"). MLflow's server writes
    it when it creates a version, and ``mlflow.register_model`` does client-side; ``create_model_version`` against
    a database store does not. Idempotent, as the server's own write is."""
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    linked = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    if not any(entry.get("name") == name and str(entry.get("version")) == version for entry in linked):
        entry = {"name": name, "version": version}
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps([*linked, entry])})


def decide_and_register(
    client,
    name: str,
    candidate: Candidate,
    data: GateData,
    predictions: np.ndarray,
    *,
    verified: LocalModel,
    min_accuracy: float,
    force: bool,
    alpha: float = ALPHA,
    uses: int = 1,
    predict: Predict = predicted_labels,
):
    """The critical section: read the champion, decide, upload the ``verified`` copy (:func:`register_copy`),
    create the version on it (tags and description in the same request), check the registered files' digest,
    then move the alias. Run it under the registered model's lock (every write through ``client``, the fenced
    one); returns (version, decision, previous champion version or None)."""
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
    what = "Median" if candidate.kind == MEDIAN_KIND else "Ensemble (average probabilities)"
    description = (
        f"{what} of {candidate.final.data.params.get(REPEATS, '1')} seed(s): test accuracy "
        f"{show_accuracy(candidate.accuracy, n)}, verified by the gate (mean "
        f"{metrics.get(MEAN_TEST_ACCURACY, math.nan):.4%}, min {metrics.get(MIN_TEST_ACCURACY, math.nan):.4%}, "
        f"max {metrics.get(MAX_TEST_ACCURACY, math.nan):.4%}); final run {candidate.run_id}. Gate: {decision.reason}."
    )
    previous = champion.version if champion else None
    tags = version_tags(
        candidate,
        decision,
        n_test=n,
        uses=uses,
        previous=previous or "",
        model_sha256=verified.sha256,
        class_names=data.class_names,
        min_accuracy=min_accuracy,
    )
    drop_unused_copies(client, name, str(candidate.final.info.experiment_id))
    copy_id = register_copy(client, name, candidate, verified, record={key: tags[key] for key in COPY_RECORD})
    version = client.create_model_version(
        name, f"models:/{copy_id}", run_id=candidate.seed_run_id, tags=tags, description=description, model_id=copy_id
    )
    check_registered(client, name, str(version.version), verified)
    link_version_to_model(client, name, str(version.version), copy_id)
    # Last, and only now: a promote killed before this line leaves the alias where it was.
    client.set_registered_model_alias(name, CHAMPION, version.version)
    return version, decision, previous


@contextlib.contextmanager
def registry_lock(client, name: str, *, notify: Callable[[str], None] | None = None):
    """The store's lock on registered model ``name`` (:class:`mlflow_mnist.lock.RegistryLock`): one promotion at
    a time. Yields a client whose writes first check that the lock is still held; a lock held by another
    promotion, or lost midway, refuses in one line."""
    from mlflow_mnist.lock import LockError, RegistryLock

    lock = RegistryLock(client, name, command="mlflow-mnist promote", notify=notify, break_hint="promote --break-lease")
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


#: The registered model names promote makes: what ``models:/<name>@champion`` URIs, shells and one-line outputs read
#: back as written (MLflow takes more: a newline printed a second, forged line; "x?y" loaded as the model "x").
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_promote_options(*, model: str, min_accuracy: float | None, name: str | None) -> None:
    """What ``promote`` can check before the store is reached: the model kind, the threshold, the registered
    model's name (:data:`MODEL_NAME`, and not the lock's own names), each a :class:`PromoteInputError`. An empty
    name is the task's default (MLproject passes one)."""
    from mlflow_mnist.lock import PREFIX as LOCK_NAMES

    if model not in MODEL_KINDS:
        raise PromoteInputError(f"--model {model!r} is not one of {', '.join(MODEL_KINDS)}")
    if min_accuracy is not None:
        check_min_accuracy(min_accuracy)
    if name and not MODEL_NAME.fullmatch(name):
        raise PromoteInputError(
            f"--name {name!r} is not a name promote registers: letters, digits, '.', '_' and '-', starting with a "
            "letter or digit, at most 200 (what models:/ URIs read back as written)"
        )
    if name and name.startswith(LOCK_NAMES):
        raise PromoteInputError(
            f"--name {name!r} starts with {LOCK_NAMES!r}, the names of this tool's locks (deleted as locks are "
            "released): choose another name"
        )


def promote(
    client,
    experiment_id: str,
    *,
    name: str | None = None,
    min_accuracy: float | None = None,
    force: bool = False,
    run_id: str | None = None,
    model: str = "median",
    alpha: float = ALPHA,
    predict: Predict = predicted_labels,
    break_lease: bool = False,
    notify: Callable[[str], None] | None = None,
    task_spec: str = "",
    seal: RunSeal | None = None,
) -> dict[str, Any]:
    """Verify the latest (or given) final run's model (``model``: its median seed's, or its seeds' ``ensemble``)
    and make it ``@champion`` if the gate allows. ``task_spec`` names the final's task where it is not registered
    (``package.module:attr``, :func:`~mlflow_mnist.candidate.gate_task`). With a ``seal``, the final and its seeds
    must be runs it sealed (:mod:`mlflow_mnist.seal`).

    Returns what the CLI prints: ``name``, ``version``, ``accuracy``, ``reason`` (the gate's line, with the
    McNemar counts when there was a champion), ``previous``, ``paired``, ``test_set_uses`` and ``warning``.
    ``notify`` receives a line when the registered model's lock makes it wait. Raises
    :class:`PromoteInputError` for a bad threshold or run id and :class:`PromotionRejected` when the gate says no
    or another promotion holds the lock; the alias is then where it was.
    """
    check_promote_options(model=model, min_accuracy=min_accuracy, name=name)
    final = final_run(client, experiment_id, run_id)
    check_sealed(client, final, seal)
    task = gate_task(final, task_spec)
    min_accuracy = check_min_accuracy(task.min_accuracy if min_accuracy is None else min_accuracy)
    candidate = read_ensemble(client, final) if model == "ensemble" else read_candidate(client, final)
    data = load_gate_data(final, task)
    location = client.get_logged_model(candidate.model_id).artifact_location
    # Downloaded once: this copy is what is checked, what predicts, and what is registered.
    with contextlib.ExitStack() as stack:
        verified = download_candidate(stack, candidate, location)
        predictions = verify_candidate(client, candidate, data, verified, predict=predict)
        name = name or task.registered_model_name(candidate.task.variant)
        uses = count_test_set_uses(client, candidate.test_digest)
        if break_lease:  # a promotion killed on another machine left the registered model's lock behind
            from mlflow_mnist.lock import MODEL, break_lock

            whom = break_lock(client, name, kind=MODEL, command="mlflow-mnist promote --break-lease", notify=notify)
            if notify is not None:
                notify(f"broke the lock of {whom}" if whom else f"--break-lease: nobody held {name!r}")
        with registry_lock(client, name, notify=notify) as fenced:
            version, decision, previous = decide_and_register(
                fenced, name, candidate, data, predictions, verified=verified, min_accuracy=min_accuracy,
                force=force, alpha=alpha, uses=uses, predict=predict,
            )  # fmt: skip
    warnings = []
    if seal is None and SEAL in final.data.tags:  # a shell without the variable: nothing was checked, say so
        warnings.append(
            f"warning: final run {final.info.run_id} is sealed, but ${SEAL_KEY_ENV} is not set: its seal was not "
            f"checked; set the variable to the campaign's key file"
        )
    if min_accuracy < task.min_accuracy:  # a threshold lowered for this promote: said, and kept on the version
        warnings.append(
            f"warning: --min-accuracy {min_accuracy:.4%} is below task {task.name!r}'s own threshold "
            f"{task.min_accuracy:.4%}; the version records the one applied (tag {VERSION_MIN_ACCURACY})"
        )
    if uses > 1:
        warnings.append(
            f"warning: this test set has scored {uses} finals in this tracking store; choosing among them by test "
            f"accuracy makes the winner's accuracy optimistic (test-set reuse): decide on CV, test once"
        )
    warning = "\n".join(warnings)
    return {
        "name": name,
        "version": str(version.version),
        "accuracy": candidate.accuracy,
        "reason": decision.reason,
        "previous": previous,
        "paired": decision.paired,
        "test_set_uses": uses,
        "warning": warning,
        "kind": candidate.kind,
    }
