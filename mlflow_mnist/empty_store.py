"""New SQLite stores copied from an empty one built once per MLflow version.

MLflow builds a new SQLite store by running its ~100 schema migrations, 1.5-1.6 s of CPU against 0.55 s to open
a built one (2-core AMX Xeon, three runs each), and a new store is made while the workers import TensorFlow on
the same cores. The empty store is built by MLflow itself, kept in this project's cache folder under MLflow's
version, and holds no experiment: MLflow adds its ``Default`` experiment, with an artifact location of its own
choosing, when the copy is first opened, exactly as it does for a store it built there.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import time
from pathlib import Path

#: A builder's private file older than this was left by a killed build (a build takes ~2 s): removed.
STALE_BUILD_SECONDS = 600


def cache_folder() -> Path:
    """This project's cache: ``$MLFLOW_MNIST_CACHE``, else ``~/.cache/mlflow-mnist``."""
    return Path(os.environ.get("MLFLOW_MNIST_CACHE") or Path.home() / ".cache" / "mlflow-mnist")


def empty_store() -> Path | None:
    """The empty store of the installed MLflow, built on first use; ``None`` where it cannot be kept (then the
    caller lets MLflow build the store in place, as without it)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    template = cache_folder() / f"empty-store-mlflow-{mlflow.__version__}.db"
    if template.exists():
        if _usable(template):
            return template
        try:  # damaged or foreign (a crash, a disk error, another program): built again below
            template.unlink()
        except OSError:
            return None  # it cannot be replaced: MLflow builds each store in place, as without a template
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_builds(template.parent)
        handle, name = tempfile.mkstemp(dir=template.parent, prefix=".empty-store-", suffix=".db")
        os.close(handle)
        os.unlink(name)  # MLflow must find no file there, or it takes it for an existing store
        try:
            _build(Path(name))
            os.replace(name, template)  # two builders at once: either complete copy is the template
        finally:
            Path(name).unlink(missing_ok=True)
    except (OSError, sqlite3.Error, SQLAlchemyError, MlflowException):
        return None  # an optimisation only: MLflow builds the store in place instead
    return template


def _usable(template: Path) -> bool:
    """``template`` is a whole SQLite database holding MLflow's schema (its migration version and its tables), read
    without writing: a junk file copied into place would make every new store fail to open."""
    try:
        uri = f"{template.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as database:
            tables = {name for (name,) in database.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"alembic_version", "experiments", "runs"} <= tables:
                return False
            versions = database.execute("SELECT version_num FROM alembic_version").fetchall()
            return len(versions) == 1 and database.execute("PRAGMA quick_check").fetchone() == ("ok",)
    except (OSError, ValueError, sqlite3.Error):
        return False


def open_and_release(path: Path) -> None:
    """Let MLflow open the SQLite store at ``path`` (building its schema if the file is new, adding its
    ``Default`` experiment if it has none), then close every connection MLflow keeps to it."""
    from mlflow import MlflowClient
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{path}"
    MlflowClient(uri).search_experiments(max_results=1)
    engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)
    if engine is not None:
        engine.dispose()


def _remove_stale_builds(folder: Path) -> None:
    """Remove what killed builds left (their private files and SQLite journals); a live builder's are young."""
    for leftover in folder.glob(".empty-store-*"):
        try:
            if time.time() - leftover.stat().st_mtime > STALE_BUILD_SECONDS:
                leftover.unlink()
        except OSError:
            pass  # another builder removed it first, or it cannot be removed: it only takes room


def _build(path: Path) -> None:
    open_and_release(path)
    with sqlite3.connect(path) as database:  # the Default experiment is the copy's to make, where it lives
        database.execute("DELETE FROM experiment_tags")
        database.execute("DELETE FROM experiments")
    database.close()
