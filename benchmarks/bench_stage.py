"""Our stage against the seed's way, on the same machine, data, grid and folds, in one run.

    python benchmarks/bench_stage.py            # real 2-vs-7 from $MLFLOW_MNIST_DATA: the seed's pool_size step
    python benchmarks/bench_stage.py --quick    # the shipped sample, 1 epoch: a smoke test, no targets

Variants, each in a fresh process so TensorFlow's thread settings cannot leak between them:
  a  the seed's way: scikit-learn GridSearchCV over scikeras' KerasClassifier, default compile, n_jobs=1, no tracking
  b  our stage, full tracking (fold runs, curves, models) into a throw-away SQLite store
  c  our stage's executor alone, tracking disabled
  d  our stage, full tracking, --precision mixed_bfloat16 (bfloat16 compute: AMX / AVX512-BF16 CPUs)
Writes benchmarks/results/bench_stage[-quick].json and .md; prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The seed's values when it ran its pool_size step (stages.md, rows 1-16): kernel (5, 5), neurons 5/25/5, ...
SEED_CONTEXT = (
    "momentum=0.4,learn_rate=0.1,init_mode_1=glorot_uniform,init_mode_2=he_normal,activation_1=softsign,"
    "activation_2=relu,activation_3=linear,activation_4=softplus,dropout_rate_1=0.1,dropout_rate_2=0.1,"
    "neurons_1=5,neurons_2=25,neurons_3=5,kernel_size=(5,5),batch_size=20"
)
TARGETS = {"speedup_a_over_b": 4.0, "tracking_overhead": 0.03, "fraction_of_peak": 0.35}


def _plan(data: str, step: str, epochs: int, folds: int):
    from mlflow_mnist.data import load_task
    from mlflow_mnist.planning import SearchSettings, resolve_fixed_params
    from mlflow_mnist.stages import get_step, parse_overrides
    from mlflow_mnist.strategies.staged import plan_step

    task = load_task(data, "2,7")
    settings = SearchSettings(folds, 0, epochs, task.digest(), task.n_classes)
    fixed = resolve_fixed_params(step, {}, parse_overrides(SEED_CONTEXT), epochs)
    return task, settings, plan_step(get_step(step), fixed, settings, {})


def variant_a(data: str, step: str, epochs: int, folds: int) -> dict:
    """The seed's way: one GridSearchCV over the wrapper; the grid is the candidates' hyperparameter dicts."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from mlflow_mnist.model import make_classifier

    task, settings, plan = _plan(data, step, epochs, folds)
    onehot = np.eye(task.n_classes, dtype="float32")[task.y_train]  # the seed fed one-hot labels
    search = GridSearchCV(
        make_classifier(plan.fixed, task.n_classes, steps_per_execution=1),
        {"model__hyperparameters": [c.params for c in plan.candidates]},
        cv=StratifiedKFold(folds, shuffle=True, random_state=0).split(task.x_train, task.y_train),
        n_jobs=1,
        refit=False,
        scoring="accuracy",
    )
    start = time.perf_counter()
    search.fit(task.x_train, onehot)
    return {"seconds": time.perf_counter() - start, "mean_accuracy": search.cv_results_["mean_test_score"].tolist()}


def variant_b(data: str, step: str, epochs: int, folds: int, precision: str = "float32") -> dict:
    from mlflow_mnist.campaign import Campaign

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.environ.pop("MLFLOW_RUN_ID", None)
        campaign = Campaign.open(
            data, "2,7", folds=folds, epochs=epochs, overrides=SEED_CONTEXT, experiment="benchmark", precision=precision
        )
        start = time.perf_counter()
        outcome = campaign.tune(step, progress=False)[0]
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "mean_accuracy": [row["mean_test_score"] for row in outcome.rows],
        "fit_seconds": [row["mean_fit_time"] for row in outcome.rows],
    }


