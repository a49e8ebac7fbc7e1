"""Joint searches as Optuna studies, rebuilt from the tracking store alone, so Optuna's own tools open them.

A search's trials (every rung each trial reached, with its sampled values: :func:`analysis.searches.trial_table`)
become one study: a trial that reached the full budget is COMPLETE with its mean CV accuracy there, one that
stopped lower is PRUNED; either way its rungs are its intermediate values (step = epochs). Exported to an Optuna
storage (``mlflow-mnist export-study``), every trial is kept: one whose last rung diverged or failed is FAIL (user
attr ``status``), and each keeps the search's trial number as the user attr ``search_trial``, since Optuna numbers
them anew. optuna-dashboard and ``optuna.load_study`` open it; in the report, ``optuna.visualization.matplotlib``
draws its history, parallel coordinates and slices from the healthy trials.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from analysis._plotting import empty, save


def add_trials(study, trials: pd.DataFrame, distributions: dict) -> int:
    """Tell ``study`` every trial of one search in ``trials``; returns how many.

    Optuna numbers the trials it is told 0, 1, ... in turn, so each keeps the search's own number as the user
    attr ``search_trial``. A trial whose last rung is healthy is COMPLETE (at the full budget, its mean there) or
    PRUNED; one whose last rung diverged, failed or has no mean is FAIL, with the user attr ``status`` saying
    which. Its healthy rungs are its intermediate values (step = epochs)."""
    import optuna

    names = [name for name in distributions if name in trials]
    told = 0
    for number, rows in trials.sort_values(["trial", "budget"]).groupby("trial", sort=True):
        healthy = rows[rows["status"] == "ok"] if "status" in rows else rows
        values = {int(r.budget): float(r.mean) for r in healthy.itertuples() if math.isfinite(r.mean)}
        first, last = rows.iloc[0], rows.iloc[-1]
        params = {name: first[name] for name in names if not _missing(first[name])}
        status = str(last["status"]) if "status" in rows else "ok"
        scored = status == "ok" and int(last["budget"]) in values
        complete = scored and bool(last["complete"])
        if scored:
            state = optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState.PRUNED
        else:
            state = optuna.trial.TrialState.FAIL
        attrs = {"search_trial": int(number)}
        if not scored:
            attrs["status"] = status if status != "ok" else "no mean accuracy"
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={name: distributions[name] for name in params},
                value=values[int(last["budget"])] if complete else None,
                intermediate_values=values,
                state=state,
                user_attrs=attrs,
            )
        )
        told += 1
    return told


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


#: The tables every Optuna storage holds (``optuna.storages.RDBStorage`` makes them in a new database).
OPTUNA_TABLES = frozenset({"version_info", "studies", "trials"})


def _sqlite_file(storage: str) -> Path | None:
    """The file a SQLite ``storage`` URL names (relative to the working directory, as SQLAlchemy opens it);
    ``None`` for another database, an in-memory one or a URL that does not parse (RDBStorage says why)."""
    try:
        from sqlalchemy.engine import make_url

        url = make_url(storage)
    except Exception:  # noqa: BLE001 - not a URL: RDBStorage's own message names the mistake
        return None
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    if url.database.startswith("file:"):  # a SQLite URI filename (?uri=true): not a plain path
        return None
    return Path(url.database)


def _tracking_file() -> Path | None:
    """The tracking store's SQLite file, where the tracking URI names one."""
    from mlflow_mnist.tracking import sqlite_file, tracking_uri

    written = sqlite_file(tracking_uri())
    return Path(written) if written else None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_storage(storage: str) -> None:
    """``storage`` may take an exported study, checked before anything touches it: RDBStorage writes Optuna's
    tables into whatever database it opens, so a SQLite file that is the tracking store, or another program's
    database (tables, none of them Optuna's), is refused here with one line (a ValueError, credentials masked).
    A new file, an empty one and an existing Optuna storage pass (the study is added to the latter)."""
    import sqlite3

    from mlflow_mnist.redaction import redact
    from mlflow_mnist.sqlite_tables import read_only_tables

    path = _sqlite_file(storage)
    if path is None or not path.exists():
        return
    tracking = _tracking_file()
    if tracking is not None and _same_file(path, tracking):
        raise ValueError(
            f"--storage {redact(storage)!r} is the tracking store itself: Optuna would add its tables to it; give "
            f"another file, e.g. sqlite:///study.db"
        )
    if not path.is_file():
        raise ValueError(f"--storage {redact(storage)!r} names {path}, which is not a file: give a SQLite file")
    try:
        tables = read_only_tables(path)
    except sqlite3.Error as error:
        reason = redact((str(error).strip().splitlines() or [type(error).__name__])[0])[:160]
        raise ValueError(
            f"--storage {redact(storage)!r} is not a SQLite database Optuna could use ({reason}): give a new file, "
            f"e.g. sqlite:///study.db, or an existing Optuna storage"
        ) from None
    if tables and not OPTUNA_TABLES <= tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise ValueError(
            f"--storage {redact(storage)!r} is not an Optuna storage (it holds other tables: {shown}): give a new "
            f"file, e.g. sqlite:///study.db, or an existing Optuna storage"
        )


