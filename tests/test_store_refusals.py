"""Stores a command must refuse before it writes: a run `mlflow run` did not just start, a SQLite file that is not
an MLflow store, a URI that does not parse; and readers that must leave the experiment they read as it was.
Each refusal is one line, exit code 2, and nothing written (the store's bytes, or its rows, are compared)."""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli

from mlflow_mnist import experiments, schema, tracking

STAGE = ["tune", "--stage", "kernel_size", "--data", "sample", "--epochs", "1", "--folds", "2", "--n-jobs", "1"]


def _one_line(proc, message: str) -> str:
    """The refusal's single line (rc 2, no traceback), which says ``message``."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert message in lines[0], lines[0]
    return lines[0]


def _dump(db: Path) -> list[str]:
    """Every row and every table of the SQLite store ``db``, as SQL (read only)."""
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as connection:
        dump = list(connection.iterdump())
    connection.close()
    return dump


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _new_store(folder: Path) -> str:
    """An MLflow store (as this project makes one) holding only MLflow's ``Default`` experiment; its URI."""
    uri = f"sqlite:///{folder}/mlflow.db"
    tracking.connect(uri)
    return uri


# --- $MLFLOW_RUN_ID: only a run `mlflow run` has just made is adopted -------------------------------------------

PROJECT = {"mlflow.source.type": "PROJECT"}
LAUNCHERS = {
    # (tags, status, deleted, what the line says)
    "a finished final": ({**PROJECT, schema.LEVEL: schema.FINAL_LEVEL}, "FINISHED", False, "already a final run"),
    "a running step": ({**PROJECT, schema.LEVEL: schema.STEP_LEVEL}, "RUNNING", False, "already a step run"),
    "a finished project run": (PROJECT, "FINISHED", False, "it is FINISHED"),
    "a notebook's run": ({"mlflow.source.type": "NOTEBOOK"}, "RUNNING", False, "source type is NOTEBOOK"),
    "a run without a source": ({}, "RUNNING", False, "source type is not set"),
    "a deleted run": (PROJECT, "RUNNING", True, "it is deleted"),
}


def _launcher(uri: str, tags: dict, status: str = "RUNNING", deleted: bool = False) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    run_id = client.create_run("0", tags=tags).info.run_id
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    if deleted:
        client.delete_run(run_id)
    return run_id


@pytest.mark.parametrize("kind", list(LAUNCHERS))
def test_a_run_mlflow_run_did_not_just_start_is_refused_and_left_alone(tmp_path, kind):
    """`promote` (quick whatever it does) under each kind of run `mlflow run` did not just make: refused, and
    the store not touched."""
    tags, status, deleted, message = LAUNCHERS[kind]
    uri = _new_store(tmp_path)
    run_id = _launcher(uri, tags, status, deleted)
    before = _dump(tmp_path / "mlflow.db")
    proc = cli("promote", env={"MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": run_id}, cwd=tmp_path)
    line = _one_line(proc, f"MLFLOW_RUN_ID={run_id!r} is not a run `mlflow run` has just started")
    assert message in line and "unset it" in line
    assert _dump(tmp_path / "mlflow.db") == before


def test_tune_does_not_overwrite_a_finished_final_named_by_mlflow_run_id(tmp_path):
    """The audit's case: tune under $MLFLOW_RUN_ID of a finished final rewrote it into a step (and trained)."""
    uri = _new_store(tmp_path)
    tags, status, _, message = LAUNCHERS["a finished final"]
    run_id = _launcher(uri, tags, status)
    before = _dump(tmp_path / "mlflow.db")
    proc = cli(*STAGE, env={"MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": run_id}, cwd=tmp_path, timeout=240)
    assert message in _one_line(proc, "is not a run `mlflow run` has just started")
    assert _dump(tmp_path / "mlflow.db") == before


