"""The generic run writer: creates, fills and closes MLflow runs for one driver process.

With :mod:`mlflow_mnist.search_tree`, :mod:`mlflow_mnist.final_tree` and :mod:`mlflow_mnist.registry` it is
the only code that writes to the tracking store. Runs carry true times (a fold run starts and ends when its
worker did), models are MLflow 3 LoggedModels with their metrics linked, and nothing here logs environment
variables or the tracking URI, so credentials never reach the store.
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mlflow_mnist.model_files import tree_sha256
from mlflow_mnist.params import format_value
from mlflow_mnist.redaction import first_line, redact
from mlflow_mnist.schema import (
    ANALYSIS_LEVEL,
    BEST_CHILD,
    DATASET_CONTEXT,
    EFFECTIVE_PREFIX,
    LEVEL,
    LOGGED_MODEL_ID,
    MODEL_SHA256,
    NOTE,
    PARENT,
)
from mlflow_mnist.seal import RunSeal, seal_run
from mlflow_mnist.tracking import TrackingError, refusal_line

_log = logging.getLogger(__name__)
MODEL_NAME = "model"  # so `runs:/<run id>/model` resolves to the run's LoggedModel


def _params(values: Mapping[str, Any]):
    from mlflow.entities import Param

    return [Param(key, format_value(value)) for key, value in values.items()]


def _tags(values: Mapping[str, Any]):
    from mlflow.entities import RunTag

    # Tag values must be strings: SQLite coerces them, the REST store refuses anything else.
    return [RunTag(key, str(value)) for key, value in values.items()]


def _metrics(values: Mapping[str, float], step: int = 0, model_id: str | None = None, run_id: str | None = None):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [
        Metric(key, float(value), now, step, model_id=model_id, run_id=run_id)
        for key, value in values.items()
        if math.isfinite(float(value))  # non-finite values are left out, not faked
    ]


class Written:
    """What this driver wrote to one run, shaped as MLflow's ``Run`` (``info.run_id``, ``data.params``, ``data.tags``,
    ``data.metrics`` as latest values), so that the seal can compare it with what the store holds."""

    def __init__(self, run_id: str, experiment_id: str, params=None, tags=None):
        self.info = SimpleNamespace(run_id=run_id, experiment_id=experiment_id)
        self.data = SimpleNamespace(params=dict(params or {}), tags=dict(tags or {}), metrics={})
        self._order: dict[str, tuple[int, int, float]] = {}

    def add(self, *, params=(), tags=(), metrics=()) -> None:
        """Entities as logged (``Param``, ``RunTag``, ``Metric``); a metric's latest value is MLflow's: the
        greatest (step, timestamp, value), the first logged of equals."""
        self.data.params.update((param.key, param.value) for param in params)
        self.data.tags.update((tag.key, tag.value) for tag in tags)
        for metric in metrics:
            order = (metric.step, metric.timestamp, metric.value)
            if metric.key not in self._order or order > self._order[metric.key]:
                self._order[metric.key] = order
                self.data.metrics[metric.key] = metric.value


class RunWriter:
    """Creates and closes the runs of one CLI invocation; remembers which are open so Ctrl-C can close them."""

    def __init__(
        self,
        client,
        experiment_id: str,
        *,
        dataset=None,
        common_tags: Mapping[str, str] | None = None,
        adopted_run_id: str | None = None,
        seal: RunSeal | None = None,
    ):
        self.client = client
        self.seal = seal
        self.experiment_id = experiment_id
        self.dataset = dataset
        self.common_tags = dict(common_tags or {})
        self.adopted_run_id = adopted_run_id
        self.open_runs: list[str] = []
        self.written: dict[str, Written] = {}  # open runs this writer started: what it wrote (for their seals)
        self._open_lock = threading.Lock()  # folds may be logged from several threads

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(
        self,
        name: str,
        level: str,
        *,
        parent: str | None = None,
        tags: Mapping[str, Any] | None = None,
        adopt: str | None = None,
        start_ms: int | None = None,
    ) -> str:
        """A new run (or the adopted run ``mlflow run`` made for us) with our tags and the training dataset."""
        all_tags = {key: str(value) for key, value in {**self.common_tags, LEVEL: level, **(tags or {})}.items()}
        if parent:
            all_tags[PARENT] = parent
        if adopt:
            made = self.client.get_run(adopt).data  # `mlflow run`'s -P params and tags, written before we started
            self.client.update_run(adopt, status="RUNNING", name=name)
            self.client.log_batch(adopt, tags=_tags(all_tags))
            run_id, written = adopt, Written(adopt, self.experiment_id, made.params, {**made.tags, **all_tags})
        else:
            run = self.client.create_run(self.experiment_id, start_time=start_ms, run_name=name, tags=all_tags)
            run_id = run.info.run_id
            written = Written(run_id, self.experiment_id, tags=all_tags)
        with self._open_lock:
            self.open_runs.append(run_id)
            self.written[run_id] = written
        self.log_dataset(run_id)
        return run_id

    def finish(self, run_id: str, status: str = "FINISHED", end_ms: int | None = None) -> None:
        """End ``run_id``; a finished run is sealed first (:mod:`mlflow_mnist.seal`) if the store holds exactly what
        this writer wrote to it."""
        with self._open_lock:
            written = self.written.pop(run_id, None)
        if status == "FINISHED" and self.seal is not None and written is not None:
            if not seal_run(self.client, run_id, self.seal, written):
                _log.warning(
                    "run %s was written by someone else while it was open: left unsealed, so it is not trusted later",
                    run_id,
                )
        self.client.set_terminated(run_id, status, end_time=end_ms)
        with self._open_lock:
            if run_id in self.open_runs:
                self.open_runs.remove(run_id)

    def abort(self, status: str = "KILLED") -> None:
        """Close every run this writer opened, innermost first (Ctrl-C, or a fatal error)."""
        with self._open_lock:
            open_runs = list(self.open_runs)
        for run_id in reversed(open_runs):
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

        from mlflow_mnist.lock import LockLost

        try:
            yield self
        except LockLost:
            raise  # a driver that lost its lock writes nothing more: the next holder closes these runs
        except KeyboardInterrupt:
            self.abort("KILLED")
            raise
        except (MlflowException, RequestException, OSError) as error:
            self.abort("FAILED")
            refused = refusal_line(uri, error)
            if refused is not None:
                raise TrackingError(
                    f"{refused}; finished folds are kept: fix it and run the same command again"
                ) from None
            reason = first_line(error, 200)
            raise TrackingError(
                f"lost the tracking store at {redact(uri)} ({reason}): finished folds are kept; "
                f"once it is back, run the same command again to resume"
            ) from None
        except BaseException:
            self.abort("FAILED")
            raise

    # -- content -------------------------------------------------------------------------------------------
    def _writable_params(self, run_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """Params are write-once: on the run ``mlflow run`` made, keep its -P values and log ours beside them."""
        if run_id != self.adopted_run_id:
            return dict(values)
        logged = self.client.get_run(run_id).data.params
        return {
            (key if key not in logged else f"{EFFECTIVE_PREFIX}{key}"): value
            for key, value in values.items()
            if logged.get(key) != format_value(value)
        }

    def _log_batch(self, run_id: str, *, params=(), tags=(), metrics=()) -> None:
        """Every write to a run's params, tags and metrics, remembered for its seal (a run this writer did not
        start, e.g. a fold taken over, is not sealed again: nothing is remembered)."""
        self.client.log_batch(run_id, metrics=list(metrics), params=list(params), tags=list(tags))
        if (written := self.written.get(run_id)) is not None:
            written.add(params=params, tags=tags, metrics=metrics)

    def log_params(self, run_id: str, values: Mapping[str, Any]) -> None:
        if values := self._writable_params(run_id, values):
            self._log_batch(run_id, params=_params(values))

    def log_tags(self, run_id: str, values: Mapping[str, Any]) -> None:
        self._log_batch(run_id, tags=_tags(values))

    def log_metrics(self, run_id: str, values: Mapping[str, float], *, model_id: str | None = None) -> None:
        self._log_batch(run_id, metrics=_metrics(values, model_id=model_id, run_id=run_id))

    def log_results(
        self,
        run_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        history: Mapping[str, list[float]] | None = None,
        first_step: int = 1,
        metrics: Mapping[str, float] | None = None,
        scores: Mapping[str, float] | None = None,
        model_id: str | None = None,
    ) -> None:
        """What a trained model's run records, in one request: against a tracking server each request is a
        round trip, and a driver logging for many workers is bound by them (benchmarks/bench_driver.py).

        Per-epoch ``history`` curves (step = epoch, from ``first_step``: a continued fold's first new epoch), final
        ``metrics``, and ``scores`` linked to ``model_id``
        (the UI's Models column ranks by them); ``log_batch`` chunks past MLflow's per-request limits itself.
        """
        curves = [
            m
            for name, values in (history or {}).items()
            for step, v in enumerate(values, first_step)
            for m in _metrics({name: v}, step)
        ]
        linked = _metrics(scores or {}, model_id=model_id, run_id=run_id)
        self._log_batch(
            run_id,
            metrics=curves + _metrics(metrics or {}) + linked,
            params=_params(self._writable_params(run_id, params or {})),
            tags=_tags(tags or {}),
        )

    def log_dataset(self, run_id: str, dataset=None, context: str = "train") -> None:
        from mlflow.entities import DatasetInput, InputTag

        dataset = dataset or self.dataset
        if dataset is not None:
            entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(DATASET_CONTEXT, context)])
            self.client.log_inputs(run_id, datasets=[entity])

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_bytes(self, run_id: str, content: bytes, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, artifact_file)
            path.write_bytes(content)
            self.client.log_artifact(run_id, str(path))

    def log_dict(self, run_id: str, values: Mapping[str, Any], artifact_file: str) -> None:
        self.client.log_dict(run_id, dict(values), artifact_file)

    def log_figure(self, run_id: str, figure, artifact_file: str) -> None:
        """Log a matplotlib ``Figure`` made outside pyplot (the final's are: pyplot would keep every one open, and
        choose a back end for the caller's process); it is freed with its last reference."""
        self.client.log_figure(run_id, figure, artifact_file)

    def describe(self, run_id: str, markdown: str) -> None:
        self.client.set_tag(run_id, NOTE, redact(markdown))

    def run_link(self, run_id: str, text: str) -> str:
        return f"[{text}](#/experiments/{self.experiment_id}/runs/{run_id})"

    def name_best_child(
        self, run_id: str, child_id: str, child_name: str, metrics: Mapping[str, float], *, note: str = ""
    ) -> None:
        """Tag the parent with its best child's run id, link it in the description (then ``note``, if any), copy
        its metrics."""
        description = f"Best child: {self.run_link(child_id, child_name)}" + (f"\n\n{note}" if note else "")
        self.log_tags(run_id, {BEST_CHILD: child_id, NOTE: description})
        self.log_metrics(run_id, metrics)

    def log_model(
        self,
        run_id: str,
        files: Mapping[str, bytes] | None,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        model_type: str = "keras",
    ) -> str | None:
        """Upload a model folder a worker saved as an MLflow 3 LoggedModel of ``run_id``; returns its model id.
        The model's param ``model_sha256`` is its folder's digest (:func:`~mlflow_mnist.model_files.tree_sha256`).

        Log its scores with :meth:`log_results` (``scores=``, ``model_id=``) so that the UI's Models column and
        ``mlflow.search_logged_models(order_by=...)`` can rank the models of a whole search.
        """
        if not files:
            return None
        from mlflow.entities import LoggedModelOutput
        from mlflow.models import Model

        model = self.client.create_logged_model(
            self.experiment_id,
            name=MODEL_NAME,
            source_run_id=run_id,
            params={key: format_value(value) for key, value in (params or {}).items()},
            tags={key: str(value) for key, value in (tags or {}).items()},
            model_type=model_type,
        )
        try:
            with tempfile.TemporaryDirectory() as tmp:
                for relative, content in files.items():
                    path = Path(tmp, relative)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(content)
                # The worker could not know the ids: record them in MLmodel, as mlflow's own log_model does.
                mlmodel = Model.load(tmp)
                mlmodel.model_id, mlmodel.run_id, mlmodel.artifact_path = (
                    model.model_id,
                    run_id,
                    model.artifact_location,
                )
                mlmodel.save(str(Path(tmp, "MLmodel")))
                self.client.log_model_artifacts(model.model_id, tmp)
                # Written once, after the files and before READY: what readers check the folder against.
                self.client.log_model_params(model.model_id, {MODEL_SHA256: tree_sha256(Path(tmp))})
        except BaseException:
            self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        self._log_batch(run_id, params=_params({LOGGED_MODEL_ID: model.model_id}))  # written once: the run's model
        return model.model_id


def log_report(client, experiment_name: str, folder: Path, run_id: str | None = None, *, read: str = "") -> str:
    """Log an analysis folder under ``analysis/`` of ``run_id``, or of a new experiment-level "analysis" run,
    described (``read``: what the report was built from) so that its UI page says where the report is."""
    note = (
        "The analysis report, built from the tracking store alone: open `analysis/report.html` under Artifacts "
        "(verdicts in `analysis/verdicts.csv`)." + (f" It read {read}." if read else "")
    )
    if run_id:
        if LEVEL not in client.get_run(run_id).data.tags:  # the bare run `mlflow run -e analyze` made
            client.update_run(run_id, name="analysis")
            client.set_tag(run_id, LEVEL, ANALYSIS_LEVEL)
            client.set_tag(run_id, NOTE, redact(note))
        client.log_artifacts(run_id, str(folder), "analysis")
        return run_id
    experiment = client.get_experiment_by_name(experiment_name).experiment_id
    run = client.create_run(experiment, run_name="analysis", tags={LEVEL: ANALYSIS_LEVEL, NOTE: redact(note)})
    try:
        client.log_artifacts(run.info.run_id, str(folder), "analysis")
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
