"""The one module that writes to MLflow. Only the driver process calls it.

Run tree: a stage run (``kernel_size``), one child per grid point (``kernel_size=(5, 5)``), one grandchild per
fold (``fold 2/3``). A multi-step stage (``neurons``) puts a step run between stage and grid points. Runs carry
tags to query by (``mlflow_mnist.level``, ``.stage``, ``.step``, ``.config_hash``, ``.fold_key``,
``.data_digest``); the step run names its best grid point. Nothing here logs environment variables or the
tracking URI, so credentials never reach the store.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mlflow_mnist.search import (
    Candidate,
    FoldRecord,
    FoldResult,
    FoldTask,
    StepBest,
    StepPlan,
    StoreState,
    config_hash,
    format_value,
)

PREFIX = "mlflow_mnist."
LEVEL, STAGE, STEP, CONFIG_HASH, FOLD_KEY, DIGEST = (
    f"{PREFIX}{name}" for name in ("level", "stage", "step", "config_hash", "fold_key", "data_digest")
)
BEST_PARAMS, BEST_SCORE, PLAN_HASH, STATUS = (
    f"{PREFIX}{name}" for name in ("best_params", "best_mean_accuracy", "plan_hash", "status")
)
REUSED = f"{PREFIX}reused_fold_runs"
CANDIDATE = f"{PREFIX}candidate"
VARIED = f"{PREFIX}varied"
PARENT = "mlflow.parentRunId"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
LIBRARIES = ("mlflow", "keras", "tensorflow", "scikit-learn", "scikeras", "numpy")


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI (without credentials) and the fix."""


def redact(uri: str) -> str:
    """The URI with any user:password@ or token removed, for messages."""
    parts = urlsplit(uri)
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


def resolve_experiment(client, name: str | None = None, create: bool = True) -> tuple[str, str | None]:
    """(experiment id, launcher run id): under `mlflow run`, the run it made and its experiment win.

    Readers pass ``create=False``: a missing experiment is then an error, not a new empty one.
    """
    launcher = os.environ.get("MLFLOW_RUN_ID") or None
    if launcher:
        return client.get_run(launcher).info.experiment_id, launcher
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    if not create and client.get_experiment_by_name(name) is None:
        raise TrackingError(f"experiment {name!r} does not exist in {redact(tracking_uri())}: check --experiment")
    return experiment_id(client, name), None


def experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name)
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
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


def read_store_state(client, experiment: str, data_digest: str) -> StoreState:
    """Completed steps' bests and finished folds on this data: the campaign's memory, read-only."""
    runs = search_all(client, [experiment], f"tags.`{DIGEST}` = '{data_digest}'")
    status = {run.info.run_id: run.info.status for run in runs}
    state = StoreState()
    newest_end: dict[str, int] = {}
    for run in runs:
        tags, info = run.data.tags, run.info
        if info.status != "FINISHED":
            continue
        if BEST_PARAMS in tags and tags.get(LEVEL) == "step":
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


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in LIBRARIES:
        for dist in (name, f"{name}-cpu"):
            try:
                found[name] = version(dist)
                break
            except PackageNotFoundError:
                continue
    return found


def _params(values: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(key, format_value(value)) for key, value in values.items()]


def _tags(values: dict[str, Any]):
    from mlflow.entities import RunTag

    return [RunTag(key, str(value)) for key, value in values.items()]


def _metrics(values: dict[str, float], step: int = 0):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, step) for key, value in values.items()]


