"""benchmarks/champion_runs.py: make champion runs read against the goal (no training; reports made here)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

PNG = b"\x89PNG\r\n\x1a\n"
TEST_IMAGES = 2060


def _report(seed: int, *, minutes: tuple[float, float, float], errors: list[int], ensemble: int, exit_code: int):
    return {
        "machine": {"cpu": "Test CPU"},
        "task": "mnist",
        "settings": {"strategy": "asha", "model": "ensemble", "precision": "auto", "seed": str(seed)},
        "minutes": dict(zip(("search", "final", "promote"), minutes, strict=True)),
        "promote_exit": exit_code,
        "best_trial_cv": 0.997,
        "fold_epochs": 120,
        "seeds": {str(seed + k): {"test_accuracy": 1 - e / TEST_IMAGES, "errors": e} for k, e in enumerate(errors)},
        "median_test_accuracy": None,
        "ensemble_test_accuracy": 1 - ensemble / TEST_IMAGES,
        "ensemble_errors": ensemble,
    }


def _run(tmp_path, reports):
    paths = []
    for i, report in enumerate(reports):
        paths.append(tmp_path / f"champion-{i}.json")
        paths[-1].write_text(report if isinstance(report, str) else json.dumps(report))
    command = [sys.executable, str(ROOT / "benchmarks" / "champion_runs.py"), *map(str, paths)]
    return subprocess.run([*command, "--out", str(tmp_path / "out" / "runs")], capture_output=True, text=True)


def _rows(tmp_path) -> dict[str, list[str]]:
    lines = (tmp_path / "out" / "runs.md").read_text().splitlines()
    rows = [line.strip("| ").split(" | ") for line in lines if line.startswith("| seed")]
    return {cells[0]: cells for cells in rows}


def test_each_run_is_read_against_the_goal(tmp_path):
    """Met: fast, the promoted model at 99.71% or better (6 errors of 2,060, 99.709%, reads as 99.71%), promoted.
    Not met: 7 errors though promoted; over 20 minutes; refused by the gate."""
    reports = [
        _report(0, minutes=(4.8, 3.0, 0.2), errors=[4, 4, 6, 7], ensemble=6, exit_code=0),
        _report(1, minutes=(4.8, 3.0, 0.2), errors=[7, 7, 7, 8], ensemble=7, exit_code=0),
        _report(2, minutes=(15.0, 5.5, 0.2), errors=[3, 3, 4, 5], ensemble=3, exit_code=0),
        _report(3, minutes=(6.2, 6.2, 0.2), errors=[11, 15, 11, 11], ensemble=11, exit_code=1),
    ]
    reports[0]["workers_idle_share"] = 0.10647  # reports written before it was recorded have none
    proc = _run(tmp_path, reports)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "out" / "runs.md").read_text()
    assert "met by 1 of 4" in text
    rows = _rows(tmp_path)
    assert [rows[f"seed {n}"][-1] for n in range(4)] == ["met", "not met", "not met", "not met"]
    assert rows["seed 0"][7] == "99.709% (ensemble)" and rows["seed 3"][8] == "refused"
    assert rows["seed 2"][2] == "20.7" and rows["seed 0"][6] == "4, 4, 6, 7"
    assert rows["seed 0"][4] == "10.6%" and rows["seed 1"][4] == "-"
    assert (tmp_path / "out" / "runs.png").read_bytes().startswith(PNG)


def test_a_file_that_is_not_a_champion_report_is_one_line(tmp_path):
    good = _report(0, minutes=(4.8, 3.0, 0.2), errors=[4], ensemble=6, exit_code=0)
    for bad, why in (("{", "JSONDecodeError"), (json.dumps({"results": {}}), "no minutes, seeds or settings")):
        proc = _run(tmp_path, [good, bad])
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines() == [
            f"error: {tmp_path / 'champion-1.json'}: not a bench_champion.py report ({why})"
        ]
        assert not (tmp_path / "out").exists()


def test_a_final_run_again_on_an_earlier_search_is_named_and_paired_with_it(tmp_path):
    """A ``--final-from`` report: its label says how its settings differ (2 configurations; a final in another
    precision than its search), and the text says whose search and minutes it reused."""
    first = _report(3, minutes=(3.1, 1.6, 0.2), errors=[8, 11, 13, 8], ensemble=9, exit_code=1)
    again = _report(3, minutes=(3.1, 3.1, 0.2), errors=[8, 5, 13, 9], ensemble=8, exit_code=1)
    again["settings"].update(configs="2", trials="12")
    again["search_from"] = "/results/champion-seed3.json"
    float32 = _report(3, minutes=(3.1, 4.9, 0.2), errors=[8, 10, 12, 8], ensemble=9, exit_code=1)
    float32["settings"].update(final_precision="float32")
    float32["search_from"] = "/results/champion-seed3.json"
    proc = _run(tmp_path, [first, again, float32])
    assert proc.returncode == 0, proc.stderr
    rows = _rows(tmp_path)
    assert set(rows) == {"seed 3", "seed 3, 12 trials, 2 configurations", "seed 3, final in float32"}
    assert rows["seed 3, 12 trials, 2 configurations"][6] == "8, 5, 13, 9"
    text = (tmp_path / "out" / "runs.md").read_text()
    assert "seed 3, 12 trials, 2 configurations reused the search (and its minutes) of champion-seed3" in text
    assert "seed 3 reused" not in text
