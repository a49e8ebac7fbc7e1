"""`make champion`, measured: from an empty store on real 2-vs-7, the search, the final's seeds, the promotion.

    python benchmarks/bench_champion.py --data ../shared/datasets/mnist [--strategy asha] [--trials 8]
    python benchmarks/bench_champion.py --data ../shared/datasets/mnist --seed 1 --stem champion-seed1  # another draw
    python benchmarks/bench_champion.py --task digits [--trials 16]      # another task, its default space
    python benchmarks/bench_champion.py --final-from benchmarks/results/champion.json --final-precision float32 \
        --stem champion-final-float32   # the same search's final in another precision: same seeds, paired
    python benchmarks/bench_champion.py --data ../shared/datasets/mnist --kill-final-after 2 \
        --stem champion-killed-final     # kill -9 during the final, then rerun search and final as a user would

The defaults are the Makefile's `champion` settings (strategy, trials, minimum epochs, seeds, the model promoted;
the top rung in 2 parts since 2026-12-06: reports written before it ran `--top-rung-parts 1`).
Runs the same three `mlflow run` commands as that target into a fresh SQLite store, times
each part, and reads back from the store the configuration found, every seed's test accuracy and errors, and
what `promote` said (against the task's own threshold). Writes benchmarks/results/champion.{json,md}
(champion-<task>.* for a task other than mnist; --stem names another, e.g. for a second CPU kind).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]

import machine  # noqa: E402
from bench_asha import ReportError, read_report  # noqa: E402

from mlflow_mnist import schema  # noqa: E402
from mlflow_mnist.campaign import data_source  # noqa: E402
from mlflow_mnist.tasks import DEFAULT_TASK, get_task  # noqa: E402
from mlflow_mnist.tasks.mnist.data import DATA_ENV_VAR  # noqa: E402


def champion_command(store: Path, *args: str, task: str = DEFAULT_TASK) -> tuple[list[str], dict[str, str]]:
    """One of make champion's `mlflow run` commands into ``store``, and its environment."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("MLFLOW_RUN_ID", None)
    if task != DEFAULT_TASK:
        env.pop(DATA_ENV_VAR, None)  # MNIST's location is not another task's data (an empty --data falls back on it)
    return ["mlflow", "run", str(ROOT), "--env-manager", "local", "--experiment-name", "champion", *args], env


def mlflow_run(store: Path, *args: str, task: str = DEFAULT_TASK) -> tuple[float, subprocess.CompletedProcess]:
    command, env = champion_command(store, *args, task=task)
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=store, capture_output=True, text=True)
    return time.perf_counter() - start, proc


