"""Pure planning: a snapshot of the tracking store and a list of candidates in, the fold tasks still to train out.

A fold is identified by a hash of everything that shapes its score (hyperparameters, fold, split seed, fold
count, data digest, precision), so anything already finished anywhere in the experiment (an interrupted
attempt, the best candidate of the previous step) is reused rather than trained again. Nothing here touches
MLflow, Keras or processes: these functions are unit-tested on plain data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlflow_mnist.model import SEED_START, HyperparameterError, Params, validate_params, without_neutral
from mlflow_mnist.stages import STEP_ORDER

FINAL = "final"  # pseudo-step after every real step: what ``final`` carries forward
#: Version of the training recipe (worker.py: divergence rules, validation, scaling, what a fold returns).
#: Part of every fold key: bump it whenever training semantics change, so stale folds are never reused.
RECIPE_VERSION = 1


@dataclass(frozen=True)
class SearchSettings:
    """What, besides hyperparameters, decides a fold's result."""

    n_folds: int = 3
    split_seed: int = 0
    epochs: int = 6
    data_digest: str = ""
    n_classes: int = 2
    precision: str = "float32"
    cv_repeats: int = 1

    @property
    def n_splits(self) -> int:
        return self.n_folds * self.cv_repeats

    def key(self) -> str:
        """Everything besides hyperparameters that shapes a step's scores: step bests only carry forward (and
        are only analysed together) between runs with the same key."""
        identity = [
            self.n_folds,
            self.cv_repeats,
            self.split_seed,
            self.epochs,
            self.precision,
            RECIPE_VERSION,
            self.data_digest,
        ]
        return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class StepBest:
    """The winning grid point of a completed step, as the store remembers it."""

    step: str
    params: Params
    mean_accuracy: float
    run_id: str = ""


@dataclass(frozen=True)
class FoldRecord:
    """A finished fold run found in the store."""

    key: str
    accuracy: float
    fit_seconds: float
    status: str
    run_id: str = ""
    parent_run_id: str = ""
    parent_finished: bool = True
    chance: float = 0.5  # the held-out fold's majority-class rate: what guessing scores


@dataclass
class StoreState:
    """What planning needs to know about the tracking store, and nothing else."""

    step_bests: dict[str, StepBest] = field(default_factory=dict)
    folds: dict[str, FoldRecord] = field(default_factory=dict)


@dataclass(frozen=True)
class Group:
    """What one call of ``evaluate`` is, for the run tree: a staged step, a halving rung, a batch of trials.

    ``step`` is the name results are remembered by (carry-forward, analysis); ``varied`` names the
    parameters that differ between candidates (their run names); ``fixed`` and ``grid`` are logged on the
    group's run. ``own_run=False`` hangs the candidates directly under the search run (Optuna's trials).
    """

    name: str
    step: str
    varied: tuple[str, ...]
    fixed: Params = field(default_factory=dict)
    grid: Mapping[str, Sequence[Any]] | None = None
    own_run: bool = True
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FoldTask:
    """One fold of one candidate: everything a worker needs besides the pixels."""

    step: str
    candidate_index: int
    label: str
    params: Params
    fold: int
    n_folds: int
    split_seed: int
    n_classes: int
    key: str
    precision: str = "float32"
    repeat: int = 0  # which repetition of the k-fold split (``--cv-repeats``)

    @property
    def split(self) -> int:
        """Position among all ``repeats x folds`` splits, scikit-learn's ``split<i>`` numbering."""
        return self.repeat * self.n_folds + self.fold

    @property
    def seed(self) -> int:
        return int(self.key[:8], 16) % (2**31 - 1)


@dataclass(frozen=True)
class Candidate:
    index: int
    label: str
    varied: Params
    params: Params
    config_hash: str
    fold_keys: tuple[str, ...]
    tags: Mapping[str, str] = field(default_factory=dict)  # the strategy's own notes (a trial's number)


@dataclass(frozen=True)
class Plan:
    """One evaluate call, planned: its candidates, the folds to train and the folds the store already has."""

    group: Group
    candidates: tuple[Candidate, ...]
    to_train: tuple[FoldTask, ...]
    reused: dict[str, FoldRecord]
    plan_hash: str

    @property
    def fixed(self) -> Params:
        return self.group.fixed

    @property
    def step(self) -> str:
        return self.group.step


def canonical(params: Params) -> str:
    """Stable text for hashing: sorted keys, tuples as lists, floats by repr; extra hyperparameters at their
    neutral values are left out, so they change no key the seed's search made."""
    items = sorted(without_neutral(params).items())
    return json.dumps({key: list(v) if isinstance(v, tuple) else v for key, v in items})


def config_hash(params: Params) -> str:
    return hashlib.sha256(canonical(params).encode()).hexdigest()[:12]


