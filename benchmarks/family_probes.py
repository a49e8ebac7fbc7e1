"""Would a different model family, at about the same cost, make fewer errors? 3-fold CV on the training images only
(the test set is never read), of one configuration (a champion's pick) and variants of it:

    python benchmarks/family_probes.py --config benchmarks/results/champion-xeon-auto.json \
        --variants plain,tta,shear,elastic,deeper,long --split 1 --data ../shared/datasets/mnist

- plain: the configuration as the task builds it;
- tta: the same fitted models, predicting the mean over 5 and 9 one-pixel shifts of each image (test-time
  augmentation; no new training);
- shear: a Keras RandomShear(x=0.2) after the configuration's augmentation (slant);
- elastic: a Keras RandomElasticTransform(scale=1.0) there instead;
- deeper: two 3x3 conv blocks of 32 and 64 filters with batch normalisation, the same augmentation, optimizer
  and epochs (a VGG-like family);
- long: 30 epochs and a cosine schedule instead of the configuration's.

Each variant trains each fold with the same seed; the errors are counted on the held-out fold. Prints one JSON line
per fold and variant, writes them to --out (a .json list) and draws them beside it (.png; --plot-only redraws it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("plain", "tta", "shear", "elastic", "deeper", "long")


def shifted(images, dy: int, dx: int):
    import numpy as np

    out = np.zeros_like(images)
    h, w = images.shape[1:3]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[
        :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def with_layer(model, layer, learn_rate: float):
    """The task's model with ``layer`` after its last random (training-only) layer, compiled as it was."""
    import keras

    layers = list(model.layers)
    at = max(k for k, each in enumerate(layers) if type(each).__name__.startswith("Random")) + 1
    layers.insert(at, layer)
    rebuilt = keras.Sequential([keras.Input(model.input_shape[1:], dtype="uint8"), *layers])
    rebuilt.compile(optimizer=keras.optimizers.Adam(learn_rate), loss="categorical_crossentropy", metrics=["accuracy"])
    return rebuilt


