"""Store access: connect, read the campaign's memory (:mod:`mlflow_mnist.experiments` finds its experiment).
Tag names and the records they form live in :mod:`mlflow_mnist.schema`; writes live in :mod:`mlflow_mnist.runs`
and the modules built on it.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow_mnist.database_login import login_refusal
from mlflow_mnist.paging import all_pages
from mlflow_mnist.planning import CandidateRecord, FoldRecord, StepBest, StoreState
from mlflow_mnist.redaction import first_line, redact
from mlflow_mnist.schema import (
    ANALYSIS_LEVEL,
    CANDIDATE_LEVEL,
    CHANCE_ACCURACY,
    DIGEST,
    FINAL_LEVEL,
    FIT_SECONDS,
    FOLD_KEY,
    FOLD_LEVEL,
    HELDOUT_ACCURACY,
    LEVEL,
    LOCK_TOKEN,
    LOGGED_MODEL_ID,
    MEAN_HELDOUT_ACCURACY,
    MODEL_SHA256,
    PARENT,
    SEAL,
    SETTINGS_KEY,
    STATUS,
    STD_HELDOUT_ACCURACY,
    STEP_LEVEL,
    CandidateTags,
    GroupResult,
    GroupTags,
    counts,
    step_name,
)
from mlflow_mnist.seal import RunSeal, trusted
from mlflow_mnist.store_schema import schema_line
from mlflow_mnist.tls_answers import answered_in_plain_http, certificate_reason, speaks_tls

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI (without credentials) and the fix."""


def refusal_line(uri: str, error: BaseException) -> str | None:
    """What a store request refused by the server means, in one line without a fix's tail, or None for other
    failures (a lost connection: "once it is back, run it again" is then the right advice). A 403 is this MLflow
    user's missing permission, a 5xx the server's own failure (an artifact store it cannot write, boto3 missing for
    s3://): neither is mended by waiting, which is what users were told."""
    text, reason = str(error), first_line(error, 160)
    code = getattr(error, "error_code", "")
    if code == "PERMISSION_DENIED" or re.search(r"error code 403\b", text):
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        who = f"MLflow user {user!r}" if user else "this MLflow user"
        return (
            f"the tracking server at {redact(uri)} refused {who} permission ({reason}): a driver needs EDIT on its "
            f"experiment (MANAGE to create one): ask the server's admin (docs/cluster.md, step 2); MLflow's auth "
            f"answers the same for an experiment that does not exist: check its name"
        )
    # By its text only: MlflowException's default code is INTERNAL_ERROR, which a lost connection carries too.
    if re.search(r"error code 5\d\d\b", text):
        return (
            f"the tracking server at {redact(uri)} failed a request ({reason}): its own log says why (an artifact "
            f"store it cannot write, a package it lacks such as boto3 for s3://)"
        )
    return None


