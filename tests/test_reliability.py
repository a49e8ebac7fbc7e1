"""Bad input, Ctrl-C, kill -9, a tracking server that goes away, and secrets that must never reach the store."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import kill_harness
import numpy as np
import pytest
from conftest import FoldWatcher, cli, python, write_idx, write_idx_folder
from services import MlflowServer

from mlflow_mnist import experiments, schema, tracking
from mlflow_mnist.executors import EXECUTORS
from mlflow_mnist.executors.serial import SerialExecutor

STAGE = ["tune", "--stage", "kernel_size", "--data", "sample", "--epochs", "1", "--folds", "2"]


def _rows(db: Path, query: str) -> list[tuple]:
    """``query``'s rows in the SQLite store ``db``; none where there is no store, or no MLflow schema in it."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as connection:
        try:
            return connection.execute(query).fetchall()
        except sqlite3.OperationalError:
            return []


def _run_count(db: Path) -> int:
    return len(_rows(db, "select run_uuid from runs"))


def _experiments(db: Path) -> list[str]:
    """The experiments a store holds besides MLflow's own ``Default``."""
    return [name for (name,) in _rows(db, "select name from experiments where name != 'Default'")]


@pytest.fixture(scope="module")
def broken_data(tmp_path_factory):
    from mlflow_mnist.tasks.mnist.data import load_mnist

    sample = load_mnist("sample")
    base = tmp_path_factory.mktemp("broken")
    corrupt = base / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip")
    deflate = write_idx_folder(base / "deflate", sample)  # a whole gzip file whose compressed stream is damaged
    blob = (deflate / "train-images-idx3-ubyte.gz").read_bytes()
    (deflate / "train-images-idx3-ubyte.gz").write_bytes(blob[:20] + bytes(b ^ 0xFF for b in blob[20:60]) + blob[60:])
    truncated = write_idx_folder(base / "truncated", sample)
    blob = (truncated / "t10k-images-idx3-ubyte.gz").read_bytes()
    (truncated / "t10k-images-idx3-ubyte.gz").write_bytes(blob[:1000])
    magic = write_idx_folder(base / "magic", sample)
    write_idx(magic / "train-images-idx3-ubyte.gz", sample.x_train, magic=2049)
    shape = write_idx_folder(base / "shape", sample)
    write_idx(shape / "train-images-idx3-ubyte.gz", sample.x_train.reshape(-1, 784, 1))
    text = base / "mnist.txt"
    text.write_text("not an archive\n")
    labels = base / "labels.npz"
    np.savez(
        labels,
        x_train=sample.x_train,
        y_train=(sample.y_train + 5).astype(np.uint8),
        x_test=sample.x_test,
        y_test=sample.y_test,
    )
    return {
        "corrupt": corrupt,
        "truncated": truncated,
        "magic": magic,
        "shape": shape,
        "labels": labels,
        "text": text,
        "deflate": deflate,
    }


