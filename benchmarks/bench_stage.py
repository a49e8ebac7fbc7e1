"""One stage, five ways, on the same machine, data, folds, grid, epochs and batch size, interleaved and repeated.

    python benchmarks/bench_stage.py --repeats 3   # real 2-vs-7 from $MLFLOW_MNIST_DATA: the seed's pool_size step
    python benchmarks/bench_stage.py --quick       # the sample, 1 epoch, 2 folds, 1 repeat: a smoke test, no targets

Peers, each a fresh process (TensorFlow's thread settings cannot leak between them), none refitting:
  a   the seed's way: scikit-learn GridSearchCV over scikeras' KerasClassifier, default compile, n_jobs=1
  a2  the same with n_jobs=<cores>: what a user tries first on this machine
  b   our stage, full tracking (fold runs, curves, models) into a new SQLite store created inside the timer
  c   our executor alone, tracking off
  d   b with --precision mixed_bfloat16
  e   the ceiling: the same folds, plain Keras ``fit`` (same model, batch, steps per call, held-out scoring every
      epoch), nothing saved or logged, in two warm single-thread processes that pull folds from one queue; timed
      from the moment both have TensorFlow and the data loaded to the last fold's end (what no tool can beat
      on this machine without doing less work)
  e2  e with two TensorFlow threads in each process (the cores oversubscribed twice): does a fold's idle moment
      (Python between graph calls, the held-out scoring) leave a core a second process could use?
  t   the same plain fits as e, in one process with TensorFlow's default thread pools (all cores) and two Python
      threads pulling folds: plain Optuna's ``study.optimize(n_jobs=2)``
Every variant trains the same grid: ours runs the step with ``reuse_reference=True`` (the CLI's
``--reuse-reference true``), since a staged step otherwise also retrains its reference (the carried-in
configuration) as one more candidate, which GridSearchCV over the same grid does not do. Work is credited as
done: every variant trains the same images; ours also scores the held-out fold after every epoch (its curves),
GridSearchCV scores it once. Medians and min-max over ``--repeats``; the CPU and its flags are in the report.
Writes benchmarks/results/bench_stage[-quick].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import machine  # noqa: E402

TASK, CLASSES = "mnist", "2,7"  # the seed's task: its convnet on real 2-vs-7
# The seed's values when it ran its pool_size step (stages.md, rows 1-16): kernel (5, 5), neurons 5/25/5, ...
SEED_CONTEXT = (
    "momentum=0.4,learn_rate=0.1,init_mode_1=glorot_uniform,init_mode_2=he_normal,activation_1=softsign,"
    "activation_2=relu,activation_3=linear,activation_4=softplus,dropout_rate_1=0.1,dropout_rate_2=0.1,"
    "neurons_1=5,neurons_2=25,neurons_3=5,kernel_size=(5,5),batch_size=20"
)
TARGETS = {"speedup_over_a": 4.0, "speedup_over_a2": 2.0, "tracking_overhead": 0.03, "over_ceiling": 0.10}
NAMES = {
    "a": "a) seed's way: GridSearchCV, n_jobs=1",
    "a2": "a2) GridSearchCV, n_jobs=cores",
    "b": "b) ours, full tracking",
    "c": "c) ours, tracking off",
    "d": "d) ours, full tracking, bfloat16",
    "e": "e) ceiling: plain Keras fits, 2 warm single-thread processes, untracked",
    "e2": "e2) e with 2 TensorFlow threads per process",
    "t": "t) e's fits in one process, 2 Python threads (Optuna's n_jobs=2)",
}


def _plan(data: str, step: str, epochs: int, folds: int):
    """The task, its 2-vs-7 arrays, the settings and the step's plan: the grid alone, as GridSearchCV sees it
    (no reference candidate: ours runs with ``reuse_reference=True``)."""
    from mlflow_mnist.planning import SearchSettings, resolve_fixed_params
    from mlflow_mnist.strategies.staged import plan_step
    from mlflow_mnist.tasks import get_task

    task = get_task(TASK)
    dataset = task.load(data, classes=CLASSES)
    settings = SearchSettings(task, folds, 0, epochs, dataset.digest(), dataset.n_classes)
    fixed = resolve_fixed_params(task, step, {}, overrides=task.parse_overrides(SEED_CONTEXT), epochs=epochs)
    return task, dataset, settings, plan_step(task.get_step(step), fixed, settings, {}, reference=False)


def grid_search(data: str, step: str, epochs: int, folds: int, n_jobs: int) -> dict:
    """The seed's way: one GridSearchCV over the wrapper; the grid is the candidates' hyperparameter dicts."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from mlflow_mnist.worker.training import make_classifier

    start = time.perf_counter()
    task, dataset, settings, plan = _plan(data, step, epochs, folds)
    onehot = np.eye(dataset.n_classes, dtype="float32")[dataset.y_train]  # the seed fed one-hot labels
    search = GridSearchCV(
        make_classifier(task, plan.fixed, n_classes=dataset.n_classes, steps_per_execution=1),
        {"model__hyperparameters": [c.params for c in plan.candidates]},
        # a list, not split()'s generator: GridSearchCV(n_jobs>1) pickles its own parameters into each task
        cv=list(StratifiedKFold(folds, shuffle=True, random_state=0).split(dataset.x_train, dataset.y_train)),
        n_jobs=n_jobs,
        refit=False,
        scoring="accuracy",
    )
    search.fit(dataset.x_train, onehot)
    return {"seconds": time.perf_counter() - start, "mean_accuracy": search.cv_results_["mean_test_score"].tolist()}


