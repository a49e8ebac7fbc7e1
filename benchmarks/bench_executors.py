"""The same stage on the joblib executor and on a local Dask cluster, side by side on one machine: Dask's overhead.

    python benchmarks/bench_executors.py --data ../shared/datasets/mnist [--stage kernel_size] [--repeats 3]

Each run is a fresh `mlflow-mnist tune` process into a fresh SQLite store (start-up, TensorFlow imports in the
workers and store creation included), runs interleaved (joblib, dask, joblib, ...) so a slow minute of the
machine does not land on one variant; medians and ranges. The stage trains each step's grid and its reference
(the carried-in configuration, retrained as one more candidate) on both executors alike.
Writes benchmarks/results/bench_executors.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

import machine  # noqa: E402


def run(executor: str, stage: str, data: str, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("MLFLOW_RUN_ID", None)
        command = [sys.executable, "-m", "mlflow_mnist", "tune", "--stage", stage, "--data", data]
        command += ["--epochs", str(epochs), "--executor", executor, "--experiment", "bench"]
        start = time.perf_counter()
        subprocess.run(command, check=True, env=env, capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("MLFLOW_MNIST_DATA", ""))
    parser.add_argument("--stage", default="kernel_size")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if not args.data:
        sys.exit("error: real MNIST is needed: pass --data or set MLFLOW_MNIST_DATA")
    seconds: dict[str, list[float]] = {"joblib": [], "dask": []}
    for _ in range(args.repeats):
        for executor in seconds:
            seconds[executor].append(run(executor, args.stage, args.data, args.epochs))
            print(f"{executor}: {seconds[executor][-1]:.1f} s", file=sys.stderr)
    median = {k: statistics.median(v) for k, v in seconds.items()}
    overhead = median["dask"] / median["joblib"] - 1
    # Each dask run against the joblib run just before it: a slow stretch of the machine hits both of a pair.
    paired = [d / j - 1 for j, d in zip(seconds["joblib"], seconds["dask"], strict=True)]
    report = {"machine": machine.describe(), "stage": args.stage, "epochs": args.epochs, "seconds": seconds}
    report |= {"median_seconds": median, "dask_overhead": overhead, "paired_overheads": paired}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_executors.json").write_text(json.dumps(report, indent=2))
    text = (
        f"Stage `{args.stage}` ({args.epochs} epochs, 3 folds, real 2-vs-7), whole `mlflow-mnist tune` processes, "
        f"{args.repeats} interleaved runs each on {machine.line(report['machine'])}:\n\n"
        "| executor | median s | min - max s |\n| --- | ---: | ---: |\n"
        + "".join(f"| {k} | {median[k]:.1f} | {min(v):.1f} - {max(v):.1f} |\n" for k, v in seconds.items())
        + f"\nDask LocalCluster overhead over joblib: **{100 * overhead:+.1f}%** (target <= 10%); run by run "
        f"against the joblib run before it: {', '.join(f'{100 * p:+.1f}%' for p in paired)}.\n"
    )
    (args.out / "bench_executors.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