BAD_INPUTS = [
    ("unknown stage", ["--stage", "neuronz"], {}, "unknown stage 'neuronz'"),
    ("blank experiment", ["--experiment", " "], {}, "experiment name ' ' from --experiment is blank"),
    ("a blank experiment from the environment", [], {"MLFLOW_EXPERIMENT_NAME": " "}, "from $MLFLOW_EXPERIMENT_NAME"),
    (
        "an experiment id a new store cannot hold",
        [],
        {"MLFLOW_EXPERIMENT_ID": "5"},
        "MLFLOW_EXPERIMENT_ID='5' names an experiment, and there is no store at",
    ),
    ("an experiment id not in the store", ["promote"], {"MLFLOW_EXPERIMENT_ID": "5"}, "'5' is not an experiment in"),
    ("an experiment name too long", ["--experiment", "e" * 501], {}, "has 501 characters; MLflow keeps at most 500"),
    ("a task from the environment", [], {"MLFLOW_MNIST_TASK": "mnst"}, "(from $MLFLOW_MNIST_TASK: fix or unset it)"),
    ("overrides syntax", ["--overrides", "neurons_3"], {}, "is not KEY=VALUE"),
    ("unknown parameter", ["--overrides", "colour=red"], {}, "unknown hyperparameter 'colour'"),
    ("negative dropout", ["--overrides", "dropout_rate_1=-0.2"], {}, "dropout_rate_1=-0.2 must be at least 0.0"),
    ("dropout of one", ["--overrides", "dropout_rate_2=1"], {}, "dropout_rate_2=1 must be at least 0.0 and below 1.0"),
    ("zero neurons", ["--overrides", "neurons_1=0"], {}, "neurons_1=0 must be at least 1"),
    ("negative neurons", ["--overrides", "neurons_2=-3"], {}, "neurons_2=-3 must be at least 1"),
    ("unknown activation", ["--overrides", "activation_1=swishy"], {}, "activation_1='swishy' is not one of"),
    ("unknown initializer", ["--overrides", "init_mode_2=ones"], {}, "init_mode_2='ones' is not one of"),
    ("unknown optimizer", ["--overrides", "optimizer=LBFGS"], {}, "optimizer='LBFGS' is not one of"),
    ("kernel too large", ["--overrides", "kernel_size=(15,15)"], {}, "too large for a 28x28 image"),
    ("a pair with a stray letter", ["--overrides", "kernel_size=(5,5)x"], {}, "kernel_size='(5,5)x' must be a pair"),
    ("epochs 0", ["--epochs", "0"], {}, "epochs=0 must be at least 1"),
    (
        "halving a stage with --trials",
        ["--strategy", "halving", "--trials", "8"],
        {},
        "--trials 8: --strategy halving --stage kernel_size searches the stage's grid, not sampled trials",
    ),
    ("one fold", ["--folds", "1"], {}, "at least 2 folds"),
    ("negative seed", ["--seed", "-1"], {}, "seed=-1 must be 0 to 2147483647: give --seed 0 or a larger whole"),
    (
        "seed past 32 bits",
        ["final", "--seed", "4294967296"],
        {},
        "seed=4294967296 must be 0 to 2147483647: give --seed a smaller whole number",
    ),
    ("more folds than images", ["--folds", "301"], {}, "folds=301 is more than the 300 training examples of class 2"),
    ("repeated digit", ["--digits", "2,2"], {}, "repeats a digit"),
    ("digit 11", ["--digits", "11"], {}, "must each be 0-9"),
    ("letter digit", ["--digits", "a"], {}, "comma-separated digits"),
    ("single digit", ["--digits", "7"], {}, "names one class"),
    ("missing data path", ["--data", "/nonexistent/mnist"], {}, "does not exist"),
    ("a device as data", ["--data", "/dev/null"], {}, "'/dev/null' is neither a file nor a folder"),
    ("blank classes", ["--classes", " "], {}, "digits '' names no digit"),
    (
        "a data path from the environment",
        ["--data", ""],
        {"MLFLOW_MNIST_DATA": "/nonexistent/mnist"},
        "(from $MLFLOW_MNIST_DATA: fix or unset it)",
    ),  # fmt: skip
    ("corrupt npz", ["--data", "{corrupt}"], {}, "not a readable .npz"),
    ("truncated gz", ["--data", "{truncated}"], {}, "truncated or corrupt"),
    ("damaged deflate stream", ["--data", "{deflate}"], {}, "truncated or corrupt"),
    ("IDX wrong magic", ["--data", "{magic}"], {}, "magic number 2049"),
    ("IDX wrong shape", ["--data", "{shape}"], {}, "expected (n, 28, 28)"),
    ("labels out of range", ["--data", "{labels}"], {}, "labels must be integers 0..9"),
    ("a text file as data", ["--data", "{text}"], {}, "is not a readable .npz file (not a zip archive)"),
    ("unreachable server", [], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}"}, "cannot reach the tracking store"),
    ("in-memory store", [], {"MLFLOW_TRACKING_URI": "sqlite://"}, "is an in-memory SQLite store"),
    ("a '~' in a SQLite URI", [], {"MLFLOW_TRACKING_URI": "sqlite:///~/mlflow.db"}, "does not expand '~'"),
    ("a folder where the store should be", [], {"MLFLOW_TRACKING_URI": "sqlite:///{readonly}"}, "is not a file"),
    ("read-only store", [], {"MLFLOW_TRACKING_URI": "sqlite:///{readonly}/mlflow.db"}, "cannot write the SQLite store"),
    (
        "store in a missing folder",
        [],
        {"MLFLOW_TRACKING_URI": "sqlite:///{readonly}/../no/such/folder/mlflow.db"},
        "does not exist: create it",
    ),
    ("unknown precision", ["--precision", "bf16"], {}, "is not one of float32, mixed_bfloat16, auto"),
    ("n-jobs 0", ["--n-jobs", "0"], {}, "--n-jobs 0 runs no worker"),
    ("n-jobs below the cores", ["--n-jobs", "-999"], {}, "leaves no worker"),
    ("unknown task", ["--task", "mnst"], {}, "unknown task 'mnst': choose one of"),
    ("a class that is not a task", ["--task", "mlflow_mnist.tasks.base:Dataset"], {}, "is the class Dataset, not a"),
    ("task not importable", ["--task", "no_such_pkg.tasks:Mine"], {}, "cannot import it"),
    (
        "another task's parameter",
        ["--task", "digits", "--stage", "width", "--overrides", "neurons_1=4"],
        {},
        "unknown hyperparameter",
    ),
    ("unknown class", ["--classes", "2,x"], {}, "digits '2,x' must be comma-separated digits"),
    ("classes and digits disagree", ["--classes", "2,7", "--digits", "3,5"], {}, "disagree: give one of them"),
    ("unknown strategy", ["--strategy", "bayes"], {}, "'bayes' is not one of 'staged'"),
    ("unknown space", ["--stage", "", "--strategy", "optuna", "--space", "huge"], {}, "unknown search space 'huge'"),
    ("staged without a stage", ["--stage", ""], {}, "--stage is required for --strategy staged"),
    (
        "more top-rung parts than epochs",
        ["--stage", "", "--strategy", "asha", "--space", "seed", "--top-rung-parts", "4"],
        {},
        "--top-rung-parts 4: the top rung trains 3 epoch(s) past the rung before (3), so it splits into 1 to 3",
    ),
    ("text for a number", ["--epochs", "six"], {}, "'six' is not a valid integer"),
    ("infinite learning rate", ["--overrides", "learn_rate=inf"], {}, "learn_rate='inf' must be a finite number"),
    ("a model too big to train", ["--overrides", "neurons_1=1000000000"], {}, "weights, more than 50,000,000"),
    ("an override twice", ["--overrides", "neurons_1=3,neurons_1=4"], {}, "'neurons_1' is given twice"),
    (
        "an override a grid point cannot take",
        ["--stage", "pool_size", "--overrides", "kernel_size=(13,13)"],
        {},
        "pool_size=(5, 5) does not fit the 4x4 feature map left by kernel_size=(13, 13)",
    ),  # fmt: skip
    (
        "an override of what the stage searches",
        ["--stage", "pool_size", "--overrides", "pool_size=(2,2)"],
        {},
        "--overrides pool_size=(2, 2) would be ignored: the stage searches pool_size over its grid",
    ),  # fmt: skip
    ("a stage and a space", ["--space", "seed"], {}, "--stage kernel_size and --space seed"),
    ("a stage for a joint search", ["--strategy", "random"], {}, "searches a space, not a stage: leave out --stage"),
    (
        "first rung past the space's epochs",
        ["--stage", "", "--strategy", "asha", "--space", "seed", "--min-epochs", "7"],
        {},
        "--min-epochs 7: the space 'seed' trains at most 6 epochs",
    ),
    (
        "more brackets than rungs",
        ["--stage", "", "--strategy", "asha", "--space", "seed", "--brackets", "4"],
        {},
        "--brackets 4: the space 'seed' has 3 rung(s) here (1, 3, 6 epochs) for trials to start at; give 1 to 3",
    ),
    ("unsupported store", [], {"MLFLOW_TRACKING_URI": "ftp://u:pw@127.0.0.1/m"}, "no store for 'ftp' URIs"),
    ("a bare path as the store", [], {"MLFLOW_TRACKING_URI": "{readonly}/m.db"}, "is a folder store (MLflow's file"),
    (
        "an asha option for optuna",
        ["--strategy", "optuna", "--stage", "", "--space", "seed", "--brackets", "2"],
        {},
        "--brackets 2: --strategy optuna does not use it (only asha)",
    ),  # fmt: skip
    ("trials for a staged step", ["--trials", "8"], {}, "--trials 8: --strategy staged does not use it"),
    ("a scheduler without dask", ["--scheduler", "tcp://127.0.0.1:{port}"], {}, "is for --executor dask, not joblib"),
    # $DASK_SCHEDULER_ADDRESS set for every command is Dask's to read, not a --scheduler given to joblib: the
    # mistake reported is the data's.
    (
        "a Dask address in the environment",
        ["--data", "/nonexistent/mnist"],
        {"DASK_SCHEDULER_ADDRESS": "tcp://127.0.0.1:{port}"},
        "does not exist",
    ),  # fmt: skip
    (
        "database without its driver",
        [],
        {"MLFLOW_TRACKING_URI": "mysql://u@127.0.0.1:{port}/m"},
        "pip install mysqlclient",
    ),
    ("promote without a store", ["promote"], {}, "there is no tracking store at sqlite:///"),
    ("a model name with a slash", ["promote", "--name", "team/digits"], {}, "is not a name promote registers"),
    # MLflow took these: the newline printed a forged second line, the lock's names were deleted by the next lock.
    ("a newline in a model name", ["promote", "--name", "a\nerror: forged"], {}, "'a\\nerror: forged' is not a name"),
    ("a lock's name as the model's", ["promote", "--name", "mlflow-mnist-lock-x-g1"], {}, "the names of this tool's"),
    ("a stale MLFLOW_RUN_ID", [], {"MLFLOW_RUN_ID": "0123456789abcdef0123456789abcdef"}, "is not a run in sqlite:"),
    ("a file as the report's folder", ["analyze", "--out", "{text}"], {}, "cannot be the report's folder"),
    ("analysis ROPE NaN", ["analyze", "--rope", "nan"], {}, "--rope: nan is not a number in the range"),
    ("threshold NaN", ["promote", "--min-accuracy", "nan"], {}, "--min-accuracy nan"),
    ("threshold above one", ["promote", "--min-accuracy", "1.5"], {}, "--min-accuracy 1.5"),
    ("no such final run", ["promote", "--run-id", "0123456789abcdef"], {}, "is not a run in this tracking store"),
    # A newline inside a value is written out (\n), never a second line: nothing can forge an "error:" line.
    ("a newline in a value", ["promote", "--run-id", "0123\nerror: forged"], {}, "0123\\nerror: forged"),
    ("a newline in an address", ["--scheduler", "tcp://h\nerror: forged"], {}, "tcp://h\\nerror: forged is for"),
    ("promote a missing experiment", ["promote", "--experiment", "nowhere"], {}, "experiment 'nowhere' does not exist"),
    ("configs without a search", ["final", "--configs", "2", "--repeats", "4"], {}, "pass --search latest"),
    ("final of a search never run", ["final", "--search", "latest"], {}, "no finished joint search on this data"),
    ("a seal key file that is not there", [], {"MLFLOW_MNIST_SEAL_KEY_FILE": "{readonly}/no.key"}, "names no file"),
    ("final with a seal key folder", ["final"], {"MLFLOW_MNIST_SEAL_KEY_FILE": "{readonly}"}, "not a regular file"),
    ("promote, seal key missing", ["promote"], {"MLFLOW_MNIST_SEAL_KEY_FILE": "{readonly}/no.key"}, "names no file"),
    ("final of a search without a store", ["final", "--search", "latest"], {}, "there is no tracking store at"),
    (
        "final of a search in a misspelt experiment",
        ["final", "--search", "latest", "--experiment", "digitz"],
        {},
        "experiment 'digitz' does not exist in sqlite:",
    ),  # fmt: skip
    ("configs above seeds", ["final", "--configs", "3", "--repeats", "2", "--search", "latest"], {}, "--repeats 3"),
]


