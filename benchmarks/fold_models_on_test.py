"""Do a search's own fold models foresee the test accuracy its pick will have? A diagnostic, not a selection rule.

    python benchmarks/fold_models_on_test.py --data ../shared/datasets/mnist --classes 2,7 \
        seed0=/tmp/champion-4h0egvih seed1=/tmp/champion-04af_1me seed2=/tmp/champion-nk70gkmc \
        --out benchmarks/results/fold-models-on-test-epyc

Each argument is ``LABEL=STORE`` (a folder holding ``mlflow.db``, as ``bench_champion.py`` keeps it, or a tracking
URI). Per store, every fold model its joint search logged at ``--min-epochs`` or more (the trials that went
furthest) is tested on the task's test images, beside its held-out accuracy as the search logged it; the fold's
held-out images are recomputed from the fold's own params (split seed, folds, fold, repeat). The held-out
images are also split by their distance to the nearest training image of the fold (raw values, Euclidean): the
farthest quarter against the rest, and the test images' own nearest-training distances for comparison, which asks
whether held-out images that look least like the training images behave like the test images.

Why it exists: a ``make champion`` pick can score as well in 3-fold CV as the good ones and still fail the test
(benchmarks/results/champion-runs-*.md). If its fold models fail the test as well, the final's training is not to
blame and the cross-validation itself does not see what the test sees. Reading the test set many times is fine
here because nothing is chosen by it; never feed these numbers back into a search. Writes ``<out>.md``,
``<out>.json`` and ``<out>.png`` (held-out error against test error per fold model, one colour per store).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]

from bench_asha import store_uri  # noqa: E402
from machine import describe, line  # noqa: E402

FAR_QUANTILE = 0.75  # held-out images at or past this quantile of nearest-training distance are "far"


def nearest_distances(queries: np.ndarray, pool: np.ndarray, *, block: int = 1024) -> np.ndarray:
    """Each query row's Euclidean distance to its nearest row of ``pool`` (float32, in blocks to bound memory)."""
    queries = queries.reshape(len(queries), -1).astype(np.float32)
    pool = pool.reshape(len(pool), -1).astype(np.float32)
    pool_norms = (pool * pool).sum(axis=1)
    out = np.empty(len(queries), np.float32)
    for start in range(0, len(queries), block):
        part = queries[start : start + block]
        squared = (part * part).sum(axis=1)[:, None] + pool_norms[None, :] - 2 * part @ pool.T
        out[start : start + block] = np.sqrt(np.maximum(squared.min(axis=1), 0))
    return out


def tracking_uri(store: str) -> str:
    """A bench_champion store folder as the SQLite URI the benchmarks give it; anything with a scheme as it is."""
    return store if "://" in store else store_uri(Path(store).resolve())


def fold_models(uri: str, min_epochs: int) -> list[dict]:
    """The store's fold runs of joint-search trials at ``min_epochs`` or more that logged a model."""
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from analysis.store import read_runs
    from mlflow_mnist import schema

    client = MlflowClient(uri)
    runs = read_runs(client, None)
    level, parent = runs[f"tags.{schema.LEVEL}"], runs[f"tags.{schema.PARENT}"]
    candidates = runs[level == schema.CANDIDATE_LEVEL].set_index("run_id")
    folds = runs[(level == schema.FOLD_LEVEL) & (runs["status"] == "FINISHED") & parent.isin(candidates.index)]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiments = sorted(runs["experiment_id"].unique())
        models = mlflow.search_logged_models(experiment_ids=experiments, output_format="list")
    finally:
        mlflow.set_tracking_uri(previous)
    by_run = {model.source_run_id: model for model in models}
    found, repeat = [], f"params.{schema.REPEAT_PARAM}"
    for _, fold in folds.iterrows():
        epochs = int(float(fold[f"params.{schema.EPOCHS}"]))
        if epochs < min_epochs or fold["run_id"] not in by_run:
            continue
        trial = candidates.loc[fold[f"tags.{schema.PARENT}"]]
        if pd.isna(trial.get(f"tags.{schema.TRIAL}")):
            continue  # a staged step's candidate: not a trial of a joint search
        found.append(
            {
                "trial": trial[f"tags.{schema.TRIAL}"],
                "epochs": epochs,
                "fold": int(fold[f"params.{schema.FOLD_PARAM}"]),
                "repeat": int(fold[repeat]) if pd.notna(fold.get(repeat)) else 0,
                "n_folds": int(fold[f"params.{schema.N_FOLDS}"]),
                "split_seed": int(fold[f"params.{schema.SPLIT_SEED}"]),
                "heldout_accuracy": float(fold[f"metrics.{schema.HELDOUT_ACCURACY}"]),
                "model_id": by_run[fold["run_id"]].model_id,
            }
        )
    return sorted(found, key=lambda row: (int(row["trial"]), row["epochs"], row["fold"]))