def _writable(folder: Path) -> bool:
    """A real write probe: permission bits say nothing to root, a read-only mount says no to everyone."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _abandoned_partials(path: Path) -> list[Path]:
    """Partial stores (and their journals) left by processes on this host that were killed while creating."""
    import glob
    import socket

    prefix = f".{path.name}.{socket.gethostname()}."
    abandoned = []
    for partial in path.parent.glob(f"{glob.escape(prefix)}*.partial*"):
        pid = partial.name.removeprefix(prefix).split(".")[0]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            abandoned.append(partial)
        except (ValueError, PermissionError):
            pass  # not ours to judge: a name we did not make, or another user's live process
    return abandoned


def _create_sqlite_store(path: Path) -> None:
    """Build the schema in a private temporary file (a copy of :func:`~mlflow_mnist.empty_store.empty_store`
    where it can be kept), then link it into place unless a store is already there.

    MLflow builds a new SQLite store in dozens of migration steps; a process killed among them left a database
    no later start could open ("index ... already exists"), so the schema is built aside and appears whole.
    ``os.link`` refuses an existing target, which makes creation exclusive: of two drivers creating the same
    fresh store at once, the later one discards its copy and uses the first's (a rename would replace it, and
    the runs the first had already written would be lost). Filesystems without hard links decide under a lock.
    """
    import logging
    import shutil
    import socket
    import uuid

    from mlflow_mnist.empty_store import empty_store, open_and_release

    for abandoned in _abandoned_partials(path):
        abandoned.unlink(missing_ok=True)
    partial = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    migrations = logging.getLogger("mlflow.store.db.utils")  # "Creating initial MLflow database tables...": noise
    level = migrations.level
    migrations.setLevel(logging.WARNING)
    try:
        template = empty_store()
        if template is not None:
            shutil.copyfile(template, partial)  # MLflow opens it as built and adds its Default experiment
        open_and_release(partial)  # no connection of ours stays on the file under its temporary name
        try:
            os.link(partial, path)
        except FileExistsError:
            pass  # another process created the store first: it is the store
        except OSError:  # no hard links here (some network or FUSE filesystems)
            import fcntl

            with open(path.with_name(f".{path.name}.lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not path.exists():
                    os.replace(partial, path)
    finally:
        migrations.setLevel(level)
        partial.unlink(missing_ok=True)


PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextmanager
def quiet_downloads() -> Iterator[None]:
    """No MLflow download bars while inside: they would cut our progress lines. The CLI turns them off for its
    whole process; this covers API callers, and keeps a value the caller set themselves."""
    if PROGRESS_BAR_ENV in os.environ:
        yield
        return
    os.environ[PROGRESS_BAR_ENV] = "false"
    try:
        yield
    finally:
        os.environ.pop(PROGRESS_BAR_ENV, None)


class ModelFilesChanged(TrackingError):
    """A LoggedModel's files are not the ones logged: their digest is not the model's ``model_sha256`` param."""


def run_model_id(run) -> str | None:
    """The LoggedModel ``run`` logged: its ``logged_model_id`` param (written once); for a run logged before the
    param existed, its first model output (anyone can add outputs: :func:`logged_model_files` then requires no
    digest of it); for a sealed run, none."""
    recorded = run.data.params.get(LOGGED_MODEL_ID)
    if recorded is not None:
        return recorded
    if SEAL in run.data.tags:  # sealed runs record their model (seal-runs records an older run's): none logged
        return None
    outputs = run.outputs.model_outputs if run.outputs else []
    return outputs[0].model_id if outputs else None


def run_model_files(client, run) -> dict[str, bytes] | None:
    """The files of the model ``run`` logged (:func:`run_model_id`), None when it logged none; where the run
    recorded its model, that model must carry its digest (:func:`logged_model_files`)."""
    model_id = run_model_id(run)
    if model_id is None:
        return None
    return logged_model_files(client, model_id, require_digest=LOGGED_MODEL_ID in run.data.params)


def logged_model_files(client, model_id: str, *, require_digest: bool = False) -> dict[str, bytes]:
    """A LoggedModel's folder as the bytes a worker returned (what continues a fold, or joins an ensemble).

    Raises :class:`ModelFilesChanged` when its files' digest is not the one logged with it, or, where
    ``require_digest`` (the model a run of this version recorded as its own: it always has one), when it has none;
    models logged before the digest existed have none to compare."""
    import mlflow.artifacts

    from mlflow_mnist.model_files import NOT_MODEL_FILES, tree_sha256

    model = client.get_logged_model(model_id)
    logged = (model.params or {}).get(MODEL_SHA256)
    if require_digest and logged is None:
        raise ModelFilesChanged(
            f"model {model_id} has no {MODEL_SHA256} param, which every model this version logs carries: it is not "
            f"the one its run logged; delete that run to train it again"
        )
    with tempfile.TemporaryDirectory() as tmp, quiet_downloads():
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location, dst_path=tmp))
        if logged is not None and logged != tree_sha256(local):
            raise ModelFilesChanged(
                f"the files of model {model_id} were changed after it was logged (their sha256 is not its "
                f"{MODEL_SHA256} param); it is not used: delete the run that logged it to train it again"
            )
        names = (str(f.relative_to(local)) for f in local.rglob("*") if f.is_file())
        return {name: Path(local, name).read_bytes() for name in names if name not in NOT_MODEL_FILES}


def run_artifact_bytes(run_id: str, artifact_path: str) -> bytes | None:
    """One artifact file of a run, or None when the run has none of that name."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp, quiet_downloads():
        try:
            return Path(
                mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp)
            ).read_bytes()
        except (MlflowException, OSError):
            return None


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
# The pip package that provides a database driver's module (a MySQL URI was told to install PostgreSQL's).
DRIVER_PACKAGES = {
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "pyodbc": "pyodbc",
    "pymssql": "pymssql",
}