def test_the_docs_count_the_bad_inputs_the_suite_has():
    """README and docs/guarantees.md give the number of cases above: it is the table's length."""
    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    guarantees = " ".join((ROOT / "docs" / "guarantees.md").read_text().split())
    counted = [
        *re.findall(r"A mistake \((\d+) cases", readme),
        *re.findall(r"The suite's (\d+) cases \(`BAD_INPUTS`", readme),
        *re.findall(r"The (\d+) cases of `BAD_INPUTS`", guarantees),
    ]
    assert counted == [str(len(BAD_INPUTS))] * 3, counted


def test_python_m_analysis_gets_the_same_one_line_errors(tmp_path):
    """The MLproject's `analyze` runs `python -m analysis`: its mistakes are one line too, not click's usage block
    or a traceback."""
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    for args, message in ((["--rope", "2"], "'--rope': 2.0 is not in the range"), ([], "there is no tracking store")):
        proc = python("-m", "analysis", *args, env=env, cwd=tmp_path)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert message in lines[0] and not list(tmp_path.iterdir())


@pytest.mark.parametrize("name, args, env, message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_gets_one_line_and_writes_nothing(store, tmp_path, broken_data, name, args, env, message):
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    if os.geteuid() == 0:  # permission bits do not stop root; a read-only mount does
        readonly = Path("/sys")
    refusing = socket.socket()  # bound but never listening: connections are refused, and the port stays ours
    refusing.bind(("127.0.0.1", 0))
    fill = {**{k: str(v) for k, v in broken_data.items()}, "port": refusing.getsockname()[1], "readonly": readonly}
    args = [a.format(**fill) for a in args]
    env = {k: v.format(**fill) for k, v in env.items()}
    command = list(STAGE)
    if args and args[0] in ("promote", "final", "analyze"):  # their own options, on an empty store
        command, args = [args[0]] + (["--data", "sample"] if args[0] == "final" else []), args[1:]
    # Readers, and a final of a search, need a store: it exists (with a campaign's experiment for the final).
    made_store = (command[0] in ("promote", "analyze") or "--search" in args) and "without a store" not in name
    made_experiments = ["mnist"] if made_store and "--search" in args else []
    if made_store:
        from mlflow_mnist import tracking

        client = tracking.connect(f"sqlite:///{tmp_path}/mlflow.db")
        for experiment in made_experiments:
            client.create_experiment(experiment)
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag in command:
            command[command.index(flag) + 1] = value
        else:
            command += [flag, value]
    started = time.time()
    proc = cli(*command, env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", **env}, cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: ")
    assert _run_count(tmp_path / "mlflow.db") == 0
    if "MLFLOW_RUN_ID" in env:  # a new store could not hold the run: refused before one is made (or a pool started)
        assert not (tmp_path / "mlflow.db").exists()
    assert _experiments(tmp_path / "mlflow.db") == made_experiments
    assert time.time() - started < 60
    refusing.close()


@pytest.mark.parametrize(
    "args, message",
    [
        (["tune", "--stage", "nope", "--data", "sample"], "unknown stage 'nope'"),
        (["tune", "--stage", "kernel_size", "--data", "sample", "--epochs", "0"], "epochs=0 must be at least 1"),
        (["promote", "--experiment", "nowhere"], "experiment 'nowhere' does not exist"),
    ],
)
def test_a_fresh_interpreter_prints_the_refusal_alone(store, args, message):
    """The table above forks each command from the tests' CLI server, which imported MLflow and the other
    libraries once; here a fresh interpreter imports them itself, so a warning printed while importing (a library's
    deprecation, TensorFlow's start-up lines) would be a second line."""
    tracking.connect(store)  # promote reaches the store: it exists, without the experiment
    proc = cli(*args, fresh=True)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr


def test_credentials_never_appear_in_messages():
    uri = "https://alice:s3cr3t-t0ken@mlflow.example.com:5000/api?token=s3cr3t-t0ken"
    assert "s3cr3t" not in tracking.redact(uri) and "mlflow.example.com:5000" in tracking.redact(uri)


@pytest.mark.slow
@pytest.mark.parametrize(("sent", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_marks_open_runs_killed(store, tmp_path, sent, code):
    """Ctrl-C, and SIGTERM (kill, timeout, a CI job cancelled, docker stop: before, it left the runs RUNNING and
    said nothing), mark the open runs KILLED and say so."""
    # The signal is sent as soon as the first fold reports; at three epochs each, the nine folds left keep the stage
    # busy for many seconds more, so it lands mid-stage even on a slow CI machine; the first fold is seen on the
    # progress line, not by polling the store.
    # The child gets Python's own SIGINT handler, as in a terminal: a CI job started in the background (`cmd &`
    # in a script) inherits SIGINT *ignored*, and Python keeps an ignored SIGINT, so Ctrl-C would never arrive.
    interactive = "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    interactive += "runpy.run_module('mlflow_mnist', run_name='__main__', alter_sys=True)"
    proc = subprocess.Popen(
        [sys.executable, "-c", interactive, *STAGE, "--epochs", "3", "--n-jobs", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    stderr = FoldWatcher(proc.stderr)
    assert stderr.wait_for(1, timeout=180), f"no fold finished within 180 s: {stderr.text()[-500:]}"
    proc.send_signal(sent)
    proc.wait(timeout=120)
    stderr.join()
    assert proc.returncode == code, stderr.text()[-500:]
    assert stderr.text().strip().splitlines()[-1].startswith("interrupted: open runs were marked KILLED")
    runs = kill_harness._runs(tmp_path)
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
    assert {r.info.status for r in runs if r.data.tags.get(schema.LEVEL) == "fold"} >= {"FINISHED"}
    assert {r.info.status for r in runs if r.data.tags.get(schema.LEVEL) in ("step", "candidate")} == {"KILLED"}


EXITING = """
import signal, sys, threading, time

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job ignores it)
from mlflow_mnist.cli import run

# What the pool is while the interpreter exits: loky joins its workers' manager thread there, for seconds.
threading.Thread(target=time.sleep, args=(60,)).start()
run(["tasks"])
print("exiting", flush=True)
"""


@pytest.mark.parametrize(("sent", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_signal_while_the_program_exits_ends_it_at_once(sent, code):
    """From an audit: once a command had said its last line, its pool took seconds to stop while the interpreter
    exited, and SIGTERM there printed "Exception ignored in: <module 'threading'>" with a traceback and exited 0,
    or left the pool and the driver running for 9 minutes (Ctrl-C likewise). It now ends the process at once: 128
    + the signal, no traceback (the workers exit with the driver: test_kill_nine_at_random_moments_...)."""
    proc = subprocess.Popen([sys.executable, "-c", EXITING], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("exiting"):
                break
        else:
            pytest.fail(f"the command did not finish: {proc.stderr.read()[-1000:]}")
        time.sleep(0.2)  # into the interpreter's exit, which waits for the thread
        proc.send_signal(sent)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr[-1000:]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-2000:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[float, dict[str, float]]:
    """The kill scenario run to completion once (joblib, 2 workers): its time and scores, which every executor
    gives alike (the Dask case below compares its killed and resumed stage with them, to 1e-9)."""
    return kill_harness.reference_run(tmp_path_factory.mktemp("kill") / "reference", n_jobs=2)


@pytest.mark.slow
# Every registered executor with processes of its own (a new one is killed here too); serial trains in the driver's
# process, so the driver's death is the whole of it.
@pytest.mark.parametrize("executor", [name for name in EXECUTORS if name != SerialExecutor.name])
def test_kill_nine_at_random_moments_loses_and_duplicates_nothing(tmp_path, executor, uninterrupted):
    """The driver alone, at a moment early in the search (seed 1: 13% of an uninterrupted run, while the pool
    starts or trains its first folds): joblib's workers must exit by themselves; Dask's mechanism handles it (a
    killed session takes its cluster with it). Killing the whole session is the ASHA test below; the 12- and
    10-point runs of benchmarks/results/kill_harness-*.md cover more moments; here the suite's time is shared."""
    outcomes = kill_harness.campaign(
        points=1, seed=1, n_jobs=2, workdir=tmp_path, executor=executor, reference=uninterrupted
    )
    assert [o.target for o in outcomes] == ["driver"]
    for outcome in outcomes:
        assert outcome.duplicates == 0 and outcome.left_running == 0 and outcome.results_equal
        assert outcome.trained_after == kill_harness.TOTAL_FOLDS - outcome.finished_before
        assert outcome.processes_left == 0


@pytest.mark.slow
def test_asha_killed_while_a_promoted_trial_continues_trains_nothing_twice(tmp_path):
    """SIGKILL the whole session the moment a promoted trial's continued folds are training, rerun: the folds
    finished before are reused (continued ones included), the cut-short rung is trained once, and the search ends
    whole. tests/kill_harness.py --strategy asha kills at random moments too."""
    outcome = kill_harness.kill_once(
        tmp_path, 600, {}, n_jobs=2, target="group", strategy="asha", when=kill_harness.continuing
    )
    assert outcome.in_flight == "rung 2 (continuing)" and outcome.finished_before > 0
    assert outcome.duplicates == 0 and outcome.left_running == 0 and outcome.results_equal
    assert outcome.trained_after == outcome.total_folds - outcome.finished_before
    assert outcome.processes_left == 0


#: Secrets in the driver's environment that must reach no param, tag, metric, artifact or message; the tracking
#: password is the basic-auth server's own admin password (random), added where the server is made.
OTHER_SECRETS = {"AWS_SECRET_ACCESS_KEY": "aws-Kx92-never-log", "MLFLOW_TRACKING_TOKEN": "tok-Pm37-never-log"}


def _fold_runs(client, experiment_name: str) -> list:
    experiment = client.get_experiment_by_name(experiment_name)
    return client.search_runs([experiment.experiment_id], "tags.`mlflow_mnist.level` = 'fold'") if experiment else []


def _texts_of(runs: list, artifacts: Path) -> str:
    """Every param, tag and metric name and value of ``runs``, and every artifact file's bytes (inside .keras too)."""
    texts = []
    for run in runs:
        texts += list(run.data.params) + list(run.data.params.values())
        texts += list(run.data.tags) + list(run.data.tags.values()) + list(run.data.metrics)
    for path in artifacts.rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("latin-1"))
            if path.suffix == ".keras":
                with zipfile.ZipFile(path) as archive:
                    texts += [archive.read(n).decode("latin-1") for n in archive.namelist()]
    return "\n".join(texts)


@pytest.mark.slow
def test_a_basic_auth_server_stopped_mid_stage_then_resumed_keeps_every_fold_once_and_no_secret(tmp_path, monkeypatch):
    """One stage against a basic-auth server with three secrets in the environment: wrong credentials are one
    line; the server stops mid-stage (one line, exit 2), comes back, and the rerun trains only what was missing;
    no secret is in any param, tag, metric or artifact (models included), and no model is a pickle. The server is
    the one `make cluster-demo` documents (tools/services.py), on SQLite, stopped and started on the same port."""
    server = MlflowServer(f"sqlite:///{tmp_path}/server.db", tmp_path / "server", workers=1).start()
    secrets = {**OTHER_SECRETS, "MLFLOW_TRACKING_PASSWORD": server.admin[1]}
    base = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, "TF_CPP_MIN_LOG_LEVEL": "3"}
    stage = [sys.executable, "-m", "mlflow_mnist", *STAGE]
    try:
        denied = subprocess.run(
            stage,
            capture_output=True,
            text=True,
            env={**base, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "wrong"},
        )
        assert denied.returncode == 2 and "refused our credentials" in denied.stderr
        assert "wrong" not in denied.stderr
        env = {
            **base,
            **secrets,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        }
        args = [*stage, "--n-jobs", "1", "--experiment", "mnist"]  # STAGE's one epoch: nine folds after the first
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")  # this test's own client reads the server too
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.admin[1])
        client = tracking.connect(server.uri)
        deadline = time.time() + 120
        while time.time() < deadline and not any(r.info.status == "FINISHED" for r in _fold_runs(client, "mnist")):
            time.sleep(0.5)
        server.stop()
        _, err = proc.communicate(timeout=180)
        lines = [line for line in err.splitlines() if line.strip() and "absl" not in line]
        assert proc.returncode == 2
        assert lines[-1].startswith(f"error: lost the tracking store at {server.uri}"), err[-2000:]
        assert "Traceback" not in err and not [secret for secret in secrets.values() if secret in err]
        server.start()
        rerun = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert "reused" in rerun.stdout and "reused 0" not in rerun.stdout
        client = tracking.connect(server.uri)
        runs = tracking.search_all(client, [client.get_experiment_by_name("mnist").experiment_id])
    finally:
        server.stop()
    finished = [
        r.data.tags[schema.FOLD_KEY]
        for r in runs
        if r.data.tags.get(schema.LEVEL) == "fold" and r.info.status == "FINISHED"
    ]
    assert len(finished) == len(set(finished)) == 10
    assert not [r for r in runs if r.info.status == "RUNNING"]
    artifacts = server.folder / "artifacts"
    blob = _texts_of(runs, artifacts)
    for secret in secrets.values():
        assert secret not in blob
    # MLflow 3 LoggedModels live under <experiment>/models/<model id>/artifacts/.
    models = [p for p in artifacts.rglob("*") if p.is_file() and "/models/" in p.as_posix()]
    assert any(p.name == "model.keras" for p in models)
    assert not [p for p in models if p.suffix in (".pkl", ".pickle", ".joblib")]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["migrations", "empty store"])
@pytest.mark.parametrize("after", [0.0, 0.1, 0.2, 0.3, 0.45, 0.6])
def test_kill_while_creating_the_store_leaves_no_broken_database(tmp_path, monkeypatch, after, source):
    """MLflow creates a SQLite store in many migration steps; a kill among them must not break later starts.

    The process is killed ``after`` seconds once a database file appears, i.e. while the schema is written
    (``migrations``: no cache folder, MLflow builds it in place) or the empty store's copy is opened.
    """
    from mlflow_mnist import empty_store

    cache = tmp_path.parent / f"{tmp_path.name}-cache"
    if source == "migrations":
        cache.write_text("")  # not a folder: no empty store can be kept
    monkeypatch.setenv("MLFLOW_MNIST_CACHE", str(cache))
    assert (empty_store.empty_store() is None) == (source == "migrations")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = f"from mlflow_mnist import tracking; tracking.connect({uri!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not list(tmp_path.glob("*mlflow.db*")):
        time.sleep(0.005)
    time.sleep(after)
    proc.kill()
    proc.wait()
    assert list(tmp_path.glob("*mlflow.db*")), "the store was never started"
    client = tracking.connect(uri)
    assert experiments.experiment_id(client, "mnist")


@pytest.mark.slow
def test_a_user_the_server_gives_no_permission_is_told_so_not_to_check_the_server(tmp_path):
    """From a walk-through of docs/cluster.md: an MLflow user without a grant on the campaign's experiment got
    "the tracking store ... failed (... 403 ...): check that it is up and rerun", of a server that was up and would
    refuse the rerun alike. The line now names the user, what a driver needs and who grants it."""
    server = MlflowServer(f"sqlite:///{tmp_path}/server.db", tmp_path / "server", workers=1).start()
    try:
        bob = server.add_user("bob")
        admin_env = {**os.environ, **server.client_env(server.admin)}
        made = subprocess.run(
            [sys.executable, "-c", "import mlflow; mlflow.MlflowClient().create_experiment('mnist')"],
            env=admin_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", **server.client_env(bob)}
        refused = cli(*STAGE, "--epochs", "1", "--n-jobs", "1", "--experiment", "mnist", env=env, cwd=tmp_path)
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-2000:]
        assert "refused MLflow user 'bob' permission" in lines[0] and "needs EDIT on its experiment" in lines[0]
        assert "check that it is up" not in lines[0] and bob[1] not in refused.stderr
    finally:
        server.stop()
