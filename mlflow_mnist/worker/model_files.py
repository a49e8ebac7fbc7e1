"""A trained model as an MLflow model folder in bytes, made on the worker so the driver only uploads."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


def model_requirements() -> list[str]:
    """Pinned keras and its TensorFlow backend (mlflow's Keras default names keras alone).

    Read from the installed distributions, not the modules: the driver logging the seeds' ensemble has no other
    use for TensorFlow, whose import costs it ~7 s of CPU (2-core AMD EPYC)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(*names: str) -> str:
        for name in names:
            try:
                return version(name)
            except PackageNotFoundError:
                continue
        import tensorflow as tf  # a build installed under another name: ask the module itself

        return tf.__version__

    return [
        f"keras=={version('keras')}",
        f"tensorflow=={installed('tensorflow', 'tensorflow-cpu')}",
        f"mlflow=={version('mlflow')}",
    ]


def model_files(model, x_example: np.ndarray, *, with_example: bool = True) -> dict[str, bytes]:
    """The MLflow model folder as bytes, made on the worker so the driver only uploads.

    Every model carries its signature; only models meant to be served (the final ones) carry the input and
    serving examples too: a fold's model is evaluated, not served, and two more files are two more uploads per
    fold for a driver logging for many workers (benchmarks/bench_driver.py).
    """
    import mlflow.keras
    from mlflow.models import infer_signature

    # The model called on the examples, not ``model.predict``: predict traces a graph function for each new model
    # (0.11 s of a 1.1 s fold on the shipped sample, 2-core Xeon), while a call on two examples runs eagerly in
    # 0.03 s and gives the same outputs, dtype and shape, hence the same signature.
    signature = infer_signature(x_example, np.asarray(model(x_example, training=False)))
    with tempfile.TemporaryDirectory() as tmp:
        # Pre-created folder: mlflow's Keras flavour writes the input example before making it (mlflow#16183).
        path = Path(tmp, "model")
        path.mkdir()
        mlflow.keras.save_model(
            model,
            str(path),
            signature=signature,
            input_example=x_example if with_example else None,
            pip_requirements=model_requirements(),
        )
        return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}