def ours_tracked(data: str, step: str, epochs: int, folds: int, precision: str = "float32") -> dict:
    """The step through the Python API (what ``mlflow-mnist tune --stage STEP`` runs) into a new SQLite store."""
    from mlflow_mnist.api import tune

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()  # store creation, data loading and validation are ours to pay for
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.environ.pop("MLFLOW_RUN_ID", None)
        result = tune(
            task=TASK,
            stage=step,
            data=data,
            classes=CLASSES,
            folds=folds,
            epochs=epochs,
            overrides=SEED_CONTEXT,
            experiment="benchmark",
            precision=precision,
            reuse_reference=True,  # the grid alone, as GridSearchCV trains it
            progress=False,
        )
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "mean_accuracy": result.cv_results["mean_test_score"].tolist()}


def ours_untracked(data: str, step: str, epochs: int, folds: int) -> dict:
    """Our executor and worker on the same plan, nothing logged: tracking's cost is b minus this."""
    from mlflow_mnist.campaign import data_source
    from mlflow_mnist.executors import JoblibExecutor
    from mlflow_mnist.results import cv_results
    from mlflow_mnist.worker import DataRef, FoldWorker

    start = time.perf_counter()
    task, dataset, settings, plan = _plan(data, step, epochs, folds)
    executor = JoblibExecutor()
    ref = DataRef(TASK, data_source(task, data), CLASSES, dataset.digest())
    worker = FoldWorker(TASK, ref, executor.threads_per_worker, with_model=False)
    results = {r.key: r for r in executor.map_unordered(worker, plan.to_train)}
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "mean_accuracy": [row["mean_test_score"] for row in cv_results(plan, results)]}


def _plain_fit(task, dataset, fold) -> float:
    """One fold as plain Keras trains it (the ceiling's unit of work): the task's model, our batch and steps per
    graph call, held-out scoring after every epoch, nothing saved; its last held-out accuracy."""
    import keras

    from mlflow_mnist.planning import fold_indices
    from mlflow_mnist.worker.training import VALIDATION_BATCH, execution_steps

    x, y, onehot = dataset.x_train, dataset.y_train, np.eye(dataset.n_classes, dtype="float32")
    train, held_out = fold_indices(
        y, n_folds=fold.n_folds, split_seed=fold.split_seed, fold=fold.fold, repeat=fold.repeat
    )
    keras.utils.set_random_seed(fold.seed)
    model = task.build_model(
        fold.params,
        n_classes=dataset.n_classes,
        steps_per_execution=execution_steps(len(train), fold.params),  # as ours: the same graph calls
        precision="float32",
        seed=fold.seed,
        n_train=len(train),
    )
    history = model.fit(
        x[train],
        onehot[y[train]],
        batch_size=fold.params["batch_size"],
        epochs=fold.params["epochs"],
        validation_data=(x[held_out], onehot[y[held_out]]),
        validation_batch_size=VALIDATION_BATCH,
        verbose=0,
    )
    return float(history.history["val_accuracy"][-1])