def load_data(task: str, data: str, classes: str):
    """The task's arrays as the searches saw them; an unknown task, a bad source or classes are a ValueError."""
    from mlflow_mnist.tasks import get_task

    return get_task(task).load(data, classes=classes)


def measure(stores: dict[str, str], dataset, *, min_epochs: int) -> dict:
    """Every fold model of ``stores`` (label -> store) at ``min_epochs`` or more, scored on ``dataset``."""
    import mlflow

    from mlflow_mnist.planning import fold_indices
    from mlflow_mnist.redaction import redact

    x_train, y_train, x_test, y_test = dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test
    test_distance = nearest_distances(x_test, x_train)
    report = {
        "machine": describe(),
        "test_distance": {"median": float(np.median(test_distance)), "q75": float(np.quantile(test_distance, 0.75))},
        "stores": {},
    }
    previous = mlflow.get_tracking_uri()
    try:
        for label, store in stores.items():
            uri = tracking_uri(store)
            mlflow.set_tracking_uri(uri)  # models:/ URIs resolve in the process-wide store
            rows, distances = [], {}
            for fold in fold_models(uri, min_epochs):
                split = (fold["split_seed"], fold["n_folds"], fold["fold"], fold["repeat"])
                train, held_out = fold_indices(
                    y_train,
                    n_folds=fold["n_folds"],
                    split_seed=fold["split_seed"],
                    fold=fold["fold"],
                    repeat=fold["repeat"],
                )
                if split not in distances:
                    distances[split] = nearest_distances(x_train[held_out], x_train[train])
                far = distances[split] >= np.quantile(distances[split], FAR_QUANTILE)
                model = mlflow.keras.load_model(f"models:/{fold['model_id']}")
                wrong = model.predict(x_train[held_out], verbose=0, batch_size=512).argmax(axis=1) != y_train[held_out]
                test_errors = int((model.predict(x_test, verbose=0, batch_size=512).argmax(axis=1) != y_test).sum())
                logged = fold.pop("heldout_accuracy")
                rows.append(
                    {
                        **fold,
                        "heldout_error": float(wrong.mean()),
                        "logged_heldout_error": 1 - logged,
                        "near_error": float(wrong[~far].mean()),
                        "far_error": float(wrong[far].mean()),
                        "test_errors": test_errors,
                        "test_error": test_errors / len(y_test),
                    }
                )
            held = [float(np.median(d)) for d in distances.values()]
            # a tracking URI may carry a password (http://user:pw@host): the report keeps it masked
            report["stores"][label] = {"store": redact(store), "heldout_distance_median": held, "folds": rows}
    finally:
        mlflow.set_tracking_uri(previous)
    report["test_size"] = int(len(y_test))
    return report


