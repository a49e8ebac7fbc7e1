"""Pure planning: a snapshot of the tracking store and a list of candidates in, the fold tasks still to train out.

A fold is identified by a hash of everything that shapes its score (hyperparameters, fold, split seed, fold
count, data digest, precision, the task's model identity), so anything already finished anywhere in the
experiment (an interrupted attempt, the best candidate of the previous step) is reused rather than trained
again. Nothing here touches MLflow, Keras or processes: these functions are unit-tested on plain data.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlflow_mnist.params import HyperparameterError, Params, format_value
from mlflow_mnist.schema import GRID, REUSED_RULE, CandidateTags, Rung
from mlflow_mnist.tasks.base import Task

FINAL = "final"  # pseudo-step after every real step: what ``final`` carries forward
#: Version of the training recipe (worker.py: divergence rules, validation, scaling, what a fold returns).
#: Part of every fold key: bump it whenever training semantics change, so stale folds are never reused.
RECIPE_VERSION = 1
#: Version of the continued-training recipe (``fit_resumable``), part of a continued fold's key only: 2 gives each
#: random layer its own stream per epoch, where 1 replayed the last epoch's dropout masks one batch later.
CONTINUED_RECIPE_VERSION = 2


@dataclass(frozen=True)
class SearchSettings:
    """What, besides hyperparameters, decides a fold's result; ``task`` validates and keys hyperparameters."""

    task: Task = field(compare=False)
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
        if self.task.model_key:
            identity.append(self.task.model_key)
        return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:12]

    def canonical(self, params: Params) -> str:
        return canonical(params, self.task.neutral)


@dataclass(frozen=True)
class StepBest:
    """The winning grid point of a completed step, as the store remembers it."""

    step: str
    params: Params
    mean_accuracy: float
    run_id: str = ""
    reference_rule: str = REUSED_RULE  # how the step was compared: resuming it keeps the rule it ran with


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


@dataclass(frozen=True)
class CandidateRecord:
    """A candidate run found in the store (Optuna rebuilds its study from these); ``finished`` False when cut
    short. ``score`` is its mean held-out accuracy when healthy, 0 otherwise; ``chance`` what guessing scored on
    its folds (NaN in stores made before it was logged); ``std`` its held-out accuracies' standard deviation
    (the ranking rule's tie-break)."""

    tags: CandidateTags
    score: float
    status: str
    finished: bool
    chance: float = math.nan
    std: float = math.nan


@dataclass
class StoreState:
    """What planning needs to know about the tracking store, and nothing else."""

    step_bests: dict[str, StepBest] = field(default_factory=dict)
    folds: dict[str, FoldRecord] = field(default_factory=dict)
    candidates: list[CandidateRecord] = field(default_factory=list)


@dataclass(frozen=True)
class CarryForward:
    """What a staged step took from the steps before it, for the people watching it run: each value an earlier
    step chose, with that step's name, and the steps already in the store that come later in the task's order
    (their choices reach only the steps after them, whatever order they ran in)."""

    carried: tuple[tuple[str, Any, str], ...] = ()  # (parameter, value, the step that chose it)
    later: tuple[str, ...] = ()

    def describe(self) -> str:
        """``carried in: learn_rate=0.01 (learn_rate)``, and which later steps' choices it does not see."""
        shown = ", ".join(f"{key}={format_value(value)} ({step})" for key, value, step in self.carried)
        line = f"carried in: {shown}" if shown else "carried in: nothing (the task's start values)"
        if self.later:
            line += f"; not carried from {', '.join(self.later)}: later in the task's order"
        return line


def carry_forward(
    task: Task, step_name: str, step_bests: Mapping[str, StepBest], *, overrides: Params, varied: Sequence[str]
) -> CarryForward:
    """Which values :func:`resolve_fixed_params` took from earlier steps for ``step_name`` (overrides and the
    step's own parameters are not carried), and the finished steps it did not look at. Pure."""
    order = task.step_order
    limit = order[step_name]
    chosen: dict[str, tuple[Any, str]] = {}
    for name in sorted((n for n in step_bests if n in order and order[n] < limit), key=order.__getitem__):
        chosen.update({key: (value, name) for key, value in step_bests[name].params.items()})
    carried = tuple((k, v, name) for k, (v, name) in chosen.items() if k not in overrides and k not in varied)
    later = tuple(sorted((n for n in step_bests if n in order and order[n] > limit), key=order.__getitem__))
    return CarryForward(carried, later)


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
    rung: Rung | None = None
    search_key: str = ""
    reference_rule: str = REUSED_RULE  # a staged step's: FRESH when its reference is retrained in it
    carry: CarryForward | None = None  # a staged step's: what it took from the steps before it (shown, not keyed)

    @property
    def counts(self) -> bool:
        """Whether this group's results decide anything (not a low rung of successive halving)."""
        return self.rung is None or self.rung.counts


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
    # Continued training (successive halving's rungs): the epochs a learning-rate schedule spans (0: this fold's
    # own epochs), the fold whose saved model and optimizer this one continues from, the epochs that model had
    # trained, and the fold whose key seeds the whole chain (its first rung).
    horizon: int = 0
    resume_key: str = ""
    initial_epoch: int = 0
    root_key: str = ""
    # The saved model of ``resume_key``'s fold, attached by the engine on the way to a worker (planning is pure).
    checkpoint: Mapping[str, bytes] | None = field(default=None, compare=False, repr=False)

    @property
    def split(self) -> int:
        """Position among all ``repeats x folds`` splits, scikit-learn's ``split<i>`` numbering."""
        return self.repeat * self.n_folds + self.fold

    @property
    def seed(self) -> int:
        """The training seed: from the fold's key, or for a continued fold from its chain's first key (so a fold
        continued rung by rung trains exactly as one trained straight through)."""
        return int((self.root_key or self.key)[:8], 16) % (2**31 - 1)

    @property
    def resumable(self) -> bool:
        """Trained with the recipe that can be stopped and continued (one seeded permutation per epoch)."""
        return bool(self.horizon)


