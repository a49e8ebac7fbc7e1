from __future__ import annotations

import numpy as np
import pytest

from mlflow_mnist.params import HyperparameterError
from mlflow_mnist.tasks.mnist.model import (
    HYPERPARAMETERS,
    MAX_PARAMETERS,
    SEED_START,
    build_model,
    count_training_flops,
    parameter_count,
    validate_params,
)


def test_seed_start_names_every_hyperparameter():
    assert len(HYPERPARAMETERS) == 18 and validate_params(SEED_START)["kernel_size"] == (3, 3)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dropout_rate_1": -0.1}, r"dropout_rate_1=-0.1 must be at least 0.0 and below 1.0"),
        ({"dropout_rate_2": 1.0}, r"dropout_rate_2=1.0 must be at least 0.0 and below 1.0"),
        ({"neurons_1": 0}, r"neurons_1=0 must be at least 1"),
        ({"neurons_3": -5}, r"neurons_3=-5 must be at least 1"),
        ({"neurons_2": 2.5}, r"neurons_2=2.5 must be an integer"),
        ({"activation_2": "relu6x"}, r"activation_2='relu6x' is not one of softmax, softplus"),
        ({"init_mode_1": "orthogonalish"}, r"init_mode_1='orthogonalish' is not one of uniform"),
        ({"optimizer": "LBFGS"}, r"optimizer='LBFGS' is not one of SGD"),
        ({"kernel_size": (15, 15)}, r"too large for a 28x28 image"),
        ({"kernel_size": (7, 7), "pool_size": (17, 17)}, r"pool_size=\(17, 17\) does not fit the 16x16"),
        ({"kernel_size": "big"}, r"kernel_size='big' must be a pair"),
        ({"epochs": 0}, r"epochs=0 must be at least 1"),
        ({"learn_rate": 0}, r"learn_rate=0 must be at least"),
        ({"momentum": 1.5}, r"momentum=1.5 must be at least 0.0 and below 1.0"),
        ({"colour": "red"}, r"unknown hyperparameter 'colour'"),
        ({"neurons_1": 10**9}, r"neurons_1=1000000000, neurons_2=\d+, neurons_3=\d+ make a model of [\d,]+ weights"),
    ],
)
def test_invalid_values_are_rejected_before_training(change, message):
    with pytest.raises(HyperparameterError, match=message) as caught:
        validate_params({**SEED_START, **change})
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "change",
    [{}, {"kernel_size": (3, 5), "pool_size": (3, 2), "neurons_1": 7}, {"neurons_2": 64, "neurons_3": 192}],
)
def test_the_weight_bound_counts_the_weights_the_model_has(change):
    """From an audit: `neurons_1=1e9` passed validation and every fold failed out of memory. The bound counts the
    weights from the shapes alone: exactly what the built model has."""
    params = validate_params({**SEED_START, **change})
    assert parameter_count(params) == build_model(params, n_classes=10).count_params() < MAX_PARAMETERS


def test_a_whole_number_past_float_precision_is_an_integer():
    """From an audit: `--epochs 99999999999999999999` was told it "must be an integer" (it was compared with its
    float, which no float equals); a fraction is still refused, and a whole float is taken."""
    huge = 99_999_999_999_999_999_999
    assert validate_params({**SEED_START, "epochs": huge})["epochs"] == huge
    assert validate_params({**SEED_START, "epochs": str(huge)})["epochs"] == huge
    assert validate_params({**SEED_START, "epochs": 6.0})["epochs"] == 6
    with pytest.raises(HyperparameterError, match=r"epochs=6.5 must be an integer"):
        validate_params({**SEED_START, "epochs": 6.5})


def test_pool_size_and_optimizer_are_honoured():
    """The seed ignored both: here they change the network."""
    a = build_model({**SEED_START, "pool_size": (1, 1)})
    b = build_model({**SEED_START, "pool_size": (3, 3), "optimizer": "Adamax", "learn_rate": 0.02})
    assert a.count_params() != b.count_params()
    assert type(a.optimizer).__name__ == "SGD" and type(b.optimizer).__name__ == "Adamax"
    assert float(b.optimizer.learning_rate.numpy()) == pytest.approx(0.02)