def variant_c(data: str, step: str, epochs: int, folds: int) -> dict:
    from mlflow_mnist.data import DataRef
    from mlflow_mnist.executors import JoblibExecutor
    from mlflow_mnist.results import cv_results
    from mlflow_mnist.worker import FoldWorker

    task, settings, plan = _plan(data, step, epochs, folds)
    start = time.perf_counter()
    executor = JoblibExecutor()
    worker = FoldWorker(DataRef(data, task.digits, task.digest()), executor.threads_per_worker, with_model=False)
    results = {r.key: r for r in executor.map_unordered(worker, plan.to_train)}
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "mean_accuracy": [row["mean_test_score"] for row in cv_results(plan, results)]}


def variant_d(data: str, step: str, epochs: int, folds: int) -> dict:
    return variant_b(data, step, epochs, folds, precision="mixed_bfloat16")


VARIANTS = {"a": variant_a, "b": variant_b, "c": variant_c, "d": variant_d}


def matmul_peak_gflops(size: int = 2048, repeats: int = 7) -> float:
    """This machine's float32 matrix-product rate through numpy, best of several."""
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    b = a.T.copy()
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def training_work(data: str, step: str, epochs: int, folds: int) -> dict:
    """Images seen and floating-point operations done by one pass over the step (training + held-out scoring)."""
    from mlflow_mnist.model import count_training_flops
    from mlflow_mnist.planning import fold_indices

    task, settings, plan = _plan(data, step, epochs, folds)
    images = flops = 0.0
    for candidate in plan.candidates:
        per_image = count_training_flops(candidate.params, task.n_classes)
        for fold in range(folds):
            train, held_out = fold_indices(task.y_train, folds, 0, fold)
            images += len(train) * epochs
            flops += per_image * len(train) * epochs + per_image / 3 * len(held_out) * epochs
    return {"images": images, "flops": flops, "n_candidates": len(plan.candidates), "train_images": len(task.y_train)}