def _missing_driver(uri: str, error: ImportError) -> TrackingError:
    """A database URI whose Python driver is not installed, found by the probe or by MLflow's own client."""
    module = getattr(error, "name", "") or "its driver"
    return TrackingError(
        f"the tracking URI {redact(uri)} needs the Python package providing {module!r}, which is not "
        f"installed: pip install {DRIVER_PACKAGES.get(module, 'it')} or use another MLFLOW_TRACKING_URI"
    )


def _reach_database(uri: str, timeout: float = 5.0) -> None:
    """A database-backed store has its driver installed and its host and port answer within seconds, or one line
    says which is wrong: MLflow's own engine would retry with doubling sleeps for about 100 s before it gave up."""
    import socket
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(uri)
    except ValueError as error:  # an unbalanced '[' or ']' around an IPv6 host
        raise TrackingError(
            f"the tracking URI {redact(uri)} is not a valid URL ({error}): fix MLFLOW_TRACKING_URI"
        ) from None
    family = parts.scheme.split("+")[0]
    if family not in DATABASE_PORTS:
        return
    try:
        from sqlalchemy.engine import make_url

        make_url(uri).get_dialect().import_dbapi()
    except ImportError as error:
        raise _missing_driver(uri, error) from None
    except Exception:  # noqa: BLE001 - an unknown dialect: MLflow's own client says what is wrong below
        pass
    try:
        host, port = parts.hostname, parts.port or DATABASE_PORTS[family]
    except ValueError:
        raise TrackingError(f"the tracking URI {redact(uri)} has no valid port: fix MLFLOW_TRACKING_URI") from None
    if not host or host.startswith("/"):
        return  # a local socket: nothing to probe here
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as error:
        raise TrackingError(
            f"cannot reach the database of the tracking store at {redact(uri)} ({type(error).__name__}): start it "
            f"or fix MLFLOW_TRACKING_URI"
        ) from None
    refusal = login_refusal(uri)
    if refusal:
        raise TrackingError(refusal)


def connect(uri: str | None = None, *, on_reached: Callable[[], object] | None = None, existing: bool = False):
    """A client for ``uri`` that has answered one request; a clear :class:`TrackingError` otherwise.

    Readers (promote, analyze, export-study) pass ``existing``: a SQLite store that is not there is then an error,
    not a new empty one left behind in whatever folder the command ran from.

    ``on_reached`` runs once the store can no longer refuse the command: after its first answer, or, for a new
    SQLite store, once its folder is known writable and before the seconds MLflow takes to build its schema (so
    work started there, a pool warming up, overlaps them). A command refused here has started nothing.
    """
    import mlflow

    uri = prepared_uri(uri)
    path = sqlite_store_path(uri)
    if existing and path is not None and not path.exists():
        raise TrackingError(
            f"there is no tracking store at {redact(uri)}: run this from the campaign's folder or set "
            f"MLFLOW_TRACKING_URI"
        )
    launcher = os.environ.get("MLFLOW_RUN_ID") or None
    if path is not None and not path.exists():
        if launcher:  # a new store holds no run: `mlflow run` made it for another store
            raise stale_launcher(launcher)
        if on_reached is not None:
            on_reached()
            on_reached = None
        _create_sqlite_store(path)
    _reach_database(uri)
    mlflow.set_tracking_uri(uri)
    client = _first_answer(uri)
    if launcher:  # checked before the pool starts: a stale one is refused in a second, not after its warm-up
        launcher_run(client, launcher)
    if on_reached is not None:
        on_reached()
    return client


