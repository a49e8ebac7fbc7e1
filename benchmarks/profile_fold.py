"""Where a fold's time goes, one lever at a time: the numbers the README quotes about per-fold efficiency.

    python benchmarks/profile_fold.py --data ../shared/datasets/mnist      # about 15 minutes on 2 cores

One fold of the seed's pool_size configuration (kernel (5, 5), 5 -> 25 filters, batch 20), timed per epoch in a
fresh process per setting, settings interleaved, median of ``--repeats``:
  threads       TensorFlow intra-op threads 1 vs 2 (one worker alone on the machine)
  batch         batch size 20, 60, 200 (seconds per epoch and per image)
  execution     steps_per_execution 1 vs 32 (batches per graph call)
  onednn        TF_ENABLE_ONEDNN_OPTS=0 vs 1
  allocator     glibc malloc vs jemalloc vs tcmalloc (LD_PRELOAD; skipped when the library is not installed)
  dask malloc   MALLOC_TRIM_THRESHOLD_=65536 as Dask's nanny sets it, as it is and with the thresholds raised
                again (worker.process.restore_malloc_fast_path, which every worker runs)
  input         numpy arrays vs a tf.data pipeline
  pinning       two workers at once, each pinned to its own core (taskset) vs free
and per layer: the forward + backward time of each layer on a batch, against its share of the FLOPs.
Writes benchmarks/results/profile_fold.{json,md}.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import machine  # noqa: E402

from mlflow_mnist.tasks import get_task  # noqa: E402
from mlflow_mnist.worker import process  # noqa: E402

TASK = get_task("mnist")

SEED_POOL = {
    "momentum": 0.4,
    "learn_rate": 0.1,
    "init_mode_1": "glorot_uniform",
    "init_mode_2": "he_normal",
    "activation_1": "softsign",
    "activation_2": "relu",
    "activation_3": "linear",
    "activation_4": "softplus",
    "dropout_rate_1": 0.1,
    "dropout_rate_2": 0.1,
    "neurons_1": 5,
    "neurons_2": 25,
    "neurons_3": 5,
    "kernel_size": (5, 5),
}
ALLOCATORS = {
    "jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
}


def one_fold(
    data: str, *, threads: int, batch: int, steps: int, pipeline: str, epochs: int, restore_malloc: bool = True
) -> dict:
    """Seconds per epoch (epochs after the first, which pays for tracing) of one fold."""
    import numpy as np

    from mlflow_mnist.planning import fold_indices

    if not restore_malloc:  # measure what restore_malloc_fast_path undoes (configure_threads calls it)
        process.restore_malloc_fast_path = lambda: False
    process.configure_threads(threads)
    import keras
    import tensorflow as tf

    dataset = TASK.load(data, classes="2,7")
    train, _ = fold_indices(dataset.y_train, n_folds=3, split_seed=0, fold=0)
    x, y = dataset.x_train[train], np.eye(2, dtype="float32")[dataset.y_train[train]]
    params = {**TASK.start, **SEED_POOL, "batch_size": batch, "epochs": epochs}
    keras.utils.set_random_seed(0)
    model = TASK.build_model(params, n_classes=2, steps_per_execution=steps, seed=0)
    times = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    if pipeline == "tf.data":
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).batch(batch).prefetch(2)
        model.fit(dataset, epochs=epochs, verbose=0, callbacks=[Clock()])
    else:
        model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=[Clock()])
    return {"first_epoch": times[0], "seconds_per_epoch": statistics.median(times[1:]), "images": len(x)}


def per_layer(batch: int = 200, repeats: int = 20) -> list[dict]:
    """Forward + backward seconds of each layer on one batch, one thread, next to its share of the FLOPs."""
    import numpy as np

    process.configure_threads(1)
    import tensorflow as tf

    model = TASK.build_model({**TASK.start, **SEED_POOL}, n_classes=2, seed=0)
    activations = tf.constant(np.random.default_rng(0).integers(0, 255, (batch, 28, 28)).astype("uint8"))
    rows = []
    for layer in model.layers:
        inputs = activations
        step = tf.function(lambda t, layer=layer: _forward_backward(layer, t))
        step(tf.cast(inputs, "float32") if inputs.dtype != tf.uint8 else inputs)
        start = time.perf_counter()
        for _ in range(repeats):
            step(tf.cast(inputs, "float32") if inputs.dtype != tf.uint8 else inputs)
        rows.append(
            {"layer": f"{type(layer).__name__} {layer.name}", "ms": 1000 * (time.perf_counter() - start) / repeats}
        )
        activations = layer(inputs, training=False)
    return rows


def _forward_backward(layer, inputs):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        if inputs.dtype != tf.uint8:
            tape.watch(inputs)
        out = layer(inputs, training=True)
        loss = tf.reduce_sum(tf.cast(out, "float32"))
    targets = [inputs] if inputs.dtype != tf.uint8 else []
    return tape.gradient(loss, targets + layer.trainable_variables) if targets or layer.trainable_variables else loss


def run_setting(data: str, setting: dict, env: dict | None = None, prefix: list[str] | None = None) -> dict:
    command = [*(prefix or []), sys.executable, __file__, "--data", data, "--only", json.dumps(setting)]
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pinned_pair(data: str, setting: dict, pin: bool) -> float:
    """Two folds at once (as two workers run them), each pinned to its own core or not: seconds per epoch."""
    command = [sys.executable, __file__, "--data", data, "--only", json.dumps(setting)]
    procs = [
        subprocess.Popen((["taskset", "-c", str(core)] if pin else []) + command, stdout=subprocess.PIPE, text=True)
        for core in (0, 1)
    ]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return statistics.mean(r["seconds_per_epoch"] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("MLFLOW_MNIST_DATA", ""))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--layers", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.layers:
        print(json.dumps(per_layer()))
        return
    if args.only:
        print(json.dumps(one_fold(args.data, **json.loads(args.only))))
        return
    if not args.data:
        sys.exit("error: real MNIST is needed: pass --data or set MLFLOW_MNIST_DATA")
    base = {"threads": 1, "batch": 20, "steps": 32, "pipeline": "numpy", "epochs": args.epochs}
    settings = {
        "baseline (1 thread, batch 20, 32 steps/execution, numpy)": (base, {}, None),
        "2 threads": ({**base, "threads": 2}, {}, None),
        "batch 60": ({**base, "batch": 60}, {}, None),
        "batch 200": ({**base, "batch": 200}, {}, None),
        "1 step/execution": ({**base, "steps": 1}, {}, None),
        "oneDNN off": (base, {"TF_ENABLE_ONEDNN_OPTS": "0"}, None),
        "tf.data input": ({**base, "pipeline": "tf.data"}, {}, None),
    }
    dask_malloc = {process.TRIM_ENV: "65536"}
    settings["Dask worker's malloc setting, as the nanny leaves it"] = (
        {**base, "restore_malloc": False},
        dask_malloc,
        None,
    )
    settings["Dask worker's malloc setting, thresholds raised again"] = (base, dask_malloc, None)
    for name, library in ALLOCATORS.items():
        if glob.glob(library):
            settings[name] = (base, {"LD_PRELOAD": library}, None)
    measured: dict[str, list[dict]] = {name: [] for name in settings}
    pairs: dict[str, list[float]] = {"two workers, free": [], "two workers, pinned": []}
    for repeat in range(args.repeats):
        for name, (setting, env, prefix) in settings.items():
            print(f"repeat {repeat + 1}: {name}", file=sys.stderr, flush=True)
            measured[name].append(run_setting(args.data, setting, env, prefix))
        pairs["two workers, free"].append(pinned_pair(args.data, base, pin=False))
        pairs["two workers, pinned"].append(pinned_pair(args.data, base, pin=True))
    layers = json.loads(
        subprocess.run([sys.executable, __file__, "--layers"], capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    summary = {
        name: {
            "seconds_per_epoch": statistics.median(r["seconds_per_epoch"] for r in runs),
            "min": min(r["seconds_per_epoch"] for r in runs),
            "max": max(r["seconds_per_epoch"] for r in runs),
            "first_epoch": statistics.median(r["first_epoch"] for r in runs),
            "images": runs[0]["images"],
        }
        for name, runs in measured.items()
    }
    report = {"machine": machine.describe(), "settings": summary, "pairs": pairs, "layers": layers}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile_fold.json").write_text(json.dumps(report, indent=2))
    base_time = summary[next(iter(summary))]["seconds_per_epoch"]
    lines = [
        f"One fold ({summary[next(iter(summary))]['images']:,} images) of the seed's pool_size configuration, "
        f"{args.epochs} epochs, median of "
        f"{args.repeats} interleaved fresh processes, on {machine.line(report['machine'])}:",
        "",
        "| setting | s per epoch | min - max | vs baseline | first epoch s (tracing) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in summary.items():
        lines.append(
            f"| {name} | {row['seconds_per_epoch']:.2f} | {row['min']:.2f} - {row['max']:.2f} | "
            f"{row['seconds_per_epoch'] / base_time:.2f}x | {row['first_epoch']:.2f} |"
        )
    for name, values in pairs.items():
        lines.append(
            f"| {name} (each) | {statistics.median(values):.2f} | {min(values):.2f} - {max(values):.2f} | "
            f"{statistics.median(values) / base_time:.2f}x | |"
        )
    lines += ["", "| layer | forward + backward ms, batch 200, 1 thread |", "| --- | ---: |"]
    lines += [f"| {row['layer']} | {row['ms']:.2f} |" for row in layers]
    (args.out / "profile_fold.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