@dataclass(frozen=True)
class Candidate:
    index: int
    label: str
    varied: Params
    params: Params
    config_hash: str
    fold_keys: tuple[str, ...]
    role: str = GRID
    trial: int | None = None  # an Optuna trial's number, and the values it sampled
    sampled: Params = field(default_factory=dict)
    root_keys: tuple[str, ...] = ()  # for continued training: each split's first-rung key

    def chain(self) -> tuple[tuple[str, str], ...]:
        """(this key, its chain's first key) per split: what the candidate's next rung continues from."""
        roots = self.root_keys or self.fold_keys
        return tuple(zip(self.fold_keys, roots, strict=True))


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


def canonical(params: Params, neutral: Mapping[str, Any]) -> str:
    """Stable text for hashing: sorted keys, tuples as lists, floats by repr; optional hyperparameters at their
    ``neutral`` values are left out, so adding one changes no key a search has made."""
    items = sorted((k, v) for k, v in params.items() if not (k in neutral and v == neutral[k]))
    return json.dumps({key: list(v) if isinstance(v, tuple) else v for key, v in items})


def config_hash(params: Params, neutral: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(params, neutral).encode()).hexdigest()[:12]


def fold_key(
    params: Params,
    fold: int,
    settings: SearchSettings,
    *,
    repeat: int = 0,
    replicate: str = "",
    horizon: int = 0,
    resume_key: str = "",
) -> str:
    """Identity of a fold result: same hyperparameters, split, data and training recipe give the same key anywhere.

    The number of repeats is not part of it: repeat 0 of a 3-repeat campaign is the single-repeat campaign's
    split, so raising ``--cv-repeats`` reuses every fold already trained. ``replicate`` names a deliberate
    retraining of the same configuration (a step's reference): another key, hence other training seeds.
    ``horizon`` (the epochs a learning-rate schedule spans, when a rung trains fewer) and ``resume_key`` (the
    fold, at an earlier rung, whose saved model this one continues) name a continued fold's whole history, with
    :data:`CONTINUED_RECIPE_VERSION`.
    """
    identity = [settings.canonical(params), fold, settings.n_folds, settings.split_seed, settings.data_digest]
    identity += [repeat, RECIPE_VERSION]
    if settings.precision != "float32":
        identity.append(settings.precision)
    if settings.task.model_key:
        identity.append(settings.task.model_key)
    if replicate:
        identity.append(replicate)
    if horizon:
        identity += ["horizon", horizon, "continued recipe", CONTINUED_RECIPE_VERSION]
    if resume_key:
        identity += ["continues", resume_key]
    text = json.dumps(identity)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def final_seed_key(params: Params, seed: int, settings: SearchSettings, *, test_digest: str) -> str:
    """Identity of one seed of ``final``: ``params`` trained on the whole training set with ``seed``, then scored
    once on the test set ``test_digest``. A seed that finished in a final killed before its end is taken by the
    next final with the same key instead of being trained (and tested) again."""
    identity = ["final seed", settings.canonical(params), seed, settings.data_digest, test_digest, RECIPE_VERSION]
    if settings.precision != "float32":
        identity.append(settings.precision)
    if settings.task.model_key:
        identity.append(settings.task.model_key)
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


def candidate_label(varied: Params) -> str:
    """Readable run name of a grid point: ``neurons_1=15`` or ``epochs=20,batch_size=40``."""
    return ",".join(f"{key}={format_value(value)}" for key, value in varied.items())


