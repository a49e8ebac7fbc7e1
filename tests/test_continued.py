"""Continued rungs: a fold trained rung by rung, each rung continuing the last one's saved model, equals the
same fold trained straight through; its keys name the chain, so resume and reuse stay exact."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mlflow_mnist.planning import Group, SearchSettings, Spec, plan_candidates
from mlflow_mnist.tasks import get_task

MNIST = get_task("mnist")
SETTINGS = SearchSettings(MNIST, 2, 0, 6, "abc", 2)


def _spec(params, **options):
    return Spec({**MNIST.start, **params}, **options)


def test_a_continued_fold_names_its_whole_history():
    group = Group(name="g", step="g", varied=("learn_rate",))
    first = plan_candidates(group, [_spec({"epochs": 2}, horizon=6)], SETTINGS, {})
    second = plan_candidates(
        group, [_spec({"epochs": 6}, horizon=6, resume=first.candidates[0].chain(), resume_epochs=2)], SETTINGS, {}
    )
    straight = plan_candidates(group, [_spec({"epochs": 6}, horizon=6)], SETTINGS, {})
    classic = plan_candidates(group, [_spec({"epochs": 6})], SETTINGS, {})
    keys = [set(p.candidates[0].fold_keys) for p in (first, second, straight, classic)]
    assert all(not a & b for i, a in enumerate(keys) for b in keys[i + 1 :])  # four different histories
    task = second.to_train[0]
    assert task.resume_key == first.to_train[0].key and task.initial_epoch == 2 and task.horizon == 6
    assert task.seed == first.to_train[0].seed  # the chain's first fold seeds it all
    assert second.candidates[0].chain()[0] == (task.key, first.to_train[0].key)
    again = plan_candidates(
        group, [_spec({"epochs": 6}, horizon=6, resume=first.candidates[0].chain(), resume_epochs=2)], SETTINGS, {}
    )
    assert again.candidates[0].fold_keys == second.candidates[0].fold_keys  # resume and reuse find it


@pytest.mark.slow
def test_continuing_a_fold_equals_training_it_straight_through(sample):
    from mlflow_mnist.tasks.mnist.data import select_digits
    from mlflow_mnist.worker.training import train_fold

    data = select_digits(sample, (2, 7))
    # Dropout, augmentation and a cosine schedule: every source of randomness and state a rung boundary could break.
    params = {"augment_shift": 0.1, "augment_rotation": 8.0, "lr_schedule": "cosine", "dropout_rate_1": 0.3}
    group = Group(name="g", step="g", varied=())
    low = plan_candidates(group, [_spec({**params, "epochs": 1}, horizon=3)], SETTINGS, {})
    high = plan_candidates(
        group,
        [_spec({**params, "epochs": 3}, horizon=3, resume=low.candidates[0].chain(), resume_epochs=1)],
        SETTINGS,
        {},
    )
    straight = plan_candidates(group, [_spec({**params, "epochs": 3}, horizon=3)], SETTINGS, {})
    first = train_fold(MNIST, low.to_train[0], data.x_train, data.y_train, with_model=False)
    assert first.model_files is not None  # a resumable fold returns its model: the next rung's checkpoint
    continued = train_fold(
        MNIST, high.to_train[0], data.x_train, data.y_train, with_model=False, checkpoint=first.model_files
    )
    # The same fold trained straight through, from the same seed (the chain's first key).
    same_seed = replace(straight.to_train[0], root_key=low.to_train[0].key)
    whole = train_fold(MNIST, same_seed, data.x_train, data.y_train, with_model=False)
    assert continued.epochs_run == 2 and continued.first_epoch == 1 and whole.epochs_run == 3
    assert continued.history["loss"] == pytest.approx(whole.history["loss"][1:], rel=1e-4)
    assert continued.accuracy == pytest.approx(whole.accuracy, abs=1e-9)
    assert np.isclose(continued.loss, whole.loss, rtol=1e-4)


@pytest.mark.slow
def test_every_random_layer_draws_a_fresh_stream_each_epoch():
    """Reseeding makes an epoch's draws depend on (seed, epoch, layer) only, and on nothing drawn before: no
    epoch replays another's dropout masks (Keras counts a generator's draws, so a state of (seed, epoch) made
    epoch 1 draw epoch 0's masks one batch later), no two layers draw alike, and the same epoch draws the same."""
    from mlflow_mnist.worker.training import reseed_random_layers

    model = MNIST.build_model(
        {**MNIST.start, "dropout_rate_1": 0.5, "dropout_rate_2": 0.5}, n_classes=2, seed=3, n_train=100
    )
    dropouts = [layer for layer in model.layers if type(layer).__name__ == "Dropout"]
    assert len(dropouts) == 2
    ones = np.ones((4, 64), dtype="float32")

    def masks(epoch: int) -> list[list[bytes]]:
        reseed_random_layers(model, seed=11, epoch=epoch)
        return [[(np.asarray(layer(ones, training=True)) > 0).tobytes() for _ in range(3)] for layer in dropouts]

    epoch_0, epoch_1, epoch_0_again = masks(0), masks(1), masks(0)
    assert epoch_0 == epoch_0_again  # what lets a continued fold equal one trained straight through
    drawn = [mask for epoch in (epoch_0, epoch_1) for layer in epoch for mask in layer]
    assert len(set(drawn)) == len(drawn)  # 12 draws, none repeated across epochs or layers