def test_model_takes_raw_pixels(sample):
    model = build_model(SEED_START, n_classes=10)
    out = model.predict(sample.x_test[:3], verbose=0)
    assert out.shape == (3, 10) and np.allclose(out.sum(axis=1), 1, atol=1e-5)
    assert model.inputs[0].dtype == "uint8"


def test_flops_grow_with_kernel_and_neurons():
    small = count_training_flops(SEED_START)
    assert count_training_flops({**SEED_START, "neurons_2": 25, "kernel_size": (5, 5)}) > 2 * small
    # Hand count for the seed start (kernel 3, 4 and 8 filters, pool 2, dense 16): 6 x multiply-adds.
    macs = 26 * 26 * 4 * 9 + 24 * 24 * 8 * 9 * 4 + 12 * 12 * 8 * 16 + 16 * 2
    assert small == 6 * macs


def test_bfloat16_precision_computes_in_bfloat16_and_predicts_float32(sample):
    model = build_model(SEED_START, precision="mixed_bfloat16")
    conv = next(layer for layer in model.layers if "conv" in layer.name)
    assert conv.compute_dtype == "bfloat16" and conv.variable_dtype == "float32"
    assert model.predict(sample.x_test[:2], verbose=0).dtype == np.float32
    with pytest.raises(HyperparameterError, match="precision='float16' is not one of float32, mixed_bfloat16"):
        build_model(SEED_START, precision="float16")


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_a_saved_models_signature_is_the_one_predict_gives(sample, tmp_path, precision):
    """A fold's model folder takes its signature from one eager call of the model on the examples (``predict``
    traced a graph function for every new model): the signature must be the one ``predict``'s outputs give."""
    from mlflow.models import Model, infer_signature

    from mlflow_mnist.worker.model_files import model_files

    model = build_model(SEED_START, n_classes=3, precision=precision)
    examples = sample.x_test[:2]
    files = model_files(model, examples, with_example=False)
    (tmp_path / "MLmodel").write_bytes(files["MLmodel"])
    signature = Model.load(tmp_path / "MLmodel").signature
    assert signature == infer_signature(examples, model.predict(examples, verbose=0))
    assert signature.outputs.to_dict() == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 3)}}]


def test_extra_hyperparameters_are_off_by_default_and_change_no_key():
    from mlflow_mnist.planning import SearchSettings, fold_key
    from mlflow_mnist.tasks import get_task

    settings = SearchSettings(get_task("mnist"))

    plain = build_model(SEED_START, seed=1)
    assert [type(layer).__name__ for layer in plain.layers][:2] == ["Rescaling", "Reshape"]
    neutral = {**SEED_START, "augment_shift": 0.0, "augment_rotation": 0, "lr_schedule": "constant"}
    assert fold_key(neutral, 0, settings) == fold_key(dict(SEED_START), 0, settings)
    assert fold_key({**SEED_START, "augment_shift": 0.1}, 0, settings) != fold_key(SEED_START, 0, settings)


def test_augmentation_trains_only_and_cosine_decays_to_zero(sample):
    params = {**SEED_START, "augment_shift": 0.1, "augment_rotation": 10, "augment_zoom": 0.1}
    params |= {"lr_schedule": "cosine", "optimizer": "Adam", "learn_rate": 0.001, "epochs": 2, "batch_size": 50}
    model = build_model(params, seed=3, n_train=1000)
    names = [type(layer).__name__ for layer in model.layers]
    assert {"RandomTranslation", "RandomRotation", "RandomZoom"} <= set(names)
    x = sample.x_test[:8]
    assert np.allclose(model.predict(x, verbose=0), model.predict(x, verbose=0))  # inactive at inference
    schedule = model.optimizer._learning_rate  # the schedule itself (learning_rate is its current value)
    assert float(schedule(0)) == pytest.approx(0.001) and float(schedule(2 * 20)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("augment_shift", 0.5, "augment_shift=0.5 must be at least 0.0 and below 0.5"),
        ("augment_rotation", -5, "augment_rotation=-5 must be at least 0.0"),
        ("lr_schedule", "step", "lr_schedule='step' is not one of constant, cosine"),
    ],
)
def test_extra_hyperparameters_are_validated(key, value, message):
    with pytest.raises(HyperparameterError, match=message):
        validate_params({**SEED_START, key: value})
