"""A task through the whole tool, timed: every registered strategy, a 5-seed final, promote and analyze.

    python benchmarks/bench_tasks.py --task digits
    python benchmarks/bench_tasks.py --task cancer   # after: pip install --no-deps --no-build-isolation examples/...

Each step runs in this process through the Python API, in one experiment of a fresh SQLite store, in this order:
staged (the task's first stage), halving (the same stage), optuna, random and asha (``--trials`` each, the task's
default space), ``final --repeats 5`` of the best joint search, ``promote`` of its median seed, ``analyze``. For each:
wall minutes, folds trained, fold-epochs, best mean CV accuracy; for the final, each seed's test accuracy, the median
and the seed ensemble's. Written to ``benchmarks/results/tasks-<task>.{json,md}`` with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, line  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def timed(call, **options):
    """``call(**options)``'s wall minutes and its result."""
    started = time.perf_counter()
    result = call(**options)
    return (time.perf_counter() - started) / 60, result


def run(task: str, trials: int, folds: int, out: Path) -> dict:
    import mlflow_mnist
    from mlflow_mnist import schema
    from mlflow_mnist.strategies import STAGE_FORM, STRATEGIES
    from mlflow_mnist.tasks import get_task

    chosen = get_task(task)
    stage = next(iter(chosen.stages), "")
    common = {"task": task, "folds": folds, "progress": False, "experiment": task, "log_models": False}
    rows = []
    for strategy in STRATEGIES:
        joint = STAGE_FORM not in STRATEGIES[strategy].searches  # those taking a stage run the same one
        options = {"trials": trials} if joint else {"stage": stage}
        minutes, result = timed(mlflow_mnist.tune, strategy=strategy, **options, **common)
        rows.append(
            {
                "step": f"tune --strategy {strategy}" + (f" --trials {trials}" if joint else f" --stage {stage}"),
                "joint": joint,
                "minutes": minutes,
                "folds_trained": result.trained,
                "best_mean_cv": result.best["mean_test_score"] if result.best else float("nan"),
                "best": result.best["candidate"] if result.best else "",
                "run_id": result.run_id,
            }
        )
        print(rows[-1], flush=True)
    best_joint = max((r for r in rows if r["joint"]), key=lambda r: r["best_mean_cv"])
    minutes, summary = timed(
        mlflow_mnist.final,
        task=task,
        folds=folds,
        repeats=5,
        search=best_joint["run_id"],
        progress=False,
        experiment=task,
    )
    final = {
        "step": f"final --repeats 5 --search <{best_joint['step']}>",
        "minutes": minutes,
        "seeds": summary["seeds"],
        "median_test_accuracy": summary[schema.MEDIAN_ACCURACY],
        "ensemble_test_accuracy": summary.get(schema.ENSEMBLE_ACCURACY),
    }
    print(final, flush=True)
    minutes, done = timed(mlflow_mnist.promote, experiment=task)
    promoted = {
        "step": "promote",
        "minutes": minutes,
        "version": done["name"] + " v" + done["version"],
        "reason": done["reason"],
    }
    minutes, report = timed(mlflow_mnist.analyze, experiments=[task], out=out / "report", log=False)
    analyzed = {"step": "analyze", "minutes": minutes, "figures": len(report.figures)}
    return {
        "task": task,
        "machine": describe(),
        "searches": rows,
        "final": final,
        "promote": promoted,
        "analyze": analyzed,
    }


def markdown(result: dict) -> str:
    lines = [
        f"# {result['task']} through the whole tool",
        "",
        f"Machine: {line(result['machine'])}. Command: `python benchmarks/bench_tasks.py --task {result['task']}`.",
        "",
        "| step | minutes | folds trained | best mean CV |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in result["searches"]:
        lines.append(f"| `{row['step']}` | {row['minutes']:.1f} | {row['folds_trained']} | {row['best_mean_cv']:.4f} |")
    final, promote = result["final"], result["promote"]
    seeds = ", ".join(f"{float(v):.2%}" for v in final["seeds"].values())
    lines += [
        "",
        f"Final ({final['minutes']:.1f} min): seeds {seeds}; median {final['median_test_accuracy']:.2%}; "
        f"seed ensemble {final['ensemble_test_accuracy']:.2%}.",
        f"Promote ({promote['minutes']:.1f} min): {promote['version']}: {promote['reason']}",
        f"Analyze ({result['analyze']['minutes']:.1f} min): {result['analyze']['figures']} figures.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="digits")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.chdir(tmp)
        result = run(args.task, args.trials, args.folds, Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"tasks-{args.task}.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / f"tasks-{args.task}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
