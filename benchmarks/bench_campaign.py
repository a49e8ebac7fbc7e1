"""The whole campaign, measured: the seed's 18 steps through `mlflow run` from an empty store, per step.

    python benchmarks/bench_campaign.py --data ../shared/datasets/mnist              # the seed's settings
    python benchmarks/bench_campaign.py --data ... --strategy halving                # successive halving per step
    python benchmarks/bench_campaign.py --task digits --epochs 20                    # another task's campaign

Runs `mlflow run . -P stage=all` (6 epochs, 3 folds, 2-vs-7) into a throw-away SQLite store, then reads the
store alone: per step its wall time, folds trained and reused, fold-epochs trained, the chosen value and its
mean CV accuracy. Staged steps also retrain their reference (the carried-in configuration) as one more
candidate; ``--reuse-reference`` runs them the older, cheaper way (how campaign-staged.* was measured). Writes
benchmarks/results/campaign-<strategy>.{json,md} (campaign-<task>-<strategy>.* for a task other than mnist).
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

from mlflow_mnist import schema  # noqa: E402
from mlflow_mnist.campaign import data_source  # noqa: E402
from mlflow_mnist.strategies import STAGE_FORM, STRATEGIES  # noqa: E402
from mlflow_mnist.tasks import DEFAULT_TASK, Task, get_task  # noqa: E402
from mlflow_mnist.tasks.mnist.data import DATA_ENV_VAR  # noqa: E402


def run_campaign(
    data: str, store: Path, strategy: str, stage: str, epochs: int, extra: list[str], *, task: str
) -> float:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("MLFLOW_RUN_ID", None)
    if task != DEFAULT_TASK:
        env.pop(DATA_ENV_VAR, None)  # MNIST's location is not another task's data (an empty --data falls back on it)
    command = ["mlflow", "run", str(ROOT), "--env-manager", "local", "--experiment-name", "campaign"]
    params = [f"stage={stage}", f"data={data}", f"epochs={epochs}", *extra]
    params += [f"strategy={strategy}"] if strategy != "staged" else []
    params += [f"task={task}"] if task != DEFAULT_TASK else []
    for param in params:
        command += ["-P", param]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=store, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def step_label(tags: dict) -> str:
    """A group's step as the table shows it: a low rung of successive halving as ``step@rung<i>``."""
    step, rung = schema.step_name(tags), schema.Rung.parse(tags)
    return f"{step}@rung{rung.index}" if rung is not None and not rung.counts else step


def per_step(store: Path, task: Task) -> list[dict]:
    """Per step, from the store alone: wall time, folds trained/reused, fold-epochs, the choice and its score."""
    from mlflow_mnist import tracking

    client = tracking.connect(f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("campaign").experiment_id
    runs = tracking.search_all(client, [experiment])
    by_parent: dict[str, list] = {}
    for run in runs:
        by_parent.setdefault(run.data.tags.get(schema.PARENT, ""), []).append(run)
    rows = []
    finished = [r for r in runs if r.info.status == "FINISHED"]
    groups = [r for r in finished if r.data.tags.get(schema.LEVEL) == schema.STEP_LEVEL]
    # a joint search (optuna, random) has no steps: its trials hang straight under the search run
    groups = groups or [r for r in finished if r.data.tags.get(schema.LEVEL) == schema.STAGE_LEVEL]
    for group in sorted(groups, key=lambda r: r.info.start_time):
        tags = group.data.tags
        step = step_label(tags) if schema.STEP in tags else group.info.run_name
        below = by_parent.get(group.info.run_id, [])
        candidates = [c for c in below if c.data.tags.get(schema.LEVEL) == schema.CANDIDATE_LEVEL]
        trained = [f for c in candidates for f in by_parent.get(c.info.run_id, [])]
        reused = sum(len([i for i in c.data.tags.get(schema.REUSED, "").split(",") if i]) for c in candidates)
        rows.append(
            {
                "step": step,
                "order": task.step_order.get(schema.step_name(tags), 99),
                "group": group.info.run_name,
                "seconds": (group.info.end_time - group.info.start_time) / 1000,
                "candidates": len(candidates),
                "folds_trained": len(trained),
                "folds_reused": reused,
                "fold_epochs": int(sum(f.data.metrics.get(schema.EPOCHS_RUN, 0) for f in trained)),
                "chosen": tags.get(schema.BEST_CANDIDATE, ""),
                "mean_accuracy": group.data.metrics.get(schema.BEST_MEAN_ACCURACY, float("nan")),
            }
        )
    return rows


def markdown(report: dict) -> str:
    task = report.get("task", DEFAULT_TASK)
    command = f"`mlflow run . -P stage={report['stage']} -P strategy={report['strategy']}"
    command += (f" -P task={task}" if task != DEFAULT_TASK else "") + (
        " -P reuse_reference=true`" if report.get("reuse_reference") else "`"
    )
    where = (
        f"at the seed's settings ({report['epochs']} epochs, 3 folds) on real 2-vs-7 ({report['data']})"
        if task == DEFAULT_TASK
        else f"({report['epochs']} epochs, 3 folds) on task {task} ({report['data'] or 'its own data'})"
    )
    lines = [
        f"{command} {where}, from an empty store, on "
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
    parser.add_argument("--task", default=DEFAULT_TASK, help="a registered task [default: mnist]")
    parser.add_argument("--data", default=None, help="the task's data [default: mnist: $MLFLOW_MNIST_DATA]")
    joint = ", ".join(name for name, strategy in STRATEGIES.items() if STAGE_FORM not in strategy.searches)
    parser.add_argument("--strategy", default="staged", choices=list(STRATEGIES))
    parser.add_argument("--stage", default="all")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--space", default=None, help=f"{joint}: the search space [default: mnist: seed]")
    parser.add_argument("--trials", default="40", help=f"{joint}: the number of trials")
    parser.add_argument("--reuse-reference", action="store_true", help="staged steps: the older reference rule")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    task = get_task(args.task)
    mnist = task.name == DEFAULT_TASK
    data = args.data if args.data is not None else (os.environ.get(DATA_ENV_VAR, "") if mnist else "")
    if mnist and not data:
        sys.exit("error: real MNIST is needed: pass --data or set MLFLOW_MNIST_DATA")
    store = Path(tempfile.mkdtemp(prefix="campaign-"))
    # A strategy that searches a space only gets --space and --trials; the others run --stage's steps.
    joint = STAGE_FORM not in STRATEGIES[args.strategy].searches
    stage = "" if joint else args.stage
    space = args.space if args.space is not None else ("seed" if mnist else "")
    extra = [f"space={space}", f"trials={args.trials}"] if joint else []
    extra += ["reuse_reference=true"] if args.reuse_reference else []
    source = data_source(task, data) if data else ""  # a path made absolute; a name the task knows as it is
    wall = run_campaign(source, store, args.strategy, stage, args.epochs, extra, task=args.task)
    steps = per_step(store, task)
    report = {
        "machine": machine.describe(),
        "task": args.task,
        "data": data,
        "strategy": args.strategy,
        "stage": args.stage,
        "epochs": args.epochs,
        "reuse_reference": args.reuse_reference,
        "store": str(store),
        "wall_seconds": wall,
        "fold_epochs": sum(r["fold_epochs"] for r in steps),
        "folds_trained": sum(r["folds_trained"] for r in steps),
        "folds_reused": sum(r["folds_reused"] for r in steps),
        "steps": steps,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "campaign-" + ("" if mnist else f"{args.task}-") + args.strategy
    stem += "" if args.stage == "all" or joint else f"-{args.stage}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
