"""The seed's convnet as a function of a flat dict of 18 hyperparameters (the 17 of its stages plus
``optimizer``, which it varied and ignored), plus a few the seed lacked.

Unlike the seed, ``pool_size`` and ``optimizer`` are honoured and every optimizer gets an explicit learning
rate (Keras 3 defaults differ from the Keras 2 ones the seed ran on). The model takes raw 28x28 uint8 pixels:
scaling lives inside it, so a logged model can be served on raw images.

The extra hyperparameters (light data augmentation, a cosine learning-rate schedule) are off by default; at
their neutral values they add nothing to the model and nothing to a fold's key, so everything the seed's
search trained stays what it was.
"""

from __future__ import annotations

from mlflow_mnist.params import (
    HyperparameterError,
    Params,
    as_pair,
    check_choice,
    check_known,
    check_number,
)
from mlflow_mnist.tasks.base import check_precision

ACTIVATIONS = ("softmax", "softplus", "softsign", "relu", "tanh", "sigmoid", "hard_sigmoid", "linear")
INITIALIZERS = (
    "uniform",
    "lecun_uniform",
    "normal",
    "zero",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
)
OPTIMIZERS = ("SGD", "RMSprop", "Adagrad", "Adadelta", "Adam", "Adamax", "Nadam")
# Keras 3 renamed the seed's Keras 2 initializer aliases; map the names users know to today's classes.
_INITIALIZER_CLASSES = {
    "uniform": "RandomUniform",
    "normal": "RandomNormal",
    "zero": "Zeros",
    "lecun_uniform": "LecunUniform",
    "glorot_normal": "GlorotNormal",
    "glorot_uniform": "GlorotUniform",
    "he_normal": "HeNormal",
    "he_uniform": "HeUniform",
}

#: The seed's first model, before any stage (stages.md): every hyperparameter the model reads.
SEED_START: Params = {
    "neurons_1": 4,
    "neurons_2": 8,
    "neurons_3": 16,
    "kernel_size": (3, 3),
    "pool_size": (2, 2),
    "dropout_rate_1": 0.25,
    "dropout_rate_2": 0.5,
    "activation_1": "relu",
    "activation_2": "relu",
    "activation_3": "relu",
    "activation_4": "softmax",
    "init_mode_1": "glorot_uniform",
    "init_mode_2": "glorot_uniform",
    "optimizer": "SGD",
    "learn_rate": 0.1,
    "momentum": 0.0,
    "epochs": 6,
    "batch_size": 20,
}
# 18 keys: the 17 of stages.md plus `optimizer`, which the seed varied (and ignored).
#: The seed's best model (its README, stages.md), as changes to SEED_START.
SEED_BEST: Params = {
    "neurons_1": 5,
    "neurons_2": 25,
    "neurons_3": 5,
    "kernel_size": (5, 5),
    "pool_size": (1, 1),
    "dropout_rate_1": 0.1,
    "dropout_rate_2": 0.1,
    "activation_1": "softsign",
    "activation_3": "linear",
    "activation_4": "softplus",
    "init_mode_2": "he_normal",
    "momentum": 0.4,
}
SCHEDULES = ("constant", "cosine")
#: Hyperparameters the seed did not have, at values that leave its model unchanged.
EXTRA_NEUTRAL: Params = {
    "augment_shift": 0.0,  # random translation while training, as a fraction of the side (0.1 = 2.8 pixels)
    "augment_rotation": 0.0,  # random rotation while training, in degrees either way
    "augment_zoom": 0.0,  # random zoom while training, as a fraction
    "lr_schedule": "constant",  # or "cosine": decay to zero over the whole fit
}
HYPERPARAMETERS = tuple(SEED_START)  # the seed's 18, every one required
KNOWN = (*HYPERPARAMETERS, *EXTRA_NEUTRAL)
IMAGE_SIDE = 28


