"""The seeds of a final as one model: the average of their predicted class probabilities.

A final trains the same configuration with several seeds; averaging their probabilities removes much of what
any one seed got wrong by chance. The ensemble is an MLflow pyfunc model (its code: :mod:`ensemble_model`,
logged as "models from code") whose artifacts are the seeds' own Keras models; it takes the same raw inputs and
returns probabilities like each of them.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

MODEL_CODE = Path(__file__).with_name("ensemble_model.py")
SEED_PREFIX = "seed_"  # the artifact names ensemble_model.py looks for


@contextlib.contextmanager
def _quiet_info(name: str) -> Iterator[None]:
    """Logger ``name`` at WARNING while inside: MLflow configures its loggers at INFO when it is imported, after
    the CLI quieted them, and its INFO lines are not the user's business; its warnings still show."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(logging.WARNING, level))
    try:
        yield
    finally:
        logger.setLevel(level)


def average(probabilities: list[np.ndarray]) -> np.ndarray:
    """What the ensemble predicts, from its seeds' probabilities on the same examples (NaN counts as 0)."""
    return np.mean([np.nan_to_num(p, nan=0.0) for p in probabilities], axis=0)


def ensemble_files(
    seed_models: Mapping[int, Mapping[str, bytes]],
    *,
    x_example: np.ndarray,
    y_example: np.ndarray,
    requirements: list[str],
) -> dict[str, bytes]:
    """The ensemble's MLflow model folder as bytes, from the seeds' model folders (as workers saved them);
    ``y_example`` is its output on ``x_example`` (the signature's)."""
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {}
        for seed, files in sorted(seed_models.items()):
            folder = Path(tmp, "seeds", f"{SEED_PREFIX}{seed}")
            for relative, content in files.items():
                path = folder / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
            artifacts[f"{SEED_PREFIX}{seed}"] = str(folder)
        out = Path(tmp, "model")
        with _quiet_info("mlflow.pyfunc"):  # "Validating input example against model signature": not ours to say
            mlflow.pyfunc.save_model(
                str(out),
                python_model=str(MODEL_CODE),
                artifacts=artifacts,
                pip_requirements=requirements,
                signature=infer_signature(np.asarray(x_example), np.asarray(y_example)),
                input_example=np.asarray(x_example),
            )
        return {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()}