def deeper(config: dict, seed: int, dtype: str):
    """Two conv blocks (32, 32 | 64, 64; 3x3, batch norm), a 128-unit dense layer: the same inputs and augmentation."""
    import keras
    from keras import layers

    def block(filters: int) -> list:
        return [
            layers.Conv2D(filters, 3, padding="same", dtype=dtype),
            layers.BatchNormalization(dtype=dtype),
            layers.Activation("relu", dtype=dtype),
        ]

    shift, turn, zoom = config["augment_shift"], config["augment_rotation"] / 360, config["augment_zoom"]
    model = keras.Sequential(
        [
            keras.Input((28, 28), dtype="uint8"),
            layers.Rescaling(1 / 255, dtype=dtype),
            layers.Reshape((28, 28, 1), dtype=dtype),
            layers.RandomTranslation(shift, shift, fill_mode="constant", seed=seed + 1000, dtype=dtype),
            layers.RandomRotation(turn, fill_mode="constant", seed=seed + 1001, dtype=dtype),
            layers.RandomZoom(zoom, fill_mode="constant", seed=seed + 1002, dtype=dtype),
            *block(32),
            *block(32),
            layers.MaxPooling2D(2, dtype=dtype),
            layers.Dropout(0.25, seed=seed, dtype=dtype),
            *block(64),
            *block(64),
            layers.MaxPooling2D(2, dtype=dtype),
            layers.Dropout(0.25, seed=seed + 1, dtype=dtype),
            layers.Flatten(dtype=dtype),
            layers.Dense(128, activation="relu", dtype=dtype),
            layers.Dropout(0.5, seed=seed + 2, dtype=dtype),
            layers.Dense(2, activation="softmax", dtype="float32"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(config["learn_rate"]), loss="categorical_crossentropy")
    return model


def totals(rows: list[dict]) -> dict[str, int]:
    """Errors per variant over its folds, in the order the variants ran (a variant that lost a fold is left out)."""
    folds = {row["fold"] for row in rows}
    found: dict[str, list[int]] = {}
    for row in rows:
        found.setdefault(row["variant"], []).append(row["errors"])
    return {name: sum(errors) for name, errors in found.items() if len(errors) == len(folds)}


def plot(rows: list[dict], path: Path) -> None:
    """Errors per variant with a Poisson count's +/-2 sd, the plain model's total as a line: within the band is
    within noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counted = totals(rows)
    n = sum(row["n"] for row in rows if row["variant"] == next(iter(counted)))
    shown = {name: errors for name, errors in counted.items() if errors < n / 4}  # a collapsed variant: named below
    names, errors = list(shown), list(shown.values())
    figure, axes = plt.subplots(figsize=(8, 3.6))
    axes.barh(names, errors, xerr=[2 * e**0.5 for e in errors], color="#4c72b0", capsize=3)
    if "plain" in shown:
        axes.axvline(shown["plain"], color="grey", linestyle="--", linewidth=1, label="the pick (plain)")
        axes.axvline(shown["plain"] * 0.55, color="#c44e52", linestyle=":", linewidth=1.5, label="the goal: 45% fewer")
        axes.legend(loc="upper right", fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel(f"CV errors of {n:,} training images (3 folds; bars: +/-2 sd of a Poisson count)")
    collapsed = sorted(set(counted) - set(shown))
    title = "Other families at about the champion's cost, on CV"
    axes.set_title(title + (f" ({', '.join(collapsed)}: one class, not shown)" if collapsed else ""), fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="a champion report (.json with 'config')")
    parser.add_argument("--variants", default="plain,tta", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--split", type=int, default=1, help="StratifiedKFold's random_state")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "mnist"))
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "family-probes.json")
    parser.add_argument("--plot-only", action="store_true", help="redraw --out's figure (.png) from its .json")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
        return
    variants = args.variants.split(",")
    if unknown := sorted(set(variants) - set(VARIANTS)):
        print(f"error: unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}", file=sys.stderr)
        sys.exit(2)
    sys.path.insert(0, str(ROOT))
    import keras
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    from mlflow_mnist.tasks import get_task

    task = get_task("mnist")
    data = task.load(args.data)
    x, y = data.x_train, data.y_train
    config = task.validate(json.loads(args.config.read_text())["config"])
    folds = list(StratifiedKFold(3, shuffle=True, random_state=args.split).split(x, y))
    rows = []
    for fold, (train, held) in enumerate(folds):
        for variant in variants:
            if variant == "tta" and "plain" in variants:
                continue  # measured on plain's models, below
            params = {**config, "epochs": 30, "lr_schedule": "cosine"} if variant == "long" else config
            keras.utils.set_random_seed(fold)
            model = task.build_model(params, n_classes=2, seed=fold, precision=args.precision, n_train=len(train))
            if variant == "shear":
                shear = keras.layers.RandomShear(
                    x_factor=0.2, fill_mode="constant", seed=fold + 2000, dtype=args.precision
                )
                model = with_layer(model, shear, config["learn_rate"])
            elif variant == "elastic":
                elastic = keras.layers.RandomElasticTransform(
                    factor=(1.0, 1.0), scale=1.0, value_range=(0, 1), fill_mode="constant", seed=fold + 2000,
                    dtype=args.precision,
                )  # fmt: skip
                model = with_layer(model, elastic, config["learn_rate"])
            elif variant == "deeper":
                model = deeper(config, fold, args.precision)
            start = time.perf_counter()
            model.fit(x[train], keras.utils.to_categorical(y[train], 2), epochs=params["epochs"],
                      batch_size=params["batch_size"], verbose=0)  # fmt: skip
            seconds = time.perf_counter() - start
            found = {variant: [(0, 0)]}
            if variant == "plain" and "tta" in variants or variant == "tta":
                found["tta5"] = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
                found["tta9"] = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
            for name, views in found.items():
                probabilities = np.mean([model.predict(shifted(x[held], *v), verbose=0) for v in views], axis=0)
                errors = int(np.sum(probabilities.argmax(1) != y[held]))
                row = {"split": args.split, "fold": fold, "variant": name, "errors": errors, "n": len(held)}
                row["fit_seconds"] = round(seconds, 1)
                print(json.dumps(row), flush=True)
                rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