def killed_final(store: Path, *args: str, after: int, task: str = DEFAULT_TASK) -> float:
    """Start the final (``args``) and kill -9 its whole process group once ``after`` of its seeds finished, as a
    crash would; its seconds until then."""
    from mlflow_mnist import tracking

    command, env = champion_command(store, *args, task=task)
    client = tracking.connect(f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("champion").experiment_id
    # This final's seeds only: a store reused with --final-from holds an earlier final's finished seeds too.
    finished = f"tags.`{schema.LEVEL}` = '{schema.FINAL_SEED_LEVEL}' and attributes.status = 'FINISHED'"
    finished += f" and attributes.start_time >= {int(time.time() * 1000)}"
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, env=env, cwd=store, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    while len(client.search_runs([experiment], finished)) < after:
        if proc.poll() is not None:
            sys.exit(f"the final ended (exit {proc.returncode}) before {after} of its seeds finished")
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return time.perf_counter() - start


def read_back(store: Path) -> dict:
    from mlflow_mnist import tracking

    client = tracking.connect(f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("champion").experiment_id
    runs = tracking.search_all(client, [experiment])

    def level(run) -> str:
        return run.data.tags.get(schema.LEVEL, "")

    search = next(r for r in runs if r.data.tags.get(schema.BEST_CONFIG) and level(r) == schema.STAGE_LEVEL)
    # The newest final: a store given a second final (--final-from) keeps its first one too.
    final = max((r for r in runs if level(r) == schema.FINAL_LEVEL), key=lambda r: r.info.start_time)
    seeds = sorted(
        (r for r in runs if r.data.tags.get(schema.PARENT) == final.info.run_id),
        key=lambda r: int(r.data.tags[schema.SEED]),
    )
    best = client.get_run(search.data.tags[schema.BEST_CHILD])
    folds = [r for r in runs if level(r) == schema.FOLD_LEVEL]
    return {
        "config": json.loads(search.data.tags[schema.BEST_CONFIG]),
        "best_trial": best.info.run_name,
        "best_trial_cv": best.data.metrics.get(schema.MEAN_HELDOUT_ACCURACY),
        "trials": len({r.data.tags.get(schema.TRIAL) for r in runs if r.data.tags.get(schema.TRIAL)}),
        "fold_epochs": int(sum(r.data.metrics.get(schema.EPOCHS_RUN, 0) for r in folds)),
        # the search's own measure of its workers' idle share (a fraction; None where the search logged none)
        "workers_idle_share": search.data.metrics.get(schema.WORKERS_IDLE_SHARE),
        "seeds": {
            r.data.tags.get(schema.SEED): {
                "test_accuracy": r.data.metrics[schema.SEED_ACCURACY],
                "errors": int(r.data.metrics[schema.SEED_ERRORS]),
                "config_rank": int(r.data.tags.get(schema.CONFIG_RANK, "1")),
            }
            for r in seeds
        },
        # with --configs > 1: the other configurations the final's seeds trained, by rank (each seed run logs its own)
        "other_configs": {
            r.data.tags[schema.CONFIG_RANK]: r.data.params
            for r in seeds
            if int(r.data.tags.get(schema.CONFIG_RANK, "1")) > 1
        },
        "median_test_accuracy": final.data.metrics.get(schema.MEDIAN_ACCURACY),
        "ensemble_test_accuracy": final.data.metrics.get(schema.ENSEMBLE_ACCURACY),
        "ensemble_errors": final.data.metrics.get(schema.ENSEMBLE_ERRORS),
    }


def search_in(store: Path, args: argparse.Namespace, space: str, common: list[str]) -> float:
    """Run make champion's search into ``store``; its minutes (a failed search ends the script)."""
    from mlflow_mnist.strategies import STRATEGIES

    options = {"trials": args.trials, "min_epochs": args.min_epochs, "promotion": args.promotion}
    options["top_rung_parts"] = args.top_rung_parts
    # ASHA's options go to ASHA only: `tune` refuses an option its strategy would ignore.
    read = STRATEGIES[args.strategy].options if args.strategy in STRATEGIES else set(options)
    options = {"strategy": args.strategy, "space": space, **{k: v for k, v in options.items() if k in read}}
    seconds, search = mlflow_run(
        store, *[part for key, value in options.items() for part in ("-P", f"{key}={value}")], *common, task=args.task
    )
    if search.returncode:
        sys.exit(f"search failed:\n{search.stderr[-3000:]}")
    return seconds


def earlier_search(path: Path) -> dict:
    """An earlier report whose store still holds its search; one line and exit otherwise."""
    try:
        report = read_report(path, "bench_champion.py")
        store, searched = Path(report["store"]), float(report["minutes"]["search"])
        if searched <= 0 or not dict(report["settings"]):
            raise ValueError("no search minutes or settings")
    except ReportError as error:
        sys.exit(f"error: --final-from {error}")
    except (KeyError, TypeError, ValueError):
        sys.exit(f"error: --final-from {path}: not a bench_champion.py report")
    if not (store / "mlflow.db").is_file():
        sys.exit(f"error: --final-from {path}: its store {store} is gone; run bench_champion.py without it")
    return report


def empty_registry(store: Path) -> None:
    """Delete the store's registered models, so promote meets no champion, as from an empty store."""
    from mlflow_mnist import tracking

    client = tracking.connect(f"sqlite:///{store}/mlflow.db")
    for model in client.search_registered_models():
        client.delete_registered_model(model.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=DEFAULT_TASK, help="a registered task [default: mnist]")
    parser.add_argument("--data", default=None, help="the task's data [default: mnist: $MLFLOW_MNIST_DATA]")
    parser.add_argument("--strategy", default="asha", help="the joint search [default: asha, as make champion]")
    parser.add_argument("--trials", default="8")
    parser.add_argument("--min-epochs", default="2", help="the first rung's epochs [default: 2]")
    parser.add_argument("--repeats", default="4", help="seeds of the final [default: 4]")
    parser.add_argument(
        "--configs", default="1", help="the search's best configurations the final's seeds are spread over [default: 1]"
    )
    parser.add_argument(
        "--model",
        default="ensemble",
        choices=("median", "ensemble"),
        help="what promote gates and registers, fixed before the test set is seen [default: ensemble]",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        help="float32, mixed_bfloat16 or auto, for search and final [default: auto, as make champion]",
    )
    parser.add_argument("--space", default=None, help="the search space [default: mnist: wide, else the task's]")
    parser.add_argument(
        "--promotion", default="quota", help="ASHA's promotion rule, quota or eager [default: quota, as make champion]"
    )
    parser.add_argument(
        "--top-rung-parts",
        default="2",
        help="ASHA: each top-rung fold trained in this many parts, checkpointed between [default: 2, as make champion]",
    )
    parser.add_argument(
        "--seed",
        default="0",
        help="the campaign's seed: the split, the search's draws, the final's seeds from it [default: 0]",
    )
    parser.add_argument(
        "--final-from",
        type=Path,
        default=None,
        help="an earlier report whose store was kept: reuse its search (its seed, precision, minutes and fold-epochs) "
        "and run only the final and promote in that store, its registry emptied first, so finals differing only "
        "in --configs, --repeats or --model are paired on one search",
    )
    parser.add_argument(
        "--final-precision",
        default=None,
        choices=("float32", "mixed_bfloat16", "auto"),
        help="the final's precision where it differs from the search's, e.g. with --final-from to pair one "
        "search's finals in float32 and bfloat16 [default: --precision]",
    )
    parser.add_argument(
        "--kill-final-after",
        type=int,
        default=0,
        help="kill -9 the final (its process group) once this many of its seeds finished, then run the search and "
        "the final again, as a user reruns make champion after a crash; each part's minutes are reported "
        "[default: 0, never]",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--stem",
        default="",
        help="the result files' name, e.g. champion-xeon for a second CPU kind [default: champion, champion-TASK]",
    )
    args = parser.parse_args()
    task = get_task(args.task)
    mnist = task.name == DEFAULT_TASK
    data = args.data if args.data is not None else (os.environ.get(DATA_ENV_VAR, "") if mnist else "")
    if mnist and not data:
        sys.exit("error: real MNIST is needed: pass --data or set MLFLOW_MNIST_DATA")
    data = data_source(task, data) if data else ""  # a path made absolute; a name the task knows as it is
    space = args.space if args.space is not None else ("wide" if mnist else "")
    earlier = earlier_search(args.final_from) if args.final_from else None
    if earlier is not None:
        for key in ("strategy", "trials", "min_epochs", "promotion", "precision", "seed"):
            setattr(args, key, earlier["settings"].get(key, getattr(args, key)))
        args.top_rung_parts = earlier["settings"].get("top_rung_parts", "1")  # reports before the option: one part
    args.final_precision = args.final_precision or args.precision
    common = ["-P", f"data={data}", "-P", f"seed={args.seed}"] + ([] if mnist else ["-P", f"task={args.task}"])
    store = Path(earlier["store"]) if earlier else Path(tempfile.mkdtemp(prefix="champion-"))
    parts = {}
    if earlier is not None:
        parts["search"] = 60 * earlier["minutes"]["search"]
        empty_registry(store)
    else:
        parts["search"] = search_in(store, args, space, [*common, "-P", f"precision={args.precision}"])
    final_args = [
        "-e",
        "final",
        "-P",
        "search=latest",
        "-P",
        f"repeats={args.repeats}",
        "-P",
        f"configs={args.configs}",
    ]
    final_args += ["-P", f"precision={args.final_precision}", *common]
    if args.kill_final_after:
        parts["final, killed"] = killed_final(store, *final_args, after=args.kill_final_after, task=args.task)
        parts["search, again"] = search_in(store, args, space, [*common, "-P", f"precision={args.precision}"])
    parts["final"], final = mlflow_run(store, *final_args, task=args.task)
    if final.returncode:
        sys.exit(f"final failed:\n{final.stderr[-3000:]}")
    parts["promote"], promote = mlflow_run(store, "-e", "promote", "-P", f"model={args.model}", task=args.task)
    said = [line for line in (promote.stdout + promote.stderr).splitlines() if "promoted" in line]
    report = {
        "machine": machine.describe(),
        "task": task.name,
        "store": str(store),
        "settings": {
            k: getattr(args, k)
            for k in (
                "strategy",
                "trials",
                "min_epochs",
                "promotion",
                "top_rung_parts",
                "repeats",
                "configs",
                "model",
                "precision",
                "final_precision",
                "seed",
                "kill_final_after",
            )
        },
        "minutes": {k: v / 60 for k, v in parts.items()},
        # --final-from: the search (and its minutes) is that report's; only final and promote ran here
        "search_from": str(args.final_from) if earlier else None,
        "promote_exit": promote.returncode,
        # what the final that finished took from the one killed (--kill-final-after)
        "seeds_taken": int(taken[1]) if (taken := re.search(r"(\d+) seed\(s\) taken", final.stdout)) else 0,
        "promote_said": said[-1] if said else promote.stderr.strip().splitlines()[-1:],
        **read_back(store),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.stem or ("champion" if mnist else f"champion-{task.name}")
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    ensemble = (
        f"**{report['ensemble_test_accuracy']:.4%}** ({report['ensemble_errors']:.0f} errors)"
        if report["ensemble_test_accuracy"] is not None
        else "not logged"
    )
    seeds = ", ".join(
        f"{s['test_accuracy']:.4%} ({s['errors']} errors"
        + (f", configuration {s['config_rank']})" if int(args.configs) > 1 else ")")
        for s in report["seeds"].values()
    )
    text = (
        f"`make champion`{'' if mnist else f' for task {task.name}'} from an empty store on "
        f"{machine.line(report['machine'])}: search "
        f"{report['minutes']['search']:.1f} min ({report['trials']} trials, {report['fold_epochs']} fold-epochs"
        + (f", workers idle {idle:.1%}" if (idle := report["workers_idle_share"]) is not None else "")
        + "), "
        + (
            f"the final killed after {args.kill_final_after} seed(s) at {report['minutes']['final, killed']:.1f} min, "
            f"the search again {report['minutes']['search, again']:.1f} min, "
            if args.kill_final_after
            else ""
        )
        + f"{args.repeats}-seed final {report['minutes']['final']:.1f} min, "
        f"promote {report['minutes']['promote']:.1f} min; "
        f"{sum(report['minutes'].values()):.1f} min in all"
        + (f" (the search and its minutes are {args.final_from.name}'s, in its store)" if earlier else "")
        + ".\n\n"
        f"- best trial {report['best_trial']}: mean CV accuracy {report['best_trial_cv']:.5f}\n"
        f"- configuration: `{json.dumps(report['config'])}`\n"
        + "".join(f"- configuration {rank}: `{json.dumps(c)}`\n" for rank, c in sorted(report["other_configs"].items()))
        + f"- settings: {json.dumps(report['settings'])}\n"
        f"- test accuracy per seed: {seeds}; median **{report['median_test_accuracy']:.4%}**\n"
        f"- the seeds' ensemble: {ensemble}\n"
        f"- promote (exit {report['promote_exit']}): {report['promote_said']}\n"
        + (f"- seeds taken from the killed final: {report['seeds_taken']}\n" if args.kill_final_after else "")
    )
    (args.out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
