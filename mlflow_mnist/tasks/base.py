"""What a task is: a data source turned into arrays with a digest, and a flat dict of hyperparameters turned into
a Keras model that takes raw inputs. Everything else (searching, tracking, analysis, promotion) is the tool's.

A task is the size of a Keras Tuner ``HyperModel``: write :meth:`Task.load`, :meth:`Task.validate` and
:meth:`Task.build_model`, give a starting configuration and, optionally, staged steps and search spaces as data,
and register it under the entry point group ``mlflow_mnist.tasks`` (see :mod:`mlflow_mnist.tasks`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mlflow_mnist.params import HyperparameterError, Overrides, Params, StageError, check_known, parse_overrides
from mlflow_mnist.schema import EPOCHS
from mlflow_mnist.spaces import Space
from mlflow_mnist.stages import Step

#: Numeric precisions a task's model may be built in (``--precision``); part of every fold key but float32.
PRECISIONS = ("float32", "mixed_bfloat16")
#: Hyperparameters every task has: the engine fits ``epochs`` epochs of ``batch_size`` examples.
FIT_PARAMS = (EPOCHS, "batch_size")


class DataError(ValueError):
    """The data cannot be used; the message names the file or value and the fix."""


def expand_user(path: str, *, where: str = "") -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded, or a :class:`DataError` naming a user this machine does
    not know (``where``: where the value came from, said after the fix)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # "Could not determine home directory."
        raise DataError(
            f"data path {path!r}: cannot expand {path.split('/')[0]!r}, no such user's home directory here: "
            f"give the full path{where}"
        ) from None


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise HyperparameterError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


def array_sha256(*arrays: np.ndarray) -> str:
    """The full sha256 of arrays' values, shapes and dtypes: the same arrays give the same digest anywhere."""
    hasher = hashlib.sha256()
    for array in arrays:
        contiguous = np.ascontiguousarray(array)
        hasher.update(str((contiguous.shape, contiguous.dtype.str)).encode())
        hasher.update(contiguous.tobytes())
    return hasher.hexdigest()


def array_digest(*arrays: np.ndarray) -> str:
    """Content digest of arrays, short enough for tags and names: :func:`array_sha256`'s first 64 bits. Fold keys
    are made of it, so it stays as it is; where a collision must be out of reach (the gate's check that a final's
    data is the data it was trained on) :func:`dataset_sha256` is used too."""
    return array_sha256(*arrays)[:16]


def dataset_sha256(data: Dataset) -> str:
    """The full sha256 of a loaded dataset's four arrays (training and test examples and labels), whatever the
    task's own digests cover: what a final records of its data and the gate recomputes."""
    return array_sha256(data.x_train, data.y_train, data.x_test, data.y_test)


@dataclass(frozen=True)
class Dataset:
    """A task's loaded arrays: integer labels 0..k-1 naming ``class_names``, and each split's content digest.

    ``variant`` says which part of the source was taken (``3v5``: classes 3 and 5 of ten; ``all``); it names
    registered models and tells finals apart. The digests are the task's to compute (they decide fold keys).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    variant: str
    source: str
    train_digest: str
    test_digest: str

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def digest(self, split: str = "train") -> str:
        return self.train_digest if split == "train" else self.test_digest

    def arrays(self, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        return (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)


def parse_classes(text: str, names: tuple[str, ...]) -> tuple[int, ...]:
    """``"2,7"`` -> the indices of classes named 2 and 7; ``"all"`` or "" -> every class. At least two, distinct."""
    text = str(text).strip()
    if text.lower() in ("", "all"):
        return tuple(range(len(names)))
    parts = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in parts if part not in names]
    if unknown:
        raise DataError(f"classes {text!r}: {unknown[0]!r} is not a class; the classes are {', '.join(names)}")
    chosen = tuple(names.index(part) for part in parts)
    if len(chosen) < 2:
        raise DataError(f"classes {text!r} names one class: give at least two, e.g. '{names[0]},{names[1]}', or 'all'")
    if len(set(chosen)) != len(chosen):
        raise DataError(f"classes {text!r} repeats a class: give distinct classes")
    return chosen


def select_classes(
    arrays: Mapping[str, np.ndarray], chosen: tuple[int, ...], *, source: str, names: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Keep only the ``chosen`` classes, relabelled by position: for (2, 7), a 2 is class 0 and a 7 class 1."""
    lookup = np.full(max(int(arrays["y_train"].max()), int(arrays["y_test"].max()), max(chosen)) + 1, -1, np.int64)
    lookup[list(chosen)] = np.arange(len(chosen))
    kept = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        keep = lookup[y] >= 0
        kept[f"x_{split}"], kept[f"y_{split}"] = np.ascontiguousarray(x[keep]), lookup[y[keep]].astype(np.uint8)
        absent = [names[c] for i, c in enumerate(chosen) if not np.any(kept[f"y_{split}"] == i)]
        if absent:
            raise DataError(f"{source}: the {split} split has no examples of class(es) {absent}")
    return kept


def variant_name(chosen: tuple[int, ...], names: tuple[str, ...]) -> str:
    """``3v5`` for a subset, ``all`` for every class."""
    return "all" if chosen == tuple(range(len(names))) else "v".join(names[c] for c in chosen)


