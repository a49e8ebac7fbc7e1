"""Where a pytest run's CPU goes, per test and per file, counting the processes each test starts.

    python tools/suite_cpu.py -n 3 --dist loadfile --no-loadscope-reorder     # the whole suite as `make test` runs it
    python tools/suite_cpu.py tests/test_tasks.py --top 10                    # one file

The suite is CPU-bound (three test processes on two cores), so it gets shorter only by spending less CPU, and a
test's wall time cannot say how much it spends: every test is slowed by the others. This runs pytest with the
arguments given and a ``sitecustomize`` module first on ``PYTHONPATH`` that records, as each Python process exits, its
own CPU time, the test that started it (``$PYTEST_CURRENT_TEST``, which every process a test starts
inherits) and whether it imported TensorFlow. Not counted: processes that end without exit handlers (SIGKILL,
``os._exit``: killed pool workers), and processes that are not Python (PostgreSQL). Another ``sitecustomize`` on the
path is shadowed for the run. Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Written as each Python process of the run exits; the folder comes from the environment the run is given.
RECORDER = """
import atexit, json, os, resource, sys, uuid


def _record():
    try:
        used = resource.getrusage(resource.RUSAGE_SELF)
        entry = {
            "cpu": used.ru_utime + used.ru_stime,
            "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0],
            "tensorflow": "tensorflow" in sys.modules,
        }
        folder = os.environ["SUITE_CPU_RECORDS"]
        with open(os.path.join(folder, f"{uuid.uuid4().hex}.json"), "w") as out:
            json.dump(entry, out)
    except Exception:  # a measurement must never change how a process ends
        pass


atexit.register(_record)
"""

TEST_PROCESS = "(the pytest processes themselves)"


def run(pytest_args: list[str], records: Path) -> int:
    """pytest with ``pytest_args`` in this interpreter, every Python process it starts recording into ``records``."""
    hook = records / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(RECORDER)
    path = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "SUITE_CPU_RECORDS": str(records)}
    return subprocess.call([sys.executable, "-m", "pytest", *pytest_args], cwd=ROOT, env=env)


def summarize(records: Path) -> dict:
    """CPU seconds, process counts and TensorFlow processes per file and per test, from the run's records."""
    by_file: dict[str, dict] = collections.defaultdict(lambda: {"cpu": 0.0, "processes": 0, "tensorflow": 0})
    by_test: collections.Counter[str] = collections.Counter()
    total = 0.0
    for path in records.glob("*.json"):
        entry = json.loads(path.read_text())
        test = entry["test"] or TEST_PROCESS
        where = by_file[test.split("::")[0]]
        where["cpu"] += entry["cpu"]
        where["processes"] += 1
        where["tensorflow"] += entry["tensorflow"]
        by_test[test] += entry["cpu"]
        total += entry["cpu"]
    return {"total": total, "files": dict(by_file), "tests": dict(by_test)}


def table(summary: dict, top: int) -> str:
    files = sorted(summary["files"].items(), key=lambda item: -item[1]["cpu"])
    lines = [f"{summary['total']:.1f} s of CPU in the Python processes that ended normally", ""]
    lines += ["| file | CPU s | processes | with TensorFlow |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {f['cpu']:.1f} | {f['processes']} | {f['tensorflow']} |" for name, f in files[:top]]
    tests = sorted(summary["tests"].items(), key=lambda item: -item[1])
    lines += ["", "| test (the processes it started; pytest's own processes: the table above) | CPU s |"]
    lines += ["| --- | ---: |"]
    lines += [f"| {name} | {cpu:.1f} |" for name, cpu in [t for t in tests if t[0] != TEST_PROCESS][:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--top", type=int, default=30, help="rows per table (default 30)")
    parser.add_argument("--json", type=Path, help="also write the per-file and per-test sums here")
    args, pytest_args = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="suite-cpu-") as folder:
        code = run(pytest_args, Path(folder))
        summary = summarize(Path(folder))
    print(table(summary, args.top))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
