"""Store access and tag names: connect, find the campaign's experiment, read its memory. Writes live in
:mod:`mlflow_mnist.runs` and the modules built on it.

Run tree: a stage run (``kernel_size``), one child per grid point (``kernel_size=(5, 5)``), one grandchild per
fold (``fold 2/3``). A multi-step stage (``neurons``) puts a step run between stage and grid points. Runs carry
tags to query by (``mlflow_mnist.level``, ``.stage``, ``.step``, ``.config_hash``, ``.fold_key``,
``.data_digest``).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mlflow_mnist.planning import FoldRecord, StepBest, StoreState

PREFIX = "mlflow_mnist."
LEVEL, STAGE, STEP, CONFIG_HASH, FOLD_KEY, DIGEST = (
    f"{PREFIX}{name}" for name in ("level", "stage", "step", "config_hash", "fold_key", "data_digest")
)
BEST_PARAMS, BEST_SCORE, PLAN_HASH, STATUS = (
    f"{PREFIX}{name}" for name in ("best_params", "best_mean_accuracy", "plan_hash", "status")
)
REUSED = f"{PREFIX}reused_fold_runs"
SETTINGS_KEY = f"{PREFIX}settings_key"  # SearchSettings.key(): which runs' step bests may carry forward
STRATEGY, INCUMBENT = f"{PREFIX}strategy", f"{PREFIX}incumbent"
BEST_CONFIG = f"{PREFIX}best_config"  # a search's best full configuration: what `final --search` trains
# Successive halving and Optuna: which rung (and how many epochs) a group or candidate ran at, and whether it
# was the last rung (only that one decides anything); a trial's number and sampled values; the search's key.
RUNG, BUDGET, FINAL_RUNG = f"{PREFIX}rung", f"{PREFIX}budget_epochs", f"{PREFIX}final_rung"
TRIAL, SAMPLED, SEARCH_KEY = f"{PREFIX}trial", f"{PREFIX}sampled", f"{PREFIX}search_key"
CANDIDATE = f"{PREFIX}candidate"
VARIED = f"{PREFIX}varied"
PARENT = "mlflow.parentRunId"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI (without credentials) and the fix."""


def redact(uri: str) -> str:
    """The URI as given, with any user:password@ or query (tokens) removed, for messages."""
    parts = urlsplit(uri)
    if not (parts.username or parts.password or parts.query):
        return uri  # urlunsplit would turn sqlite:////abs/path into sqlite://abs/path
    if parts.password or parts.username:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts._replace(query="")) if parts.query else urlunsplit(parts)


def _writable(folder: Path) -> bool:
    """A real write probe: permission bits say nothing to root, a read-only mount says no to everyone."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _create_sqlite_store(path: Path) -> None:
    """Create the schema in a temporary file and rename it into place.

    MLflow builds a new SQLite store in dozens of migration steps; a process killed among them left a database
    no later start could open ("index ... already exists"). A rename is atomic: the store is whole or absent.
    """
    from mlflow import MlflowClient

    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.unlink(missing_ok=True)
    MlflowClient(f"sqlite:///{partial}").search_experiments(max_results=1)
    os.replace(partial, path)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def connect(uri: str | None = None):
    """A client for ``uri`` that has answered one request; a clear :class:`TrackingError` otherwise."""
    import mlflow
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    # A shared server that is down should fail in seconds, not after MLflow's default minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    # MLflow prints a URL for every run it closes on a server: hundreds of lines through our progress bar.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///").split("?")[0]).expanduser().resolve()
        if not _writable(path.parent):
            raise TrackingError(
                f"cannot write the SQLite store in {path.parent}: make it writable or set MLFLOW_TRACKING_URI"
            )
        if not path.exists():
            _create_sqlite_store(path)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - every failure mode gets the same one-line advice
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        if re.search(r"error code (401|403)\b", str(error)):
            raise TrackingError(
                f"the tracking server at {redact(uri)} refused our credentials ({reason[:60]}...): set "
                f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
            ) from None
        raise TrackingError(
            f"cannot reach the tracking store at {redact(uri)} ({reason}): start the server or set MLFLOW_TRACKING_URI"
        ) from None
    return client


DEFAULT_EXPERIMENT = "mnist"
# MLflow 3's UI opens an experiment of this kind on its training runs, not on the GenAI overview.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


@dataclass(frozen=True)
class Experiment:
    """Where a command works: the experiment, the run `mlflow run` made for it, and why this experiment."""

    experiment_id: str
    name: str
    launcher_run_id: str | None = None
    chosen_because: str = ""  # set when no experiment was named: the line that tells the user which one


def resolve_experiment(client, name: str | None = None, *, create: bool = True) -> Experiment:
    """Under `mlflow run`, the run it made and its experiment; else ``name`` or $MLFLOW_EXPERIMENT_NAME; else the
    experiment holding the latest campaign runs (so `mlflow run` into Default, then `final`, finds it); else
    ``mnist``. Readers pass ``create=False``: a missing experiment is then an error, not a new empty one.
    """
    launcher = os.environ.get("MLFLOW_RUN_ID") or None
    if launcher:
        experiment = client.get_experiment(client.get_run(launcher).info.experiment_id)
        if create:
            mark_model_training(client, experiment)
        return Experiment(experiment.experiment_id, experiment.name, launcher)
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    because = ""
    if not name:
        latest = latest_campaign_experiment(client)
        if latest is not None:
            name = latest.name
            because = f"experiment {name!r}: it holds the latest campaign runs (choose another with --experiment)"
        else:
            name = DEFAULT_EXPERIMENT
    if not create and client.get_experiment_by_name(name) is None:
        raise TrackingError(f"experiment {name!r} does not exist in {redact(tracking_uri())}: check --experiment")
    return Experiment(experiment_id(client, name), name, None, because)


def latest_campaign_experiment(client):
    """The active experiment whose newest run carries our tags, or None in a store without campaigns."""
    ids = [e.experiment_id for e in client.search_experiments(max_results=50000)]
    if not ids:
        return None
    newest = client.search_runs(ids, f"tags.`{LEVEL}` != ''", max_results=1, order_by=["attributes.start_time DESC"])
    return client.get_experiment(newest[0].info.experiment_id) if newest else None


def mark_model_training(client, experiment) -> None:
    if experiment.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)


def experiment_id(client, name: str) -> str:
    """The id of experiment ``name``, created (tagged as model training) or restored when needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND: MODEL_TRAINING})
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    mark_model_training(client, experiment)
    return experiment.experiment_id


