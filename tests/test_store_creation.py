"""Creating a fresh SQLite store is exclusive: drivers that start together all end up writing to one store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlflow_mnist import tracking

DRIVERS, ROUNDS = 4, 2

# Each driver imports everything first, then waits at a barrier (a file per round) so that all of them find
# the store missing and create it at the same instant; then each writes an experiment and a finished run.
DRIVER = """
import sys, time
from pathlib import Path

import pytest
from mlflow_mnist import tracking

folder, name, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for round_ in range(rounds):
    (folder / f"ready-{round_}-{name}").touch()
    while not (folder / f"go-{round_}").exists():
        time.sleep(0.001)
    client = tracking.connect(f"sqlite:///{folder}/round-{round_}/mlflow.db")
    experiment = client.create_experiment(f"driver-{name}")
    run = client.create_run(experiment, run_name=f"run-{name}")
    client.set_terminated(run.info.run_id)
    print(round_, run.info.run_id, flush=True)
"""


@pytest.mark.slow
def test_drivers_creating_one_fresh_store_at_once_lose_nothing(tmp_path):
    for round_ in range(ROUNDS):
        (tmp_path / f"round-{round_}").mkdir()
    drivers = [
        subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(tmp_path), str(i), str(ROUNDS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(DRIVERS)
    ]
    try:
        for round_ in range(ROUNDS):
            deadline = time.time() + 120
            while len(list(tmp_path.glob(f"ready-{round_}-*"))) < DRIVERS:
                if time.time() > deadline or any(d.poll() is not None for d in drivers):
                    break  # a driver failed (or hangs): the others would wait at the barrier for ever
                time.sleep(0.01)
            else:
                (tmp_path / f"go-{round_}").touch()
                continue
            for driver in drivers:
                driver.kill()
            break
        outputs = [d.communicate(timeout=120) for d in drivers]
    finally:
        for driver in drivers:
            driver.kill()
    assert [d.returncode for d in drivers] == [0] * DRIVERS, [err[-1500:] for _, err in outputs]
    written = {tuple(line.split()) for out, _ in outputs for line in out.splitlines()}
    assert len(written) == DRIVERS * ROUNDS
    for round_ in range(ROUNDS):
        store = tmp_path / f"round-{round_}" / "mlflow.db"
        client = tracking.connect(f"sqlite:///{store}")
        found = set()
        for i in range(DRIVERS):
            experiment = client.get_experiment_by_name(f"driver-{i}")
            assert experiment is not None, f"round {round_}: driver {i}'s experiment was lost"
            found |= {(str(round_), run.info.run_id) for run in client.search_runs([experiment.experiment_id])}
        assert found == {w for w in written if w[0] == str(round_)}
        assert [p.name for p in store.parent.iterdir()] == ["mlflow.db"], "a partial store was left behind"


def test_partial_store_of_a_killed_creator_is_removed_later(tmp_path):
    """A creator killed mid-schema leaves its hidden partial file; the next creation on this host removes it."""
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    abandoned = tmp_path / f".mlflow.db.{host}.{dead.pid}.0a1b2c3d.partial"
    abandoned.write_bytes(b"half a schema")
    journal = Path(f"{abandoned}-journal")
    journal.write_bytes(b"journal")
    alive = tmp_path / f".mlflow.db.{host}.{os.getpid()}.0a1b2c3d.partial"  # a live creator's: left alone
    alive.write_bytes(b"in progress")
    tracking.connect(f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mlflow.db", alive.name])


def _contents(path: Path) -> dict:
    """A store's schema and rows, creation times left out (each store is made at its own moment)."""
    import sqlite3

    with sqlite3.connect(path) as database:
        statements = database.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")
        # Lines sorted within each statement: MLflow's migrations write a table's constraints in an order that
        # differs between two builds in place (hash order), which is the same schema.
        schema = sorted(sorted(sql.splitlines()) for (sql,) in statements)
        experiments = database.execute(
            "SELECT experiment_id, name, artifact_location, lifecycle_stage FROM experiments"
        )
        rows = {
            "experiments": experiments.fetchall(),
            "workspaces": database.execute("SELECT * FROM workspaces").fetchall(),
            "alembic_version": database.execute("SELECT * FROM alembic_version").fetchall(),
        }
    database.close()
    return {"schema": schema, **rows}


def test_a_store_copied_from_the_empty_store_is_the_store_mlflow_builds(tmp_path, monkeypatch):
    """New stores are copies of one empty store built once per MLflow version: the same schema and rows as a
    store MLflow builds in place (its Default experiment made for the copy, where the copy lives)."""
    from mlflow_mnist import empty_store

    monkeypatch.setenv("MLFLOW_MNIST_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # MLflow's Default experiment's artifact location follows the working folder
    for folder in ("first", "copied", "built"):
        (tmp_path / folder).mkdir()
    tracking._create_sqlite_store(tmp_path / "first" / "mlflow.db")  # builds the empty store on the way
    [template] = (tmp_path / "cache").glob("empty-store-mlflow-*.db")
    assert _contents(template)["experiments"] == []  # the Default experiment is each copy's own
    given = []
    build = empty_store.empty_store
    monkeypatch.setattr(empty_store, "empty_store", lambda: given.append(build()) or given[-1])
    tracking._create_sqlite_store(tmp_path / "copied" / "mlflow.db")
    assert given == [template]  # the new store was copied from it
    monkeypatch.setattr(empty_store, "empty_store", lambda: None)  # as where no cache can be kept
    tracking._create_sqlite_store(tmp_path / "built" / "mlflow.db")
    copied, built = _contents(tmp_path / "copied" / "mlflow.db"), _contents(tmp_path / "built" / "mlflow.db")
    assert copied == built and len(copied["experiments"]) == 1
    client = tracking.connect(f"sqlite:///{tmp_path / 'copied' / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("works"))
    client.set_terminated(run.info.run_id)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_without_a_cache_to_keep_it_a_store_is_built_in_place(tmp_path, monkeypatch):
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("MLFLOW_MNIST_CACHE", str(tmp_path / "not-a-folder"))
    from mlflow_mnist import empty_store

    assert empty_store.empty_store() is None
    (tmp_path / "store").mkdir()
    client = tracking.connect(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    assert [e.name for e in client.search_experiments()] == ["Default"]


def test_what_a_killed_build_of_the_empty_store_left_is_removed_by_the_next_build(tmp_path, monkeypatch):
    """A build killed between its private file and the rename leaves that file; the next build removes it once it
    is older than any live build could be, and leaves a live builder's (young) file alone."""
    from mlflow_mnist import empty_store

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("MLFLOW_MNIST_CACHE", str(cache))
    stale, journal, live = (
        cache / name for name in (".empty-store-a.db", ".empty-store-a.db-journal", ".empty-store-b.db")
    )
    for leftover in (stale, journal, live):
        leftover.write_bytes(b"half a build")
    old = time.time() - empty_store.STALE_BUILD_SECONDS - 60
    for leftover in (stale, journal):
        os.utime(leftover, (old, old))
    template = empty_store.empty_store()
    assert template is not None and template.exists()
    assert sorted(p.name for p in cache.iterdir()) == [live.name, template.name]