def campaign_estimate(seconds_per_gflop: dict[str, float], folds: int, train_images: int) -> dict[str, float]:
    """Minutes for the seed's 18 steps at its settings, scaling each candidate by its FLOPs (seed's final model)."""
    from mlflow_mnist.model import count_training_flops
    from mlflow_mnist.planning import resolve_fixed_params
    from mlflow_mnist.stages import STEPS, parse_overrides

    fixed = resolve_fixed_params("pool_size", {}, parse_overrides(SEED_CONTEXT), 6)
    gflops = 0.0
    for step in STEPS:
        for varied in step.candidates():
            params = {**fixed, **varied}
            per_image = count_training_flops(params)
            held_out = train_images / folds
            gflops += folds * params["epochs"] * per_image * (train_images - held_out + held_out / 3) / 1e9
    return {name: gflops * rate / 60 for name, rate in seconds_per_gflop.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shipped sample, 1 epoch; smoke test only")
    parser.add_argument("--step", default="pool_size", choices=["pool_size", "kernel_size"])
    parser.add_argument("--data", default=None, help="MNIST location [default: $MLFLOW_MNIST_DATA]")
    parser.add_argument("--only", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    epochs, folds = (1, 3) if args.quick else (6, 3)
    data = "sample" if args.quick else (args.data or os.environ.get("MLFLOW_MNIST_DATA", ""))
    if not data:
        sys.exit("error: real MNIST is needed: set MLFLOW_MNIST_DATA or pass --data (or use --quick)")
    if args.only:
        print(json.dumps(VARIANTS[args.only](data, args.step, epochs, folds)))
        return

    peak = matmul_peak_gflops()
    work = training_work(data, args.step, epochs, folds)
    measured = {}
    for name in VARIANTS:
        print(f"running variant {name} ...", file=sys.stderr, flush=True)
        command = [sys.executable, __file__, "--only", name, "--step", args.step, "--data", data]
        proc = subprocess.run(command + (["--quick"] if args.quick else []), capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"variant {name} failed:\n{proc.stderr[-3000:]}")
        measured[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    a, b, c, d = (measured[k]["seconds"] for k in "abcd")
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "matmul_peak_gflops": peak,
        },
        "setup": {"step": args.step, "epochs": epochs, "folds": folds, "data": data, "quick": args.quick, **work},
        "seconds": {"a_seed_way": a, "b_tracked": b, "c_untracked": c, "d_tracked_bf16": d},
        "speedup_a_over_b": a / b,
        "speedup_a_over_d": a / d,
        "tracking_overhead": (b - c) / c,
        "images_per_second": {k: work["images"] / s for k, s in zip("abcd", (a, b, c, d), strict=True)},
        "gflops_per_second": {k: work["flops"] / s / 1e9 for k, s in zip("abcd", (a, b, c, d), strict=True)},
        "mean_accuracy": {k: measured[k]["mean_accuracy"] for k in "abd"},
    }
    report["fraction_of_peak"] = report["gflops_per_second"]["b"] / peak
    rates = {
        "seed_way": a / (work["flops"] / 1e9),
        "ours": b / (work["flops"] / 1e9),
        "ours_bf16": d / (work["flops"] / 1e9),
    }
    report["campaign_minutes"] = campaign_estimate(rates, folds, work["train_images"])
    report["targets"] = TARGETS
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "bench_stage-quick" if args.quick else "bench_stage"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (args.out / f"{stem}.md").write_text(table)
    print(table)


def markdown(r: dict) -> str:
    s, work = r["seconds"], r["setup"]
    lines = [
        f"Step `{work['step']}`: {work['n_candidates']} candidates x {work['folds']} folds x {work['epochs']} epochs "
        f"on {work['train_images']} training images ({work['data']}); {r['machine']['cpus']} CPUs, "
        f"numpy float32 matmul peak {r['machine']['matmul_peak_gflops']:.0f} GFLOP/s.",
        "",
        "| variant | wall s | images/s | GFLOP/s | % of matmul peak |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    names = {
        "a": "a) seed's way (GridSearchCV, no tracking)",
        "b": "b) ours, full tracking",
        "c": "c) ours, tracking off",
        "d": "d) ours, full tracking, bfloat16",
    }
    for key, seconds in zip("abcd", s.values(), strict=True):
        gflops = r["gflops_per_second"][key]
        lines.append(
            f"| {names[key]} | {seconds:.1f} | {r['images_per_second'][key]:.0f} | {gflops:.1f} | "
            f"{100 * gflops / r['machine']['matmul_peak_gflops']:.1f} |"
        )
    lines += [
        "",
        f"- speed-up a/b: **{r['speedup_a_over_b']:.2f}x** (target >= {r['targets']['speedup_a_over_b']}x); "
        f"a/d with bfloat16: **{r['speedup_a_over_d']:.2f}x**",
        f"- tracking overhead (b-c)/c: **{100 * r['tracking_overhead']:.1f}%** "
        f"(target <= {100 * r['targets']['tracking_overhead']:.0f}%)",
        f"- share of matmul peak while training (b): **{100 * r['fraction_of_peak']:.1f}%** "
        f"(target >= {100 * r['targets']['fraction_of_peak']:.0f}%)",
        "- mean CV accuracy per candidate, a vs b: "
        + ", ".join(f"{x:.4f}/{y:.4f}" for x, y in zip(r["mean_accuracy"]["a"], r["mean_accuracy"]["b"], strict=True))
        + "; d (bfloat16): "
        + ", ".join(f"{x:.4f}" for x in r["mean_accuracy"]["d"]),
        f"- whole 18-step campaign at the seed's settings, estimated from these rates: seed's way "
        f"{r['campaign_minutes']['seed_way']:.0f} min, ours {r['campaign_minutes']['ours']:.0f} min, "
        f"ours with bfloat16 {r['campaign_minutes']['ours_bf16']:.0f} min",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