def reach(uri: str | None = None) -> None:
    """What :func:`connect` checks, writing nothing: the store answers one request, or a new SQLite store's folder
    is writable; a clear :class:`TrackingError` otherwise. For work that must not start before the store is known
    to take the command, yet must not share the cores with a pool warming up (``--precision auto``'s probe)."""
    uri = prepared_uri(uri)
    path = sqlite_store_path(uri)
    if path is not None and not path.exists():
        return
    _reach_database(uri)
    _first_answer(uri)


def prepared_uri(uri: str | None) -> str:
    """The URI to use, with MLflow's client set to fail fast and print nothing per run."""
    uri = uri or tracking_uri()
    # A shared server that is down should fail in seconds, not after MLflow's default minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    # MLflow prints a URL for every run it closes on a server: hundreds of lines through our progress bar.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    return uri


def sqlite_file(uri: str) -> str | None:
    """The file a ``sqlite:///`` tracking URI names, as written (its query dropped; "" when it names none), or
    ``None`` for any other URI. Pure: :func:`sqlite_store_path` checks it, and ``analysis.studies`` compares with it."""
    if not uri.startswith("sqlite:///"):
        return None
    return uri.removeprefix("sqlite:///").split("?")[0]


def sqlite_store_path(uri: str) -> Path | None:
    """A SQLite store's file (its folder known writable), ``None`` for any other store; a folder store refused."""
    if uri.startswith("file:") or (":" not in uri and uri != "databricks"):
        # MLflow's file store: it cannot create a name atomically (no lock), and MLflow 3 no longer develops it.
        written = uri.removeprefix("file://").removeprefix("file:")
        raise TrackingError(
            f"{redact(uri)} is a folder store (MLflow's file backend), which cannot lock a campaign: set "
            f"MLFLOW_TRACKING_URI to sqlite:///{_full_path(written) or 'PATH/mlflow.db'}, a server or a database URL"
        )
    if uri.startswith("sqlite://") and not uri.removeprefix("sqlite://").split("?")[0]:
        raise TrackingError(
            f"{redact(uri)} is an in-memory SQLite store, lost when the command ends: set MLFLOW_TRACKING_URI to "
            f"sqlite:///PATH/mlflow.db"
        )
    written = sqlite_file(uri)
    if written is None:
        return None
    if written.startswith("~"):  # MLflow would make a folder named '~' in the working directory
        full = _full_path(written)
        user = written.split("/")[0]
        raise TrackingError(
            f"{redact(uri)}: MLflow does not expand '~' in a SQLite URI: give the full path, "
            + (f"sqlite:///{full}" if full else f"sqlite:///PATH/{Path(written).name} ({user} names no user here)")
        )
    path = Path(written).resolve()
    if path.exists() and not path.is_file():
        raise TrackingError(f"the SQLite store {path} is not a file: remove it or set MLFLOW_TRACKING_URI")
    if path.exists():
        _check_mlflow_store(path)
        if not os.access(path, os.W_OK):  # MLflow's first write failed with a SQLAlchemy traceback, 67 lines
            raise TrackingError(
                f"cannot write the SQLite store {path}: the file is read-only for this user (make it writable, "
                f"`chmod u+w`, or set MLFLOW_TRACKING_URI)"
            )
    if not path.parent.exists():
        raise TrackingError(
            f"the SQLite store's folder {path.parent} does not exist: create it or set MLFLOW_TRACKING_URI"
        )
    if not _writable(path.parent):
        raise TrackingError(
            f"cannot write the SQLite store in {path.parent}: make it writable or set MLFLOW_TRACKING_URI"
        )
    return path


def _full_path(written: str) -> str | None:
    """``written`` with its ``~`` expanded, made absolute; None where the ``~user`` names no user here."""
    try:
        return str(Path(written).expanduser().resolve())
    except RuntimeError:  # "Could not determine home directory."
        return None


