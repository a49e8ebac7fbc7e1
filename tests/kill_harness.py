"""SIGKILL a stage at random moments, rerun it, and check nothing was lost, duplicated or retrained twice.

    python tests/kill_harness.py --points 12                                   # in-process folds (one job)
    python tests/kill_harness.py --points 12 --n-jobs 2                        # two joblib workers
    python tests/kill_harness.py --points 12 --n-jobs 2 --executor dask        # a local Dask cluster

Kill points alternate between killing the driver alone (its workers must notice and exit by themselves, as
after an OOM kill) and killing the driver with its workers (a crash of the whole session).

The suite runs a short version (tests/test_reliability.py). Each kill point gets a fresh store: start
`mlflow-mnist tune` on the shipped sample, kill -9 it after a random delay (spread over the whole run: during
training, while logging a model, between runs), rerun to completion, then check:
no run left RUNNING; exactly one FINISHED fold run per fold key; the final cv_results equal to an uninterrupted
run's; the rerun trained exactly the folds that had not finished; and no process of the killed session is
left 30 s after the kill.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

STAGE_ARGS = [
    "tune",
    "--stage",
    "kernel_size",
    "--data",
    "sample",
    "--epochs",
    "2",
    "--folds",
    "2",
    "--experiment",
    "mnist",
]
TOTAL_FOLDS = 10  # four grid points and the step's reference, two folds each
CLEANUP_SECONDS = 30


@dataclass
class KillOutcome:
    delay: float
    finished_before: int
    running_at_kill: int
    trained_after: int
    duplicates: int
    left_running: int
    results_equal: bool
    target: str = "group"
    processes_left: int = 0  # processes of the killed session still alive CLEANUP_SECONDS after the kill
    seconds_to_clean: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            not self.duplicates
            and not self.left_running
            and self.results_equal
            and self.trained_after == TOTAL_FOLDS - self.finished_before
            and not self.processes_left
        )


def session_processes(session: int) -> list[int]:
    """Live processes of a session (the killed driver started one: its workers stay in it)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines()]
    return [int(pid) for pid, sid, stat in rows if int(sid) == session and not stat.startswith("Z")]


def wait_for_cleanup(session: int, seconds: float = CLEANUP_SECONDS) -> tuple[int, float]:
    """(processes left after ``seconds``, seconds until none was left)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if not session_processes(session):
            return 0, time.monotonic() - start
        time.sleep(0.5)
    return len(session_processes(session)), seconds


def _env(store_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    return {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{store_dir}/mlflow.db", "TF_CPP_MIN_LOG_LEVEL": "3"}


def stage_command(n_jobs: int, executor: str = "joblib") -> list[str]:
    """The stage every kill test runs: kernel_size on the shipped sample, 2 epochs, 2 folds."""
    return [sys.executable, "-m", "mlflow_mnist", *STAGE_ARGS, "--n-jobs", str(n_jobs), "--executor", executor]


def _runs(store_dir: Path) -> list:
    from mlflow import MlflowClient

    from mlflow_mnist import tracking

    client = MlflowClient(f"sqlite:///{store_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("mnist")
    return tracking.search_all(client, [experiment.experiment_id]) if experiment else []


def final_means(store_dir: Path) -> dict[str, float]:
    """mean_test_score per candidate from the newest finished stage run's cv_results.csv."""
    from mlflow import MlflowClient

    from mlflow_mnist import schema

    steps = [r for r in _runs(store_dir) if r.data.tags.get(schema.LEVEL) == "step" and r.info.status == "FINISHED"]
    newest = max(steps, key=lambda r: r.info.end_time)
    path = MlflowClient(f"sqlite:///{store_dir}/mlflow.db").download_artifacts(newest.info.run_id, "cv_results.csv")
    return {row["candidate"]: float(row["mean_test_score"]) for row in csv.DictReader(Path(path).open())}


