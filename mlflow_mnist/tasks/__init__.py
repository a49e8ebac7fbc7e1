"""The task registry: tasks are plug-ins found by entry point (group ``mlflow_mnist.tasks``), as MLflow finds its
tracking stores. The built-in tasks register themselves in this project's pyproject.toml; a team's own package
registers its task the same way, or ``--task package.module:attr`` names one directly.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points

from mlflow_mnist.params import StageError
from mlflow_mnist.tasks.base import DataError, Dataset, Task, array_digest

GROUP = "mlflow_mnist.tasks"
#: The task every command uses unless told otherwise (and the one stores made before tasks existed hold):
#: the project began as the seed notebook's search, and its commands keep working unchanged.
DEFAULT_TASK = "mnist"


def available_tasks() -> dict[str, str]:
    """Registered task names and their entry point values (``module:attr``)."""
    return {entry.name: entry.value for entry in entry_points(group=GROUP)}


@cache
def get_task(spec: str = DEFAULT_TASK) -> Task:
    """The task registered as ``spec``, or the object ``module:attr`` names (a Task subclass or instance)."""
    spec = (spec or DEFAULT_TASK).strip()
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        if not module_name.strip() or not attr.strip() or module_name.startswith("."):
            raise StageError(
                f"--task {spec} is not package.module:attr (an absolute module and a name in it): give one, or a "
                f"registered task's name"
            )
        try:
            found = getattr(importlib.import_module(module_name), attr)
        except Exception as error:  # noqa: BLE001 - ImportError, a malformed name, or the module's own failure
            raise StageError(f"--task {spec}: cannot import it ({type(error).__name__}: {error})") from None
    else:
        entries = {entry.name: entry for entry in entry_points(group=GROUP)}
        if spec not in entries:
            known = ", ".join(sorted(entries)) or "none"
            raise StageError(f"unknown task {spec!r}: choose one of {known}, or give package.module:attr")
        try:
            found = entries[spec].load()
        except Exception as error:  # noqa: BLE001 - a registered task whose package is broken or missing
            raise StageError(
                f"task {spec!r} is registered but cannot be loaded ({type(error).__name__}: {error}): reinstall its "
                f"package"
            ) from None
    if isinstance(found, type) and not issubclass(found, Task):  # instantiating it would be a stranger's call
        raise StageError(f"--task {spec} is the class {found.__name__}, not a mlflow_mnist.tasks.Task subclass")
    try:
        task = found() if isinstance(found, type) else found
    except Exception as error:  # noqa: BLE001 - a task class that cannot be made without arguments, or fails
        raise StageError(f"--task {spec}: the class could not be created ({type(error).__name__}: {error})") from None
    if not isinstance(task, Task):
        raise StageError(f"--task {spec} is a {type(task).__name__}, not a mlflow_mnist.tasks.Task")
    if ":" not in spec and task.name != spec:  # runs record task.name: promote looks that name up, and finds no task
        raise StageError(
            f"task {spec!r} is registered by an entry point whose task is named {task.name!r}: name the entry point "
            f"{task.name!r} (the name runs record and promote looks up), then reinstall its package"
        )
    return task


__all__ = ["DEFAULT_TASK", "GROUP", "DataError", "Dataset", "Task", "array_digest", "available_tasks", "get_task"]