def write(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    lines = [
        f"The search's fold models on the test set ({report['test_size']} images), on "
        f"{line(report['machine'])}. Held-out error as recomputed here (the search logged the same accuracy); "
        f"near / far: the held-out images below / at or past the {FAR_QUANTILE:.0%} quantile of their distance "
        "to the nearest training image of the fold. Test images' nearest-training distance: median "
        f"{report['test_distance']['median']:.2f}, 75% quantile {report['test_distance']['q75']:.2f}.",
        "",
        "| store | trial | epochs | fold | held-out error | near 3/4 | far 1/4 | test errors | test error |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, store in report["stores"].items():
        for row in store["folds"]:
            lines.append(
                f"| {label} | {row['trial']} | {row['epochs']} | {row['fold'] + 1} | {row['heldout_error']:.3%} | "
                f"{row['near_error']:.3%} | {row['far_error']:.3%} | {row['test_errors']} | {row['test_error']:.3%} |"
            )
    medians = ", ".join(
        f"{label} {', '.join(f'{m:.2f}' for m in store['heldout_distance_median'])}"
        for label, store in report["stores"].items()
    )
    lines += ["", f"Held-out images' median nearest-training distance per fold: {medians}.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))

    figure, axis = plt.subplots(figsize=(6.5, 5))
    top = 0.0
    for colour, (label, store) in enumerate(report["stores"].items()):
        furthest = max((row["epochs"] for row in store["folds"]), default=0)
        for row in store["folds"]:
            at_top = row["epochs"] == furthest
            axis.scatter(
                100 * row["heldout_error"],
                100 * row["test_error"],
                color=f"C{colour}",
                marker="o" if at_top else "x",
                s=40 if at_top else 25,
            )
            axis.annotate(
                f"{row['trial']}",
                (100 * row["heldout_error"], 100 * row["test_error"]),
                fontsize=7,
                xytext=(3, 2),
                textcoords="offset points",
            )
            top = max(top, 100 * row["heldout_error"], 100 * row["test_error"])
        axis.scatter([], [], color=f"C{colour}", marker="s", label=label)
    axis.scatter([], [], color="grey", marker="o", label="at the search's top rung")
    axis.scatter([], [], color="grey", marker="x", label="a lower rung")
    low = 0.8 * min(
        100 * row[key]
        for store in report["stores"].values()
        for row in store["folds"]
        for key in ("heldout_error", "test_error")
        if row[key] > 0
    )
    axis.plot([low, top * 1.2], [low, top * 1.2], color="grey", linewidth=0.8, linestyle="--", label="test = held-out")
    axis.set_xscale("log")  # most fold models sit within 0.2-1%: a log scale keeps them apart
    axis.set_yscale("log")
    for scale in (axis.xaxis, axis.yaxis):
        scale.set_major_locator(matplotlib.ticker.FixedLocator([0.1, 0.2, 0.3, 0.5, 1, 2, 3, 5, 10, 20, 50]))
        scale.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        scale.set_minor_locator(matplotlib.ticker.NullLocator())
    axis.set_xlabel("held-out error of the fold model, % (what the search ranks by)")
    axis.set_ylabel(f"test error of the fold model, % ({report['test_size']} images)")
    axis.set_title("Do the search's fold models foresee the test? (label: trial)", fontsize=10)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out.with_suffix(".png"), dpi=120)


def parse_stores(items: list[str]) -> dict[str, str]:
    """``LABEL=STORE`` arguments as {label: store}; a malformed one, a repeated label or a store folder without
    ``mlflow.db`` is a ValueError naming it (nothing is opened: MLflow would create an empty store there)."""
    stores: dict[str, str] = {}
    for item in items:
        label, sep, store = item.partition("=")
        if not sep or not label or not store:
            raise ValueError(f"{item!r} is not LABEL=STORE: e.g. seed0=/tmp/champion-4h0egvih")
        if label in stores:
            raise ValueError(f"label {label!r} given twice: give each store its own label")
        if "://" not in store and not (Path(store) / "mlflow.db").is_file():
            raise ValueError(f"{store}: no mlflow.db there; give a folder bench_champion.py kept, or a tracking URI")
        stores[label] = store
    return stores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stores", nargs="+", help="LABEL=STORE: a bench_champion store folder or a tracking URI")
    parser.add_argument("--data", required=True, help="the data source the searches used")
    parser.add_argument("--classes", default="", help="the classes the searches kept, e.g. 2,7 [default: all]")
    parser.add_argument("--task", default="mnist")
    parser.add_argument("--min-epochs", type=int, default=6, help="fold models of this many epochs or more")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fold-models-on-test")
    args = parser.parse_args(argv)
    from mlflow_mnist import redaction

    redaction.install()  # whatever a store's client prints (its URI in an error) goes out masked
    try:
        stores = parse_stores(args.stores)
        dataset = load_data(args.task, args.data, args.classes)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    report = measure(stores, dataset, min_epochs=args.min_epochs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    write(report, args.out)
    print(f"wrote {args.out}.md, .png and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
