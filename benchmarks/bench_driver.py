"""How many finished folds per second one driver logs into a PostgreSQL-backed `mlflow server` (and into the
embedded SQLite store, for comparison): is the driver the bottleneck of a big cluster?

    python benchmarks/bench_driver.py [--folds 60] [--threads 1 4 8]

Synthetic fold results go through the real run tree (runs/search_tree.py): a run per fold with its params,
6 epochs of curves, the dataset input, a real saved model folder uploaded as a LoggedModel with its metric,
true start and end times. PostgreSQL and the server are started here from the OS binaries (tools/services.py),
secured as README "Running on a cluster" says: the server runs MLflow's basic-auth app and the driver logs as an
ordinary user (``--no-auth``: the plain server, as results before the server was secured were measured).
Writes benchmarks/results/bench_driver.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools"), str(Path(__file__).parent)]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import machine  # noqa: E402


def synthetic_results(n_folds: int):
    """A plan of n_folds / 3 candidates x 3 folds, and a worker-like result for each fold (with a real model)."""
    import numpy as np

    from mlflow_mnist.planning import Group, SearchSettings, plan_candidates
    from mlflow_mnist.results import FoldResult
    from mlflow_mnist.tasks import get_task
    from mlflow_mnist.worker.model_files import model_files
    from mlflow_mnist.worker.training import now_ms

    task = get_task("mnist")
    data = task.load("sample", classes="2,7")
    settings = SearchSettings(task, 3, 0, 6, data.digest(), data.n_classes)
    candidates = [{**task.start, "neurons_3": 5 + i} for i in range(max(1, n_folds // 3))]
    plan = plan_candidates(Group("neurons_3", "neurons_3", ("neurons_3",), dict(task.start)), candidates, settings, {})
    model = task.build_model(task.start, n_classes=data.n_classes, seed=0)
    files = model_files(model, data.x_test[:2], with_example=False)  # as a fold's
    history = {name: list(np.linspace(0.9, 0.99, 6)) for name in ("loss", "accuracy", "val_loss", "val_accuracy")}
    start = now_ms()
    results = [
        FoldResult(
            t.key,
            t.step,
            t.candidate_index,
            t.fold,
            accuracy=0.99,
            loss=0.03,
            fit_seconds=20.0,
            epochs_run=6,
            status="ok",
            history=history,
            model_files=files,
            started_ms=start,
            ended_ms=start + 20_000,
        )
        for t in plan.to_train
    ]
    return data, plan, results, sum(len(v) for v in files.values())


class RequestCounter:
    """Counts the HTTP requests this process sends (every MLflow REST and artifact call goes through requests)."""

    def __init__(self):
        import threading

        import requests

        self.count, self._lock, self._original = 0, threading.Lock(), requests.Session.request
        counter = self

        def request(session, *args, **kwargs):
            with counter._lock:
                counter.count += 1
            return counter._original(session, *args, **kwargs)

        requests.Session.request = request


REQUESTS = RequestCounter()


def log_all(uri: str, data, plan, results, threads: int) -> tuple[float, int]:
    """Seconds for the driver to log every fold of ``plan`` (and close the tree) into ``uri``, and the HTTP
    requests it took (0 for SQLite)."""
    import mlflow.data

    from mlflow_mnist import tracking
    from mlflow_mnist.runs import RunWriter
    from mlflow_mnist.schema import DIGEST
    from mlflow_mnist.search import SearchOutcome
    from mlflow_mnist.search_tree import SearchTree

    client = tracking.connect(uri)
    experiment = tracking.experiment_id(client, f"driver-{time.time_ns()}")
    dataset = mlflow.data.from_numpy(features=data.x_train, targets=data.y_train, name="train", digest=data.digest())
    writer = RunWriter(client, experiment, dataset=dataset, common_tags={DIGEST: data.digest()})
    tree = SearchTree(
        writer, name="bench", strategy="staged", single_group=True, settings_params={}, log_threads=threads
    )
    tasks = {t.key: t for t in plan.to_train}
    requests_before = REQUESTS.count
    start = time.perf_counter()
    tree.group_started(plan)
    for result in results:
        tree.fold_finished(plan, tasks[result.key], result)
    tree.group_finished(plan, [_row(plan, c.index) for c in plan.candidates])
    tree.search_finished(SearchOutcome([], None))  # closes the search run; no best to name
    return time.perf_counter() - start, REQUESTS.count - requests_before


def _row(plan, index: int) -> dict:
    from mlflow_mnist.planning import FoldRecord
    from mlflow_mnist.results import cv_results

    records = {k: FoldRecord(k, 0.99, 20.0, "ok", chance=0.51) for c in plan.candidates for k in c.fold_keys}
    return cv_results(plan, records)[index]


def main() -> None:
    from services import MlflowServer, Postgres

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=60)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--no-auth", action="store_true", help="a server without basic-auth")
    args = parser.parse_args()
    data, plan, results, model_bytes = synthetic_results(args.folds)
    base = Path(tempfile.mkdtemp(prefix="bench-driver-"))
    database = Postgres(base / "pg")
    server = MlflowServer(
        database.uri, base / "server", auth=not args.no_auth, auth_database=database.auth_uri, env=database.env()
    )
    server_name = "postgresql server" + ("" if args.no_auth else ", basic-auth")
    stores = {server_name: server.uri, "sqlite": f"sqlite:///{base}/mlflow.db"}
    measured: dict[str, dict[int, list[float]]] = {name: {t: [] for t in args.threads} for name in stores}
    requests_sent: list[int] = []
    try:
        database.start()
        server.start()
        if not args.no_auth:  # the driver logs as a user the admin made, credentials in its environment only
            os.environ.update(server.client_env(server.add_user("driver")))
        for _ in range(args.repeats):  # interleaved, so a slow minute does not land on one variant
            for name, uri in stores.items():
                for threads in args.threads:
                    if name == "sqlite" and threads > 1:
                        continue  # SQLite writes one at a time: the run tree logs serially there
                    seconds, requests = log_all(uri, data, plan, results, threads)
                    measured[name][threads].append(len(results) / seconds)
                    if requests:
                        requests_sent.append(requests)
    finally:
        server.stop()
        database.stop()
        shutil.rmtree(base, ignore_errors=True)  # the passfile and auth config in it: no secret left behind
    rates = {name: {t: statistics.median(v) for t, v in by.items() if v} for name, by in measured.items()}
    report = {
        "machine": machine.describe(),
        "folds": len(results),
        "model_bytes": model_bytes,
        "server_auth": not args.no_auth,
        "folds_per_second": rates,
        "all": measured,
        # The whole tree (stage, candidates, closing) over the folds: what one more fold costs is close to it.
        "requests_per_fold": statistics.median(requests_sent) / len(results) if requests_sent else None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_driver.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"One driver logging {len(results)} finished folds (curves, dataset, a {model_bytes / 1024:.0f} KB model as a "
        f"LoggedModel each) on {machine.line(report['machine'])}; median of {args.repeats} interleaved runs:",
        "",
        "| store | logging threads | folds/s | folds/s needed by 100 workers x 20 s folds |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, by in rates.items():
        for threads, rate in by.items():
            lines.append(f"| {name} | {threads} | {rate:.1f} | 5.0 |")
    if report["requests_per_fold"]:
        lines += [
            "",
            f"HTTP requests to the server per fold (the whole tree over the folds): {report['requests_per_fold']:.1f}",
        ]
    (args.out / "bench_driver.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