#: Tables every MLflow SQLite store has (Optuna's storages have an ``alembic_version`` too, no ``experiments``).
MLFLOW_STORE_TABLES = frozenset({"alembic_version", "experiments"})


def _check_mlflow_store(path: Path) -> None:
    """An existing file is an MLflow store, or one line says what it is: MLflow would otherwise write its whole
    schema into any SQLite file (another program's database, an Optuna study, an empty file) before anything
    could refuse it. Read through a read-only connection, so the check itself writes nothing."""
    import sqlite3

    from mlflow_mnist.sqlite_tables import read_only_tables

    fix = "point MLFLOW_TRACKING_URI at the campaign's mlflow.db"
    try:
        tables = read_only_tables(path, timeout=10)
    except sqlite3.OperationalError:
        return  # it cannot be opened (permissions), or a writer holds it: MLflow waits for it, or says what is wrong
    except sqlite3.DatabaseError as error:  # "file is not a database"
        raise TrackingError(f"the tracking store {path} is not a SQLite database ({error}): {fix}") from None
    if MLFLOW_STORE_TABLES <= tables:
        return
    if not tables:
        what = "an empty file" if path.stat().st_size == 0 else "an empty SQLite database"
        raise TrackingError(
            f"the tracking store {path} is {what}, not an MLflow store: {fix}, or remove the file to start a new "
            f"store there"
        )
    kind = "an Optuna storage" if {"studies", "version_info"} <= tables else "another program's database"
    shown = ", ".join(sorted(tables)[:4]) + (", ..." if len(tables) > 4 else "")
    raise TrackingError(f"the tracking store {path} is not an MLflow store ({kind}, with tables {shown}): {fix}")


def _first_answer(uri: str):
    """A client for ``uri`` that has answered one request, or one line saying what is wrong and what to do."""
    from mlflow import MlflowClient
    from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

    ca = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    if uri.startswith("https://") and ca and not Path(ca).is_file():  # requests says "invalid path", retried
        raise TrackingError(
            f"MLFLOW_TRACKING_SERVER_CERT_PATH={ca} is not a file: set it to the CA certificate (PEM) that signed "
            f"the tracking server's certificate"
        )
    try:
        with _silenced("mlflow.utils.databricks_utils"):  # "Failed to create databricks SDK workspace client"
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)
    except UnsupportedModelRegistryStoreURIException:  # MLflow's text is a paragraph listing every scheme
        scheme = uri.split(":", 1)[0] if ":" in uri else uri
        raise TrackingError(
            f"MLflow has no store for {scheme!r} URIs ({redact(uri)}): set MLFLOW_TRACKING_URI to sqlite:///PATH, "
            f"http(s)://SERVER or a database URL such as postgresql://HOST/DB"
        ) from None
    except ImportError as error:  # a database URI whose driver is not installed
        raise _missing_driver(uri, error) from None
    except Exception as error:  # noqa: BLE001 - every failure mode gets the same one-line advice
        text, reason = str(error), first_line(error, 160)
        code = getattr(error, "error_code", "")
        if code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or re.search(r"error code (401|403)\b", text):
            raise TrackingError(
                f"the tracking server at {redact(uri)} refused our credentials ({reason[:60]}...): check "
                f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
            ) from None
        schema_refusal = schema_line(uri, text)
        if schema_refusal:
            raise TrackingError(schema_refusal) from None
        if uri.startswith("https://") and answered_in_plain_http(text):
            raise TrackingError(
                f"the tracking server at {redact(uri)} answered in plain HTTP, not TLS: set MLFLOW_TRACKING_URI to "
                f"http://... if it is meant to be plain, or serve it with TLS (docs/cluster.md)"
            ) from None
        # The server is up and only its certificate was not trusted ("cannot reach" sent users to start it).
        certificate = certificate_reason(text)
        if certificate:
            raise TrackingError(
                f"the tracking server at {redact(uri)} answered, but its TLS certificate was not verified "
                f"({certificate}): set MLFLOW_TRACKING_SERVER_CERT_PATH to the CA certificate that "
                f"signed it, and use the host name or IP address the certificate names"
            ) from None
        if "SSLError" in text:
            raise TrackingError(
                f"the TLS handshake with the tracking server at {redact(uri)} failed ({reason}): check its TLS "
                f"settings, and MLFLOW_TRACKING_CLIENT_CERT_PATH if it asks for a client certificate"
            ) from None
        if speaks_tls(uri):  # it closed our plain request unanswered, which reads as a connection reset
            raise TrackingError(
                f"the tracking server at {redact(uri)} speaks HTTPS, not plain HTTP: set MLFLOW_TRACKING_URI to "
                f"https://... (and MLFLOW_TRACKING_SERVER_CERT_PATH to the CA certificate that signed it)"
            ) from None
        raise TrackingError(
            f"cannot reach the tracking store at {redact(uri)} ({reason}): start the server or set MLFLOW_TRACKING_URI"
        ) from None
    return client