def validate_params(params: Params) -> Params:
    """Check every key and value before any training; returns a normalised copy (pairs as tuples)."""
    check_known(params, KNOWN, HYPERPARAMETERS)
    clean = {**EXTRA_NEUTRAL, **params}
    clean["augment_shift"] = check_number("augment_shift", clean["augment_shift"], float, 0.0, 0.5, high_open=True)
    clean["augment_zoom"] = check_number("augment_zoom", clean["augment_zoom"], float, 0.0, 0.5, high_open=True)
    clean["augment_rotation"] = check_number("augment_rotation", clean["augment_rotation"], float, 0.0, 90.0)
    check_choice("lr_schedule", clean["lr_schedule"], SCHEDULES)
    for index in (1, 2, 3):
        clean[f"neurons_{index}"] = check_number(f"neurons_{index}", params[f"neurons_{index}"], int, 1, None)
    for index in (1, 2):
        key = f"dropout_rate_{index}"
        clean[key] = check_number(key, params[key], float, 0.0, 1.0, high_open=True)
    for index in (1, 2, 3, 4):
        check_choice(f"activation_{index}", params[f"activation_{index}"], ACTIVATIONS)
    for index in (1, 2):
        check_choice(f"init_mode_{index}", params[f"init_mode_{index}"], INITIALIZERS)
    check_choice("optimizer", params["optimizer"], OPTIMIZERS)
    clean["learn_rate"] = check_number("learn_rate", params["learn_rate"], float, 1e-12, None)
    clean["momentum"] = check_number("momentum", params["momentum"], float, 0.0, 1.0, high_open=True)
    clean["epochs"] = check_number("epochs", params["epochs"], int, 1, None)
    clean["batch_size"] = check_number("batch_size", params["batch_size"], int, 1, None)
    kernel = clean["kernel_size"] = as_pair("kernel_size", params["kernel_size"])
    pool = clean["pool_size"] = as_pair("pool_size", params["pool_size"])
    side = _after_convolutions(kernel)  # pooling must fit what is left
    if min(side) < 1:
        raise HyperparameterError(
            f"kernel_size={kernel} is too large for a 28x28 image after two convolutions: use at most (14, 14)"
        )
    if any(p > s for p, s in zip(pool, side, strict=True)):
        raise HyperparameterError(
            f"pool_size={pool} does not fit the {side[0]}x{side[1]} feature map left by kernel_size={kernel}"
        )
    weights = parameter_count(clean)
    if weights > MAX_PARAMETERS:  # `neurons_1=1e9` trained every fold into an out-of-memory failure
        raise HyperparameterError(
            f"neurons_1={clean['neurons_1']}, neurons_2={clean['neurons_2']}, neurons_3={clean['neurons_3']} make a "
            f"model of {weights:,} weights, more than {MAX_PARAMETERS:,} (training needs about 16 bytes each): use "
            f"fewer neurons"
        )
    return clean


# The spaces' largest model (wide: 3x3 kernels, no pooling, the widest layers) has 7.1 million.
MAX_PARAMETERS = 50_000_000


def _after_convolutions(kernel: tuple[int, int]) -> list[int]:
    """The feature map's sides after the two valid convolutions: each shrinks a side by (k - 1)."""
    return [IMAGE_SIDE - 2 * (k - 1) for k in kernel]


