"""The shapes of model folder the gate will load: only the ones ``final`` writes, checked on its local copy.

Loading an MLflow model does what its ``MLmodel`` file says (MLflow 3.17's ``mlflow.pyfunc.load_model``):
``python_function.loader_module`` is imported, a ``code`` folder is put on ``sys.path``, a "models from code" file
is executed, and every path the file names (``keras.data``, ``python_function.data``, ``artifacts.<name>.path``) is
joined to the folder with ``os.path.join``, so an absolute path, or one through ``..``, names files outside the
folder, which its digest (:func:`mlflow_mnist.model_files.tree_sha256`) does not cover. Anyone who can write the
artifact store can edit that file; the gate must not run their code, nor measure and register files it does not
hash.

:func:`check_model_folder` accepts exactly what this package writes (:func:`mlflow_mnist.worker.model_files.
model_files` through MLflow's Keras flavour for a seed; :func:`mlflow_mnist.ensemble.ensemble_files`, "models
from code", for the seed ensemble; both precisions write the same ``MLmodel``) and raises
:class:`ModelFilesRefused`, one line, for anything else:

- a seed's model: flavours ``keras`` and ``python_function`` and no other; MLflow's Keras loader
  (``loader_module: mlflow.keras``), no ``code``, no ``data`` and no other loader option; ``keras.data: data``,
  ``save_exported_model: false`` (a SavedModel is a graph, not the Keras file), and ``data/model.keras`` a file;
- the seed ensemble: flavour ``python_function`` alone, MLflow's code-model loader on ``ensemble_model.py`` with
  this package's bytes, no ``code``, no ``data``; as ``artifacts``, ``seed_<k>`` at ``artifacts/seed_<k>``,
  exactly the folders under ``artifacts/``, each of them a seed's model as above;
- everywhere: the environment files ``conda.yaml`` and ``python_env.yaml``, input example paths inside the
  folder, every path relative, without ``..``, resolving inside the folder, and no symbolic link in the folder
  (a download never makes one, MLflow copies what they point to);
- a candidate's own environment files (what ``mlflow models serve`` installs from, at the folder's top): the pins
  ``final`` writes and nothing else: ``requirements.txt`` holds ``keras==``, ``tensorflow==`` (or
  ``tensorflow-cpu==``) and ``mlflow==`` lines alone; ``python_env.yaml`` a Python version, pip, setuptools and
  wheel pins and ``-r requirements.txt``; ``conda.yaml`` conda-forge, Python, pip and the same pins. Their
  versions are not compared (promote may run elsewhere than final); a package, an index URL or an option added
  to them is refused, however the model reached the candidate.

Whether the ensemble's members are the final's own seed models is the registry's check (it needs the store).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from mlflow_mnist.schema import ENSEMBLE_KIND, MEDIAN_KIND

KERAS_LOADER = "mlflow.keras"
CODE_MODEL_LOADER = "mlflow.pyfunc.loaders.code_model"
KERAS_FILE = "data/model.keras"  # a seed's weights, in its own model folder and under the ensemble's
ENV = {"conda": "conda.yaml", "virtualenv": "python_env.yaml"}
#: The options MLflow 3.17 writes for each flavour of the two shapes (values checked below where they matter).
SEED_KERAS_KEYS = frozenset({"data", "keras_backend", "keras_version", "save_exported_model"})
SEED_PYFUNC_KEYS = frozenset({"env", "loader_module", "python_version"})
ENSEMBLE_PYFUNC_KEYS = frozenset(
    {"artifacts", "cloudpickle_version", "code", "env", "loader_module", "model_code_path", "python_version",
     "streamable"}
)  # fmt: skip
#: sha256 of the ``ensemble_model.py`` earlier versions of this package shipped (946c800): a champion registered
#: then is still a model ``final`` wrote. A candidate must load this version's.
EARLIER_ENSEMBLE_CODE = frozenset({"ce1bc1320984c06a75f4d7a9624752c8acff0adaff0a2f2089fb0c30703084f1"})


class ModelFilesRefused(ValueError):
    """A model folder is not one ``final`` writes; the message, one line, says what is wrong."""


def check_model_folder(folder: Path, *, kind: str | None, earlier_code: bool = False) -> str:
    """Raise :class:`ModelFilesRefused` unless ``folder`` (a local copy) holds a model of the shape ``final``
    writes: ``kind`` is :data:`~mlflow_mnist.schema.MEDIAN_KIND` (a seed's Keras model),
    :data:`~mlflow_mnist.schema.ENSEMBLE_KIND` (the seed ensemble), or None for whichever of the two its
    ``MLmodel`` says (a champion, whose kind tag anyone can change: each shape is checked in full). With
    ``earlier_code``, an ensemble may load the ``ensemble_model.py`` of an earlier version of this package.
    Returns the kind found."""
    from mlflow_mnist.ensemble import MODEL_CODE

    if kind not in (None, MEDIAN_KIND, ENSEMBLE_KIND):
        raise ValueError(f"kind {kind!r} is not {MEDIAN_KIND!r}, {ENSEMBLE_KIND!r} or None")
    folder = Path(folder)
    _no_links(folder)
    mlmodel = _mlmodel(folder, "MLmodel")
    found = ENSEMBLE_KIND if set(mlmodel["flavors"]) == {"python_function"} else MEDIAN_KIND
    if not earlier_code:  # a candidate: what serving it installs is final's pins (a champion's: its digest's)
        _check_environment(folder)
    if (kind or found) == MEDIAN_KIND:
        _check_seed(folder, "", mlmodel)
        return MEDIAN_KIND
    pyfunc = _flavor(mlmodel, {"python_function"}, "python_function", ENSEMBLE_PYFUNC_KEYS, "MLmodel")
    code = os.path.basename(str(pyfunc.get("model_code_path") or ""))  # MLflow loads the basename, from the folder
    code_file = folder / code
    shipped = code_file.is_file() and (
        code_file.read_bytes() == MODEL_CODE.read_bytes()
        or (earlier_code and hashlib.sha256(code_file.read_bytes()).hexdigest() in EARLIER_ENSEMBLE_CODE)
    )
    if pyfunc.get("loader_module") != CODE_MODEL_LOADER or pyfunc.get("code") or code != MODEL_CODE.name or not shipped:
        raise ModelFilesRefused(f"it does not load this version's {MODEL_CODE.name}")
    if pyfunc.get("streamable") not in (None, False):
        raise ModelFilesRefused("its MLmodel makes the ensemble streamable")
    _check_env(folder, "", mlmodel, pyfunc)
    artifacts = pyfunc.get("artifacts")
    if not isinstance(artifacts, dict) or not artifacts or not all(isinstance(name, str) for name in artifacts):
        raise ModelFilesRefused("its MLmodel names no member models (python_function.artifacts)")
    members = folder / "artifacts"
    present = sorted(entry.name for entry in members.iterdir()) if members.is_dir() else []
    if sorted(artifacts) != present:
        raise ModelFilesRefused(
            f"its MLmodel names members {', '.join(sorted(artifacts))}, artifacts/ holds {', '.join(present) or 'none'}"
        )
    for name, info in sorted(artifacts.items()):
        where = f"python_function.artifacts.{name}"
        if not re.fullmatch(r"seed_-?[0-9]+", name):  # final's seeds are --seed + k, and --seed may be negative
            raise ModelFilesRefused(f"its MLmodel names a member {name!r}, not seed_<k>")
        if not isinstance(info, dict) or not set(info) <= {"path", "uri"}:  # uri: where the writer took it from
            raise ModelFilesRefused(f"its MLmodel's {where} is not a path and a uri")
        _inside(folder, "", info.get("path"), f"MLmodel's {where}.path", expected=f"artifacts/{name}")
        member = f"artifacts/{name}/"
        _check_seed(folder, member, _mlmodel(folder, member + "MLmodel"))
    return ENSEMBLE_KIND


def _check_seed(folder: Path, prefix: str, mlmodel: dict[str, Any]) -> None:
    """A seed's Keras model at ``folder/prefix`` (``prefix``: "" or an ensemble member's ``artifacts/seed_k/``)."""
    where = f"{prefix}MLmodel"
    flavors = {"keras", "python_function"}
    keras = _flavor(mlmodel, flavors, "keras", SEED_KERAS_KEYS, where)
    pyfunc = _flavor(mlmodel, flavors, "python_function", SEED_PYFUNC_KEYS, where)
    if pyfunc.get("loader_module") != KERAS_LOADER:
        raise ModelFilesRefused(
            f"{where} loads it with {pyfunc.get('loader_module')!r}, not MLflow's Keras loader {KERAS_LOADER}"
        )
    _inside(folder, prefix, keras.get("data"), f"{where}'s keras.data", expected="data")
    if keras.get("save_exported_model") is not False:
        raise ModelFilesRefused(f"{where}'s keras.save_exported_model is not false (an exported graph)")
    if not (folder / prefix / KERAS_FILE).is_file():
        raise ModelFilesRefused(f"{prefix}{KERAS_FILE} is missing")
    _check_env(folder, prefix, mlmodel, pyfunc)


def _check_env(folder: Path, prefix: str, mlmodel: dict[str, Any], pyfunc: dict[str, Any]) -> None:
    """The environment files and the input examples: paths inside the folder, the names MLflow writes."""
    where = f"{prefix}MLmodel"
    env = pyfunc.get("env")
    if env is not None:  # which files `mlflow models serve` builds the environment from
        if not isinstance(env, dict) or set(env) != set(ENV):
            raise ModelFilesRefused(f"{where}'s python_function.env is not {ENV}")
        for key, name in ENV.items():
            _inside(folder, prefix, env[key], f"{where}'s python_function.env.{key}", expected=name)
    example = mlmodel.get("saved_input_example_info")
    if example is not None:
        if not isinstance(example, dict):
            raise ModelFilesRefused(f"{where}'s saved_input_example_info is not a mapping")
        for key in ("artifact_path", "serving_input_path"):
            if example.get(key) is not None:
                _inside(folder, prefix, example[key], f"{where}'s saved_input_example_info.{key}")


#: A line of requirements.txt ``final`` writes (:func:`mlflow_mnist.worker.model_files.model_requirements`).
_PIN = re.compile(r"(keras|tensorflow|tensorflow-cpu|mlflow)==[0-9][0-9A-Za-z.+!]*")
_BUILD_PIN = re.compile(r"(pip|setuptools|wheel)==[0-9][0-9A-Za-z.+!]*")
_PYTHON = re.compile(r"[0-9]+\.[0-9]+(\.[0-9]+)?")


def _check_environment(folder: Path) -> None:
    """The environment files at ``folder``'s top hold final's pins and nothing else (the module docstring)."""
    import yaml

    def refuse(name: str) -> ModelFilesRefused:
        return ModelFilesRefused(f"{name} is not the environment final writes (keras, tensorflow and mlflow pins)")

    try:
        pins = [line.strip() for line in (folder / "requirements.txt").read_text().splitlines() if line.strip()]
        python_env = yaml.safe_load((folder / ENV["virtualenv"]).read_text())
        conda = yaml.safe_load((folder / ENV["conda"]).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ModelFilesRefused(f"its environment files cannot be read ({type(error).__name__})") from None
    names = sorted(match.group(1).removesuffix("-cpu") for match in map(_PIN.fullmatch, pins) if match)
    if len(names) != len(pins) or names != ["keras", "mlflow", "tensorflow"]:
        raise refuse("requirements.txt")
    if (
        not isinstance(python_env, dict)
        or set(python_env) != {"python", "build_dependencies", "dependencies"}
        or not _PYTHON.fullmatch(str(python_env["python"]))
        or python_env["dependencies"] != ["-r requirements.txt"]
        or not isinstance(python_env["build_dependencies"], list)
        or not all(_BUILD_PIN.fullmatch(str(item)) for item in python_env["build_dependencies"])
    ):
        raise refuse(ENV["virtualenv"])
    dependencies = conda.get("dependencies") if isinstance(conda, dict) else None
    if (
        not isinstance(conda, dict)
        or set(conda) != {"name", "channels", "dependencies"}
        or conda["channels"] != ["conda-forge"]
        or not isinstance(dependencies, list)
        or [item for item in dependencies if isinstance(item, dict)] != [{"pip": pins}]
        or not all(
            isinstance(item, dict) or re.fullmatch(r"python=[0-9.]+|pip(<=|==|>=)[0-9][0-9A-Za-z.]*", str(item))
            for item in dependencies
        )
    ):
        raise refuse(ENV["conda"])


def _flavor(mlmodel: dict[str, Any], flavors: set[str], name: str, keys: frozenset[str], where: str) -> dict:
    if set(mlmodel["flavors"]) != flavors:
        raise ModelFilesRefused(
            f"{where} has flavours {', '.join(sorted(map(str, mlmodel['flavors'])))}, not {', '.join(sorted(flavors))}"
        )
    conf = mlmodel["flavors"][name]
    if not isinstance(conf, dict):
        raise ModelFilesRefused(f"{where}'s {name} flavour is not a mapping")
    extra = sorted(str(key) for key in conf if key not in keys)
    if extra:  # e.g. python_function.data, predict_fn, model_config: options final never writes
        raise ModelFilesRefused(f"{where}'s {name} flavour has options final does not write: {', '.join(extra)}")
    return conf


def _mlmodel(folder: Path, relative: str) -> dict[str, Any]:
    import yaml

    path = folder / relative
    try:
        content = yaml.safe_load(path.read_bytes()) if path.is_file() else None
    except yaml.YAMLError:
        content = None
    if not isinstance(content, dict) or not isinstance(content.get("flavors"), dict):
        raise ModelFilesRefused(f"{relative} is missing or names no flavours")
    return content


def _inside(folder: Path, prefix: str, path: Any, what: str, *, expected: str | None = None) -> None:
    """``path``, as MLflow reads it (joined to the model at ``folder/prefix``), is relative, has no ``..``,
    resolves inside ``folder`` and, when given, is ``expected``."""
    text = path if isinstance(path, str) else ""
    if not text or os.path.isabs(text) or "\\" in text or ".." in PurePosixPath(text).parts:
        raise ModelFilesRefused(f"{what} {path!r} is not a relative path inside the model folder")
    if not Path(folder, prefix, text).resolve().is_relative_to(folder.resolve()):
        raise ModelFilesRefused(f"{what} {path!r} resolves outside the model folder")
    if expected is not None and PurePosixPath(text) != PurePosixPath(expected):
        raise ModelFilesRefused(f"{what} is {path!r}, not {expected!r}")


def _no_links(folder: Path) -> None:
    for parent, directories, files in os.walk(folder):
        for name in (*directories, *files):
            if os.path.islink(os.path.join(parent, name)):
                relative = Path(parent, name).relative_to(folder).as_posix()
                raise ModelFilesRefused(f"{relative} is a symbolic link")