@contextmanager
def _silenced(name: str) -> Iterator[None]:
    """No record of logger ``name`` while inside: its warning would be a second line before our one-line error."""
    import logging

    logger = logging.getLogger(name)
    disabled = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = disabled


def launcher_run(client, run_id: str):
    """The run `mlflow run` made for this command (``$MLFLOW_RUN_ID``); one line when the store has no such run,
    or when the run is not one `mlflow run` has just made: adopting it would overwrite it (a finished final
    rewritten into a search step). `mlflow run` makes its run RUNNING, with source type PROJECT and none of our
    tags, before it starts the command."""
    from mlflow.entities import SourceType
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_TYPE

    try:
        run = client.get_run(run_id)
    except MlflowException:  # left over in a shell from another store's `mlflow run`
        raise stale_launcher(run_id) from None
    tags, project = run.data.tags, SourceType.to_string(SourceType.PROJECT)
    if run.info.lifecycle_stage != "active":
        raise stale_launcher(run_id, "it is deleted")
    if LEVEL in tags:
        raise stale_launcher(run_id, f"it is already a {tags[LEVEL]} run of this project")
    if run.info.status != "RUNNING":
        raise stale_launcher(run_id, f"it is {run.info.status}")
    if tags.get(MLFLOW_SOURCE_TYPE) != project:
        raise stale_launcher(run_id, f"its source type is {tags.get(MLFLOW_SOURCE_TYPE) or 'not set'}, not {project}")
    return run


def stale_launcher(run_id: str, why: str = "") -> TrackingError:
    if why:
        return TrackingError(
            f"MLFLOW_RUN_ID={run_id!r} is not a run `mlflow run` has just started ({why}): unset it (`mlflow run` "
            f"sets it for the command it starts, which takes that run as its own)"
        )
    return TrackingError(
        f"MLFLOW_RUN_ID={run_id!r} is not a run in {redact(tracking_uri())}: unset it (`mlflow run` sets it for the "
        f"command it starts)"
    )


def search_all(client, experiment_ids: list[str], filter_string: str = "", order_by: list[str] | None = None):
    """Every matching run, page by page (a search answers at most 1,000 at a time)."""
    return all_pages(
        lambda token: client.search_runs(
            experiment_ids, filter_string, max_results=1000, order_by=order_by, page_token=token
        )
    )