class RunLogger:
    """Creates and closes the runs of one CLI invocation; remembers which are open so Ctrl-C can close them."""

    def __init__(
        self,
        client,
        experiment: str,
        dataset=None,
        common_tags: dict[str, str] | None = None,
        adopted_run_id: str | None = None,
    ):
        self.client = client
        self.experiment = experiment
        self.dataset = dataset
        self.common_tags = dict(common_tags or {})
        self.adopted_run_id = adopted_run_id
        self.open_runs: list[str] = []

    def log_params(self, run_id: str, values: dict[str, Any]) -> None:
        """Params are write-once: on the run ``mlflow run`` made, keep its -P values and log ours beside them."""
        if run_id == self.adopted_run_id:
            logged = self.client.get_run(run_id).data.params
            values = {
                (key if key not in logged else f"effective_{key}"): value
                for key, value in values.items()
                if logged.get(key) != format_value(value)
            }
        if values:
            self.client.log_batch(run_id, params=_params(values))

    # -- generic -------------------------------------------------------------------------------------------
    def start(
        self,
        name: str,
        level: str,
        parent: str | None = None,
        tags: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> str:
        """A new run (or the adopted ``run_id`` that ``mlflow run`` made for us) with our tags and dataset."""
        # Tag values must be strings: SQLite coerces them, the REST store refuses anything else.
        all_tags = {key: str(value) for key, value in {**self.common_tags, LEVEL: level, **(tags or {})}.items()}
        if parent:
            all_tags[PARENT] = parent
        if run_id:
            self.client.update_run(run_id, status="RUNNING", name=name)
            self.client.log_batch(run_id, tags=_tags(all_tags))
        else:
            run_id = self.client.create_run(self.experiment, run_name=name, tags=all_tags).info.run_id
        self.open_runs.append(run_id)
        self.log_dataset(run_id)
        return run_id

    def log_dataset(self, run_id: str, dataset=None, context: str = "train") -> None:
        from mlflow.entities import DatasetInput, InputTag

        dataset = dataset or self.dataset
        if dataset is not None:
            entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
            self.client.log_inputs(run_id, datasets=[entity])

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)
        if run_id in self.open_runs:
            self.open_runs.remove(run_id)

    def abort(self, status: str = "KILLED") -> None:
        """Close every run this logger opened, innermost first (Ctrl-C, or a fatal error)."""
        for run_id in reversed(list(self.open_runs)):
            try:
                self.finish(run_id, status)
            except Exception:  # noqa: BLE001 - best effort while already failing
                # The store is gone: retrying every run would only delay the exit; the next start closes them.
                return

    @contextmanager
    def closing_on_failure(self, uri: str):
        """Close open runs on any failure; a lost store becomes one :class:`TrackingError` line naming ``uri``."""
        from mlflow.exceptions import MlflowException
        from requests.exceptions import RequestException

        try:
            yield self
        except KeyboardInterrupt:
            self.abort("KILLED")
            raise
        except (MlflowException, RequestException, OSError) as error:
            self.abort("FAILED")
            reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
            raise TrackingError(
                f"lost the tracking store at {redact(uri)} ({reason}): finished folds are kept; "
                f"once it is back, run the same command again to resume"
            ) from None
        except BaseException:
            self.abort("FAILED")
            raise

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, Path(artifact_file).name)
            path.write_text(text)
            folder = str(Path(artifact_file).parent) if Path(artifact_file).parent != Path(".") else None
            self.client.log_artifact(run_id, str(path), folder)

    # -- search runs ---------------------------------------------------------------------------------------
    def start_stage(
        self, stage: str, step: str | None, settings_params: dict[str, Any], adopt_run_id: str | None = None
    ) -> str:
        """Top run of an invocation; ``step`` given when the stage is a single step (then it is the step run)."""
        level = "step" if step else "stage"
        tags = {STAGE: stage, **({STEP: step} if step else {})}
        commit = _git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        tags.update({f"{PREFIX}version.{name}": v for name, v in library_versions().items()})
        run_id = self.start(stage, level, tags=tags, run_id=adopt_run_id)
        self.log_params(run_id, settings_params)
        return run_id

    def start_step(self, plan: StepPlan, stage: str, parent: str | None, run_id: str | None = None) -> str:
        """The step run (or, for a single-step stage, the stage run itself) gets the fixed params and grid."""
        if run_id is None:
            run_id = self.start(plan.step.name, "step", parent, {STAGE: stage, STEP: plan.step.name})
        self.client.log_batch(
            run_id, tags=_tags({PLAN_HASH: plan.plan_hash, VARIED: json.dumps(list(plan.step.varied))})
        )
        fixed = {k: v for k, v in plan.fixed.items() if k not in plan.step.varied}
        self.log_params(run_id, fixed)
        grid = {key: [format_value(v) for v in values] for key, values in plan.step.grid.items()}
        self.log_text(run_id, json.dumps(grid, indent=2), "grid.json")
        return run_id

    def start_candidate(self, candidate: Candidate, plan: StepPlan, stage: str, parent: str) -> str:
        run_id = self.start(
            candidate.label,
            "candidate",
            parent,
            {
                STAGE: stage,
                STEP: plan.step.name,
                CONFIG_HASH: candidate.config_hash,
                CANDIDATE: candidate.label,
                VARIED: json.dumps(list(plan.step.varied)),
                f"{PREFIX}candidate_index": candidate.index,
            },
        )
        self.log_params(run_id, candidate.params)
        adopted, referenced = [], []
        for key in candidate.fold_keys:
            record = plan.reused.get(key)
            if record is None:
                continue
            if record.parent_finished:
                referenced.append(record.run_id)
            else:
                adopted.append(record.run_id)
        # Finished folds of an interrupted attempt move under the new grid-point run, so the finished tree is
        # whole; folds that belong to a completed run elsewhere stay there and are referenced by id.
        for fold_run in adopted:
            self.client.set_tag(fold_run, PARENT, run_id)
        if referenced:
            self.client.set_tag(run_id, REUSED, ",".join(referenced))
        return run_id

    def log_fold(self, task: FoldTask, result: FoldResult, stage: str, parent: str, settings_params: dict) -> str:
        name = f"fold {task.fold + 1}/{task.n_folds}"
        run_id = self.start(
            name,
            "fold",
            parent,
            {
                STAGE: stage,
                STEP: task.step,
                FOLD_KEY: task.key,
                CANDIDATE: task.label,
                f"{PREFIX}fold": task.fold,
                STATUS: result.status,
                CONFIG_HASH: config_hash(task.params),
                f"{PREFIX}diverged": result.status == "diverged",
                **({f"{PREFIX}error": result.error[:500]} if result.error else {}),
            },
        )
        params = {
            **task.params,
            "fold": task.fold,
            "n_folds": task.n_folds,
            "split_seed": task.split_seed,
            **settings_params,
        }
        self.log_params(run_id, params)
        final = {
            "heldout_accuracy": result.accuracy,
            "fit_seconds": result.fit_seconds,
            "epochs_run": result.epochs_run,
            "heldout_loss": result.loss,
        }
        self.log_curves(run_id, result.history, final)
        self.log_model_files(run_id, result.model_files)
        self.finish(run_id, "FINISHED" if result.status != "failed" else "FAILED")
        return run_id

    def log_model_files(self, run_id: str, files: dict[str, bytes] | None) -> None:
        """Upload a model folder a worker saved (``search.model_files``) as the run's ``model`` artifact."""
        if not files:
            return
        with tempfile.TemporaryDirectory() as tmp:
            for relative, content in files.items():
                path = Path(tmp, relative)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
            self.client.log_artifacts(run_id, tmp, "model")

    def log_curves(self, run_id: str, history: dict[str, list[float]], final: dict[str, float]) -> None:
        """Per-epoch curves (step = epoch) and final numbers; non-finite values are left out, not faked."""
        metrics = []
        for name, values in history.items():
            for epoch, value in enumerate(values, start=1):
                if math.isfinite(value):
                    metrics.extend(_metrics({name: value}, epoch))
        metrics += _metrics({k: v for k, v in final.items() if math.isfinite(v)})
        for start in range(0, len(metrics), 900):
            self.client.log_batch(run_id, metrics=metrics[start : start + 900])

    # -- final model ---------------------------------------------------------------------------------------
    def start_final(
        self,
        params: dict[str, Any],
        state: StoreState,
        repeats: int,
        settings_params: dict,
        adopt_run_id: str | None = None,
    ) -> str:
        sources = {name: best.run_id for name, best in state.step_bests.items()}
        run_id = self.start(
            "final",
            "final",
            tags={
                STAGE: "final",
                f"{PREFIX}task": settings_params.get("task", ""),
                f"{PREFIX}source_step_runs": json.dumps(sources)[:5000],
            },
            run_id=adopt_run_id,
        )
        self.log_params(run_id, {**params, **settings_params, "repeats": repeats})
        return run_id

    def start_seed(self, parent: str, seed: int, test_dataset=None) -> str:
        run_id = self.start(f"seed {seed}", "final_seed", parent, {STAGE: "final", f"{PREFIX}seed": seed})
        self.log_dataset(run_id, test_dataset, context="test")
        return run_id

    def log_result(self, run_id: str, result) -> None:
        self.log_curves(
            run_id,
            result.history,
            {
                "test_accuracy": result.test_accuracy,
                "test_loss": result.test_loss,
                "fit_seconds": result.fit_seconds,
                "test_errors": float(result.errors),
            },
        )
        self.client.log_batch(run_id, tags=_tags({STATUS: result.status, f"{PREFIX}seed": result.seed}))
        self.log_model_files(run_id, result.model_files)

    def finish_final(self, run_id: str, summary: dict[str, Any]) -> None:
        numbers = {k: v for k, v in summary.items() if isinstance(v, float)}
        self.client.log_batch(
            run_id, metrics=_metrics(numbers), tags=_tags({"mlflow_mnist.median_run_id": summary["median_run_id"]})
        )
        self.log_text(run_id, json.dumps(summary["seeds"], indent=2), "test_accuracy_by_seed.json")
        self.finish(run_id)

    def finish_candidate(self, run_id: str, row: dict[str, Any]) -> None:
        self.client.log_batch(
            run_id,
            metrics=_metrics(
                {
                    "mean_heldout_accuracy": row["mean_test_score"],
                    "std_heldout_accuracy": row["std_test_score"],
                    "min_heldout_accuracy": row["min_test_score"],
                    "rank": row["rank_test_score"],
                    "mean_fit_seconds": row["mean_fit_time"],
                }
            ),
            tags=_tags({STATUS: row["status"]}),
        )
        self.finish(run_id)

    def finish_step(
        self, run_id: str, plan: StepPlan, rows: list[dict[str, Any]], best: dict[str, Any], close: bool = True
    ) -> None:
        best_candidate = plan.candidates[[r["candidate"] for r in rows].index(best["candidate"])]
        self.log_text(run_id, rows_to_csv(rows), "cv_results.csv")
        self.log_params(run_id, {f"best_{k}": v for k, v in best_candidate.varied.items()})
        self.client.log_batch(
            run_id,
            metrics=_metrics(
                {"best_mean_accuracy": best["mean_test_score"], "best_std_accuracy": best["std_test_score"]}
            ),
            tags=_tags(
                {
                    BEST_PARAMS: json.dumps(
                        {k: list(v) if isinstance(v, tuple) else v for k, v in best_candidate.varied.items()}
                    ),
                    BEST_SCORE: repr(best["mean_test_score"]),
                    f"{PREFIX}best_candidate": best["candidate"],
                }
            ),
        )
        if close:
            self.finish(run_id)