def search_all(client, experiment_ids: list[str], filter_string: str = "", order_by: list[str] | None = None):
    """Every matching run, page by page (a search answers at most 1,000 at a time)."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def read_store_state(client, experiment: str, data_digest: str, settings_key: str | None = None) -> StoreState:
    """Completed steps' bests (made under the same settings) and finished folds on this data, read-only.

    Folds are matched by key alone (the key holds everything that shapes a fold); a step's best only carries
    forward into a campaign with the same :meth:`SearchSettings.key`, so a 1-epoch 2-fold exploration never
    feeds a 6-epoch 3-fold campaign on the same data.
    """
    runs = search_all(client, [experiment], f"tags.`{DIGEST}` = '{data_digest}'")
    status = {run.info.run_id: run.info.status for run in runs}
    state = StoreState()
    newest_end: dict[str, int] = {}
    for run in runs:
        tags, info = run.data.tags, run.info
        if info.status != "FINISHED":
            continue
        if BEST_PARAMS in tags and tags.get(LEVEL) == "step":
            if settings_key is not None and tags.get(SETTINGS_KEY) != settings_key:
                continue
            step = tags[STEP]
            if (info.end_time or 0) >= newest_end.get(step, -1):
                newest_end[step] = info.end_time or 0
                params = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(tags[BEST_PARAMS]).items()}
                state.step_bests[step] = StepBest(step, params, float(tags.get(BEST_SCORE, "nan")), info.run_id)
        elif tags.get(LEVEL) == "fold" and FOLD_KEY in tags and tags.get(STATUS) in ("ok", "diverged"):
            parent = tags.get(PARENT, "")
            state.folds[tags[FOLD_KEY]] = FoldRecord(
                tags[FOLD_KEY],
                run.data.metrics.get("heldout_accuracy", math.nan),
                run.data.metrics.get("fit_seconds", math.nan),
                tags[STATUS],
                info.run_id,
                parent,
                status.get(parent) == "FINISHED",
                run.data.metrics.get("chance_accuracy", 0.5),
            )
    return state


def close_stale_runs(client, experiment: str, keep: Iterable[str] = ()) -> int:
    """Runs left RUNNING by a killed driver become KILLED; one driver per experiment is assumed."""
    keep = set(keep)
    running = search_all(client, [experiment], f"attributes.status = 'RUNNING' and tags.`{LEVEL}` != ''")
    stale = [run for run in running if run.info.run_id not in keep]
    for run in stale:
        client.set_terminated(run.info.run_id, "KILLED")
    return len(stale)


def latest_final_run(client, experiment: str):
    runs = client.search_runs(
        [experiment],
        f"tags.`{LEVEL}` = 'final' and attributes.status = 'FINISHED'",
        max_results=1,
        order_by=["attributes.end_time DESC"],
    )
    return runs[0] if runs else None
