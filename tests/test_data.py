from __future__ import annotations

import os
import re

import numpy as np
import pytest
from conftest import write_idx, write_idx_folder

from mlflow_mnist.tasks.base import DataError
from mlflow_mnist.tasks.mnist.data import (
    load_mnist,
    load_task,
    make_sample,
    parse_digits,
    select_digits,
)


def test_sample_is_real_balanced_mnist(sample):
    assert sample.x_train.shape == (3000, 28, 28) and sample.x_train.dtype == np.uint8
    assert np.bincount(sample.y_train).tolist() == [300] * 10
    assert np.bincount(sample.y_test).tolist() == [100] * 10
    # Real digits are mostly background with some ink, not noise.
    assert 0.1 < (sample.x_train > 128).mean() < 0.3


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_round_trips(tmp_path, sample, compress):
    folder = write_idx_folder(tmp_path / "mnist", sample, compress)
    loaded = load_mnist(folder)
    assert np.array_equal(loaded.x_train, sample.x_train) and np.array_equal(loaded.y_test, sample.y_test)


def test_npz_and_env_var(tmp_path, sample, monkeypatch):
    path = tmp_path / "m.npz"
    np.savez(path, x_train=sample.x_train, y_train=sample.y_train, x_test=sample.x_test, y_test=sample.y_test)
    assert np.array_equal(load_mnist(path).x_test, sample.x_test)
    monkeypatch.setenv("MLFLOW_MNIST_DATA", str(path))
    assert load_mnist("").source == str(path)


@pytest.mark.skipif(not os.environ.get("MLFLOW_MNIST_DATA"), reason="real MNIST not available here")
def test_real_mnist_matches_published_counts():
    data = load_mnist(os.environ["MLFLOW_MNIST_DATA"])
    assert np.bincount(data.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    task = select_digits(data, (2, 7))
    assert (len(task.y_train), len(task.y_test)) == (12223, 2060)


def _corrupt_cases(tmp_path, sample):
    good = write_idx_folder(tmp_path / "good", sample)
    cases = {}
    truncated = write_idx_folder(tmp_path / "truncated", sample)
    blob = (truncated / "train-images-idx3-ubyte.gz").read_bytes()
    (truncated / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    cases["truncated"] = (truncated, "truncated or corrupt")
    magic = write_idx_folder(tmp_path / "magic", sample)
    write_idx(magic / "train-labels-idx1-ubyte.gz", sample.y_train, magic=1234)
    cases["magic"] = (magic, "magic number 1234")
    shape = write_idx_folder(tmp_path / "shape", sample)
    write_idx(shape / "t10k-images-idx3-ubyte.gz", sample.x_test.reshape(-1, 14, 56))
    cases["shape"] = (shape, "expected (n, 28, 28)")
    labels = write_idx_folder(tmp_path / "labels", sample)
    write_idx(labels / "t10k-labels-idx1-ubyte.gz", np.where(sample.y_test == 3, 12, sample.y_test).astype(np.uint8))
    cases["labels"] = (labels, "labels must be integers 0..9")
    missing = write_idx_folder(tmp_path / "missing", sample)
    (missing / "t10k-labels-idx1-ubyte.gz").unlink()
    cases["missing file"] = (missing, "has no t10k-labels-idx1-ubyte")
    bad_npz = tmp_path / "bad.npz"
    bad_npz.write_bytes(b"this is not a zip archive")
    cases["corrupt npz"] = (bad_npz, "not a readable .npz")
    partial_npz = tmp_path / "partial.npz"
    np.savez(partial_npz, x_train=sample.x_train)
    cases["npz lacks arrays"] = (partial_npz, "lacks arrays")
    empty = tmp_path / "empty.npz"
    np.savez(empty, x_train=sample.x_train[:0], y_train=sample.y_train[:0], x_test=sample.x_test, y_test=sample.y_test)
    cases["empty split"] = (empty, "train split is empty")
    cases["no such path"] = (tmp_path / "nowhere", "does not exist")
    assert load_mnist(good).x_train.shape == sample.x_train.shape
    return cases


def test_broken_data_fails_with_one_clear_line(tmp_path, sample):
    for name, (path, message) in _corrupt_cases(tmp_path, sample).items():
        with pytest.raises(DataError, match=re.escape(message)) as caught:
            load_mnist(path)
        assert "\n" not in str(caught.value), name


@pytest.mark.parametrize(
    "text, expected",
    [("2,7", (2, 7)), (" 7, 2 ", (7, 2)), ("0,1,2", (0, 1, 2)), ("all", tuple(range(10)))],
)
def test_parse_digits(text, expected):
    assert parse_digits(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("2,2", "repeats a digit"),
        ("11", "must each be 0-9"),
        ("a", "comma-separated digits"),
        ("7", "names one class"),
        ("", "names no digit"),
        ("2,-7", "comma-separated"),
    ],
)
def test_parse_digits_rejects(text, message):
    with pytest.raises(DataError, match=message):
        parse_digits(text)


def test_select_digits_relabels_by_position(sample):
    task = select_digits(sample, (7, 2))
    assert task.variant == "7v2" and task.class_names == ("7", "2") and task.n_classes == 2
    assert len(task.y_train) == 600 and set(np.unique(task.y_train)) == {0, 1}
    # Class 0 is the first digit given: the 7s.
    sevens = sample.x_train[sample.y_train == 7]
    assert np.array_equal(task.x_train[task.y_train == 0], sevens)
    assert load_task("sample", "all").n_classes == 10


def test_digest_changes_with_content_and_digits(sample):
    a = select_digits(sample, (2, 7))
    assert a.digest() == select_digits(sample, (2, 7)).digest()
    assert a.digest() != select_digits(sample, (7, 2)).digest()
    assert a.digest() != a.digest("test")


def test_make_sample_is_balanced_and_reproducible(sample):
    first = make_sample(sample, 5, 2, seed=1)
    assert np.bincount(first["y_train"]).tolist() == [5] * 10
    assert np.array_equal(first["x_train"], make_sample(sample, 5, 2, seed=1)["x_train"])
