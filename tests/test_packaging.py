"""conda.yaml (for `mlflow run`) and pyproject.toml (for pip) must ask for the same packages."""

from __future__ import annotations

import os
import subprocess

import pytest
import tomllib
import yaml
from conftest import ROOT


def test_conda_env_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert sorted(d for d in pip_section if not d.startswith("-e")) == sorted(project["dependencies"])


def test_mlproject_entry_point_parameters():
    """Every CLI option of tune and final is an MLproject parameter (and the other way round), each passed."""
    from mlflow_mnist.cli import final, tune

    spec = yaml.safe_load((ROOT / "MLproject").read_text())
    assert spec["conda_env"] == "conda.yaml"
    for name, command in (("main", tune), ("final", final)):
        entry = spec["entry_points"][name]
        options = {p.name for p in command.params if p.name != "experiment"}  # `mlflow run` names the experiment
        assert set(entry["parameters"]) == options, name
        for parameter in entry["parameters"]:
            assert "--" + parameter.replace("_", "-") + " {" + parameter + "}" in entry["command"].replace("\n", " ")
    main = spec["entry_points"]["main"]["parameters"]
    assert main["epochs"]["default"] == "" and main["folds"]["default"] == "3" and main["task"]["default"] == "mnist"


PAYLOADS = [
    '"; touch {marker}; "',
    "$(touch {marker})",
    "`touch {marker}`",
    "x; touch {marker}",
    "'; touch {marker}; '",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_no_parameter_value_reaches_a_shell(tmp_path, payload):
    """MLflow runs an entry point's command with bash: each parameter must arrive as one argument, verbatim, and
    nothing in it may run. The command MLflow would run is run by bash with a stand-in `python` that records its
    arguments, for every string parameter of every entry point."""
    from mlflow.projects import _project_spec

    stub = tmp_path / "bin" / "python"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done > "$ARGS_OUT"\n')
    stub.chmod(0o755)
    project = _project_spec.load_project(str(ROOT))
    marker = tmp_path / "INJECTED"
    value = payload.format(marker=marker)
    env = {"PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}", "ARGS_OUT": str(tmp_path / "args")}
    for name in project._entry_points:
        entry = project.get_entry_point(name)
        for parameter in entry.parameters:
            command = entry.compute_command({parameter: value}, str(tmp_path))
            subprocess.run(["bash", "-c", command], env=env, check=True, timeout=30)
            received = (tmp_path / "args").read_text().split("\0")
            assert value in received, (name, parameter, received)
            assert not marker.exists(), (name, parameter)


def test_the_python_api_is_what_the_package_names_after_every_module_is_imported():
    """A submodule named like an API function would replace it on the package once imported (``final`` did)."""
    import importlib
    import pkgutil

    import mlflow_mnist

    skip = {"mlflow_mnist.__main__", "mlflow_mnist.ensemble_model"}  # the CLI's entry; model code run at load
    for module in pkgutil.walk_packages(mlflow_mnist.__path__, "mlflow_mnist."):
        if module.name not in skip:
            importlib.import_module(module.name)
    assert all(callable(getattr(mlflow_mnist, name)) for name in mlflow_mnist.__all__)