def _flat_features(p: Params) -> int:
    """What the dense layer reads: the second convolution's maps, pooled, flattened."""
    (h2, w2), (ph, pw) = _after_convolutions(p["kernel_size"]), p["pool_size"]
    return (h2 // ph) * (w2 // pw) * p["neurons_2"]


def parameter_count(p: Params, n_classes: int = 10) -> int:
    """The weights :func:`build_model` makes for ``p`` (validated), computed from the shapes: two valid
    convolutions, pooling, a dense layer and the output layer."""
    (k0, k1), (n1, n2, n3) = p["kernel_size"], (p["neurons_1"], p["neurons_2"], p["neurons_3"])
    conv = (k0 * k1 * n1 + n1) + (k0 * k1 * n1 * n2 + n2)
    return conv + (_flat_features(p) * n3 + n3) + (n3 * n_classes + n_classes)


def make_optimizer(name: str, learn_rate: float, momentum: float):
    import keras

    if name == "SGD":
        return keras.optimizers.SGD(learning_rate=learn_rate, momentum=momentum)
    if name == "RMSprop":
        return keras.optimizers.RMSprop(learning_rate=learn_rate, momentum=momentum)
    return getattr(keras.optimizers, name)(learning_rate=learn_rate)


def build_model(
    hyperparameters: Params,
    *,
    n_classes: int = 2,
    steps_per_execution: int = 1,
    precision: str = "float32",
    seed: int | None = None,
    n_train: int | None = None,
    total_epochs: int | None = None,
):
    """The seed's convnet, compiled; ``steps_per_execution`` > 1 runs several batches per graph call.

    ``seed`` seeds every initializer and dropout layer explicitly. Without it Keras draws their seeds from
    Python's process-wide ``random``, which other threads (a Dask worker's event loop) also draw from: the
    same fold would then train differently from run to run. ``n_train`` (training images) sizes a cosine
    learning-rate schedule.

    ``precision="mixed_bfloat16"`` computes in bfloat16 with float32 weights (fast on CPUs with AMX or
    AVX512-BF16, slow elsewhere; ``--precision auto`` measures which); the output layer stays float32. (The
    argument is not called ``params``: scikeras injects its own dict under that name.)
    """
    import keras
    from keras import layers

    p = validate_params(hyperparameters)

    seeds = iter(range(seed, seed + 100)) if seed is not None else None

    def next_seed() -> int | None:
        return next(seeds) if seeds is not None else None

    def initializer(name: str):
        cls = getattr(keras.initializers, _INITIALIZER_CLASSES[name])
        return cls() if name == "zero" else cls(seed=next_seed())

    dtype = check_precision(precision)

    def augmentation_seed(offset: int) -> int | None:
        return None if seed is None else seed + 1000 + offset  # apart from the layers' own seeds

    # Light augmentation, active only while training (Keras' preprocessing layers pass images through at
    # inference): absent at the neutral values, so the seed's model is exactly what it was.
    augmentation = []
    if p["augment_shift"]:
        shift = p["augment_shift"]
        augmentation.append(layers.RandomTranslation(shift, shift, fill_mode="constant", seed=augmentation_seed(0)))
    if p["augment_rotation"]:
        turn = p["augment_rotation"] / 360.0
        augmentation.append(layers.RandomRotation(turn, fill_mode="constant", seed=augmentation_seed(1)))
    if p["augment_zoom"]:
        augmentation.append(layers.RandomZoom(p["augment_zoom"], fill_mode="constant", seed=augmentation_seed(2)))

    model = keras.Sequential(
        [
            keras.Input(shape=(IMAGE_SIDE, IMAGE_SIDE), dtype="uint8", name="pixels"),
            layers.Rescaling(1.0 / 255, dtype=dtype),
            layers.Reshape((IMAGE_SIDE, IMAGE_SIDE, 1), dtype=dtype),
            *augmentation,
            layers.Conv2D(
                p["neurons_1"],
                p["kernel_size"],
                activation=p["activation_1"],
                kernel_initializer=initializer("glorot_uniform"),
                dtype=dtype,
            ),
            layers.Conv2D(
                p["neurons_2"],
                p["kernel_size"],
                activation=p["activation_2"],
                kernel_initializer=initializer("glorot_uniform"),
                dtype=dtype,
            ),
            layers.MaxPooling2D(p["pool_size"], dtype=dtype),
            layers.Dropout(p["dropout_rate_1"], seed=next_seed(), dtype=dtype),
            layers.Flatten(dtype=dtype),
            layers.Dense(
                p["neurons_3"],
                kernel_initializer=initializer(p["init_mode_1"]),
                activation=p["activation_3"],
                dtype=dtype,
            ),
            layers.Dropout(p["dropout_rate_2"], seed=next_seed(), dtype=dtype),
            layers.Dense(
                n_classes,
                kernel_initializer=initializer(p["init_mode_2"]),
                activation=p["activation_4"],
                dtype="float32",
            ),
        ]
    )
    learn_rate = p["learn_rate"]
    if p["lr_schedule"] == "cosine" and n_train:
        steps = (total_epochs or p["epochs"]) * -(-n_train // p["batch_size"])
        learn_rate = keras.optimizers.schedules.CosineDecay(p["learn_rate"], decay_steps=steps)
    model.compile(
        optimizer=make_optimizer(p["optimizer"], learn_rate, p["momentum"]),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    return model


def count_training_flops(params: Params, n_classes: int = 2) -> float:
    """Floating-point operations to train on one image (forward + backward ~ 3x forward multiply-adds x 2)."""
    p = validate_params(params)
    kh, kw = p["kernel_size"]
    h1, w1 = IMAGE_SIDE - kh + 1, IMAGE_SIDE - kw + 1
    h2, w2 = _after_convolutions((kh, kw))
    macs = h1 * w1 * p["neurons_1"] * kh * kw * 1
    macs += h2 * w2 * p["neurons_2"] * kh * kw * p["neurons_1"]
    macs += _flat_features(p) * p["neurons_3"] + p["neurons_3"] * n_classes
    return 3 * 2 * float(macs)