def read_store_state(
    client, experiment: str, data_digest: str, settings_key: str | None = None, *, seal: RunSeal | None = None
) -> StoreState:
    """Completed steps' bests (made under the same settings), finished folds and candidates on this data.

    Folds are matched by key alone (the key holds everything that shapes a fold); a step's best only carries
    forward into a campaign with the same :meth:`SearchSettings.key`, so a 1-epoch 2-fold exploration never
    feeds a 6-epoch 3-fold campaign on the same data. Low rungs of successive halving decide nothing. With a
    ``seal``, only folds it sealed are reused (others are trained again), only steps it sealed carry forward, and
    only trials it sealed count as finished.
    """
    runs = search_all(client, [experiment], f"tags.`{DIGEST}` = '{data_digest}'")
    status = {run.info.run_id: run.info.status for run in runs}
    state = StoreState()
    newest_end: dict[str, int] = {}
    for run in runs:
        tags, info = run.data.tags, run.info
        level = tags.get(LEVEL)
        if level == CANDIDATE_LEVEL:
            ok = tags.get(STATUS, "ok") == "ok"
            score = run.data.metrics.get(MEAN_HELDOUT_ACCURACY, math.nan) if ok else 0.0
            record = CandidateTags.parse(tags)
            # With a seal, a finished trial it did not seal reads as cut short: its rung is run again (sealed folds
            # reused), so a score anyone could write never reaches a sampler, a pruner or a warm start.
            finished = info.status == "FINISHED" and trusted(run, seal)
            chance = run.data.metrics.get(CHANCE_ACCURACY, math.nan)
            std = run.data.metrics.get(STD_HELDOUT_ACCURACY, math.nan)
            state.candidates.append(CandidateRecord(record, score, tags.get(STATUS, "ok"), finished, chance, std))
            continue
        if info.status != "FINISHED":
            continue
        result = GroupResult.parse(tags) if level == STEP_LEVEL else None
        if result is not None and counts(tags) and trusted(run, seal):
            if settings_key is not None and tags.get(SETTINGS_KEY) != settings_key:
                continue
            step = step_name(tags)
            if (info.end_time or 0) >= newest_end.get(step, -1):
                newest_end[step] = info.end_time or 0
                rule = GroupTags.parse(tags).reference_rule
                state.step_bests[step] = StepBest(step, result.best_params, result.best_score, info.run_id, rule)
        elif level == FOLD_LEVEL and FOLD_KEY in tags and tags.get(STATUS) in ("ok", "diverged"):
            if not trusted(run, seal):
                continue
            parent = tags.get(PARENT, "")
            state.folds[tags[FOLD_KEY]] = FoldRecord(
                tags[FOLD_KEY],
                run.data.metrics.get(HELDOUT_ACCURACY, math.nan),
                run.data.metrics.get(FIT_SECONDS, math.nan),
                tags[STATUS],
                info.run_id,
                parent,
                status.get(parent) == "FINISHED",
                run.data.metrics.get(CHANCE_ACCURACY, 0.5),
            )
    return state


def close_stale_runs(client, experiment: str, *, holder_token: str = "", keep: Iterable[str] = ()) -> int:
    """Runs left RUNNING by earlier drivers become KILLED. Only call it holding the experiment's lock: every
    earlier holder has then released it, died on this machine, or lost it by its own clock before we took over,
    so none of them is still writing. Runs of this holder (``holder_token``) and analysis runs (which hold no
    lock) are spared."""
    keep = set(keep)
    running = search_all(client, [experiment], f"attributes.status = 'RUNNING' and tags.`{LEVEL}` != ''")
    stale = [
        run
        for run in running
        if run.info.run_id not in keep
        and not (holder_token and run.data.tags.get(LOCK_TOKEN) == holder_token)
        and run.data.tags.get(LEVEL) != ANALYSIS_LEVEL
    ]
    for run in stale:
        client.set_terminated(run.info.run_id, "KILLED")
    return len(stale)


def has_sealed_runs(client, experiment: str) -> bool:
    """Whether any run of ``experiment`` carries a seal (:mod:`mlflow_mnist.seal`): its campaign uses a key."""
    return bool(client.search_runs([experiment], f"tags.`{SEAL}` != ''", max_results=1))


#: The search filter of finished final runs (a test digest or other clause may be added with `` and ...``).
FINISHED_FINALS = f"tags.`{LEVEL}` = '{FINAL_LEVEL}' and attributes.status = 'FINISHED'"


def latest_final_run(client, experiment: str | list[str]):
    """The finished final run that ended last in ``experiment`` (an id, or up to 100 of them); None if none."""
    ids = [experiment] if isinstance(experiment, str) else experiment
    runs = client.search_runs(ids, FINISHED_FINALS, max_results=1, order_by=["attributes.end_time DESC"])
    return runs[0] if runs else None
