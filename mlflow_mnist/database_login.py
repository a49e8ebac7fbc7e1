"""One login to a database-backed store before MLflow's own: MLflow retries a failed login with doubling sleeps for
about 100 s, printing nothing the user sees, then the tool called the store unreachable. A wrong or missing
password (no ``~/.pgpass``), a database not created yet or a role without access are each a line, at once.
"""

from __future__ import annotations

import re

from mlflow_mnist.redaction import first_line, redact

#: Seconds the login may take once the host's port answered (libpq's and MySQL drivers' ``connect_timeout``).
LOGIN_TIMEOUT = 10

# What PostgreSQL and MySQL servers say, and what each means the user should do.
_CREDENTIALS = re.compile(
    r"password authentication failed|no password supplied|fe_sendauth|Access denied for user|"
    r"authentication failed|pg_hba\.conf",
    re.IGNORECASE,
)
_NO_DATABASE = re.compile(r"database \S+ does not exist|Unknown database", re.IGNORECASE)


def login_refusal(uri: str) -> str | None:
    """One line saying why the database at ``uri`` refused a login, or None when it let us in (or the login could
    not be tried here: MLflow's own client then says what is wrong)."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    try:
        engine = sqlalchemy.create_engine(uri, poolclass=NullPool, connect_args={"connect_timeout": LOGIN_TIMEOUT})
    except Exception:  # noqa: BLE001 - a URI or dialect SQLAlchemy cannot use: MLflow's client says so
        return None
    try:
        with engine.connect():
            return None
    except sqlalchemy.exc.OperationalError as error:
        said = first_line(getattr(error, "orig", None) or error, 160)
    except Exception:  # noqa: BLE001 - anything else is MLflow's to report
        return None
    finally:
        engine.dispose()
    where = f"the database of the tracking store at {redact(uri)}"
    if _CREDENTIALS.search(said):
        return (
            f"{where} refused the login ({said}): check the user in MLFLOW_TRACKING_URI and its password, kept out "
            f"of the URI in ~/.pgpass (mode 600) or $PGPASSWORD for PostgreSQL (docs/cluster.md)"
        )
    if _NO_DATABASE.search(said):
        return f"{where} has no such database ({said}): create it, or fix its name in MLFLOW_TRACKING_URI"
    return f"{where} refused the connection ({said}): check the server's settings and MLFLOW_TRACKING_URI"
