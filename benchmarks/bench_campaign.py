"""The whole campaign, measured: the seed's 18 steps through `mlflow run` from an empty store, per step.

    python benchmarks/bench_campaign.py --data ../shared/datasets/mnist              # the seed's settings
    python benchmarks/bench_campaign.py --data ... --strategy halving                # successive halving per step

Runs `mlflow run . -P stage=all` (6 epochs, 3 folds, 2-vs-7) into a throw-away SQLite store, then reads the
store alone: per step its wall time, folds trained and reused, fold-epochs trained, the chosen value and its
mean CV accuracy. Writes benchmarks/results/campaign-<strategy>.{json,md}.
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

import machine  # noqa: E402


def run_campaign(data: str, store: Path, strategy: str, stage: str, epochs: int, extra: list[str]) -> float:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("MLFLOW_RUN_ID", None)
    command = ["mlflow", "run", str(ROOT), "--env-manager", "local", "--experiment-name", "campaign"]
    params = [f"stage={stage}", f"data={data}", f"epochs={epochs}", *extra]
    for param in params + ([f"strategy={strategy}"] if strategy != "staged" else []):
        command += ["-P", param]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=store, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def per_step(store: Path) -> list[dict]:
    """Per step, from the store alone: wall time, folds trained/reused, fold-epochs, the choice and its score."""
    from mlflow_mnist import tracking
    from mlflow_mnist.stages import STEP_ORDER

    client = tracking.connect(f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("campaign").experiment_id
    runs = tracking.search_all(client, [experiment])
    by_parent: dict[str, list] = {}
    for run in runs:
        by_parent.setdefault(run.data.tags.get(tracking.PARENT, ""), []).append(run)
    rows = []
    finished = [r for r in runs if r.info.status == "FINISHED"]
    groups = [r for r in finished if r.data.tags.get(tracking.LEVEL) == "step"]
    # an Optuna search has no steps: its trials hang straight under the search run
    groups = groups or [r for r in finished if r.data.tags.get(tracking.LEVEL) == "stage"]
    for group in sorted(groups, key=lambda r: r.info.start_time):
        step = group.data.tags.get(tracking.STEP, group.info.run_name)
        candidates = [c for c in by_parent.get(group.info.run_id, []) if c.data.tags.get(tracking.LEVEL) == "candidate"]
        trained = [f for c in candidates for f in by_parent.get(c.info.run_id, [])]
        reused = sum(len([i for i in c.data.tags.get(tracking.REUSED, "").split(",") if i]) for c in candidates)
        rows.append(
            {
                "step": step,
                "order": STEP_ORDER.get(step.split(":")[0], 99),
                "group": group.info.run_name,
                "seconds": (group.info.end_time - group.info.start_time) / 1000,
                "candidates": len(candidates),
                "folds_trained": len(trained),
                "folds_reused": reused,
                "fold_epochs": int(sum(f.data.metrics.get("epochs_run", 0) for f in trained)),
                "chosen": group.data.tags.get(f"{tracking.PREFIX}best_candidate", ""),
                "mean_accuracy": group.data.metrics.get("best_mean_accuracy", float("nan")),
            }
        )
    return rows


def markdown(report: dict) -> str:
    lines = [
        f"`mlflow run . -P stage={report['stage']} -P strategy={report['strategy']}` at the seed's settings "
        f"({report['epochs']} epochs, 3 folds) on real 2-vs-7 ({report['data']}), from an empty store, on "
        f"{machine.line(report['machine'])}: **{report['wall_seconds'] / 60:.1f} min** wall in all "
        f"({report['fold_epochs']} fold-epochs trained, {report['folds_trained']} folds trained, "
        f"{report['folds_reused']} reused).",
        "",
        "| step | run | s | candidates | folds trained | reused | fold-epochs | chosen | mean CV accuracy |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in report["steps"]:
        lines.append(
            f"| {row['step']} | {row['group']} | {row['seconds']:.0f} | {row['candidates']} | {row['folds_trained']} "
            f"| {row['folds_reused']} | {row['fold_epochs']} | {row['chosen']} | {row['mean_accuracy']:.5f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("MLFLOW_MNIST_DATA", ""))
    parser.add_argument("--strategy", default="staged")
    parser.add_argument("--stage", default="all")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--space", default="seed", help="optuna: the search space")
    parser.add_argument("--trials", default="40", help="optuna: the number of trials")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if not args.data:
        sys.exit("error: real MNIST is needed: pass --data or set MLFLOW_MNIST_DATA")
    store = Path(tempfile.mkdtemp(prefix="campaign-"))
    stage = "" if args.strategy == "optuna" else args.stage
    extra = [f"space={args.space}", f"trials={args.trials}"] if args.strategy == "optuna" else []
    wall = run_campaign(str(Path(args.data).resolve()), store, args.strategy, stage, args.epochs, extra)
    steps = per_step(store)
    report = {
        "machine": machine.describe(),
        "data": args.data,
        "strategy": args.strategy,
        "stage": args.stage,
        "epochs": args.epochs,
        "store": str(store),
        "wall_seconds": wall,
        "fold_epochs": sum(r["fold_epochs"] for r in steps),
        "folds_trained": sum(r["folds_trained"] for r in steps),
        "folds_reused": sum(r["folds_reused"] for r in steps),
        "steps": steps,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"campaign-{args.strategy}" + ("" if args.stage == "all" or args.strategy == "optuna" else f"-{args.stage}")
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