def latest_final_run(client, experiment: str):
    runs = client.search_runs(
        [experiment],
        f"tags.`{LEVEL}` = 'final' and attributes.status = 'FINISHED'",
        max_results=1,
        order_by=["attributes.end_time DESC"],
    )
    return runs[0] if runs else None


def register_champion(client, name: str, final_run, accuracy: float, alias: str):
    """A new model version from the final run's median model, described and tagged, then the alias moved."""
    import mlflow
    from mlflow.exceptions import MlflowException

    model_run = final_run.data.tags.get("mlflow_mnist.median_run_id", final_run.info.run_id)
    metrics, params = final_run.data.metrics, final_run.data.params
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Seed convnet tuned by mlflow-mnist; @champion is served.")
    tags = {
        "test_accuracy": repr(accuracy),
        "mean_test_accuracy": repr(metrics.get("mean_test_accuracy")),
        "std_test_accuracy": repr(metrics.get("std_test_accuracy")),
        "min_test_accuracy": repr(metrics.get("min_test_accuracy")),
        "max_test_accuracy": repr(metrics.get("max_test_accuracy")),
        "repeats": params.get("repeats", "1"),
        "data_digest": final_run.data.tags.get(DIGEST, ""),
        "source_run": model_run,
        "final_run": final_run.info.run_id,
        "params": json.dumps({k: v for k, v in params.items() if k not in ("task", "data_digest")})[:5000],
    }
    version = mlflow.register_model(f"runs:/{model_run}/model", name, tags=tags)
    client.update_model_version(
        name,
        version.version,
        description=(
            f"Median of {tags['repeats']} seed(s): test accuracy {accuracy:.4%} "
            f"(mean {metrics.get('mean_test_accuracy', 0):.4%}, "
            f"min {metrics.get('min_test_accuracy', 0):.4%}, max {metrics.get('max_test_accuracy', 0):.4%}); "
            f"data {tags['data_digest']}; run {model_run}."
        ),
    )
    client.set_registered_model_alias(name, alias, version.version)
    return version


def log_report(client, experiment_name: str, folder: Path, run_id: str | None = None) -> str:
    """Log an analysis folder under ``analysis/`` of ``run_id``, or of a new experiment-level "analysis" run."""
    if run_id:
        if LEVEL not in client.get_run(run_id).data.tags:  # the bare run `mlflow run -e analyze` made
            client.update_run(run_id, name="analysis")
            client.set_tag(run_id, LEVEL, "analysis")
        client.log_artifacts(run_id, str(folder), "analysis")
        return run_id
    experiment = client.get_experiment_by_name(experiment_name).experiment_id
    run = client.create_run(experiment, run_name="analysis", tags={LEVEL: "analysis"})
    try:
        client.log_artifacts(run.info.run_id, str(folder), "analysis")
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in row.items()})
    return out.getvalue()
