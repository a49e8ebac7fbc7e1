"""What a worker returns for one fold, and scikit-learn's ``cv_results_`` table built from those records.

The ranking rule lives here alone, so the search and the analysis name the same winner.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlflow_mnist.params import format_value, json_value
from mlflow_mnist.planning import FoldRecord, Plan
from mlflow_mnist.schema import REFERENCE


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


#: Candidate statuses; every one but "ok" ranks after every "ok" candidate, in search and analysis alike.
STATUSES = ("ok", "unstable", "incomplete", "diverged", "failed")
#: A fold is *near chance* when it keeps at most this share of the way from guessing (the held-out fold's
#: majority-class rate) to a perfect score: up to 0.63 on two classes (chance 0.51), 0.33 on ten (chance 0.11).
NEAR_CHANCE = 1 / 4
#: ... and *far below its candidate* when the candidate's best other fold is at least this share of that way
#: higher. A candidate slow on every fold (a 1-epoch sample stage at 0.55 on two classes) is not collapsed.
FAR_BELOW = 1 / 2


@dataclass(frozen=True)
class Health:
    """One candidate's status and, per fold given, whether that fold collapsed."""

    status: str
    collapsed: tuple[bool, ...]

    @property
    def n_collapsed(self) -> int:
        return sum(self.collapsed)


def skill(accuracy: float, chance: float) -> float:
    """Share of the way from guessing (``chance``, the majority-class rate) to a perfect score: 0 at chance, 1 at
    100%. It puts two and ten classes on one scale; the majority rate is at least 1/classes, so the number of
    classes is not needed."""
    if not (math.isfinite(accuracy) and math.isfinite(chance)) or chance >= 1:
        return math.nan
    return (accuracy - chance) / (1 - chance)


def near_chance(accuracy: float, chance: float) -> bool:
    """Whether ``accuracy`` keeps at most :data:`NEAR_CHANCE` of the way from guessing (``chance``) to perfect: a
    model that learned (next to) nothing. Unknown (NaN) is not near chance."""
    kept = skill(accuracy, chance)
    return kept == kept and kept <= NEAR_CHANCE


def collapsed_folds(accuracies: Sequence[float], chances: Sequence[float]) -> tuple[bool, ...]:
    """Which of one candidate's trained folds collapsed: near chance (:data:`NEAR_CHANCE`) *and* far below the
    candidate's best other fold (:data:`FAR_BELOW`). Give the folds that trained (status "ok") only."""
    skills = [skill(a, c) for a, c in zip(accuracies, chances, strict=True)]
    flags = []
    for index, own in enumerate(skills):
        others = [s for i, s in enumerate(skills) if i != index and s == s]
        flags.append(bool(others) and own == own and own <= NEAR_CHANCE and max(others) - own >= FAR_BELOW)
    return tuple(flags)


def candidate_status(fold_statuses: Sequence[str], n_collapsed: int, n_expected: int) -> str:
    """failed > diverged > incomplete (folds missing) > unstable (a fold collapsed) > ok."""
    if "failed" in fold_statuses:
        return "failed"
    if "diverged" in fold_statuses:
        return "diverged"
    if len(fold_statuses) < n_expected:
        return "incomplete"
    return "unstable" if n_collapsed else "ok"


def candidate_health(
    fold_statuses: Sequence[str], accuracies: Sequence[float], chances: Sequence[float], *, n_expected: int
) -> Health:
    """The one health rule of the search and the analysis: a candidate's status from its folds' statuses,
    accuracies and chance levels (parallel sequences), ``n_expected`` folds planned. Only folds with status "ok"
    can collapse, judged against the candidate's other "ok" folds; the others are flagged False."""
    trained = [i for i, status in enumerate(fold_statuses) if status == "ok"]
    flags = collapsed_folds([accuracies[i] for i in trained], [chances[i] for i in trained])
    per_fold = [False] * len(fold_statuses)
    for i, flag in zip(trained, flags, strict=True):
        per_fold[i] = flag
    return Health(candidate_status(fold_statuses, sum(flags), n_expected), tuple(per_fold))


def cv_results(plan: Plan, results: Mapping[str, FoldResult | FoldRecord]) -> list[dict[str, Any]]:
    """One row per candidate, scikit-learn style: params, split<k>_test_score, mean/std/min, rank, status."""
    rows = []
    for candidate in plan.candidates:
        folds = [results[key] for key in candidate.fold_keys]
        scores = np.array([f.accuracy for f in folds], dtype=float)
        statuses = [f.status for f in folds]
        health = candidate_health(statuses, scores, [f.chance for f in folds], n_expected=len(candidate.fold_keys))
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
            chance_score=float(np.mean([f.chance for f in folds])),  # what guessing the majority class scores
            mean_fit_time=float(np.mean([f.fit_seconds for f in folds])),
            status=health.status,
            collapsed_folds=health.n_collapsed,
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
    grid order) or the best rows of several groups in the order they were evaluated.

    A step's reference (its carried-in configuration, retrained) is never chosen: it is what the grid is
    compared with, and its value is a grid point's anyway. The analysis applies the same rule."""
    eligible = [(i, row) for i, row in enumerate(rows) if row.get("role") != REFERENCE] or list(enumerate(rows))
    return min(eligible, key=lambda pair: rank_key(pair[1], pair[0]))[1]
