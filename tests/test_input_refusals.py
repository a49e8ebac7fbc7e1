"""Malformed input a command must refuse with one line (exit 2, no traceback) before it writes anything: a storage
for `export-study` that is not an Optuna storage, task specs, `~user` data paths, duration variables, a damaged
cached empty store, blank or unreachable data, and `analyze` on a store with nothing to report."""

from __future__ import annotations

import hashlib
import shutil
import socket
import sqlite3
from pathlib import Path

import pytest
from conftest import cli

from mlflow_mnist import tracking

STAGE = ["tune", "--stage", "kernel_size", "--data", "sample", "--epochs", "1", "--folds", "2", "--n-jobs", "1"]
NO_SUCH_USER = "~nosuchuser-mlflow-mnist/mnist"


def _one_line(proc, message: str) -> str:
    """The refusal's single line (rc 2, no traceback, nothing on stdout), which says ``message``."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert message in lines[0], lines[0]
    assert not proc.stdout.strip(), proc.stdout
    return lines[0]


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    connection.close()
    return tables


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _written(folder: Path) -> list[str]:
    """What a command left in ``folder`` (its working directory and the store's folder)."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.fixture(scope="module")
def campaign_store(tmp_path_factory) -> Path:
    """A store whose experiment ``mnist`` holds a finished 2-trial random search (no training: a stand-in worker),
    so readers choose it as the latest campaign's and `export-study` has a search to write."""
    import mlflow

    from mlflow_mnist.strategies import make_strategy
    from mlflow_mnist.tasks import get_task
    from mlflow_mnist.testing import fold_result, open_campaign, run, tiny_dataset

    folder = tmp_path_factory.mktemp("campaign")
    uri = f"sqlite:///{folder}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:  # the store variables and the folder are put back
            monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
            monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
            monkeypatch.chdir(folder)  # MLflow's artifacts (./mlruns) go beside the store
            campaign = open_campaign(uri, dataset=tiny_dataset(), experiment="mnist", folds=2, epochs=2, task="mnist")
            search = make_strategy("random", campaign.request(space=get_task("mnist").get_space("seed"), trials=2))
            run(campaign, search, worker=lambda fold: fold_result(fold, 0.9), with_model=False)
    finally:
        mlflow.set_tracking_uri(previous)
    return folder / "mlflow.db"


@pytest.fixture
def campaign_copy(campaign_store, tmp_path) -> Path:
    """A private copy of the campaign store, in this test's folder."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(campaign_store, db)
    return db


# --- export-study: the storage must be an Optuna storage, never the tracking store ------------------------------


@pytest.mark.parametrize("written", ["absolute", "relative"])
def test_export_study_refuses_the_tracking_store_as_its_storage(campaign_copy, written):
    """The README's own `sqlite:///mlflow.db` is the tracking store: Optuna's tables must never be written into
    it (RDBStorage made them before it failed)."""
    folder = campaign_copy.parent
    storage = f"sqlite:///{campaign_copy}" if written == "absolute" else "sqlite:///mlflow.db"
    before = _digest(campaign_copy)
    proc = cli(
        "export-study", "--storage", storage, env={"MLFLOW_TRACKING_URI": f"sqlite:///{campaign_copy}"}, cwd=folder
    )
    _one_line(proc, "is the tracking store itself")
    assert _digest(campaign_copy) == before
    assert not {"version_info", "studies"} & _tables(campaign_copy)


def test_export_study_refuses_another_programs_database_and_takes_an_optuna_storage(campaign_copy):
    """A SQLite file with tables, none of them Optuna's, is refused untouched; an existing Optuna storage (with a
    study of its own) still takes the export, beside what it held."""
    import optuna

    folder = campaign_copy.parent
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{campaign_copy}"}
    other = folder / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE foo (x INTEGER)")
        connection.execute("INSERT INTO foo VALUES (1)")
    connection.close()
    before = _digest(other)
    _one_line(cli("export-study", "--storage", f"sqlite:///{other}", env=env, cwd=folder), "is not an Optuna storage")
    assert _digest(other) == before and _tables(other) == {"foo"}

    studies = f"sqlite:///{folder}/studies.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="theirs", storage=studies)
    proc = cli("export-study", "--storage", studies, env=env, cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert sorted(s.study_name for s in optuna.get_all_study_summaries(studies)) == ["random:seed", "theirs"]


# --- malformed task specs, ~user paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, env",
    [
        (["stages", "--task", ":x"], {}),
        (["stages", "--task", ".x:y"], {}),
        ([*STAGE, "--task", ".x:y"], {}),
        (["spaces", "--task", "os.path:"], {}),
        (STAGE, {"MLFLOW_MNIST_TASK": ":x"}),
    ],
    ids=["empty module", "relative module", "tune, relative module", "no attribute", "from the environment"],
)
def test_a_malformed_task_spec_is_one_line(tmp_path, command, env):
    proc = cli(*command, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", **env}, cwd=tmp_path)
    line = _one_line(proc, "is not package.module:attr")
    if env:
        assert "(from $MLFLOW_MNIST_TASK: fix or unset it)" in line
    assert _written(tmp_path) == []


@pytest.mark.parametrize("given", ["--data", "$MLFLOW_MNIST_DATA"])
def test_a_data_path_of_an_unknown_users_home_is_one_line(tmp_path, given):
    command = [*STAGE[:3], "--epochs", "1", "--folds", "2"]
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "MLFLOW_MNIST_DATA": ""}
    if given == "--data":
        command += ["--data", NO_SUCH_USER]
    else:
        env["MLFLOW_MNIST_DATA"] = NO_SUCH_USER
    line = _one_line(cli(*command, env=env, cwd=tmp_path), "cannot expand '~nosuchuser-mlflow-mnist'")
    assert ("(from $MLFLOW_MNIST_DATA: fix or unset it)" in line) == (given != "--data")
    assert _written(tmp_path) == []


# --- duration variables: checked when a command starts, before the store is reached ----------------------------


@pytest.mark.parametrize("value", ["abc", "0", "0.01", "inf", "-5"])
@pytest.mark.parametrize("command", ["tune", "final"])
def test_a_bad_lease_is_one_line_before_the_store_exists(tmp_path, value, command):
    """$MLFLOW_MNIST_LEASE_SECONDS was read at import (a traceback, twice) and its range never checked: 0 failed
    after the store and experiment were made, 0.01 took the lock and lost it at once."""
    args = STAGE if command == "tune" else ["final", "--data", "sample", "--epochs", "1", "--folds", "2"]
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "MLFLOW_MNIST_LEASE_SECONDS": value}
    _one_line(cli(*args, env=env, cwd=tmp_path), f"$MLFLOW_MNIST_LEASE_SECONDS={value!r} must be a number")
    assert _written(tmp_path) == []


def test_a_bad_dask_wait_is_one_line_before_anything_starts(tmp_path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "MLFLOW_MNIST_DASK_WAIT": "abc"}
    _one_line(cli(*STAGE, "--executor", "dask", env=env, cwd=tmp_path), "$MLFLOW_MNIST_DASK_WAIT='abc' must be")
    assert _written(tmp_path) == []


def test_the_duration_variables_are_read_when_used_not_at_import(monkeypatch):
    from mlflow_mnist import lock
    from mlflow_mnist.executors import dask as dask_executor

    monkeypatch.setenv("MLFLOW_MNIST_LEASE_SECONDS", "7.5")
    monkeypatch.setenv("MLFLOW_MNIST_DASK_WAIT", "3")
    assert lock.lease_seconds() == 7.5 and dask_executor.wait_for_workers() == 3.0
    monkeypatch.delenv("MLFLOW_MNIST_LEASE_SECONDS")
    monkeypatch.delenv("MLFLOW_MNIST_DASK_WAIT")
    assert lock.lease_seconds() == 60.0 and dask_executor.wait_for_workers() == 60.0


# --- a damaged cached empty store ------------------------------------------------------------------------------


def test_a_damaged_cached_empty_store_is_replaced_not_copied(tmp_path, monkeypatch):
    """A junk template in the cache made every new store fail (`file is not a database`) until it was deleted."""
    import mlflow

    cache = tmp_path / "cache"
    cache.mkdir()
    template = cache / f"empty-store-mlflow-{mlflow.__version__}.db"
    template.write_bytes(b"junk\n")
    monkeypatch.setenv("MLFLOW_MNIST_CACHE", str(cache))
    client = tracking.connect(f"sqlite:///{tmp_path}/mlflow.db")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert {"alembic_version", "experiments", "runs"} <= _tables(template)  # built again, good for the next store


# --- data: a blank --data, and Keras' download offline ---------------------------------------------------------


def _refusing_proxy() -> tuple[socket.socket, dict[str, str]]:
    """A proxy on a port that refuses connections: every download fails at once, online or not."""
    refusing = socket.socket()  # bound, never listening
    refusing.bind(("127.0.0.1", 0))
    proxy = f"http://127.0.0.1:{refusing.getsockname()[1]}"
    return refusing, {"https_proxy": proxy, "HTTPS_PROXY": proxy, "no_proxy": "", "NO_PROXY": ""}


@pytest.mark.parametrize("given", ["--data", "$MLFLOW_MNIST_DATA"])
def test_a_blank_data_path_is_refused_not_taken_for_the_download(tmp_path, given):
    refusing, proxy = _refusing_proxy()
    command = [*STAGE[:3], "--epochs", "1", "--folds", "2"]
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "MLFLOW_MNIST_DATA": " ", **proxy}
    if given == "--data":
        command += ["--data", " "]
        env["MLFLOW_MNIST_DATA"] = ""
    line = _one_line(cli(*command, env=env, cwd=tmp_path), "is blank")
    assert ("$MLFLOW_MNIST_DATA" in line) == (given != "--data")
    assert _written(tmp_path) == []
    refusing.close()


@pytest.mark.slow  # imports TensorFlow (Keras' downloader)
def test_a_failed_keras_download_prints_one_line_and_leaves_no_cache_folder(tmp_path):
    """Offline with no --data: Keras printed "Downloading data from ..." on stdout and left an empty datasets
    folder in its home."""
    refusing, proxy = _refusing_proxy()
    keras_home = tmp_path / "keras"
    keras_home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
        "MLFLOW_MNIST_DATA": "",
        "KERAS_HOME": str(keras_home),
        **proxy,
    }
    proc = cli("tune", "--stage", "kernel_size", "--epochs", "1", "--folds", "2", "--n-jobs", "1", env=env, cwd=work)
    _one_line(proc, "could not download MNIST through Keras")
    assert not (keras_home / "datasets").exists()
    assert _written(work) == []
    refusing.close()


# --- analyze: nothing made, and no notice, when it refuses -----------------------------------------------------


def test_analyze_of_a_store_with_nothing_finished_makes_no_folder(tmp_path):
    tracking.connect(f"sqlite:///{tmp_path}/mlflow.db")
    proc = cli("analyze", env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}, cwd=tmp_path)
    _one_line(proc, "no finished steps in experiment(s) Default")
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--stage-run", "0123"], "--stage-run 0123 is not a run in this tracking store"),
        (["--out", "/dev/null"], "--out /dev/null cannot be the report's folder"),
    ],
    ids=["unknown stage run", "a device as the folder"],
)
def test_analyze_refusals_in_a_campaign_store_are_one_line(campaign_copy, args, message):
    """In a store holding a campaign, analyze chooses its experiment and says so: a notice that must not come
    before (or with) a refusal."""
    before = _digest(campaign_copy)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{campaign_copy}"}
    proc = cli("analyze", *args, "--no-log", env=env, cwd=campaign_copy.parent)
    _one_line(proc, message)
    assert _digest(campaign_copy) == before and _written(campaign_copy.parent) == ["mlflow.db"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["promote", "--run-id", "0123456789abcdef"], "is not a run in this tracking store"),
        pytest.param(
            ["final", "--search", "nonsense", "--data", "sample", "--n-jobs", "1"],
            "nonsense",
            marks=pytest.mark.slow,  # final opens the campaign: its pool starts (TensorFlow) before the search is read
        ),
    ],
    ids=["promote an unknown run", "final of an unknown search"],
)
def test_refusals_in_a_campaign_store_come_without_the_experiments_notice(campaign_copy, args, message):
    """promote and final choose the latest campaign's experiment and say so once their checks pass: a refused
    input is its one line alone (the notice came first, a second line)."""
    before = _digest(campaign_copy)
    proc = cli(*args, env={"MLFLOW_TRACKING_URI": f"sqlite:///{campaign_copy}"}, cwd=campaign_copy.parent)
    _one_line(proc, message)
    assert _digest(campaign_copy) == before


def test_a_notice_quoting_the_store_is_one_line(capsys):
    """Notices quote what the store holds (a lock holder's host and command, which another user may write): a
    newline or a terminal escape in it is written out, never a second, forged line."""
    from mlflow_mnist.cli import _notify

    _notify("waiting for the lock held by host1\nerror: forged \x1b[2J")
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["waiting for the lock held by host1\\nerror: forged \\x1b[2J"]


# --- the Python API: what the CLI's click types refuse, refused for Python callers too -----------------------------

API_MISTAKES = {  # call -> the line's words; every one refused before a store, a pool or a run is made
    "no trials": (
        lambda api: api.tune(strategy="random", space="seed", trials=0, data="sample"),
        "trials=0 must be at least 1",
    ),
    "a halving factor of one": (
        lambda api: api.tune(strategy="halving", stage="kernel_size", halving_factor=1, data="sample"),
        "halving_factor=1 must be at least 2",
    ),
    "negative first-rung epochs": (
        lambda api: api.tune(strategy="asha", space="seed", min_epochs=-1, data="sample"),
        "min_epochs=-1 must be at least 0",
    ),
    "a negative warm start": (
        lambda api: api.tune(strategy="asha", space="seed", warm_start=-1, data="sample"),
        "warm_start=-1 must be at least 0",
    ),
    "epochs as text": (lambda api: api.tune(stage="kernel_size", epochs="1", data="sample"), "epochs='1' must be"),
    "repeats as text": (lambda api: api.final(repeats="2", data="sample"), "repeats='2' must be a whole number"),
    "seeds as a float": (lambda api: api.final(seed=1.5, data="sample"), "seed=1.5 must be a whole number"),
    "overrides neither text nor a dict": (
        lambda api: api.tune(stage="kernel_size", overrides=["neurons_1=3"], data="sample"),
        "is neither text nor a dict",
    ),
    "data neither a path nor a name": (
        lambda api: api.tune(stage="kernel_size", data=123),
        "data=123 is neither a path nor a name",
    ),
    "a NaN ROPE": (lambda api: api.analyze(rope=float("nan")), "rope=nan must be a number from 0 to 0.5"),
    "a negative ROPE": (lambda api: api.analyze(rope=-1), "rope=-1 must be a number from 0 to 0.5"),
}


@pytest.mark.parametrize("mistake", list(API_MISTAKES))
def test_the_python_api_refuses_what_the_cli_refuses(store, tmp_path, mistake):
    """From an audit of the Python API: `trials=0` returned an empty result, `halving_factor=1` raised
    ZeroDivisionError, `min_epochs=-1` and `warm_start=-1` ran and wrote runs, `epochs="1"` raised a TypeError from
    deep inside, and `analyze(rope=nan)` drew a report: click refused each for the CLI, nothing did for Python."""
    import mlflow_mnist
    from mlflow_mnist.params import HyperparameterError, StageError

    call, words = API_MISTAKES[mistake]
    with pytest.raises((HyperparameterError, StageError, ValueError)) as refused:
        call(mlflow_mnist)
    assert words in str(refused.value) and "\n" not in str(refused.value)
    assert not list(tmp_path.iterdir())  # no store, no report folder


def test_the_python_api_takes_overrides_as_a_dict_and_one_experiment_as_a_name(store, tmp_path):
    """`overrides={"neurons_1": 3}` raised AttributeError ('dict' has no 'strip'); `analyze(experiments="mnist")`
    looked for experiments 'm', 'n', 'i', 's', 't'."""
    import mlflow_mnist
    from mlflow_mnist.tasks import get_task

    task = get_task("mnist")
    assert task.parse_overrides({"neurons_1": 3, "kernel_size": "(5,5)"}) == task.parse_overrides(
        "neurons_1=3,kernel_size=(5,5)"
    )
    tracking.connect().create_experiment("mnist")
    with pytest.raises(ValueError, match=r"^no finished steps in experiment\(s\) mnist: "):
        mlflow_mnist.analyze(experiments="mnist", out=tmp_path / "report")


def test_a_mistake_given_to_promote_is_not_the_gates_refusal(store):
    """`except PromotionRejected` (the gate said no, as the README puts it) also caught `promote(model="bogus")`."""
    import mlflow_mnist
    from mlflow_mnist.gate import PromoteInputError, PromotionRejected

    with pytest.raises(PromoteInputError) as refused:
        mlflow_mnist.promote(model="bogus")
    assert not isinstance(refused.value, PromotionRejected)