def fold_key(params: Params, fold: int, settings: SearchSettings, repeat: int = 0) -> str:
    """Identity of a fold result: same hyperparameters, split, data and training recipe give the same key anywhere.

    The number of repeats is not part of it: repeat 0 of a 3-repeat campaign is the single-repeat campaign's
    split, so raising ``--cv-repeats`` reuses every fold already trained.
    """
    identity = [canonical(params), fold, settings.n_folds, settings.split_seed, settings.data_digest]
    identity += [repeat, RECIPE_VERSION]
    if settings.precision != "float32":
        identity.append(settings.precision)
    text = json.dumps(identity)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def format_value(value: Any) -> str:
    return f"({value[0]}, {value[1]})" if isinstance(value, tuple) else str(value)


def candidate_label(varied: Params) -> str:
    """Readable run name of a grid point: ``neurons_1=15`` or ``epochs=20,batch_size=40``."""
    return ",".join(f"{key}={format_value(value)}" for key, value in varied.items())


def resolve_fixed_params(step_name: str, step_bests: Mapping[str, StepBest], overrides: Params, epochs: int) -> Params:
    """The values a step holds fixed: seed start < ``--epochs`` < best of each earlier step < overrides.

    Earlier means earlier in the seed's order, and only steps completed in this experiment on the same data
    count. ``step_name`` may be :data:`FINAL`, which sees every step.
    """
    limit = len(STEP_ORDER) if step_name == FINAL else STEP_ORDER[step_name]
    fixed = dict(SEED_START, epochs=epochs)
    for name in sorted((n for n in step_bests if n in STEP_ORDER), key=STEP_ORDER.__getitem__):
        if STEP_ORDER[name] < limit:
            fixed.update(step_bests[name].params)
    fixed.update(overrides)
    return validate_params(fixed)


def plan_candidates(
    group: Group,
    candidates: Sequence[Params],
    settings: SearchSettings,
    done: Mapping[str, FoldRecord],
    labels: Sequence[str] | None = None,
    tags: Sequence[Mapping[str, str]] | None = None,
) -> Plan:
    """Every candidate (a full hyperparameter dict) with its fold keys; tasks only for what ``done`` lacks. Pure.

    Validates every candidate first, so a bad value fails before any run exists.
    """
    planned, to_train, reused = [], [], {}
    for index, raw in enumerate(candidates):
        params = validate_params(raw)
        varied = {key: params[key] for key in group.varied}
        label = labels[index] if labels else candidate_label(varied)
        splits = [(repeat, fold) for repeat in range(settings.cv_repeats) for fold in range(settings.n_folds)]
        keys = tuple(fold_key(params, fold, settings, repeat) for repeat, fold in splits)
        notes = dict(tags[index]) if tags else {}
        planned.append(Candidate(index, label, varied, params, config_hash(params), keys, notes))
        for (repeat, fold), key in zip(splits, keys, strict=True):
            if key in done:
                reused[key] = done[key]
                continue
            to_train.append(
                FoldTask(
                    step=group.step,
                    candidate_index=index,
                    label=label,
                    params=params,
                    fold=fold,
                    n_folds=settings.n_folds,
                    split_seed=settings.split_seed,
                    n_classes=settings.n_classes,
                    key=key,
                    precision=settings.precision,
                    repeat=repeat,
                )
            )
    plan_text = json.dumps(
        [
            group.step,
            canonical(group.fixed),
            [c.config_hash for c in planned],
            settings.key(),
        ]
    )
    plan_hash = hashlib.sha256(plan_text.encode()).hexdigest()[:12]
    return Plan(group, tuple(planned), tuple(to_train), reused, plan_hash)


def check_folds(y: np.ndarray, n_folds: int, digits: tuple[int, ...]) -> None:
    """Stratified k-fold needs at least k images of every class; say so before any run exists."""
    if n_folds < 2:
        raise HyperparameterError(f"folds={n_folds}: cross-validation needs at least 2 folds")
    counts = np.bincount(y, minlength=len(digits))
    smallest = int(counts.argmin())
    if n_folds > counts[smallest]:
        raise HyperparameterError(
            f"folds={n_folds} is more than the {counts[smallest]} training images of digit {digits[smallest]}: "
            f"use fewer folds or more data"
        )


def fold_indices(
    y: np.ndarray, n_folds: int, split_seed: int, fold: int, repeat: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices of one split of scikit-learn's repeated stratified k-fold.

    Repeat 0 is exactly ``StratifiedKFold(shuffle=True, random_state=split_seed)``, and a repeat's splits do not
    depend on how many repeats follow it.
    """
    from sklearn.model_selection import RepeatedStratifiedKFold

    splitter = RepeatedStratifiedKFold(n_splits=n_folds, n_repeats=repeat + 1, random_state=split_seed)
    return list(splitter.split(np.zeros(len(y)), y))[repeat * n_folds + fold]
