"""The model folder shapes the gate loads (mlflow_mnist.model_check): every one ``final`` writes passes (a seed's
model in both precisions, with and without its examples; the seed ensemble), and an MLmodel that names code, another
loader or a path outside the folder, or a folder with a symbolic link, is refused in one line. Real folders, made
by the functions ``final`` uses, once per module; no training."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from mlflow_mnist import model_check
from mlflow_mnist.model_check import ModelFilesRefused, check_model_folder
from mlflow_mnist.schema import ENSEMBLE_KIND, MEDIAN_KIND

pytestmark = pytest.mark.slow  # TensorFlow: Keras models saved through MLflow


def write(files: dict[str, bytes], folder: Path) -> Path:
    for relative, content in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(content)
    return folder


@pytest.fixture(scope="module")
def made(tmp_path_factory, sample) -> dict[str, Path]:
    """Model folders as ``final`` writes them: seeds in float32 and mixed_bfloat16 (as served, with examples; as
    a fold's, without), and the ensemble of two seeds."""
    from mlflow_mnist.ensemble import ensemble_files
    from mlflow_mnist.tasks.mnist.model import SEED_START, build_model
    from mlflow_mnist.worker.model_files import model_files, model_requirements

    root, x = tmp_path_factory.mktemp("made"), sample.x_test[:2]
    folders, seeds = {}, {}
    for seed, precision in enumerate(("float32", "mixed_bfloat16")):
        model = build_model(SEED_START, precision=precision, seed=seed)
        seeds[seed] = model_files(model, x)
        folders[precision] = write(seeds[seed], root / precision)
        folders[f"{precision} fold"] = write(model_files(model, x, with_example=False), root / f"{precision}-fold")
    y = np.full((2, 2), 0.5, dtype="float32")
    folders["ensemble"] = write(
        ensemble_files(seeds, x_example=x, y_example=y, requirements=model_requirements()), root / "ensemble"
    )
    negative = {seed - 1: files for seed, files in seeds.items()}  # final --seed -1: seeds -1 and 0
    folders["ensemble -1"] = write(
        ensemble_files(negative, x_example=x, y_example=y, requirements=model_requirements()), root / "ensemble-1"
    )
    return folders


@pytest.fixture
def seed(made, tmp_path) -> Path:
    return shutil.copytree(made["float32"], tmp_path / "seed")


@pytest.fixture
def ensemble(made, tmp_path) -> Path:
    return shutil.copytree(made["ensemble"], tmp_path / "ensemble")


def edit(mlmodel: Path, change) -> None:
    content = yaml.safe_load(mlmodel.read_text())
    change(content)
    mlmodel.write_text(yaml.safe_dump(content))


def test_every_shape_final_writes_passes(made):
    for name in ("float32", "mixed_bfloat16", "float32 fold", "mixed_bfloat16 fold"):
        assert check_model_folder(made[name], kind=MEDIAN_KIND) == MEDIAN_KIND
        assert check_model_folder(made[name], kind=None) == MEDIAN_KIND
    assert check_model_folder(made["ensemble"], kind=ENSEMBLE_KIND) == ENSEMBLE_KIND
    assert check_model_folder(made["ensemble"], kind=None) == ENSEMBLE_KIND
    assert check_model_folder(made["ensemble -1"], kind=ENSEMBLE_KIND) == ENSEMBLE_KIND
    # the two precisions write the same MLmodel flavours
    flavors = [yaml.safe_load((made[p] / "MLmodel").read_text())["flavors"] for p in ("float32", "mixed_bfloat16")]
    assert flavors[0] == flavors[1]


def _set(path: str, value):
    def change(content):
        *parents, last = path.split(".")
        node = content["flavors"]
        for key in parents:
            node = node[key]
        node[last] = value

    return change


@pytest.mark.parametrize(
    "change, says",
    [
        (_set("python_function.code", "code"), "python_function flavour has options final does not write: code"),
        (_set("python_function.loader_module", "evil_loader"), "'evil_loader', not MLflow's Keras loader"),
        (_set("python_function.data", "data"), "options final does not write: data"),
        (_set("python_function.predict_fn", "get_raw_model"), "options final does not write: predict_fn"),
        (_set("keras.data", "/elsewhere/data"), "keras.data '/elsewhere/data' is not a relative path inside"),
        (_set("keras.data", "../other/artifacts/data"), "keras.data '../other/artifacts/data' is not a relative"),
        (_set("keras.data", "data/../data"), "is not a relative path inside the model folder"),
        (_set("keras.data", "weights"), "keras.data is 'weights', not 'data'"),
        (_set("keras.save_exported_model", True), "save_exported_model is not false"),
        (_set("python_function.env", {"conda": "/etc/conda.yaml", "virtualenv": "python_env.yaml"}), "env.conda"),
        (_set("onnx", {"data": "model.onnx"}), "has flavours keras, onnx, python_function, not keras, python_function"),
    ],
)
def test_a_seed_mlmodel_final_does_not_write_is_refused(seed, change, says):
    edit(seed / "MLmodel", change)
    with pytest.raises(ModelFilesRefused, match=f"^[^\n]*{says}"):
        check_model_folder(seed, kind=MEDIAN_KIND)
    with pytest.raises(ModelFilesRefused, match=says):
        check_model_folder(seed, kind=None)


def test_an_example_path_outside_the_folder_is_refused(seed):
    edit(seed / "MLmodel", lambda content: content["saved_input_example_info"].update(artifact_path="/etc/passwd"))
    with pytest.raises(ModelFilesRefused, match="saved_input_example_info.artifact_path '/etc/passwd'"):
        check_model_folder(seed, kind=MEDIAN_KIND)


def test_a_symlink_anywhere_in_the_folder_is_refused(seed, tmp_path):
    (tmp_path / "outside").write_text("secret")
    os.symlink(tmp_path / "outside", seed / "data" / "extra")
    with pytest.raises(ModelFilesRefused, match="data/extra is a symbolic link"):
        check_model_folder(seed, kind=MEDIAN_KIND)
    (seed / "data" / "extra").unlink()
    os.symlink(seed / "data", seed / "alias")  # even to a folder inside it
    with pytest.raises(ModelFilesRefused, match="alias is a symbolic link"):
        check_model_folder(seed, kind=MEDIAN_KIND)


def test_missing_or_unreadable_files_are_refused(seed):
    (seed / "data" / "model.keras").unlink()
    with pytest.raises(ModelFilesRefused, match="data/model.keras is missing"):
        check_model_folder(seed, kind=MEDIAN_KIND)
    (seed / "MLmodel").write_text("flavors: [\n")
    with pytest.raises(ModelFilesRefused, match="MLmodel is missing or names no flavours"):
        check_model_folder(seed, kind=None)


def test_one_kind_is_not_the_other(made):
    with pytest.raises(ModelFilesRefused, match="has flavours python_function, not keras, python_function"):
        check_model_folder(made["ensemble"], kind=MEDIAN_KIND)
    with pytest.raises(ModelFilesRefused, match="has flavours keras, python_function, not python_function"):
        check_model_folder(made["float32"], kind=ENSEMBLE_KIND)
    with pytest.raises(ValueError, match="kind 'median'"):
        check_model_folder(made["float32"], kind="median")


def _member(name: str, change):
    def member_change(folder: Path):
        edit(folder / "artifacts" / name / "MLmodel", change)

    return member_change


def _top(change):
    def top_change(folder: Path):
        edit(folder / "MLmodel", change)

    return top_change


def _artifact_path(name: str, path: str):
    return _top(lambda content: content["flavors"]["python_function"]["artifacts"][name].update(path=path))


def _extra_member(folder: Path):
    shutil.copytree(folder / "artifacts" / "seed_0", folder / "artifacts" / "seed_7")


def _renamed_member(folder: Path):
    (folder / "artifacts" / "seed_1").rename(folder / "artifacts" / "model")

    def rename(content):
        artifacts = content["flavors"]["python_function"]["artifacts"]
        artifacts["model"] = {"path": "artifacts/model"}
        del artifacts["seed_1"]

    edit(folder / "MLmodel", rename)


@pytest.mark.parametrize(
    "change, says",
    [
        (_artifact_path("seed_0", "/store/models/m-1/artifacts/artifacts/seed_0"), "seed_0.path '/store/models/m-1"),
        (_artifact_path("seed_1", "artifacts/seed_0"), "seed_1.path is 'artifacts/seed_0', not 'artifacts/seed_1'"),
        (_artifact_path("seed_0", "../../m-2/artifacts/artifacts/seed_0"), "is not a relative path inside"),
        (_member("seed_1", _set("keras.data", "/store/models/m-1/data")), "artifacts/seed_1/MLmodel's keras.data"),
        (_member("seed_0", _set("python_function.code", "code")), "artifacts/seed_0/MLmodel's python_function flav"),
        (_extra_member, "names members seed_0, seed_1, artifacts/ holds seed_0, seed_1, seed_7"),
        (_renamed_member, "names a member 'model', not seed_<k>"),
        (_top(_set("python_function.code", "code")), "does not load this version's ensemble_model.py"),
        (_top(_set("python_function.loader_module", "evil")), "does not load this version's ensemble_model.py"),
        (_top(_set("python_function.model_code_path", "/x/evil.py")), "does not load this version's ensemble_mod"),
        (lambda f: (f / "ensemble_model.py").write_text("raise SystemExit"), "does not load this version's"),
        (_top(_set("python_function.data", "artifacts/seed_0")), "options final does not write: data"),
        (_top(_set("python_function.model_config", {"a": 1})), "options final does not write: model_config"),
        (_top(_set("python_function.streamable", True)), "makes the ensemble streamable"),
    ],
)
def test_an_ensemble_final_did_not_write_is_refused(ensemble, change, says):
    change(ensemble)
    with pytest.raises(ModelFilesRefused, match=says):
        check_model_folder(ensemble, kind=ENSEMBLE_KIND)


def test_a_champion_may_load_the_ensemble_code_an_earlier_version_shipped(ensemble, monkeypatch):
    earlier = b"# ensemble_model.py as an earlier version shipped it\n"
    (ensemble / "ensemble_model.py").write_bytes(earlier)
    monkeypatch.setattr(model_check, "EARLIER_ENSEMBLE_CODE", frozenset({hashlib.sha256(earlier).hexdigest()}))
    assert check_model_folder(ensemble, kind=None, earlier_code=True) == ENSEMBLE_KIND
    with pytest.raises(ModelFilesRefused, match="does not load this version's ensemble_model.py"):
        check_model_folder(ensemble, kind=ENSEMBLE_KIND)  # a candidate: this version's code only


def _append(name: str, text: str):
    def change(folder: Path) -> None:
        (folder / name).write_text((folder / name).read_text() + text)

    return change


def _conda_pip(extra: str):
    def change(folder: Path) -> None:
        content = yaml.safe_load((folder / "conda.yaml").read_text())
        next(item for item in content["dependencies"] if isinstance(item, dict))["pip"].append(extra)
        (folder / "conda.yaml").write_text(yaml.safe_dump(content))

    return change


def _python_env(key: str, value):
    def change(folder: Path) -> None:
        content = yaml.safe_load((folder / "python_env.yaml").read_text())
        content[key] = value
        (folder / "python_env.yaml").write_text(yaml.safe_dump(content))

    return change


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (_append("requirements.txt", "\nan-attackers-package==6.6.6\n"), "requirements.txt is not"),
        (_append("requirements.txt", "\n--extra-index-url https://example.com/simple\n"), "requirements.txt is not"),
        (_append("requirements.txt", "\nkeras @ https://example.com/keras.whl\n"), "requirements.txt is not"),
        (_conda_pip("an-attackers-package==6.6.6"), "conda.yaml is not"),
        (_python_env("dependencies", ["-r requirements.txt", "an-attackers-package"]), "python_env.yaml is not"),
        (_python_env("build_dependencies", ["pip==26.3", "evil-build-hook==1.0"]), "python_env.yaml is not"),
        (lambda folder: (folder / "conda.yaml").unlink(), "environment files cannot be read"),
    ],
)
@pytest.mark.parametrize("kind", ["seed", "ensemble"])
def test_environment_files_beyond_finals_pins_are_refused(request, kind, change, says):
    """What `mlflow models serve --env-manager virtualenv|conda` installs from: only the keras, tensorflow and
    mlflow pins final writes (versions free: promote may run elsewhere), however the model reached the candidate
    (the fourth audit: seed runs forged whole through the API, then taken by a resumed final, carry a digest of
    their maker's). Before, these were promoted. A champion (earlier_code) is judged by its recorded digest."""
    folder = request.getfixturevalue(kind)
    change(folder)
    shape = MEDIAN_KIND if kind == "seed" else ENSEMBLE_KIND
    with pytest.raises(ModelFilesRefused, match=says):
        check_model_folder(folder, kind=shape)
    assert check_model_folder(folder, kind=None, earlier_code=True) == shape
