"""SIGKILL a stage at random moments, rerun it, and check nothing was lost, duplicated or retrained twice.

    python tests/kill_harness.py --points 12                                   # in-process folds (one job)
    python tests/kill_harness.py --points 12 --n-jobs 2                        # two joblib workers
    python tests/kill_harness.py --points 12 --n-jobs 2 --executor dask        # a local Dask cluster
    python tests/kill_harness.py --points 12 --n-jobs 2 --strategy asha        # ASHA: promotions, continued folds

Kill points alternate between killing the driver alone (its workers must notice and exit by themselves, as
after an OOM kill) and killing the driver with its workers (a crash of the whole session).

The suite runs a short version (tests/test_reliability.py). Each kill point gets a fresh store: start
`mlflow-mnist tune` on the shipped sample, kill -9 it after a random delay (spread over the whole run: during
training, while logging a model, between runs), rerun to completion, then check:
no run left RUNNING; exactly one FINISHED fold run per fold key; the final cv_results equal to an uninterrupted
run's; the rerun trained exactly the folds that had not finished; and no process of the killed session is
left 30 s after the kill.

``--strategy asha`` kills an asynchronous successive-halving search instead (4 trials over the ``seed`` space,
rungs of 2 and 6 epochs, promoted trials continuing their folds' saved models). Which trials it asks after a
resume is the seeded sampler's business, not the store's, so its results are not compared with the reference;
the checks are: every fold key FINISHED exactly once, nothing left RUNNING, the rerun trained exactly the folds
that had not finished, the search ended with all its trials, each trial's last rung FINISHED, and no process
left. Each kill point says what was in flight: the first rung, or a promoted trial continuing (rung 2).
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TOTAL_FOLDS = 10  # the staged scenario: four grid points and the step's reference, two folds each
ASHA_TRIALS = 4
COMMON_ARGS = ["--data", "sample", "--folds", "2", "--experiment", "mnist"]
SCENARIOS = {
    "staged": ["tune", "--stage", "kernel_size", "--epochs", "2", *COMMON_ARGS],
    "asha": ["tune", "--strategy", "asha", "--space", "seed", "--trials", str(ASHA_TRIALS), "--min-epochs", "2"]
    + COMMON_ARGS,
}
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
    total_folds: int = TOTAL_FOLDS  # distinct fold keys FINISHED once the rerun ended
    in_flight: str = ""  # what was training at the kill (ASHA: "rung 1", "rung 2 (continuing)", "-")

    @property
    def ok(self) -> bool:
        return (
            not self.duplicates
            and not self.left_running
            and self.results_equal
            and self.trained_after == self.total_folds - self.finished_before
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


def stage_command(n_jobs: int, executor: str = "joblib", strategy: str = "staged") -> list[str]:
    """The search a kill test runs (:data:`SCENARIOS`): on the shipped sample, 2 folds."""
    return [sys.executable, "-m", "mlflow_mnist", *SCENARIOS[strategy], "--n-jobs", str(n_jobs), "--executor", executor]


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


def asha_complete(store_dir: Path) -> bool:
    """The ASHA search ended whole: all its trials in the store, each with a FINISHED run at the highest rung it
    reached (a rung cut short by the kill is left KILLED beside the rerun's FINISHED one), its search FINISHED."""
    from mlflow_mnist import schema

    runs = _runs(store_dir)
    reached: dict[str, dict[int, set[str]]] = {}  # trial -> rung -> statuses of its runs there
    for r in runs:
        rung = schema.Rung.parse(r.data.tags)
        if r.data.tags.get(schema.TRIAL) is not None and rung is not None:
            reached.setdefault(r.data.tags[schema.TRIAL], {}).setdefault(rung.index, set()).add(r.info.status)
    searches = sorted(
        (r for r in runs if r.data.tags.get(schema.LEVEL) == schema.STAGE_LEVEL), key=lambda r: r.info.start_time
    )
    return (
        len(reached) == ASHA_TRIALS
        and all("FINISHED" in rungs[max(rungs)] for rungs in reached.values())
        and bool(searches)
        and searches[-1].info.status == "FINISHED"
    )


def continuing(store_dir: Path) -> bool:
    """A promoted trial is training its next rung: the moment a continued fold could be lost."""
    if not (store_dir / "mlflow.db").exists():  # placed whole by the search (tracking._create_sqlite_store)
        return False
    from mlflow.exceptions import MlflowException

    try:
        return in_flight_at_kill(_runs(store_dir)).endswith("(continuing)")
    except MlflowException:  # the search holds SQLite's write lock a moment too long: look again
        return False


def in_flight_at_kill(runs: list) -> str:
    """What was training when the session died: the highest rung among the RUNNING candidate runs (a fold run
    exists only while the driver logs it; a candidate run is open while its folds train)."""
    from mlflow_mnist import schema

    open_candidates = [
        r for r in runs if r.data.tags.get(schema.LEVEL) == schema.CANDIDATE_LEVEL and r.info.status == "RUNNING"
    ]
    if not open_candidates:
        return "-"
    rungs = [schema.Rung.parse(r.data.tags) for r in open_candidates]
    top = max((rung.index for rung in rungs if rung is not None), default=0)
    return "a grid point" if not top else f"rung {top}" + (" (continuing)" if top > 1 else "")


def run_to_completion(
    store_dir: Path, n_jobs: int, executor: str = "joblib", strategy: str = "staged"
) -> tuple[int, int, float]:
    """Run the search; returns (folds trained, folds reused, seconds)."""
    start = time.perf_counter()
    command = stage_command(n_jobs, executor, strategy)
    proc = subprocess.run(command, capture_output=True, text=True, env=_env(store_dir), timeout=900)
    if proc.returncode:
        raise RuntimeError(f"search failed ({proc.returncode}): {proc.stderr[-2000:]}")
    if proc.stdout.startswith("nothing to evaluate"):
        return 0, 0, time.perf_counter() - start
    trained, reused = map(int, re.search(r"trained (\d+) folds, reused (\d+)", proc.stdout).groups())
    return trained, reused, time.perf_counter() - start


def kill_once(
    store_dir: Path,
    delay: float,
    reference: dict[str, float],
    n_jobs: int,
    executor: str = "joblib",
    target: str = "group",
    strategy: str = "staged",
    *,
    when: Callable[[Path], bool] | None = None,
) -> KillOutcome:
    """Kill the search after ``delay`` seconds, or, given ``when``, as soon as ``when(store_dir)`` holds (checked
    every 0.2 s, ``delay`` the longest wait); rerun it and check the store."""
    from mlflow_mnist import schema

    proc = subprocess.Popen(
        stage_command(n_jobs, executor, strategy),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(store_dir),
        start_new_session=True,
    )
    if when is None:
        time.sleep(delay)
    else:
        deadline = time.monotonic() + delay
        while not when(store_dir):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"the moment to kill never came within {delay:.0f} s")
            time.sleep(0.2)
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
    in_flight = in_flight_at_kill(runs)
    trained, _, _ = run_to_completion(store_dir, n_jobs, executor, strategy)
    runs = _runs(store_dir)
    finished = Counter(
        r.data.tags[schema.FOLD_KEY]
        for r in runs
        if r.data.tags.get(schema.LEVEL) == "fold" and r.info.status == "FINISHED"
    )
    if strategy == "staged":
        means = final_means(store_dir)
        results_ok = means.keys() == reference.keys() and all(abs(means[k] - reference[k]) < 1e-9 for k in means)
        total, missing = TOTAL_FOLDS, TOTAL_FOLDS - len(finished)
    else:  # which trials a resumed ASHA asks is the sampler's business: the search must end whole
        results_ok, total, missing = asha_complete(store_dir), len(finished), 0
    return KillOutcome(
        delay,
        finished_before,
        running_at_kill,
        trained,
        duplicates=sum(n - 1 for n in finished.values()) + missing,
        left_running=sum(r.info.status == "RUNNING" for r in runs),
        results_equal=results_ok,
        target=target,
        processes_left=processes_left,
        seconds_to_clean=seconds_to_clean,
        total_folds=total,
        in_flight=in_flight,
    )


