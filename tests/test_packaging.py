"""conda.yaml (for `mlflow run`) and pyproject.toml (for pip) must ask for the same packages."""

from __future__ import annotations

import tomllib
import yaml
from conftest import ROOT


def test_conda_env_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert sorted(d for d in pip_section if not d.startswith("-e")) == sorted(project["dependencies"])


def test_mlproject_entry_point_parameters():
    spec = yaml.safe_load((ROOT / "MLproject").read_text())
    assert spec["conda_env"] == "conda.yaml"
    main = spec["entry_points"]["main"]
    assert set(main["parameters"]) == {
        "stage",
        "epochs",
        "folds",
        "digits",
        "data",
        "seed",
        "overrides",
        "n_jobs",
        "precision",
        "cv_repeats",
        "executor",
        "scheduler",
        "strategy",
        "space",
        "trials",
    }
    assert set(spec["entry_points"]["final"]["parameters"]) >= {"folds", "cv_repeats", "precision", "epochs", "seed"}
    assert main["parameters"]["epochs"]["default"] == "6" and main["parameters"]["folds"]["default"] == "3"
    for name in main["parameters"]:
        assert "{" + name + "}" in main["command"]
