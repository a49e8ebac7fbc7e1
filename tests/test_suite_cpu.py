"""tools/suite_cpu.py: the CPU a test's processes spend is counted against that test."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

BURNER = """
import subprocess, sys


def test_burns_in_a_child():
    code = "import time\\nend = time.process_time() + 0.6\\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_idle():
    pass
"""


def test_the_cpu_of_a_tests_child_process_is_counted_against_that_test(tmp_path):
    (tmp_path / "test_burner.py").write_text(BURNER)
    summary = tmp_path / "summary.json"
    command = [sys.executable, str(ROOT / "tools" / "suite_cpu.py"), "--json", str(summary)]
    command += ["-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path / "test_burner.py")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    tests = json.loads(summary.read_text())["tests"]
    burned = [cpu for name, cpu in tests.items() if name.endswith("test_burner.py::test_burns_in_a_child")]
    assert len(burned) == 1 and 0.5 <= burned[0] < 5, tests  # the child's 0.6 s, charged to its test
    assert not any(name.endswith("::test_idle") for name in tests)  # it started no process
    # The printed table: one process started by the file, no TensorFlow in it.
    (row,) = [line for line in proc.stdout.splitlines() if line.startswith("| test_burner.py | ")]
    assert row.split("|")[3:5] == [" 1 ", " 0 "], row
