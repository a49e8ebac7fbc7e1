"""What MLflow's refusal of a database store's schema means: a store an older MLflow wrote, which
``mlflow db upgrade`` migrates, or one a newer MLflow wrote, which no command of the installed MLflow can read.

MLflow says "out-of-date database schema ... run 'mlflow db upgrade'" in both cases, and a store from a newer
MLflow is what a user meets who opens a teammate's store or an older checkout's venv: upgrading is impossible
there (the installed MLflow knows no way to its revision), and "cannot reach ... start the server" fitted neither.
"""

from __future__ import annotations

import re
import shlex

from mlflow_mnist.redaction import redact

_REFUSAL = re.compile(r"out-of-date database schema \(found version (\w+), but expected (\w+)\)")


def schema_line(uri: str, text: str) -> str | None:
    """One line saying which MLflow wrote the store at ``uri`` and what to do, when ``text`` (a failed first
    answer) is MLflow's schema refusal; None otherwise."""
    found = _REFUSAL.search(text)
    if found is None:
        return None
    import mlflow

    found_revision, expected = found.groups()
    installed = f"MLflow {mlflow.__version__}"
    known = known_revision(found_revision)
    if known is True:
        # The URI itself where it holds nothing secret (the default store is set by no variable).
        target = shlex.quote(uri) if redact(uri) == uri else '"$MLFLOW_TRACKING_URI"'
        return (
            f"the tracking store at {redact(uri)} was written by an older MLflow (schema {found_revision}; "
            f"{installed} reads {expected}): back it up, then run `mlflow db upgrade {target}` (the older MLflow "
            f"can no longer open it afterwards)"
        )
    if known is False:
        return (
            f"the tracking store at {redact(uri)} was written by a newer MLflow than the installed "
            f"{mlflow.__version__} (its schema {found_revision} is unknown here): install that MLflow "
            f"(`pip install -U mlflow`) or set MLFLOW_TRACKING_URI to another store"
        )
    return (
        f"the tracking store at {redact(uri)} has schema {found_revision}, not {installed}'s {expected}: run "
        f"`mlflow db upgrade` on it if an older MLflow wrote it (after a backup), or install the newer MLflow "
        f"that wrote it"
    )


def known_revision(revision: str) -> bool | None:
    """Whether the installed MLflow's migrations include ``revision`` (then it can upgrade a store from it); None
    when its migrations cannot be read (they are MLflow's internals)."""
    try:
        from alembic.script import ScriptDirectory
        from alembic.util.exc import CommandError
        from mlflow.store.db.utils import _get_alembic_config

        script = ScriptDirectory.from_config(_get_alembic_config(db_url=""))
    except Exception:  # noqa: BLE001 - MLflow's internals moved: the line names both cases
        return None
    try:
        return script.get_revision(revision) is not None
    except CommandError:  # "No such revision or branch"
        return False
    except Exception:  # noqa: BLE001 - an ambiguous prefix, or a script directory alembic cannot read
        return None