def run_to_completion(store_dir: Path, n_jobs: int, executor: str = "joblib") -> tuple[int, int, float]:
    """Run the stage; returns (folds trained, folds reused, seconds)."""
    start = time.perf_counter()
    command = stage_command(n_jobs, executor)
    proc = subprocess.run(command, capture_output=True, text=True, env=_env(store_dir), timeout=900)
    if proc.returncode:
        raise RuntimeError(f"stage failed ({proc.returncode}): {proc.stderr[-2000:]}")
    trained, reused = map(int, re.search(r"trained (\d+) folds, reused (\d+)", proc.stdout).groups())
    return trained, reused, time.perf_counter() - start


def kill_once(
    store_dir: Path,
    delay: float,
    reference: dict[str, float],
    n_jobs: int,
    executor: str = "joblib",
    target: str = "group",
) -> KillOutcome:
    from mlflow_mnist import schema

    proc = subprocess.Popen(
        stage_command(n_jobs, executor),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(store_dir),
        start_new_session=True,
    )
    time.sleep(delay)
    if target == "driver":
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone, like an OOM kill: its workers must notice
    else:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and any workers it started, like a crash would
    proc.wait()
    processes_left, seconds_to_clean = wait_for_cleanup(proc.pid)
    runs = _runs(store_dir)
    folds = [r for r in runs if r.data.tags.get(schema.LEVEL) == "fold"]
    finished_before = sum(r.info.status == "FINISHED" for r in folds)
    running_at_kill = sum(r.info.status == "RUNNING" for r in runs)
    trained, _, _ = run_to_completion(store_dir, n_jobs, executor)
    runs = _runs(store_dir)
    finished = Counter(
        r.data.tags[schema.FOLD_KEY]
        for r in runs
        if r.data.tags.get(schema.LEVEL) == "fold" and r.info.status == "FINISHED"
    )
    means = final_means(store_dir)
    return KillOutcome(
        delay,
        finished_before,
        running_at_kill,
        trained,
        duplicates=sum(n - 1 for n in finished.values()) + (TOTAL_FOLDS - len(finished)),
        left_running=sum(r.info.status == "RUNNING" for r in runs),
        results_equal=means.keys() == reference.keys() and all(abs(means[k] - reference[k]) < 1e-9 for k in means),
        target=target,
        processes_left=processes_left,
        seconds_to_clean=seconds_to_clean,
    )


def campaign(
    points: int, seed: int = 0, n_jobs: int = 1, workdir: Path | None = None, executor: str = "joblib"
) -> list[KillOutcome]:
    """A reference run, then ``points`` kill-and-resume rounds at delays spread over the reference duration,
    killing the driver alone and the whole session in turn."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="kill-"))
    reference_dir = workdir / "reference"
    reference_dir.mkdir(parents=True)
    _, _, duration = run_to_completion(reference_dir, n_jobs, executor)
    reference = final_means(reference_dir)
    rng = random.Random(seed)
    # Evenly spread strata with random jitter: early (start-up, first fold), middle, and late (last logging).
    delays = sorted(duration * (i + rng.random()) / points for i in range(points))
    outcomes = []
    for index, delay in enumerate(delays):
        store_dir = workdir / f"kill-{index}"
        store_dir.mkdir()
        target = "driver" if index % 2 == 0 else "group"
        outcomes.append(kill_once(store_dir, delay, reference, n_jobs, executor, target))
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--executor", default="joblib", choices=["joblib", "dask"])
    args = parser.parse_args()
    outcomes = campaign(args.points, args.seed, args.n_jobs, executor=args.executor)
    print(
        "| delay s | killed | folds finished before kill | runs RUNNING at kill | retrained | duplicates | "
        "left RUNNING | cv_results equal | processes left after 30 s | s until none left |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for o in outcomes:
        print(
            f"| {o.delay:.1f} | {o.target} | {o.finished_before} | {o.running_at_kill} | {o.trained_after} | "
            f"{o.duplicates} | {o.left_running} | {o.results_equal} | {o.processes_left} | {o.seconds_to_clean:.1f} |"
        )
    bad = [o for o in outcomes if not o.ok]
    print(f"{len(outcomes)} kill points, {len(bad)} with a problem")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
