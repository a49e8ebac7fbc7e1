"""A fork server for the tests' `python -m mlflow_mnist` (and `python SCRIPT`) calls: a process that has imported
MLflow, Optuna, numpy and click once forks a child per call, and the child runs the CLI (or the script) as
`python` would.

Why: the suite runs the CLI a few hundred times, most of them to see one refusal (the bad-input table), and each
fresh interpreter spent 1-2 s of CPU importing the same libraries before reading its arguments; the suite is
CPU-bound on 2 cores. What stays a fresh process's: each call is its own process, with its own environment,
working directory, arguments, exit status, stdout and stderr; ``mlflow_mnist`` itself (and TensorFlow, which must
not be imported before a fork) is imported by the child, after its environment is set, so nothing of the project
reads an environment other than the call's. What the children share is what the server imported: third-party
modules only, and with them the server's environment at import time (none of them reads ours). A test that needs
the imports themselves checked (startup noise) runs a real interpreter (``conftest.cli(..., fresh=True)``).

Protocol (private pipes; the child's own stdout and stderr are the files named in the request): the client writes
one JSON request per line; the server answers ``{"pid": N}`` once the child is forked, then ``{"status": S}`` (a
wait status) once it ended. The server stops at the end of its input."""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
import traceback

PRELOADED = (
    "click",
    "numpy",
    "optuna",
    "pandas",
    "sqlalchemy",
    "alembic",
    "mlflow",
    "mlflow.tracking",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
)


def serve(requests, replies) -> dict | None:
    """Answer requests until the input ends (returns None); in a forked child, return the child's request."""
    for line in requests:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            return request
        replies.write(json.dumps({"pid": pid}) + "\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"status": status}) + "\n")
        replies.flush()
    return None


def become(request: dict) -> None:
    """Turn this forked child into `python ARGV` run in ``cwd`` with ``env``, its output to files.
    (The protocol's pipes stay open here, unused: closing their descriptors would leave the file objects that own
    them to close whatever file reuses the number later. They are not inherited by the child's own children.)"""
    import random

    import numpy as np

    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv = request["argv"]
    # What `python` puts first on the path: the working directory for -m, else the script's folder.
    sys.path[0] = os.getcwd() if argv[0] == "-m" else os.path.dirname(os.path.abspath(argv[0]))
    random.seed()  # a fresh interpreter's draws, not the server's
    np.random.seed()
    sys.argv = ["-m", *argv[2:]] if argv[0] == "-m" else list(argv)


def main() -> None:
    # The protocol's pipes move to private descriptors; 0 and 1 are then the child's own.
    requests = os.fdopen(os.dup(0), "r")
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)
    import importlib
    import threading

    for name in PRELOADED:
        importlib.import_module(name)
    if threading.active_count() != 1:  # forking a process with threads copies locks some thread held
        raise SystemExit(f"cli_server: {threading.active_count()} threads after the imports; cannot fork safely")
    gc.freeze()  # the children's collections skip what the server imported, and leave its pages shared
    replies.write(json.dumps({"ready": True}) + "\n")
    replies.flush()
    request = serve(requests, replies)
    if request is None:
        return
    become(request)
    import runpy

    argv = request["argv"]
    try:
        if argv[0] == "-m":
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as done:
        code = _exit_code(done.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    # What an interpreter does at exit, less tearing down every module the server imported (a second of CPU,
    # for nothing a test can see: the handlers that flush and close, logging's included, are atexit's).
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _exit_code(code: object) -> int:
    """The status `sys.exit(code)` gives a process: None is 0, an int is itself, anything else is printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    main()
