"""The tables of a SQLite file, read without writing: what the tool checks before it lets MLflow or Optuna open a
file (either would write its own schema into whatever database it is given)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path


def read_only_tables(path: Path, *, timeout: float = 5.0) -> set[str]:
    """The names of the tables in the SQLite file ``path``, through a read-only connection. Raises
    :class:`sqlite3.OperationalError` when it cannot be opened or read (permissions, a lock held past ``timeout``)
    and :class:`sqlite3.DatabaseError` when it is not a SQLite database; callers decide what each means."""
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=timeout)) as database:
        return {name for (name,) in database.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