def _ceiling_process(data: str, step: str, epochs: int, folds: int, threads: int, todo, ready, go, done) -> None:
    """One warm process of the ceiling: TensorFlow on ``threads`` threads and the data loaded before the clock
    starts; then folds from the shared queue until its stop mark."""
    from mlflow_mnist.worker.process import configure_threads

    configure_threads(threads)
    task, dataset, settings, plan = _plan(data, step, epochs, folds)
    ready.put(os.getpid())
    go.wait()
    # Blocking gets until a stop mark: get_nowait() raises Empty whenever the other process holds the queue's
    # read lock, which ended one process early and left the other to train alone (measured: 1.8x slower).
    for index in iter(todo.get, None):
        done.put((index, _plain_fit(task, dataset, plan.to_train[index])))


def _by_candidate(plan, scores: dict[int, float]) -> list[float]:
    by_candidate: dict[int, list[float]] = {}
    for index, score in scores.items():
        by_candidate.setdefault(plan.to_train[index].candidate_index, []).append(score)
    return [float(np.mean(v)) for _, v in sorted(by_candidate.items())]


def threaded(data: str, step: str, epochs: int, folds: int, threads: int = 2) -> dict:
    """The same plain fits as e in this one fresh process, ``threads`` Python threads pulling folds while
    TensorFlow keeps its default pools: see variant t in the module's docstring. Timed, as e, from the moment
    TensorFlow and the data are loaded. Keras' seeding is process-wide and the threads seed at once, so a fold's
    random layers may draw another stream than in e: its scores are near e's, not equal (the work is the same)."""
    import queue
    import threading

    launched = time.perf_counter()  # as e's: the start-up left outside the clock counts TensorFlow's import
    import tensorflow as tf

    tf.constant(0.0)  # TensorFlow's runtime up before the clock, as in e's warm processes
    task, dataset, settings, plan = _plan(data, step, epochs, folds)
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(plan.to_train)):
        todo.put(index)
    scores: dict[int, float] = {}

    def pull() -> None:
        while True:
            try:
                index = todo.get_nowait()  # a SimpleQueue between threads has no read lock to lose a race on
            except queue.Empty:
                return
            scores[index] = _plain_fit(task, dataset, plan.to_train[index])

    start = time.perf_counter()
    pullers = [threading.Thread(target=pull) for _ in range(threads)]
    for puller in pullers:
        puller.start()
    for puller in pullers:
        puller.join()
    seconds = time.perf_counter() - start
    if len(scores) != len(plan.to_train):
        raise RuntimeError(f"threaded: {len(scores)} of {len(plan.to_train)} folds trained")
    return {"seconds": seconds, "warm_up_seconds": start - launched, "mean_accuracy": _by_candidate(plan, scores)}


def ceiling(data: str, step: str, epochs: int, folds: int, processes: int = 2, threads: int = 1) -> dict:
    """The same folds as b and c at the machine's limit: see variant e (and e2) in the module's docstring."""
    import multiprocessing

    launched = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # fresh interpreters: TensorFlow's thread setting holds
    todo, ready, done, go = context.Queue(), context.Queue(), context.Queue(), context.Event()
    task, dataset, settings, plan = _plan(data, step, epochs, folds)
    for index in [*range(len(plan.to_train)), *[None] * processes]:  # the folds, then a stop mark for each
        todo.put(index)
    workers = [
        context.Process(target=_ceiling_process, args=(data, step, epochs, folds, threads, todo, ready, go, done))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=600)
    start = time.perf_counter()
    go.set()
    scores = dict(done.get(timeout=3600) for _ in plan.to_train)
    seconds = time.perf_counter() - start
    for worker in workers:
        worker.join()
    return {
        "seconds": seconds,
        "warm_up_seconds": start - launched,  # what the ceiling leaves out: processes, TensorFlow, the data
        "mean_accuracy": _by_candidate(plan, scores),
    }