def campaign(
    points: int,
    seed: int = 0,
    n_jobs: int = 1,
    workdir: Path | None = None,
    executor: str = "joblib",
    *,
    strategy: str = "staged",
    reference: tuple[float, dict[str, float]] | None = None,
) -> list[KillOutcome]:
    """A reference run (or ``reference``, one :func:`reference_run` made before), then ``points`` kill-and-resume
    rounds at delays spread over the reference duration, killing the driver alone and the whole session in turn."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="kill-"))
    duration, means = reference or reference_run(workdir / "reference", n_jobs, executor, strategy)
    rng = random.Random(seed)
    # Evenly spread strata with random jitter: early (start-up, first fold), middle, and late (last logging).
    delays = sorted(duration * (i + rng.random()) / points for i in range(points))
    outcomes = []
    for index, delay in enumerate(delays):
        store_dir = workdir / f"kill-{index}"
        store_dir.mkdir()
        target = "driver" if index % 2 == 0 else "group"
        outcomes.append(kill_once(store_dir, delay, means, n_jobs, executor, target, strategy))
    return outcomes


def reference_run(
    folder: Path, n_jobs: int, executor: str = "joblib", strategy: str = "staged"
) -> tuple[float, dict[str, float]]:
    """The search run to completion, uninterrupted: (its seconds, each candidate's mean score; {} for ASHA)."""
    folder.mkdir(parents=True)
    _, _, duration = run_to_completion(folder, n_jobs, executor, strategy)
    return duration, final_means(folder) if strategy == "staged" else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--executor", default="joblib", choices=["joblib", "dask"])
    parser.add_argument("--strategy", default="staged", choices=sorted(SCENARIOS))
    args = parser.parse_args()
    outcomes = campaign(args.points, args.seed, args.n_jobs, executor=args.executor, strategy=args.strategy)
    result = "cv_results equal" if args.strategy == "staged" else "search ended whole"
    print(
        "| delay s | killed | training at kill | folds finished before kill | runs RUNNING at kill | retrained | "
        f"fold keys in the end | duplicates | left RUNNING | {result} | processes left after 30 s | s until none left |"
    )
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for o in outcomes:
        print(
            f"| {o.delay:.1f} | {o.target} | {o.in_flight} | {o.finished_before} | {o.running_at_kill} | "
            f"{o.trained_after} | {o.total_folds} | {o.duplicates} | {o.left_running} | {o.results_equal} | "
            f"{o.processes_left} | {o.seconds_to_clean:.1f} |"
        )
    bad = [o for o in outcomes if not o.ok]
    print(f"{len(outcomes)} kill points, {len(bad)} with a problem")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
