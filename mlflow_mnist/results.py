"""What a worker returns for one fold, and scikit-learn's ``cv_results_`` table built from those records.

The ranking rule lives here alone, so the search and the analysis name the same winner.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlflow_mnist.planning import FoldRecord, Plan, canonical, format_value


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


def cv_results(plan: Plan, results: Mapping[str, FoldResult | FoldRecord]) -> list[dict[str, Any]]:
    """One row per candidate, scikit-learn style: params, split<k>_test_score, mean/std/min, rank, status."""
    rows = []
    for candidate in plan.candidates:
        folds = [results[key] for key in candidate.fold_keys]
        scores = np.array([f.accuracy for f in folds], dtype=float)
        statuses = {f.status for f in folds}
        row: dict[str, Any] = {"candidate": candidate.label, "params": json.loads(canonical(candidate.varied))}
        row.update({f"param_{key}": format_value(value) for key, value in candidate.varied.items()})
        row.update({f"split{i}_test_score": score for i, score in enumerate(scores)})
        row.update(
            mean_test_score=float(np.mean(scores)),
            std_test_score=float(np.std(scores)),
            min_test_score=float(np.min(scores)),
            mean_fit_time=float(np.mean([f.fit_seconds for f in folds])),
            status="failed" if "failed" in statuses else "diverged" if "diverged" in statuses else "ok",
            config_hash=candidate.config_hash,
        )
        rows.append(row)
    for rank, index in enumerate(sorted(range(len(rows)), key=lambda i: rank_key(rows[i], i)), start=1):
        rows[index]["rank_test_score"] = rank
    return rows


def rank_key(row: Mapping[str, Any], index: int) -> tuple:
    """Tie-break: usable before diverged/failed, then higher mean, then lower std, then grid order."""
    mean = row["mean_test_score"]
    return (row["status"] != "ok", -mean if math.isfinite(mean) else math.inf, row["std_test_score"], index)


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return min(rows, key=lambda row: row["rank_test_score"])