def resolve_fixed_params(
    task: Task, step_name: str, step_bests: Mapping[str, StepBest], *, overrides: Params, epochs: int
) -> Params:
    """The values a step holds fixed: the task's start < ``--epochs`` < best of each earlier step < overrides.

    Earlier means earlier in the task's step order, and only steps completed in this experiment on the same
    data count. ``step_name`` may be :data:`FINAL`, which sees every step.
    """
    order = task.step_order
    limit = len(order) if step_name == FINAL else order[step_name]
    fixed = dict(task.start, epochs=epochs)
    for name in sorted((n for n in step_bests if n in order), key=order.__getitem__):
        if order[name] < limit:
            fixed.update(step_bests[name].params)
    fixed.update(overrides)
    return task.validate(fixed)


@dataclass(frozen=True)
class Spec:
    """What a strategy asks to evaluate: a full hyperparameter dict, and optionally its run's name, its role and
    the Optuna trial it stands for."""

    params: Params
    label: str | None = None
    role: str = GRID
    trial: int | None = None
    sampled: Params = field(default_factory=dict)
    replicate: str = ""  # another training of the same configuration: its own fold keys and seeds
    # Continued training: the epochs a schedule spans; per split, the (key, first key) of the fold continued
    # from (a Candidate's ``chain()`` at the rung before) and the epochs that fold trained.
    horizon: int = 0
    resume: tuple[tuple[str, str], ...] = ()
    resume_epochs: int = 0


def plan_candidates(
    group: Group,
    candidates: Sequence[Params | Spec],
    settings: SearchSettings,
    done: Mapping[str, FoldRecord],
) -> Plan:
    """Every candidate (a full hyperparameter dict, or a :class:`Spec`) with its fold keys; tasks only for what
    ``done`` lacks. Pure.

    Validates every candidate first, so a bad value fails before any run exists.
    """
    planned, to_train, reused = [], [], {}
    neutral = settings.task.neutral
    for index, raw in enumerate(candidates):
        spec = raw if isinstance(raw, Spec) else Spec(raw)
        try:
            params = settings.task.validate(spec.params)
        except HyperparameterError as error:  # a grid or a space of the task's own: say which
            raise HyperparameterError(f"{group.step}: {error}") from None
        varied = {key: params[key] for key in group.varied}
        label = spec.label or candidate_label(varied)
        splits = [(repeat, fold) for repeat in range(settings.cv_repeats) for fold in range(settings.n_folds)]
        if spec.resume and len(spec.resume) != len(splits):
            raise ValueError(f"{label}: continues {len(spec.resume)} folds, but the campaign has {len(splits)} splits")
        previous = spec.resume or [("", "")] * len(splits)
        keys = tuple(
            fold_key(
                params,
                fold,
                settings,
                repeat=repeat,
                replicate=spec.replicate,
                horizon=spec.horizon,
                resume_key=before[0],
            )
            for (repeat, fold), before in zip(splits, previous, strict=True)
        )
        roots = tuple(before[1] or key for before, key in zip(previous, keys, strict=True)) if spec.horizon else ()
        planned.append(
            Candidate(
                index,
                label,
                varied,
                params,
                config_hash(params, neutral),
                keys,
                spec.role,
                spec.trial,
                spec.sampled,
                roots,
            )
        )
        for (repeat, fold), key, before, root in zip(splits, keys, previous, roots or keys, strict=True):
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
                    horizon=spec.horizon,
                    resume_key=before[0],
                    initial_epoch=spec.resume_epochs if before[0] else 0,
                    root_key=root if spec.horizon else "",
                )
            )
    plan_text = json.dumps(
        [
            group.step,
            settings.canonical(group.fixed),
            [c.config_hash for c in planned],
            settings.key(),
        ]
    )
    plan_hash = hashlib.sha256(plan_text.encode()).hexdigest()[:12]
    return Plan(group, tuple(planned), tuple(to_train), reused, plan_hash)


def check_folds(y: np.ndarray, n_folds: int, class_names: tuple[str, ...]) -> None:
    """Stratified k-fold needs at least k examples of every class; say so before any run exists."""
    if n_folds < 2:
        raise HyperparameterError(f"folds={n_folds}: cross-validation needs at least 2 folds")
    counts = np.bincount(y, minlength=len(class_names))
    smallest = int(counts.argmin())
    if n_folds > counts[smallest]:
        raise HyperparameterError(
            f"folds={n_folds} is more than the {counts[smallest]} training examples of class "
            f"{class_names[smallest]}: use fewer folds or more data"
        )


def fold_indices(
    y: np.ndarray, *, n_folds: int, split_seed: int, fold: int, repeat: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices of one split of scikit-learn's repeated stratified k-fold.

    Repeat 0 is exactly ``StratifiedKFold(shuffle=True, random_state=split_seed)``, and a repeat's splits do not
    depend on how many repeats follow it.
    """
    from sklearn.model_selection import RepeatedStratifiedKFold

    splitter = RepeatedStratifiedKFold(n_splits=n_folds, n_repeats=repeat + 1, random_state=split_seed)
    return list(splitter.split(np.zeros(len(y)), y))[repeat * n_folds + fold]
