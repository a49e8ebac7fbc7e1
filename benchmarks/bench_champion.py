"""`make champion`, measured: from an empty store on real 2-vs-7, the search, the 5-seed final, the promotion.

    python benchmarks/bench_champion.py --data ../shared/datasets/mnist [--trials 16] [--space wide]

Runs the same three `mlflow run` commands as the Makefile's `champion` target into a fresh SQLite store, times
each part, and reads back from the store the configuration found, every seed's test accuracy and errors, and
what `promote` said. Writes benchmarks/results/champion.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]

import machine  # noqa: E402


def mlflow_run(store: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("MLFLOW_RUN_ID", None)
    command = ["mlflow", "run", str(ROOT), "--env-manager", "local", "--experiment-name", "champion", *args]
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=store, capture_output=True, text=True)
    return time.perf_counter() - start, proc


def read_back(store: Path) -> dict:
    from mlflow_mnist import tracking

    client = tracking.connect(f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("champion").experiment_id
    runs = tracking.search_all(client, [experiment])
    search = next(
        r for r in runs if r.data.tags.get(tracking.BEST_CONFIG) and r.data.tags.get(tracking.LEVEL) == "stage"
    )
    final = next(r for r in runs if r.data.tags.get(tracking.LEVEL) == "final")
    seeds = sorted((r for r in runs if r.data.tags.get(tracking.LEVEL) == "final_seed"), key=lambda r: r.info.run_name)
    best = client.get_run(search.data.tags["mlflow_mnist.best_child_run_id"])
    folds = [r for r in runs if r.data.tags.get(tracking.LEVEL) == "fold"]
    return {
        "config": json.loads(search.data.tags[tracking.BEST_CONFIG]),
        "best_trial": best.info.run_name,
        "best_trial_cv": best.data.metrics.get("mean_heldout_accuracy"),
        "trials": len({r.data.tags.get(tracking.TRIAL) for r in runs if r.data.tags.get(tracking.TRIAL)}),
        "fold_epochs": int(sum(r.data.metrics.get("epochs_run", 0) for r in folds)),
        "seeds": {
            r.data.tags.get("mlflow_mnist.seed"): {
                "test_accuracy": r.data.metrics["test_accuracy"],
                "errors": int(r.data.metrics["test_errors"]),
            }
            for r in seeds
        },
        "median_test_accuracy": final.data.metrics.get("median_test_accuracy"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("MLFLOW_MNIST_DATA", ""))
    parser.add_argument("--trials", default="16")
    parser.add_argument("--space", default="wide")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    data = str(Path(args.data).resolve())
    store = Path(tempfile.mkdtemp(prefix="champion-"))
    parts = {}
    parts["search"], search = mlflow_run(
        store, "-P", "strategy=optuna", "-P", f"space={args.space}", "-P", f"trials={args.trials}", "-P", f"data={data}"
    )
    if search.returncode:
        sys.exit(f"search failed:\n{search.stderr[-3000:]}")
    parts["final"], final = mlflow_run(
        store, "-e", "final", "-P", "search=latest", "-P", "repeats=5", "-P", f"data={data}"
    )
    if final.returncode:
        sys.exit(f"final failed:\n{final.stderr[-3000:]}")
    parts["promote"], promote = mlflow_run(store, "-e", "promote")
    said = [line for line in (promote.stdout + promote.stderr).splitlines() if "promoted" in line]
    report = {
        "machine": machine.describe(),
        "store": str(store),
        "minutes": {k: v / 60 for k, v in parts.items()},
        "promote_exit": promote.returncode,
        "promote_said": said[-1] if said else promote.stderr.strip().splitlines()[-1:],
        **read_back(store),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "champion.json").write_text(json.dumps(report, indent=2))
    seeds = ", ".join(f"{s['test_accuracy']:.4%} ({s['errors']} errors)" for s in report["seeds"].values())
    text = (
        f"`make champion` from an empty store on {machine.line(report['machine'])}: search "
        f"{report['minutes']['search']:.1f} min ({report['trials']} trials, {report['fold_epochs']} fold-epochs), "
        f"5-seed final {report['minutes']['final']:.1f} min, promote {report['minutes']['promote']:.1f} min; "
        f"{sum(report['minutes'].values()):.1f} min in all.\n\n"
        f"- best trial {report['best_trial']}: mean CV accuracy {report['best_trial_cv']:.5f}\n"
        f"- configuration: `{json.dumps(report['config'])}`\n"
        f"- test accuracy per seed: {seeds}; median **{report['median_test_accuracy']:.4%}**\n"
        f"- promote (exit {report['promote_exit']}): {report['promote_said']}\n"
    )
    (args.out / "champion.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