def test_only_the_run_mlflow_run_has_just_made_is_adopted(tmp_path, monkeypatch):
    """What `mlflow run` makes (RUNNING, source PROJECT, none of our tags) is still the command's run; a reader
    adopts it without writing, a writer marks its experiment for the UI. The same run once finished is not."""
    from mlflow import MlflowClient

    uri = _new_store(tmp_path)
    finished = _launcher(uri, {**PROJECT, "mlflow.project.entryPoint": "main"}, "FINISHED")
    run_id = _launcher(uri, {**PROJECT, "mlflow.project.entryPoint": "main"})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_RUN_ID", finished)
    before = _dump(tmp_path / "mlflow.db")
    with pytest.raises(tracking.TrackingError, match="it is FINISHED"):
        tracking.connect(existing=True)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    client = tracking.connect(existing=True)
    reader = experiments.resolve_experiment(client, create=False)
    assert (reader.experiment_id, reader.launcher_run_id) == ("0", run_id)
    assert _dump(tmp_path / "mlflow.db") == before
    writer = experiments.resolve_experiment(tracking.connect())
    assert (writer.experiment_id, writer.launcher_run_id) == ("0", run_id)
    assert MlflowClient(uri).get_experiment("0").tags[schema.EXPERIMENT_KIND] == schema.MODEL_TRAINING


# --- SQLite files that are not MLflow stores ---------------------------------------------------------------------


def _other_program(path: Path) -> None:
    with sqlite3.connect(path) as database:
        database.execute("CREATE TABLE foo (x INTEGER)")
        database.execute("INSERT INTO foo VALUES (1)")
    database.close()


def _optuna_study(path: Path) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    optuna.create_study(storage=storage, study_name="s")
    storage.engine.dispose()


def _empty_database(path: Path) -> None:
    with sqlite3.connect(path) as database:  # a SQLite header, and no table
        database.execute("PRAGMA user_version = 7")
    database.close()


FOREIGN = {
    "an empty file": (lambda path: path.write_bytes(b""), "is an empty file, not an MLflow store"),
    "an empty SQLite database": (_empty_database, "is an empty SQLite database, not an MLflow store"),
    "another program's database": (_other_program, "is not an MLflow store (another program's database"),
    "an Optuna study": (_optuna_study, "is not an MLflow store (an Optuna storage"),
    "a text file": (lambda path: path.write_text("not a database\n"), "is not a SQLite database"),
}
READERS = {
    "promote": ["promote"],
    "analyze": ["analyze", "--no-log", "--out", "report"],
    "export-study": ["export-study", "--storage", "sqlite:///study.db"],
    "final --search": ["final", "--data", "sample", "--search", "latest"],  # a writer that needs the store
}