class Task:
    """Base class of a task plug-in; subclasses set the class attributes and write the three methods.

    Attributes:
        name: the registry name (``--task NAME``); also tags runs and prefixes registered model names.
        about: one line for ``mlflow-mnist tasks``.
        min_accuracy: ``promote``'s default gate on the median test accuracy.
        model_key: identity of the model code inside fold keys; change it when ``build_model`` changes what a
            fold computes, so stale folds are never reused ("" leaves it out of keys).
        default_classes: the ``--classes`` used when none is given.
        start: a full configuration: every hyperparameter the model reads, including ``epochs`` and
            ``batch_size``; staged steps start from it.
        probe_params: hyperparameters over ``start`` that make a model typical of what this task trains, for
            ``--precision auto``'s speed probe ({}: ``start`` itself); a start far smaller than the models
            searches train times per-step overhead, not arithmetic.
        neutral: optional hyperparameters at values that leave the model unchanged; left out of fold keys, so
            adding one changes no key.
        steps, stages: the staged grid, in order, and stage names users type (each a tuple of step names).
        spaces, default_space: named search spaces of joint searches, and the one used when none is named.
        data_help: what ``--data`` accepts, for the CLI's help.
        named_sources: ``--data`` values that are names, not paths (``sample``): never made absolute.
        data_env: an environment variable that names the data source when ``--data`` is not given.
    """

    name: ClassVar[str] = ""
    about: ClassVar[str] = ""
    min_accuracy: ClassVar[float] = 0.9
    model_key: ClassVar[str] = ""
    default_classes: ClassVar[str] = "all"
    start: ClassVar[Params] = {}
    probe_params: ClassVar[Params] = {}
    neutral: ClassVar[Params] = {}
    steps: ClassVar[tuple[Step, ...]] = ()
    stages: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    spaces: ClassVar[Mapping[str, Space]] = {}
    default_space: ClassVar[str] = ""  # the space joint searches use when none is named ("": the first)
    data_help: ClassVar[str] = "a data source the task understands"
    named_sources: ClassVar[tuple[str, ...]] = ()  # sources that are names, not paths (e.g. "sample")
    data_env: ClassVar[str] = ""  # an environment variable naming the data source when --data is not given

    # -- what a task writes ------------------------------------------------------------------------------------
    def load(self, source: str, *, classes: str = "") -> Dataset:
        """Load ``source`` ("" = the task's default) and keep ``classes``; every array validated first."""
        raise NotImplementedError

    def validate(self, params: Params) -> Params:
        """A normalised copy of ``params`` (every key known, every value usable), or :class:`HyperparameterError`."""
        check_known(params, self.known, self.start)
        return {**self.neutral, **params}

    def build_model(
        self,
        params: Params,
        *,
        n_classes: int,
        seed: int | None = None,
        precision: str = "float32",
        n_train: int | None = None,
        steps_per_execution: int = 1,
        total_epochs: int | None = None,
    ) -> Any:
        """A compiled Keras model: raw inputs in, class probabilities out (loss on one-hot labels, metric
        ``accuracy``), every random layer seeded from ``seed``. ``n_train`` (examples per epoch) and
        ``total_epochs`` (the epochs a schedule spans; default ``epochs``, more when successive halving trains a
        trial rung by rung and continues it) size learning-rate schedules."""
        raise NotImplementedError

    # -- optional ---------------------------------------------------------------------------------------------
    def registered_model_name(self, variant: str) -> str:
        return f"{self.name}-{variant}"

    def flops(self, params: Params, n_classes: int) -> float | None:
        """Training FLOPs per example, when the task can count them (benchmarks credit work with it)."""
        return None

    def as_image(self, example: np.ndarray) -> np.ndarray | None:
        """An example as a 2-D image for figures of misclassified examples, or None when it is not one."""
        return example if example.ndim == 2 else None

    # -- lookups the tool uses ---------------------------------------------------------------------------------
    @property
    def known(self) -> tuple[str, ...]:
        return (*self.start, *(k for k in self.neutral if k not in self.start))

    @property
    def step_order(self) -> dict[str, int]:
        return {step.name: index for index, step in enumerate(self.steps)}

    def get_step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise StageError(f"unknown step {name!r} of task {self.name}: known steps are {self._names(self.steps)}")

    def steps_of(self, stage: str) -> list[Step]:
        """The steps of a stage; a single step's own name is accepted too."""
        if stage in self.stages:
            return [self.get_step(name) for name in self.stages[stage]]
        if any(step.name == stage for step in self.steps):
            return [self.get_step(stage)]
        if not self.steps:
            raise StageError(
                f"task {self.name} has no staged steps: leave out --stage and search one of its spaces with a joint "
                f"strategy (see `mlflow-mnist spaces` and `mlflow-mnist strategies`)"
            )
        # The example step must be one the stage list does not already name, or it shows nothing new.
        step_only = [step.name for step in self.steps if step.name not in self.stages]
        example = f" (or a step such as {step_only[-1]})" if step_only else ""
        raise StageError(f"unknown stage {stage!r}: choose one of {', '.join(self.stages)}{example}")

    def get_space(self, name: str = "") -> Space:
        """The named space, or the task's default one."""
        name = name or self.default_space or next(iter(self.spaces), "")
        if name not in self.spaces:
            known = ", ".join(self.spaces) or "none"
            raise StageError(f"unknown search space {name!r} of task {self.name}: choose one of {known}")
        return self.spaces[name]

    def parse_overrides(self, text: Overrides | None) -> Params:
        return parse_overrides(text, self.known)

    @staticmethod
    def _names(items) -> str:
        return ", ".join(item.name for item in items)