def open_storage(storage: str):
    """The Optuna storage at URL ``storage``, opened (and its tables made) before anything is written to it; a URL
    that does not open, or a database that is not an Optuna storage (:func:`check_storage`), is a ValueError of
    one line, its credentials masked."""
    import optuna

    from mlflow_mnist.redaction import redact

    check_storage(storage)
    try:
        return optuna.storages.RDBStorage(storage)
    except Exception as error:  # noqa: BLE001 - SQLAlchemy, a missing driver, the file system: all one answer
        reason = redact((str(error).strip().splitlines() or [type(error).__name__])[0])[:160]
        raise ValueError(
            f"--storage {redact(storage)!r} does not open as an Optuna storage ({reason}): give a database URL "
            f"such as sqlite:///study.db in a folder you can write"
        ) from None


def build_study(trials: pd.DataFrame, distributions: dict, *, name: str = "search", storage: str | None = None):
    """One search's trials as an Optuna study (in memory, or in ``storage``, e.g. ``sqlite:///study.db``)."""
    import optuna

    from mlflow_mnist.redaction import redact

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = open_storage(storage) if storage is not None else None
    try:
        study = optuna.create_study(study_name=name, storage=rdb, direction="maximize", load_if_exists=False)
    except optuna.exceptions.DuplicatedStudyError:
        raise ValueError(
            f"--storage {redact(storage or '')!r} already holds a study named {name!r}: pass --name to write it "
            f"under another name, or another --storage"
        ) from None
    add_trials(study, trials, distributions)
    return study


def export_study(runs: pd.DataFrame, search_run_id: str, storage: str, *, name: str | None = None):
    """Write the search ``search_run_id`` of ``runs`` (``analysis.store.read_runs``) into an Optuna storage, every
    trial of it (:func:`add_trials`)."""
    from analysis.searches import search_spaces, trial_table

    trials = trial_table(runs, every_status=True)  # a diverged or failed trial is a FAIL trial, not left out
    trials = trials[trials["search_run_id"] == search_run_id]
    if trials.empty:
        raise ValueError(f"run {search_run_id} is not a joint search with trials: pass a search run's id or 'latest'")
    distributions = search_spaces(runs, trials)[search_run_id]
    return build_study(trials, distributions, name=name or str(trials["search"].iloc[0]), storage=storage)


PLOTS = {
    "history": "plot_optimization_history",
    "parallel coordinates": "plot_parallel_coordinate",
    "slices": "plot_slice",
}


def render_optuna_figure(study, kind: str, path: Path, title: str) -> Path:
    """One of Optuna's own figures (its matplotlib back end) of ``study``, saved as a PNG."""
    import matplotlib

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return empty(path, f"{title}: fewer than two complete trials")
    # Optuna's matplotlib back end calls plt.style.use("ggplot"), which changes every figure drawn after it: a
    # report with a joint search drew its staged figures on ggplot's grey. Its style stays inside this figure.
    with matplotlib.rc_context():
        return _draw_optuna_figure(study, kind, path, title)


def _draw_optuna_figure(study, kind: str, path: Path, title: str) -> Path:
    import warnings

    from matplotlib.ticker import NullFormatter
    from optuna.visualization import matplotlib as optuna_plots

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib back end experimental
        drawn = getattr(optuna_plots, PLOTS[kind])(study)
    axes = drawn if hasattr(drawn, "figure") else drawn.flat[0]
    figure = axes.figure
    figure.suptitle(title, fontsize=10)
    for each in figure.axes:  # a log axis' minor labels (2x10^1, 3x10^1, ...) ran into each other
        each.xaxis.set_minor_formatter(NullFormatter())
    if kind == "slices":
        figure.set_size_inches(max(8.0, 2.6 * len(study.best_trial.params)), 3.4)
        # Optuna's colour bar is an axes of its own, placed over the panels' row: the panels get the left of the
        # figure and the bar a strip at the right, so neither covers the other.
        figure.subplots_adjust(left=0.06, right=0.9, top=0.86, bottom=0.2, wspace=0.3)
        for bar in [each for each in figure.axes if each.get_subplotspec() is None]:
            bar.set_position([0.92, 0.2, 0.01, 0.66])
        return save(figure, path, tight=False)
    figure.set_size_inches(9, 4.6)
    return save(figure, path)
