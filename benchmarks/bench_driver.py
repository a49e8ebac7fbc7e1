"""How many finished folds per second one driver logs into a PostgreSQL-backed `mlflow server` (and into the
embedded SQLite store, for comparison): is the driver the bottleneck of a big cluster?

    python benchmarks/bench_driver.py [--folds 60] [--threads 1 4 8] [--servers plain basic-auth https]

Synthetic fold results go through the real run tree (runs/search_tree.py): a run per fold with its params,
6 epochs of curves, the dataset input, a real saved model folder uploaded as a LoggedModel with its metric,
true start and end times. PostgreSQL and the servers are started here from the OS binaries (tools/services.py),
every kind of server (``--servers``, interleaved in every repeat) on the same PostgreSQL database: ``plain`` (no
auth, HTTP: what results before the server was secured were measured on), ``basic-auth`` (MLflow's basic-auth
app, the driver an ordinary user), ``https`` (basic-auth over HTTPS: the deployment docs/cluster.md describes).
Writes benchmarks/results/<stem>.{json,md,png} (``--stem``, default bench_driver).
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

    from mlflow_mnist import experiments, tracking
    from mlflow_mnist.runs import RunWriter
    from mlflow_mnist.schema import DIGEST
    from mlflow_mnist.search import SearchOutcome
    from mlflow_mnist.search_tree import SearchTree

    client = tracking.connect(uri)
    experiment = experiments.experiment_id(client, f"driver-{time.time_ns()}")
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


SERVERS = {  # name: (basic-auth, TLS)
    "plain": (False, False),
    "basic-auth": (True, False),
    "https": (True, True),
}
SERVER_LABELS = {
    "plain": "server, plain HTTP",
    "basic-auth": "server, basic-auth",
    "https": "server, basic-auth, HTTPS",
}


def main() -> None:
    from services import MlflowServer, Postgres

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=60)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--servers", nargs="+", choices=list(SERVERS), default=list(SERVERS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--stem", default="bench_driver")
    args = parser.parse_args()
    data, plan, results, model_bytes = synthetic_results(args.folds)
    base = Path(tempfile.mkdtemp(prefix="bench-driver-"))
    database = Postgres(base / "pg")
    servers = {
        name: MlflowServer(
            database.uri,
            base / name,
            auth=SERVERS[name][0],
            tls=SERVERS[name][1],
            auth_database=database.auth_uri,
            env=database.env(),
        )
        for name in args.servers
    }
    stores = {SERVER_LABELS[name]: name for name in args.servers} | {"sqlite": None}
    measured: dict[str, dict[int, list[float]]] = {label: {t: [] for t in args.threads} for label in stores}
    requests_sent: dict[str, list[int]] = {label: [] for label in stores}
    try:
        database.start()
        env = {}
        user = None
        for name, server in servers.items():
            server.start()
            if server.auth and user is None:  # the servers share one auth database: one user for all of them
                user = server.add_user("driver")
            env[name] = server.client_env(user if server.auth else None)
        for _ in range(args.repeats):  # interleaved, so a slow minute does not land on one variant
            for label, name in stores.items():
                for threads in args.threads:
                    if name is None and threads > 1:
                        continue  # SQLite writes one at a time: the run tree logs serially there
                    for variable in [v for v in os.environ if v.startswith("MLFLOW_TRACKING_")]:
                        del os.environ[variable]  # the driver's credentials only where its server takes them
                    os.environ.update(env.get(name, {}))
                    uri = servers[name].uri if name else f"sqlite:///{base}/mlflow.db"
                    seconds, requests = log_all(uri, data, plan, results, threads)
                    measured[label][threads].append(len(results) / seconds)
                    if requests:
                        requests_sent[label].append(requests)
    finally:
        for server in servers.values():
            server.stop()
        database.stop()
        shutil.rmtree(base, ignore_errors=True)  # the passfile and auth config in it: no secret left behind
    rates = {label: {t: statistics.median(v) for t, v in by.items() if v} for label, by in measured.items()}
    per_fold = {label: statistics.median(v) / len(results) for label, v in requests_sent.items() if v}
    report = {
        "machine": machine.describe(),
        "folds": len(results),
        "model_bytes": model_bytes,
        "servers": args.servers,
        "folds_per_second": rates,
        "all": measured,
        # The whole tree (stage, candidates, closing) over the folds: what one more fold costs is close to it.
        "requests_per_fold": per_fold,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.stem}.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"One driver logging {len(results)} finished folds (curves, dataset, a {model_bytes / 1024:.0f} KB model as a "
        f"LoggedModel each) on {machine.line(report['machine'])}; PostgreSQL-backed `mlflow server` (2 workers) "
        f"of each kind, median of {args.repeats} interleaved runs:",
        "",
        "| store | logging threads | folds/s (each run) | HTTP requests per fold |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, by in rates.items():
        for threads, rate in by.items():
            each = ", ".join(f"{r:.1f}" for r in measured[label][threads])
            requests = f"{per_fold[label]:.1f}" if label in per_fold else "-"
            lines.append(f"| {label} | {threads} | **{rate:.1f}** ({each}) | {requests} |")
    lines += ["", "100 workers finishing 20-second folds need 5.0 folds/s."]
    (args.out / f"{args.stem}.md").write_text("\n".join(lines) + "\n")
    plot(rates, args.out / f"{args.stem}.png", title=f"{len(results)} folds on {machine.line(report['machine'])}")
    print("\n".join(lines))


def plot(rates: dict[str, dict[int, float]], path: Path, *, title: str) -> None:
    """Folds per second by store and logging threads, beside what 100 workers need."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = sorted({t for by in rates.values() for t in by})
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(threads)
    for i, t in enumerate(threads):
        values = [rates[label].get(t, 0.0) for label in rates]
        bars = ax.bar([x + i * width for x in range(len(rates))], values, width, label=f"{t} logging thread(s)")
        ax.bar_label(bars, labels=[f"{v:.1f}" if v else "" for v in values], fontsize=8)
    ax.axhline(5.0, color="grey", linestyle="--", linewidth=1, label="needed by 100 workers x 20 s folds")
    ax.set_xticks([x + width * (len(threads) - 1) / 2 for x in range(len(rates))], list(rates), fontsize=8)
    ax.set_ylabel("finished folds logged per second")
    ax.set_title(title, fontsize=9, wrap=True)
    ax.set_ylim(0, max(5.5, *(v for by in rates.values() for v in by.values())) * 1.1)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