@pytest.mark.parametrize("kind", list(FOREIGN))
@pytest.mark.parametrize("command", list(READERS))
def test_a_sqlite_file_that_is_not_an_mlflow_store_is_refused_untouched(tmp_path, kind, command):
    make, message = FOREIGN[kind]
    db = tmp_path / "mlflow.db"
    make(db)
    before = _digest(db)
    proc = cli(*READERS[command], env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"}, cwd=tmp_path)
    line = _one_line(proc, f"the tracking store {db} {message}")
    assert "MLFLOW_TRACKING_URI" in line
    assert _digest(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]  # no journal, report or study either


@pytest.mark.parametrize("kind", list(FOREIGN))
def test_writers_refuse_a_sqlite_file_that_is_not_an_mlflow_store(tmp_path, kind, monkeypatch):
    """tune and final may create a store, but not inside a file that is already there (an empty one included:
    the user pointed at something that exists); reach (before --precision auto's probe) checks the same."""
    make, message = FOREIGN[kind]
    db = tmp_path / "mlflow.db"
    make(db)
    before = _digest(db)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    for attempt in (tracking.connect, tracking.reach):
        with pytest.raises(tracking.TrackingError, match="MLFLOW_TRACKING_URI") as refused:
            attempt()
        assert message in str(refused.value)
        assert _digest(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]


def test_new_stores_and_stores_mlflow_built_are_still_accepted(tmp_path, monkeypatch):
    """An absent file becomes a new store (copied from the empty-store template); a store MLflow built in place
    (as `mlflow run` or `mlflow server` do) and the template itself are MLflow stores."""
    from mlflow import MlflowClient

    from mlflow_mnist.empty_store import empty_store, open_and_release

    monkeypatch.setenv("MLFLOW_MNIST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    template = empty_store()
    assert template is not None
    tracking._check_mlflow_store(template)
    ours = tmp_path / "ours.db"
    tracking.connect(f"sqlite:///{ours}")
    assert [e.name for e in tracking.connect(f"sqlite:///{ours}", existing=True).search_experiments()] == ["Default"]
    built = tmp_path / "built.db"
    open_and_release(built)  # MLflow's own migrations, in place
    MlflowClient(f"sqlite:///{built}").create_experiment("kept")
    client = tracking.connect(f"sqlite:///{built}", existing=True)
    assert {e.name for e in client.search_experiments()} == {"Default", "kept"}


# --- stores another MLflow wrote ------------------------------------------------------------------------------------


def _migrations():
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    return ScriptDirectory.from_config(_get_alembic_config(db_url=""))


def _older_revision() -> str:
    """The revision before the installed MLflow's head: what a store an older MLflow wrote holds."""
    script = _migrations()
    return script.get_revision(script.get_heads()[0]).down_revision


def _env(uri: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": uri}


SCHEMAS = {  # what the store's alembic_version says -> what the line must say
    "a newer MLflow": (lambda: "0123456789ab", "was written by a newer MLflow than the installed"),
    "an older MLflow": (_older_revision, "was written by an older MLflow"),
}


# The older store's case runs the `mlflow db upgrade` it is told (a whole command, its migrations and a fresh
# interpreter after it: 11 s of the fast lane's 170), so it is in `make test` only.
@pytest.mark.parametrize(
    "writer", [pytest.param(writer, marks=[pytest.mark.slow] if "older" in writer else []) for writer in SCHEMAS]
)
def test_a_store_another_mlflow_wrote_says_which_mlflow_to_run(tmp_path, monkeypatch, writer):
    """MLflow refuses both with "out-of-date database schema ... run mlflow db upgrade", which this MLflow cannot
    do for a newer store; the tool said "cannot reach ... start the server". The newer one is told to install
    that MLflow, the older one to upgrade it (the command given works), and neither is touched."""
    revision, message = SCHEMAS[writer]
    monkeypatch.setenv("MLFLOW_MNIST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    tracking.connect(uri)
    with sqlite3.connect(db) as database:
        database.execute("UPDATE alembic_version SET version_num = ?", (revision(),))
    database.close()
    before = _digest(db)
    line = _one_line(cli("promote", env={"MLFLOW_TRACKING_URI": uri}, cwd=tmp_path), message)
    assert "start the server" not in line
    assert _digest(db) == before
    if writer == "an older MLflow":
        command = re.search(r"run `(mlflow db upgrade [^`]+)`", line).group(1).split()
        mlflow = Path(sys.executable).with_name("mlflow")
        upgrade = subprocess.run([str(mlflow), *command[1:]], capture_output=True, text=True, cwd=tmp_path)
        assert upgrade.returncode == 0, upgrade.stderr[-2000:]
        opened = "from mlflow_mnist import tracking; print(len(tracking.connect(existing=True).search_experiments()))"
        proc = subprocess.run([sys.executable, "-c", opened], capture_output=True, text=True, env=_env(uri))
        assert proc.returncode == 0 and proc.stdout.strip() == "1", proc.stderr[-2000:]  # a new process: no cache


# --- URIs that do not parse ---------------------------------------------------------------------------------------


def _no_such_user() -> str:
    for name in ("nosuchuser", "nosuchuser-mlflow-mnist", "nosuchuser-7f3a"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            return name
    pytest.skip("every candidate user name exists here")


URIS = {
    "an unbalanced IPv6 bracket in a database URL": ("postgresql://[::1/db", "is not a valid URL"),
    "an unbalanced IPv6 bracket in a server URL": ("http://[::1", "is not a valid URL"),
    "an unknown user's home in a SQLite URI": ("sqlite:///~{user}/m.db", "(~{user} names no user here)"),
    "an unknown user's home in a folder store": ("file:~{user}/m", "set MLFLOW_TRACKING_URI to sqlite:///PATH/"),
}


@pytest.mark.parametrize("case", list(URIS))
def test_a_malformed_tracking_uri_is_one_line(tmp_path, case):
    user = _no_such_user()
    uri, message = (text.format(user=user) for text in URIS[case])
    proc = cli(*STAGE, env={"MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": ""}, cwd=tmp_path)
    _one_line(proc, message)
    assert not list(tmp_path.iterdir())


def test_databricks_is_refused_in_one_line(tmp_path):
    """MLflow's databricks_utils warns before it fails ("Failed to create databricks SDK workspace client")."""
    proc = cli(*STAGE, env={"MLFLOW_TRACKING_URI": "databricks", "MLFLOW_RUN_ID": ""}, cwd=tmp_path)
    _one_line(proc, "the tracking store at databricks")
    assert not list(tmp_path.iterdir())


# --- readers leave the experiment they read as it was -------------------------------------------------------------

READS = {
    "promote": ["promote"],
    "promote --experiment Default": ["promote", "--experiment", "Default"],
    "analyze": ["analyze", "--no-log", "--out", "{tmp}/report"],
    "export-study": ["export-study", "--storage", "sqlite:///{tmp}/study.db"],
    # a writer that needs an earlier search there, refused for want of one (before, it tagged the experiment first)
    "final --search latest": ["final", "--experiment", "Default", "--search", "latest", "--data", "sample"],
}


@pytest.mark.parametrize("command", list(READS))
def test_readers_do_not_tag_the_experiment_they_read(tmp_path, command):
    """Each refuses (there is nothing to read, no search to train), and the store is as it was: no
    `mlflow.experimentKind` tag."""
    store = tmp_path / "store"
    store.mkdir()
    uri = _new_store(store)
    before = _dump(store / "mlflow.db")
    assert not [line for line in before if schema.EXPERIMENT_KIND in line]
    args = [arg.format(tmp=tmp_path) for arg in READS[command]]
    proc = cli(*args, env={"MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": ""}, cwd=tmp_path)
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, proc.stderr
    assert _dump(store / "mlflow.db") == before


def _client_of_a_new_store(folder: Path, monkeypatch):
    """A client of a new store in ``folder``, which MLFLOW_TRACKING_URI names; no experiment or run comes from
    the environment."""
    from mlflow import MlflowClient

    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    uri = _new_store(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(uri)


def test_resolve_experiment_only_looks_for_readers_and_marks_for_writers(tmp_path, monkeypatch):
    client = _client_of_a_new_store(tmp_path, monkeypatch)
    gone = client.create_experiment("gone")
    client.delete_experiment(gone)
    before = _dump(tmp_path / "mlflow.db")
    assert experiments.resolve_experiment(client, create=False).experiment_id == "0"
    assert experiments.resolve_experiment(client, "Default", create=False).experiment_id == "0"
    with pytest.raises(tracking.TrackingError, match="'gone' is deleted"):
        experiments.resolve_experiment(client, "gone", create=False)
    assert _dump(tmp_path / "mlflow.db") == before
    assert experiments.resolve_experiment(client, "Default").experiment_id == "0"  # a writer's
    assert client.get_experiment("0").tags[schema.EXPERIMENT_KIND] == schema.MODEL_TRAINING


def test_mlflow_experiment_id_is_read_as_mlflow_reads_it(tmp_path, monkeypatch):
    """MLflow's own API writes to the experiment $MLFLOW_EXPERIMENT_ID names when no name is given; the tool
    ignored it and wrote elsewhere. --experiment stays over it; a name from the environment must agree with it."""
    client = _client_of_a_new_store(tmp_path, monkeypatch)
    team = client.create_experiment("team")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", team)
    assert experiments.resolve_experiment(client, create=False).name == "team"
    assert experiments.resolve_experiment(client).experiment_id == team  # a writer's
    assert experiments.resolve_experiment(client, "Default", create=False).name == "Default"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team")
    assert experiments.resolve_experiment(client, create=False).name == "team"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "Default")
    with pytest.raises(tracking.TrackingError, match="name different experiments: unset one of them"):
        experiments.resolve_experiment(client, create=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "77")
    before = _dump(tmp_path / "mlflow.db")
    for create in (False, True):
        with pytest.raises(tracking.TrackingError, match="MLFLOW_EXPERIMENT_ID='77' is not an experiment in"):
            experiments.resolve_experiment(client, create=create)
    assert _dump(tmp_path / "mlflow.db") == before


def test_a_read_only_store_file_is_one_line_before_anything_is_tried(tmp_path, monkeypatch):
    """From an audit: a store file the user cannot write (`chmod 444`; `chattr +i` for root) got MLflow's first
    write's SQLAlchemy error and traceback, 67 lines, and advice to "check that it is up". The file's write access is
    checked with the folder's, before anything is written. (Made read-only through `os.access`, what the check asks:
    permission bits do not stop root, and tmpfs, where the tests run, has no immutable flag.)"""
    uri = _new_store(tmp_path)
    store = tmp_path / "mlflow.db"
    before = _dump(store)
    real_access = os.access
    monkeypatch.setattr(
        tracking.os,
        "access",
        lambda path, mode: False if Path(path) == store and mode & os.W_OK else real_access(path, mode),
    )
    with pytest.raises(tracking.TrackingError) as refused:
        tracking.connect(uri)
    assert str(refused.value) == (
        f"cannot write the SQLite store {store}: the file is read-only for this user (make it writable, `chmod u+w`, "
        f"or set MLFLOW_TRACKING_URI)"
    )
    assert _dump(store) == before


@pytest.fixture
def https_server(tmp_path):
    """A local HTTPS server whose self-signed certificate nobody trusts: a tracking server behind TLS as the
    cluster recipe sets it up, minus the CA certificate."""
    import http.server
    import ssl
    import subprocess
    import threading

    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_tls_server_whose_certificate_is_not_trusted_is_not_called_unreachable(https_server, monkeypatch):
    """From a walk-through of docs/cluster.md: without MLFLOW_TRACKING_SERVER_CERT_PATH (or with it naming no
    file), the tool said "cannot reach the tracking store ... start the server", of a server that was up. It now
    says the certificate was not verified and names the variable; a path that is no file is refused before any
    request (requests retried it as a connection error)."""
    from mlflow_mnist.tracking import TrackingError, _first_answer

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH", raising=False)
    with pytest.raises(TrackingError) as untrusted:
        _first_answer(https_server)
    line = str(untrusted.value)
    assert "answered, but its TLS certificate was not verified" in line and "MLFLOW_TRACKING_SERVER_CERT_PATH" in line
    assert "self-signed certificate" in line and "start the server" not in line and "\n" not in line
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", "/nonexistent/ca.pem")
    with pytest.raises(TrackingError, match=r"^MLFLOW_TRACKING_SERVER_CERT_PATH=/nonexistent/ca.pem is not a file"):
        _first_answer(https_server)


@pytest.fixture
def plain_http_server():
    """A local plain-HTTP server: a tracking server without TLS, asked for as https://."""
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_uri_with_the_wrong_scheme_for_its_server_says_which_scheme_it_speaks(
    https_server, plain_http_server, monkeypatch
):
    """https:// to a plain-HTTP server was said to have a certificate that was not verified (the advice: set a
    CA path), and http:// to an HTTPS server "cannot reach ... start the server", of servers that were up. Each
    now names the scheme the server speaks."""
    from mlflow_mnist.tracking import TrackingError, _first_answer

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH", raising=False)
    with pytest.raises(TrackingError) as plain:
        _first_answer(f"https://{plain_http_server}")
    assert str(plain.value).startswith(f"the tracking server at https://{plain_http_server} answered in plain HTTP")
    assert "certificate" not in str(plain.value) and "\n" not in str(plain.value)
    with pytest.raises(TrackingError) as tls:
        _first_answer(https_server.replace("https://", "http://"))
    assert "speaks HTTPS, not plain HTTP: set MLFLOW_TRACKING_URI to https://" in str(tls.value)
    assert "start the server" not in str(tls.value) and "\n" not in str(tls.value)
    free = socket_port_nobody_listens_on()
    with pytest.raises(
        TrackingError, match=r"^cannot reach the tracking store at http://127.0.0.1:\d+ .*start the server"
    ):
        _first_answer(f"http://127.0.0.1:{free}")


def socket_port_nobody_listens_on() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_server_error_is_not_told_to_wait_for_the_server_to_come_back():
    """A server answering 500 (its artifact store needs boto3 it lacks) was reported as "lost the tracking store
    ... once it is back, run the same command again": a rerun meets the same error. The line says the server
    failed and where to look; a lost connection keeps the "once it is back" advice (None here)."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import ConnectionError as RequestsConnectionError

    from mlflow_mnist.tracking import refusal_line

    failed = MlflowException(  # MLflow's own wording for an HTTP error answer
        "API request to endpoint /api/2.0/mlflow/runs/create failed with error code 500 != 200. Response body: "
        "'ModuleNotFoundError: No module named boto3'"
    )
    line = refusal_line("https://u:pw@host:5000", failed)
    assert line.startswith("the tracking server at https://***@host:5000 failed a request (API request")
    assert "its own log says why" in line and "boto3 for s3://" in line and "pw" not in line
    lost = RequestsConnectionError("HTTPConnectionPool(host='host', port=5000): Max retries exceeded")
    assert refusal_line("https://host:5000", lost) is None
    # MLflow's wrapping of a lost connection: its default code is INTERNAL_ERROR, and it is still a lost store.
    wrapped = MlflowException(
        "API request to http://host:5000/api/2.0/mlflow/runs/create failed with exception HTTPConnectionPool("
        "host='host', port=5000): Max retries exceeded with url: /api/2.0/mlflow/runs/create"
    )
    assert wrapped.error_code == "INTERNAL_ERROR" and refusal_line("https://host:5000", wrapped) is None


# --- a database that refuses the login -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_database_that_refuses_the_login_is_one_line_at_once(tmp_path, monkeypatch):
    """MLflow retried a refused PostgreSQL login with doubling sleeps, printing its retries, and after 105 s the
    tool said "cannot reach ... start the server" (a missing ~/.pgpass, 2-core AMD EPYC). One login is tried
    first: each refusal is one line within seconds, naming what to fix, and nothing is created in the database."""
    import sqlalchemy

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "tools"))
    from services import Postgres, postgres_bindir

    if postgres_bindir() is None:
        pytest.skip("PostgreSQL server binaries not found: make postgres")
    database = Postgres(tmp_path / "pg").start()
    try:
        cases = {  # what the user got wrong -> (URI, environment, the line's words)
            "no ~/.pgpass": (database.uri, {"PGPASSFILE": "/nonexistent"}, "refused the login (connection to"),
            "a wrong password": (
                database.uri,
                {"PGPASSFILE": "/nonexistent", "PGPASSWORD": "wrong-password"},
                'password authentication failed for user "mlflow"): check the user in MLFLOW_TRACKING_URI',
            ),
            "a database not created": (database.database_uri("nosuch"), database.env(), "has no such database"),
        }
        for what, (uri, env, words) in cases.items():
            started = time.monotonic()
            line = _one_line(cli("promote", env={"MLFLOW_TRACKING_URI": uri, **env}, cwd=tmp_path), words)
            assert time.monotonic() - started < 30, what
            assert "wrong-password" not in line and "start the server" not in line, line
        monkeypatch.setenv("PGPASSFILE", str(database.passfile))
        engine = sqlalchemy.create_engine(database.uri, poolclass=sqlalchemy.pool.NullPool)
        try:
            assert sqlalchemy.inspect(engine).get_table_names() == []  # refused before MLflow built its schema
        finally:
            engine.dispose()
    finally:
        database.stop()


LOST_DATABASE = """
import sqlalchemy
from mlflow.exceptions import MlflowException
from mlflow.store.db.utils import _get_managed_session_maker

from mlflow_mnist import cli

cli._quiet_libraries()
engine = sqlalchemy.create_engine("sqlite://")
session = _get_managed_session_maker(sqlalchemy.orm.sessionmaker(bind=engine), "sqlite")
try:
    with session() as opened:  # what a lost database raises in MLflow's sessions: an OperationalError
        opened.execute(sqlalchemy.text("SELECT * FROM runs"))
except MlflowException as error:
    print(error.error_code)
"""


def test_a_database_lost_mid_search_is_not_reported_by_mlflow_too():
    """From an audit: PostgreSQL stopped mid-search, and before the driver's one line ("lost the tracking store
    ...: finished folds are kept") MLflow logged each failed session at ERROR with its traceback, 594 lines. The
    exception still reaches the tool; MLflow's log of it does not reach the terminal."""
    proc = subprocess.run([sys.executable, "-c", LOST_DATABASE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "TEMPORARILY_UNAVAILABLE", proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "SQLAlchemy database error" not in proc.stderr, proc.stderr[-2000:]