# Each figure of the report: (numerator, denominator, what to subtract); reported when both variants ran.
RATIOS = {
    "speedup_over_a": ("a", "b", 0),
    "speedup_over_a2": ("a2", "b", 0),
    "speedup_bf16_over_a2": ("a2", "d", 0),
    "tracking_overhead": ("b", "c", 1),
    "over_ceiling": ("b", "e", 1),
    "oversubscribed_over_ceiling": ("e2", "e", 1),
    "threads_over_ceiling": ("t", "e", 1),
}
VARIANTS = {
    "a": lambda d, s, e, f: grid_search(d, s, e, f, n_jobs=1),
    "a2": lambda d, s, e, f: grid_search(d, s, e, f, n_jobs=-1),
    "b": ours_tracked,
    "c": ours_untracked,
    "d": lambda d, s, e, f: ours_tracked(d, s, e, f, precision="mixed_bfloat16"),
    "e": ceiling,
    "e2": lambda d, s, e, f: ceiling(d, s, e, f, threads=2),
    "t": threaded,
}


def matmul_peak_gflops(size: int = 2048, repeats: int = 7) -> float:
    """This machine's float32 matrix-product rate through numpy (all cores), best of several."""
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    b = a.T.copy()
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def work_done(data: str, step: str, epochs: int, folds: int) -> dict:
    """FLOPs each kind of variant really does: training passes, plus held-out scoring after every epoch (ours)
    or once at the end (GridSearchCV)."""
    from mlflow_mnist.planning import fold_indices

    task, dataset, settings, plan = _plan(data, step, epochs, folds)
    train_flops = score_per_epoch = images = 0.0
    for candidate in plan.candidates:
        per_image = task.flops(candidate.params, dataset.n_classes)  # forward + backward
        for fold in range(folds):
            train, held_out = fold_indices(dataset.y_train, n_folds=folds, split_seed=0, fold=fold)
            images += len(train) * epochs
            train_flops += per_image * len(train) * epochs
            score_per_epoch += per_image / 3 * len(held_out)  # a forward pass is a third of a training step
    return {
        "images": images,
        "flops": {"grid_search": train_flops + score_per_epoch, "ours": train_flops + score_per_epoch * epochs},
        "n_candidates": len(plan.candidates),
        "train_images": len(dataset.y_train),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the sample, 1 epoch, 2 folds, 1 repeat: a smoke test")
    parser.add_argument("--step", default="pool_size", choices=["pool_size", "kernel_size"])
    parser.add_argument("--data", default=None, help="MNIST location [default: $MLFLOW_MNIST_DATA]")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="which variants, comma-separated [default: all]; a subset writes bench_stage-<variants>.*",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    epochs, folds = (1, 2) if args.quick else (6, 3)
    repeats = 1 if args.quick else args.repeats
    data = "sample" if args.quick else (args.data or os.environ.get("MLFLOW_MNIST_DATA", ""))
    if not data:
        sys.exit("error: real MNIST is needed: set MLFLOW_MNIST_DATA or pass --data (or use --quick)")
    if args.only:
        print(json.dumps(VARIANTS[args.only](data, args.step, epochs, folds)))
        return
    chosen = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown or not chosen:
        sys.exit(f"error: unknown variants {', '.join(unknown) or '(none given)'}: choose from {', '.join(VARIANTS)}")

    peak = matmul_peak_gflops()
    work = work_done(data, args.step, epochs, folds)
    seconds: dict[str, list[float]] = {k: [] for k in chosen}
    accuracy: dict[str, list[float]] = {}
    warm_up: dict[str, list[float]] = {}  # the start-up the ceilings (e, e2, t) leave outside their clocks
    for repeat in range(repeats):  # interleaved: a slow minute of the machine lands on every variant alike
        for name in chosen:
            print(f"repeat {repeat + 1}/{repeats}: variant {name} ...", file=sys.stderr, flush=True)
            command = [sys.executable, __file__, "--only", name, "--step", args.step, "--data", data]
            proc = subprocess.run(command + (["--quick"] if args.quick else []), capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"variant {name} failed:\n{proc.stderr[-3000:]}")
            measured = json.loads(proc.stdout.strip().splitlines()[-1])
            seconds[name].append(measured["seconds"])
            accuracy[name] = measured["mean_accuracy"]
            if "warm_up_seconds" in measured:
                warm_up.setdefault(name, []).append(measured["warm_up_seconds"])
    median = {k: statistics.median(v) for k, v in seconds.items()}
    flops = {k: work["flops"]["grid_search" if k.startswith("a") else "ours"] for k in chosen}
    report = {
        "machine": {**machine.describe(), "matmul_peak_gflops": peak},
        "setup": {"step": args.step, "epochs": epochs, "folds": folds, "data": data, "quick": args.quick, **work},
        "repeats": repeats,
        "seconds": seconds,
        "median_seconds": median,
        **{name: median[a] / median[b] - shift for name, (a, b, shift) in RATIOS.items() if {a, b} <= set(median)},
        "gflops_per_second": {k: flops[k] / median[k] / 1e9 for k in chosen},
        "mean_accuracy": accuracy,
        "ceiling_warm_up_seconds": warm_up.get("e", []),
        "warm_up_seconds": warm_up,
        "targets": TARGETS,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    subset = "" if chosen == list(VARIANTS) else "-" + "".join(chosen)
    stem = "bench_stage" + ("-quick" if args.quick else "") + subset
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (args.out / f"{stem}.md").write_text(table)
    print(table)


def markdown(r: dict) -> str:
    work, peak = r["setup"], r["machine"]["matmul_peak_gflops"]
    lines = [
        f"Step `{work['step']}`: {work['n_candidates']} candidates x {work['folds']} folds x {work['epochs']} epochs "
        f"on {work['train_images']} training images ({work['data']}); {machine.line(r['machine'])}; numpy float32 "
        f"matmul peak {peak:.0f} GFLOP/s; median (min - max) of {r['repeats']} interleaved runs, each variant a "
        "fresh process.",
        "",
        "| variant | wall s, median | min - max | GFLOP/s credited | % of matmul peak |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key in r["seconds"]:
        name = NAMES[key]
        values, rate = r["seconds"][key], r["gflops_per_second"][key]
        lines.append(
            f"| {name} | {r['median_seconds'][key]:.1f} | {min(values):.1f} - {max(values):.1f} | {rate:.1f} | "
            f"{100 * rate / peak:.1f} |"
        )
    t = r["targets"]
    lines.append("")
    if "speedup_over_a" in r:
        lines.append(
            f"- ours tracked vs the seed's way (a/b): **{r['speedup_over_a']:.2f}x** (target >= {t['speedup_over_a']}x)"
        )
    if "speedup_over_a2" in r:
        bf16 = f"; with bfloat16 (a2/d): {r['speedup_bf16_over_a2']:.2f}x" if "speedup_bf16_over_a2" in r else ""
        lines.append(
            f"- ours tracked vs GridSearchCV(n_jobs=cores) (a2/b): **{r['speedup_over_a2']:.2f}x** "
            f"(target >= {t['speedup_over_a2']}x){bf16}"
        )
    if "tracking_overhead" in r:
        lines.append(
            f"- tracking overhead (b/c - 1): **{100 * r['tracking_overhead']:+.1f}%** (target <= "
            f"{100 * t['tracking_overhead']:.0f}%)"
        )
    if "over_ceiling" in r:
        warm_up = r.get("ceiling_warm_up_seconds") or [math.nan]
        lines.append(
            f"- ours tracked over the ceiling (b/e - 1): **{100 * r['over_ceiling']:+.1f}%** (target <= "
            f"{100 * t['over_ceiling']:.0f}%); the ceiling's start-up, outside its clock (two processes: Python, "
            f"TensorFlow, the data): median {statistics.median(warm_up):.1f} s"
        )
    for ratio, how in (
        ("oversubscribed_over_ceiling", "two TensorFlow threads per process (e2/e - 1)"),
        ("threads_over_ceiling", "one process, two Python threads (t/e - 1)"),
    ):
        if ratio in r:
            lines.append(f"- the same fits with {how}: **{100 * r[ratio]:+.1f}%** against e")
    lines += [
        "- mean CV accuracy per candidate: "
        + "; ".join(f"{k}: " + ", ".join(f"{x:.4f}" for x in v) for k, v in r["mean_accuracy"].items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
