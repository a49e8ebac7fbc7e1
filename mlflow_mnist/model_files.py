"""A model's files as one local copy with one digest: what the gate measures is what it registers, and what it
later checks ``@champion`` against.

A model in the artifact store is a folder anyone who can write the store can change at any moment; a copy
downloaded once into a temporary folder of the gate's own does not change under it. :func:`local_copy` downloads
it and hashes it right away, and everything after (checks, predictions, the upload of the registered copy) reads
that copy.

The digest (:func:`tree_sha256`) is the sha256 of what ``sha256sum`` prints for the folder's files, one line per
file in byte order of their relative paths, so that anyone can check a downloaded model by hand (GNU tools)::

    cd MODEL_FOLDER && find . -type f ! -path ./registered_model_meta -printf '%P\\0' | LC_ALL=C sort -z |
        xargs -0 sha256sum | sha256sum

``registered_model_meta`` (:data:`NOT_MODEL_FILES`) is left out: MLflow writes it into the model's own folder of a
local artifact store whenever the model is loaded through ``models:/<name>/<version>`` or an alias (serving
``@champion`` does), and nothing in MLflow reads it back (3.17's source: only ``models_artifact_repo`` names it).
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlflow_mnist import tracking

CHUNK = 1 << 20
#: Files at the top of a model folder that are not the model: MLflow's ``registered_model_meta`` (the registered
#: name and version, written by ``ModelsArtifactRepository.download_artifacts`` into a local store's folder).
NOT_MODEL_FILES = frozenset({"registered_model_meta"})


@dataclass(frozen=True)
class LocalModel:
    """A model's files downloaded once (``folder``, removed when :func:`local_copy` exits) and their digest."""

    folder: Path
    sha256: str


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256sum_line(file_digest: str, name: str) -> str:
    """The line ``sha256sum`` prints for a file: a name with a backslash or a line break is escaped and the line
    marked with a leading backslash, so no name can pass for two lines (two trees then never read the same)."""
    if "\\" in name or "\n" in name or "\r" in name:
        escaped = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return f"\\{file_digest}  {escaped}\n"
    return f"{file_digest}  {name}\n"


def tree_sha256(folder: Path) -> str:
    """The content digest of every file under ``folder`` but :data:`NOT_MODEL_FILES`: their relative paths and
    bytes, in one sha256 (empty folders do not count; the module docstring shows the same digest made with shell
    tools)."""
    names = (path.relative_to(folder).as_posix() for path in Path(folder).rglob("*") if path.is_file())
    files = sorted(
        (name for name in names if name not in NOT_MODEL_FILES),
        key=lambda name: name.encode("utf-8", "surrogateescape"),  # byte order, as `LC_ALL=C sort`
    )
    listing = "".join(_sha256sum_line(_file_sha256(Path(folder, name)), name) for name in files)
    return hashlib.sha256(listing.encode("utf-8", "surrogateescape")).hexdigest()


@contextlib.contextmanager
def local_copy(artifact_uri: str, *, label: str = "model") -> Iterator[LocalModel]:
    """The files at ``artifact_uri`` downloaded once into a temporary folder (its name starts with
    ``mlflow-mnist-<label>-``), with their digest taken right after the download; the folder is removed on exit."""
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix=f"mlflow-mnist-{label}-") as tmp, tracking.quiet_downloads():
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=tmp))
        yield LocalModel(folder, tree_sha256(folder))
