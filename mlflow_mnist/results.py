"""What a worker returns for one fold, and scikit-learn's ``cv_results_`` table built from those records.

The ranking rule lives here alone, so the search and the analysis name the same winner.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlflow_mnist.params import format_value, json_value
from mlflow_mnist.planning import FoldRecord, Plan


@dataclass
class FoldResult:
    """One fold's outcome (scikit-learn's ``_fit_and_score`` record, plus curves, model and true times)."""

    key: str
    step: str
    candidate_index: int
    fold: int
    accuracy: float
    loss: float
    fit_seconds: float
    epochs_run: int
    status: str  # "ok", "diverged" or "failed"
    history: dict[str, list[float]] = field(default_factory=dict)
    error: str = ""
    model_files: dict[str, bytes] | None = None
    started_ms: int | None = None  # the worker's clock: the fold run shows its true training time
    ended_ms: int | None = None
    chance: float = 0.5  # the held-out fold's majority-class rate: what guessing scores
    worker: str = ""  # host:pid of the process that trained it (a warm pool serves many folds)
    first_epoch: int = 0  # epochs its model had trained before (a continued fold): its curves start after them


#: A healthy-looking fold that scores within this many accuracy points of guessing has collapsed.
COLLAPSE_MARGIN = 0.05
#: Candidate statuses; every one but "ok" ranks after every "ok" candidate, in search and analysis alike.
STATUSES = ("ok", "unstable", "incomplete", "diverged", "failed")


def collapsed(accuracy: float, chance: float) -> bool:
    """A fold whose held-out accuracy is within :data:`COLLAPSE_MARGIN` of the majority-class rate."""
    return accuracy == accuracy and accuracy <= chance + COLLAPSE_MARGIN


def candidate_status(fold_statuses: list[str], n_collapsed: int, n_expected: int) -> str:
    """failed > diverged > incomplete (folds missing) > unstable (a fold collapsed to chance) > ok."""
    if "failed" in fold_statuses:
        return "failed"
    if "diverged" in fold_statuses:
        return "diverged"
    if len(fold_statuses) < n_expected:
        return "incomplete"
    return "unstable" if n_collapsed else "ok"


def cv_results(plan: Plan, results: Mapping[str, FoldResult | FoldRecord]) -> list[dict[str, Any]]:
    """One row per candidate, scikit-learn style: params, split<k>_test_score, mean/std/min, rank, status."""
    rows = []
    for candidate in plan.candidates:
        folds = [results[key] for key in candidate.fold_keys]
        scores = np.array([f.accuracy for f in folds], dtype=float)
        statuses = [f.status for f in folds]
        n_collapsed = sum(f.status == "ok" and collapsed(f.accuracy, f.chance) for f in folds)
        row: dict[str, Any] = {
            "candidate": candidate.label,
            "params": {key: json_value(value) for key, value in candidate.varied.items()},
            "role": candidate.role,
        }
        row.update({f"param_{key}": format_value(value) for key, value in candidate.varied.items()})
        row.update({f"split{i}_test_score": score for i, score in enumerate(scores)})
        row.update(
            mean_test_score=float(np.mean(scores)),
            std_test_score=float(np.std(scores)),
            min_test_score=float(np.min(scores)),
            mean_fit_time=float(np.mean([f.fit_seconds for f in folds])),
            status=candidate_status(statuses, n_collapsed, len(candidate.fold_keys)),
            collapsed_folds=n_collapsed,
            config_hash=candidate.config_hash,
        )
        rows.append(row)
    for rank, index in enumerate(sorted(range(len(rows)), key=lambda i: rank_key(rows[i], i)), start=1):
        rows[index]["rank_test_score"] = rank
    return rows


def rank_key(row: Mapping[str, Any], index: int) -> tuple:
    """Tie-break: "ok" before any other status, then higher mean, then lower std, then grid order."""
    mean = row["mean_test_score"]
    return (row["status"] != "ok", -mean if math.isfinite(mean) else math.inf, row["std_test_score"], index)


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The best of ``rows`` by :func:`rank_key`, earlier rows first on exact ties: rows of one group (ranked in
    grid order) or the best rows of several groups in the order they were evaluated."""
    return min(enumerate(rows), key=lambda pair: rank_key(pair[1], pair[0]))[1]
