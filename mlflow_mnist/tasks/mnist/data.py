"""Load, validate and select MNIST.

One loader for every place MNIST lives: a folder of the four canonical IDX files (gzip'ed or not), a
Keras-layout ``.npz``, the small real sample shipped in this package, or nothing (then ``MLFLOW_MNIST_DATA``,
then Keras' own cache or download). Every array is validated before any training starts, so a broken file
fails in one line instead of deep inside ``fit``.
"""

from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlflow_mnist.tasks.base import DataError, Dataset, array_digest, expand_user, select_classes, variant_name

DATA_ENV_VAR = "MLFLOW_MNIST_DATA"
SAMPLE_PATH = Path(__file__).parent / "sample" / "mnist_sample.npz"
DIGITS = tuple(str(d) for d in range(10))
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_MAGIC = {1: 2049, 3: 2051}  # labels, images (big-endian uint8 IDX)
IMAGE_SHAPE = (28, 28)


@dataclass(frozen=True)
class Mnist:
    """Raw MNIST arrays: uint8 images (n, 28, 28) and integer labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


def load_mnist(source: str | os.PathLike | None = None) -> Mnist:
    """Load MNIST from ``source``: a folder of IDX files, an ``.npz``, ``"sample"``, or None/"" for the default."""
    given = str(source or "")
    if given and not given.strip():  # "" asks for the default; " " is a mistake, not a wish for the download
        raise DataError(
            f"data path {given!r} is blank: pass a folder of MNIST IDX files, a Keras-layout .npz or 'sample', "
            f"or leave it out (unset) to use Keras' download"
        )
    source = given.strip()
    if not source:
        from_env = os.environ.get(DATA_ENV_VAR, "")
        if from_env and not from_env.strip():
            raise DataError(f"${DATA_ENV_VAR} {from_env!r} is blank: set it to a data path or 'sample', or unset it")
        source = from_env.strip()
    if not source:
        return _load_keras_default()
    if source == "sample":
        return _load_npz(SAMPLE_PATH, label="sample")
    path = expand_user(source)
    if path.is_dir():
        return _load_idx_dir(path)
    if path.is_file():
        return _load_npz(path, label=str(path))
    if path.exists():  # /dev/null, a pipe, a socket: reading one would hang or read nothing
        raise DataError(
            f"data path {source!r} is neither a file nor a folder: pass a folder of MNIST IDX files, a Keras-layout "
            f".npz, or 'sample'"
        )
    raise DataError(
        f"data path {source!r} does not exist: pass a folder of MNIST IDX files, a Keras-layout .npz, "
        f"'sample', or leave it empty to use Keras' download"
    )


def _keras_cache_folders() -> list[str]:
    """The folders Keras' ``get_file`` may create for MNIST's download, deepest first: its ``datasets`` folder
    under ``$KERAS_HOME`` (``~/.keras``), or under ``/tmp/.keras`` where that is not writable."""
    try:
        from keras.src.backend.config import keras_home

        home = os.path.expanduser(keras_home())
    except Exception:  # noqa: BLE001 - a Keras without this private helper: its documented default
        home = os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))
    fallback = os.path.join("/tmp", ".keras")
    return [os.path.join(home, "datasets"), os.path.join(fallback, "datasets"), fallback]


def _load_keras_default() -> Mnist:
    import contextlib
    import io

    import keras  # imported late: loading from a file must not pay for TensorFlow start-up

    folders = [folder for folder in _keras_cache_folders() if not os.path.exists(folder)]
    said = io.StringIO()  # "Downloading data from ..." and a progress bar: never on stdout, which is for results
    try:
        with contextlib.redirect_stdout(said):
            (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as error:  # noqa: BLE001 - any download failure gets the same advice
        for folder in folders:  # the empty cache folders this failed download made (rmdir leaves a full one)
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise DataError(
            f"could not download MNIST through Keras ({type(error).__name__}): pass --data PATH, set "
            f"{DATA_ENV_VAR}, or use --data sample"
        ) from None
    return _validated(x_train, y_train, x_test, y_test, source="keras")


def _load_npz(path: Path, label: str) -> Mnist:
    if path.is_file() and not zipfile.is_zipfile(path):  # numpy would guess a pickle and suggest unpickling it
        raise DataError(
            f"{label} is not a readable .npz file (not a zip archive): give --data the Keras mnist.npz, a folder of "
            f"MNIST's IDX files, or sample"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in IDX_FILES if key not in archive.files]
            if missing:
                raise DataError(
                    f"{label} lacks arrays {missing}: expected the Keras layout x_train, y_train, x_test, y_test"
                )
            arrays = {key: archive[key] for key in IDX_FILES}
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise DataError(f"{label} is not a readable .npz file ({error}): re-download or re-create it") from None
    return _validated(**arrays, source=label)


def _load_idx_dir(folder: Path) -> Mnist:
    arrays = {}
    for key, stem in IDX_FILES.items():
        candidates = [folder / f"{stem}.gz", folder / stem]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            raise DataError(f"{folder} has no {stem}[.gz]: it needs the four canonical MNIST IDX files")
        arrays[key] = read_idx(found, expected_ndim=3 if key.startswith("x") else 1)
    return _validated(**arrays, source=str(folder))


def read_idx(path: Path, expected_ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (gzip'ed or not) of unsigned bytes: images (3 dimensions) or labels (1)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as error:  # zlib: a damaged deflate stream
        raise DataError(f"{path} cannot be read ({error}): the file is truncated or corrupt, re-download it") from None
    if len(raw) < 8:
        raise DataError(f"{path} is too short to be an IDX file: re-download it")
    magic = int.from_bytes(raw[:4], "big")
    ndim = raw[3]
    allowed = [_IDX_MAGIC[expected_ndim]] if expected_ndim else list(_IDX_MAGIC.values())
    if magic not in allowed:
        kinds = {2049: "2049 (labels)", 2051: "2051 (images)"}
        raise DataError(f"{path} has IDX magic number {magic}, expected {' or '.join(kinds[m] for m in allowed)}")
    header_end = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    payload = np.frombuffer(raw, dtype=np.uint8, offset=header_end)
    if payload.size != expected:
        raise DataError(f"{path} holds {payload.size} bytes of data but its header promises {shape}: re-download it")
    return payload.reshape(shape)


def _validated(x_train, y_train, x_test, y_test, source: str) -> Mnist:
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{source}: {split} images have shape {x.shape}, expected (n, 28, 28)")
        if x.dtype != np.uint8:
            raise DataError(f"{source}: {split} images are {x.dtype}, expected uint8 pixels 0..255")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{source}: {len(x)} {split} images but labels of shape {y.shape}")
        if len(x) == 0:
            raise DataError(f"{source}: the {split} split is empty")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() > 9:
            raise DataError(f"{source}: {split} labels must be integers 0..9, found {y.min()}..{y.max()}")
    return Mnist(
        np.asarray(x_train),
        np.asarray(y_train).astype(np.uint8),
        np.asarray(x_test),
        np.asarray(y_test).astype(np.uint8),
        source,
    )


def parse_digits(text: str) -> tuple[int, ...]:
    """``"2,7"`` -> (2, 7); ``"all"`` -> 0..9. At least two distinct digits 0-9."""
    text = str(text).strip().lower()
    if text == "all":
        return tuple(range(10))
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise DataError(f"digits {text!r} names no digit: give at least two, e.g. '2,7', 'all', or leave it out")
    if not all(part.isdigit() for part in parts):
        raise DataError(f"digits {text!r} must be comma-separated digits 0-9 such as '2,7', or 'all'")
    digits = tuple(int(part) for part in parts)
    if any(d > 9 for d in digits):
        raise DataError(f"digits {text!r} must each be 0-9, e.g. '2,7'")
    if len(digits) < 2:
        raise DataError(f"digits {text!r} names one class: give at least two digits, e.g. '2,7', or 'all'")
    if len(set(digits)) != len(digits):
        raise DataError(f"digits {text!r} repeats a digit: give distinct digits, e.g. '2,7'")
    return digits


def select_digits(data: Mnist, digits: tuple[int, ...]) -> Dataset:
    """Keep only ``digits``, relabelled by position: for (2, 7), a 2 is class 0 and a 7 is class 1.

    The digest of each split covers its pixels, labels and the digits chosen: the same bytes as before MNIST
    became a task, so every fold key an older store holds is still found.
    """
    arrays = {"x_train": data.x_train, "y_train": data.y_train, "x_test": data.x_test, "y_test": data.y_test}
    kept = select_classes(arrays, digits, source=data.source, names=DIGITS)
    chosen = np.asarray(digits)
    return Dataset(
        **kept,
        class_names=tuple(DIGITS[d] for d in digits),
        variant=variant_name(digits, DIGITS),
        source=data.source,
        train_digest=array_digest(kept["x_train"], kept["y_train"], chosen),
        test_digest=array_digest(kept["x_test"], kept["y_test"], chosen),
    )


def load_task(source: str | None, digits: str) -> Dataset:
    """Load and select in one call."""
    return select_digits(load_mnist(source), parse_digits(digits))


def make_sample(data: Mnist, train_per_digit: int, test_per_digit: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A class-balanced random subset of real MNIST, as Keras-layout arrays (how the shipped sample was made)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, x, y, per_digit in (
        ("train", data.x_train, data.y_train, train_per_digit),
        ("test", data.x_test, data.y_test, test_per_digit),
    ):
        picks = np.sort(
            np.concatenate([rng.choice(np.flatnonzero(y == d), per_digit, replace=False) for d in range(10)])
        )
        out[f"x_{split}"], out[f"y_{split}"] = x[picks], y[picks]
    return out
