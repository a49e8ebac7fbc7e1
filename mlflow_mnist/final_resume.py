"""What a killed ``final`` leaves behind: its finished seeds, which the next ``final`` takes instead of training.

A seed run is keyed (:func:`mlflow_mnist.planning.final_seed_key`) by everything that shapes its result, and keeps
its test-set probabilities beside its model, so a later final can rebuild the median and the seeds' ensemble
from the store alone. Only seeds of a final that never finished (killed, or failed) are taken: a finished final
keeps its seeds, and a new final over the same settings is a deliberate second look at the test set. A taken seed
run moves under the new final, so the final that is promoted holds every seed it summarises (the gate checks it).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mlflow_mnist import tracking
from mlflow_mnist.schema import (
    FINAL_SEED_KEY,
    FINAL_SEED_LEVEL,
    FIT_SECONDS,
    LEVEL,
    PARENT,
    PROBABILITIES_SHA256,
    SEED_ACCURACY,
    SEED_ERRORS,
    SEED_LOSS,
    STATUS,
)
from mlflow_mnist.seal import RunSeal, trusted
from mlflow_mnist.worker import FinalResult

PROBABILITIES = "test_probabilities.npy"
UNFINISHED = ("KILLED", "FAILED")


@dataclass(frozen=True)
class FinishedSeed:
    """A seed that finished in a final that did not: its run, its model and what it measured."""

    run_id: str
    model_id: str | None
    final_id: str  # the unfinished final it was trained in
    result: FinalResult


def probabilities_bytes(probabilities: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(probabilities, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def finished_seeds(
    client,
    experiment_id: str,
    wanted: Mapping[str, tuple[int, int]],
    y_test: np.ndarray,
    *,
    seal: RunSeal | None = None,
) -> dict[str, FinishedSeed]:
    """The finished seeds of unfinished finals whose key is in ``wanted`` (key -> (seed, configuration index)).

    A seed is taken only whole: FINISHED (a run is marked so after its model and metrics), with its model, and
    with probabilities that make exactly the errors it logged on a test set of ``len(y_test)`` images; with a
    ``seal``, only if it sealed the run (a seed run anyone else wrote is trained again)."""
    if not wanted:
        return {}
    runs = tracking.search_all(
        client, [experiment_id], f"tags.`{LEVEL}` = '{FINAL_SEED_LEVEL}' and attributes.status = 'FINISHED'"
    )
    found: dict[str, FinishedSeed] = {}
    final_status: dict[str, str] = {}  # a killed final's seeds share it: ask the store once
    for run in sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True):  # the newest of a key first
        key, parent = run.data.tags.get(FINAL_SEED_KEY, ""), run.data.tags.get(PARENT, "")
        if key not in wanted or key in found or not parent or not trusted(run, seal):
            continue
        if parent not in final_status:
            final = client.get_run(parent)
            # A sealed final finished (only a finished run is sealed), whatever its status says now: anyone can
            # mark it KILLED through the API, and its seeds are not a killed final's to take.
            finished = seal is not None and seal.verifies(final)
            final_status[parent] = "FINISHED" if finished else final.info.status
        if final_status[parent] not in UNFINISHED:
            continue
        seed = _read_seed(client, run, parent, *wanted[key], y_test)
        if seed is not None:
            found[key] = seed
    return found


def _read_seed(client, run, final_id: str, seed: int, config_index: int, y_test: np.ndarray) -> FinishedSeed | None:
    metrics, run_id, status = run.data.metrics, run.info.run_id, run.data.tags.get(STATUS, "ok")
    model_id = tracking.run_model_id(run)  # as the seed recorded it: others can add models to its outputs
    if SEED_ACCURACY not in metrics or (model_id is None and status == "ok"):
        return None
    content = tracking.run_artifact_bytes(run_id, PROBABILITIES)
    if content is None:
        return None
    recorded = run.data.params.get(PROBABILITIES_SHA256)  # written once, with the file (older seeds have none)
    if recorded is not None and recorded != hashlib.sha256(content).hexdigest():
        return None  # not the probabilities it logged: train it again
    probabilities = np.load(io.BytesIO(content), allow_pickle=False)
    if probabilities.ndim != 2 or len(probabilities) != len(y_test):
        return None  # not this test set's: train it again
    predictions = probabilities.argmax(axis=1)
    errors = int(np.sum(predictions != y_test))
    if errors != int(metrics.get(SEED_ERRORS, -1)):
        return None  # not what it measured: train it again
    result = FinalResult(
        seed,
        metrics[SEED_ACCURACY],
        metrics.get(SEED_LOSS, float("nan")),
        metrics.get(FIT_SECONDS, float("nan")),
        status,
        errors,
        predictions=predictions,
        probabilities=probabilities,
        model_files=tracking.run_model_files(client, run),
        config_index=config_index,
    )
    return FinishedSeed(run_id, model_id, final_id, result)
