"""Search spaces for joint searches, as data: each parameter's range and why it is there.

``seed`` is the seed's 18 parameters over the values its grids tried, as ranges where they are numeric. ``wide``
is designed from the evidence of the seed's stages and of this project's measurements (README, "Beyond the
seed"): the seed's convnet family, wider, trained longer with Adam and a cosine schedule, and with light
augmentation, which the seed never tried and which is what small convnets use to get past ~99.4% on MNIST.
Epochs are not searched: they are the resource that successive halving and the pruner spend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from mlflow_mnist.model import ACTIVATIONS, INITIALIZERS, OPTIMIZERS, SEED_START, Params
from mlflow_mnist.stages import StageError

# Pairs are categories; Optuna's categorical choices must be plain values, so pairs travel as "5x5" text.
PAIR_KEYS = ("kernel_size", "pool_size")


@dataclass(frozen=True)
class Dimension:
    name: str
    distribution: BaseDistribution
    why: str


@dataclass(frozen=True)
class Space:
    """A named set of dimensions over ``base`` (values the space does not search), with a resource of epochs."""

    name: str
    dimensions: tuple[Dimension, ...]
    base: Params = field(default_factory=dict)
    max_epochs: int = 6
    about: str = ""

    @property
    def distributions(self) -> dict[str, BaseDistribution]:
        return {d.name: d.distribution for d in self.dimensions}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions)

    def config(self, sampled: Params, *, epochs: int | None = None, overrides: Params | None = None) -> Params:
        """A full hyperparameter dict: base < sampled values (pairs decoded) < overrides, at ``epochs``."""
        decoded = {
            k: tuple(int(v) for v in str(value).split("x")) if k in PAIR_KEYS else value for k, value in sampled.items()
        }
        return {**self.base, **decoded, **(overrides or {}), "epochs": epochs or self.max_epochs}


def _pairs(*sides: int) -> CategoricalDistribution:
    return CategoricalDistribution([f"{s}x{s}" for s in sides])


SEED = Space(
    name="seed",
    about="the seed's 18 parameters over the values its grids tried, searched jointly",
    base=dict(SEED_START),
    max_epochs=6,
    dimensions=(
        Dimension("batch_size", IntDistribution(10, 100, log=True), "stage 1's grid: 10 to 100"),
        Dimension("optimizer", CategoricalDistribution(list(OPTIMIZERS)), "stage 2's grid"),
        Dimension("momentum", FloatDistribution(0.0, 0.9), "stage 3's grid: 0 to 0.9 (SGD and RMSprop)"),
        Dimension("learn_rate", FloatDistribution(0.001, 0.3, log=True), "stage 4's grid: 0.001 to 0.3"),
        Dimension("init_mode_1", CategoricalDistribution(list(INITIALIZERS)), "stage 5's grid"),
        Dimension("init_mode_2", CategoricalDistribution(list(INITIALIZERS)), "stage 6's grid"),
        *(
            Dimension(f"activation_{i}", CategoricalDistribution(list(ACTIVATIONS)), f"stage {6 + i}'s grid")
            for i in (1, 2, 3, 4)
        ),
        Dimension("dropout_rate_1", FloatDistribution(0.0, 0.9), "stage 11's grid: 0 to 0.9"),
        Dimension("dropout_rate_2", FloatDistribution(0.0, 0.9), "stage 12's grid: 0 to 0.9"),
        Dimension("neurons_1", IntDistribution(1, 30), "stage 13's grid: 1 to 30"),
        Dimension("neurons_2", IntDistribution(1, 30), "stage 14's grid: 1 to 30"),
        Dimension("neurons_3", IntDistribution(5, 30), "stage 15's grid: 5 to 30"),
        Dimension("kernel_size", _pairs(1, 3, 5, 7), "stage 16's grid"),
        Dimension("pool_size", _pairs(1, 2, 3, 5), "stage 17's grid"),
    ),
)

WIDE = Space(
    name="wide",
    about="the seed's family, wider, with Adam or SGD, a cosine schedule and light augmentation",
    base={
        **SEED_START,
        # Fixed from the seed's own evidence: relu convolutions and softmax output were never beaten by more
        # than noise; its exotic picks (softsign, linear, softplus) were noise-level wins.
        "activation_1": "relu",
        "activation_2": "relu",
        "activation_3": "relu",
        "activation_4": "softmax",
        "init_mode_1": "he_normal",
        "init_mode_2": "glorot_uniform",
    },
    max_epochs=18,
    dimensions=(
        Dimension("neurons_1", IntDistribution(8, 32, log=True), "width: the seed's 5 filters are its bottleneck"),
        Dimension(
            "neurons_2",
            IntDistribution(16, 64, log=True),
            "width of the second convolution, 91% of the FLOPs: capped so a trial fits the 60-minute champion",
        ),
        Dimension("neurons_3", IntDistribution(32, 192, log=True), "dense width; the seed's 5 units are tiny"),
        Dimension("kernel_size", _pairs(3, 5), "the seed's kernel_size stage: (3, 3) and (5, 5) led"),
        Dimension("pool_size", _pairs(1, 2), "the seed's pool_size stage was noise between (1, 1) and (2, 2)"),
        Dimension("dropout_rate_1", FloatDistribution(0.0, 0.5), "regularisation for a wider network"),
        Dimension("dropout_rate_2", FloatDistribution(0.0, 0.6), "the seed's 0.1 suited 5 units, not 100"),
        Dimension("optimizer", CategoricalDistribution(["Adam", "SGD"]), "Adam, or the seed's tuned SGD"),
        Dimension("learn_rate", FloatDistribution(3e-4, 0.1, log=True), "Adam near 1e-3, SGD near 0.1"),
        Dimension("momentum", FloatDistribution(0.0, 0.95), "SGD only; the seed found 0.4"),
        Dimension("batch_size", IntDistribution(32, 256, log=True), "larger batches train faster per image"),
        Dimension("lr_schedule", CategoricalDistribution(["constant", "cosine"]), "cosine decay for the last bit"),
        Dimension("augment_shift", FloatDistribution(0.0, 0.12), "up to 3 pixels: digits move in their box"),
        Dimension("augment_rotation", FloatDistribution(0.0, 12.0), "up to 12 degrees: slanted handwriting"),
        Dimension("augment_zoom", FloatDistribution(0.0, 0.12), "size varies between writers"),
    ),
)

SPACES = {space.name: space for space in (SEED, WIDE)}


def get_space(name: str) -> Space:
    if name not in SPACES:
        raise StageError(f"unknown search space {name!r}: choose one of {', '.join(SPACES)}")
    return SPACES[name]
