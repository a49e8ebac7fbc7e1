"""benchmarks/peers_seeds.py: the peers' reach read over several seeds (no training; reports made here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

PNG = b"\x89PNG\r\n\x1a\n"


def _report(seed: int, results: dict[str, tuple], **settings) -> dict:
    """A bench_peers.py report: per peer (fold-epochs to the target or None, minutes to it, spent fold-epochs,
    spent minutes)."""
    run = {"space": "wide", "trials": 8, "folds": 3, "target": 0.99656, "task": "mnist", **settings}
    return {
        "machine": {"cpu": "Test CPU"},
        "seed": seed,
        **run,
        "results": {
            name: {
                "fold_epochs_to_target": to_fe,
                "minutes_to_target": to_min,
                "fold_epochs": spent_fe,
                "minutes": spent_min,
                "best_mean_cv": 0.997 if to_fe is not None else 0.995,
            }
            for name, (to_fe, to_min, spent_fe, spent_min) in results.items()
        },
    }


def _run(tmp_path, reports: list[dict], script: str = "peers_seeds.py"):
    """``script`` over ``reports`` (written here as JSON files), its --out stem ``tmp_path/seeds``."""
    paths = []
    for i, report in enumerate(reports):
        paths.append(tmp_path / f"report-{i}.json")
        paths[-1].write_text(json.dumps(report))
    command = [sys.executable, str(ROOT / "benchmarks" / script), *map(str, paths)]
    return subprocess.run([*command, "--out", str(tmp_path / "seeds")], capture_output=True, text=True, timeout=120)


def _rows(table: str) -> dict[str, list[str]]:
    """The markdown table's rows by their first cell: the other cells, stripped."""
    lines = [line.split("|") for line in table.splitlines() if line.startswith("|")]
    return {cells[1].strip(): [c.strip() for c in cells[2:-1]] for cells in lines}


def test_each_seed_is_read_and_who_led_is_counted(tmp_path):
    """Seed 0: optuna first on both; seed 1: ours first on both; seed 2: optuna reaches nothing, so ours leads
    although optuna spent fewer fold-epochs in all, and optuna's median counts that seed as never (170, not the
    126 of the two seeds that reached it)."""
    reports = [
        _report(0, {"optuna": (82, 4.6, 216, 10.2), "ours": (132, 9.1, 132, 9.1)}),
        _report(1, {"optuna": (170, 8.0, 216, 10.0), "ours": (120, 7.5, 132, 9.0)}),
        _report(2, {"optuna": (None, None, 100, 5.0), "ours": (132, 9.0, 132, 9.0)}),
    ]
    proc = _run(tmp_path, reports)
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "seeds.md").read_text()
    assert (tmp_path / "seeds.png").read_bytes().startswith(PNG)
    rows = _rows(table)
    assert rows["optuna"] == ["82 / 4.6", "170 / 8.0", "- (100 / 5.0)", "2 of 3", "170", "8.0", "1", "1"]
    assert rows["ours"] == ["132 / 9.1", "120 / 7.5", "132 / 9.0", "3 of 3", "132", "9.0", "2", "2"]


@pytest.mark.parametrize(
    "second, message",
    [({"folds": 2}, "folds differ"), ({"seed": 0}, "give each peer's run of each seed once")],
)
def test_reports_not_run_alike_are_refused(tmp_path, second, message):
    first = _report(0, {"ours": (132, 9.1, 132, 9.1)})
    other = _report(second.pop("seed", 1), {"ours": (132, 9.1, 132, 9.1)}, **second)
    proc = _run(tmp_path, [first, other])
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "seeds.md").exists()


def test_a_peer_given_more_trials_is_its_own_row_and_competes_per_seed(tmp_path):
    """Ours at 16 trials (about the fold-epochs the others spend at 8) beside the 8-trial reports: a row of its
    own, led per seed against every row that ran that seed."""
    reports = [
        _report(0, {"optuna": (82, 4.6, 216, 10.2), "ours": (132, 9.1, 132, 9.1)}),
        _report(1, {"optuna": (None, None, 288, 13.2), "ours": (102, 5.7, 102, 5.7)}),
        _report(0, {"ours": (70, 4.0, 230, 12.0)}, trials=16),
        _report(1, {"ours": (None, None, 240, 12.5)}, trials=16),
    ]
    proc = _run(tmp_path, reports)
    assert proc.returncode == 0, proc.stderr
    rows = _rows((tmp_path / "seeds.md").read_text())
    assert rows["ours, 16 trials"] == ["70 / 4.0", "- (240 / 12.5)", "1 of 2", "-", "-", "1", "1"]
    assert rows["ours, 8 trials"][-2:] == ["1", "1"] and rows["optuna, 8 trials"][-2:] == ["0", "0"]


def test_ours_under_another_promotion_rule_is_its_own_row(tmp_path):
    """bench_peers.py --promotion eager beside reports from before the option (which ran the default rule): ours
    eager is a row of its own, the older reports' ours the plain row."""
    reports = [
        _report(0, {"optuna": (82, 4.6, 216, 10.2), "ours": (132, 9.1, 132, 9.1)}),
        _report(0, {"ours": (60, 3.0, 150, 9.0)}, promotion="eager"),
    ]
    proc = _run(tmp_path, reports)
    assert proc.returncode == 0, proc.stderr
    rows = _rows((tmp_path / "seeds.md").read_text())
    assert rows["ours, eager promotion"][:2] == ["60 / 3.0", "1 of 1"] and rows["ours"][:2] == ["132 / 9.1", "1 of 1"]
    assert rows["ours, eager promotion"][-2:] == ["1", "1"] and rows["optuna"][-2:] == ["0", "0"]


def test_plain_optuna_on_ours_draws_is_its_own_row(tmp_path):
    """bench_peers.py --same-draws beside a report where plain Optuna drew its own: two rows, each counted."""
    reports = [
        _report(0, {"optuna": (82, 4.6, 216, 10.2), "ours": (132, 9.1, 132, 9.1)}),
        _report(0, {"optuna": (140, 7.0, 230, 11.0)}, same_draws=True),
    ]
    proc = _run(tmp_path, reports)
    assert proc.returncode == 0, proc.stderr
    rows = _rows((tmp_path / "seeds.md").read_text())
    assert rows["optuna, ours' draws"][:2] == ["140 / 7.0", "1 of 1"] and rows["optuna"][:2] == ["82 / 4.6", "1 of 1"]
    assert rows["optuna"][-2:] == ["1", "1"] and rows["ours"][-2:] == ["0", "0"]


def _curve(*finished: tuple[int, float, float], legacy: bool, rung: str = "") -> list[dict]:
    """A peer's curve: (trial, fold-epochs spent when it finished, its mean CV), then the closing point. Points
    carry their trial number, under labels that name none; ``legacy``: as reports wrote them before, the number
    only in the label ("trial N", ours' with its ``rung``)."""
    points = [
        {"fold_epochs": spent, "minutes": spent / 20, "mean": mean}
        | ({"candidate": f"trial {trial}{rung}"} if legacy else {"candidate": f"candidate {i}", "trial": trial})
        for i, (trial, spent, mean) in enumerate(finished)
    ]
    return [*points, {"candidate": "", "fold_epochs": 300.0, "mean": None} | ({} if legacy else {"trial": None})]


@pytest.mark.parametrize("legacy", [False, True], ids=["trial numbers", "labels of older reports"])
def test_same_draws_pair_the_configurations_both_finished(tmp_path, legacy):
    """With --same-draws a trial number is one configuration in both peers: the pairs are the trials both trained
    the full budget, with each one's spend and score; a report whose Optuna drew its own draws gives no pairs, and
    its figure is drawn. The number is the one each point records; reports from before points recorded it are
    paired by their labels."""
    paired = _report(0, {"optuna": (150, 8.0, 240, 12.0), "ours": (110, 8.3, 216, 12.6)}, same_draws=True)
    paired["results"]["optuna"]["curve"] = _curve((0, 84, 0.9836), (1, 150, 0.9967), legacy=legacy)
    paired["results"]["ours"]["curve"] = _curve(
        (0, 90, 0.9838), (1, 110, 0.9967), (7, 200, 0.997), legacy=legacy, rung=" (18 epochs)"
    )
    unpaired = _report(1, {"optuna": (82, 4.6, 216, 10.2), "ours": (132, 9.1, 132, 9.1)}, same_draws=True)
    unpaired["results"]["optuna"]["curve"] = _curve((3, 82, 0.9971), legacy=legacy)
    unpaired["results"]["ours"]["curve"] = _curve((2, 132, 0.9968), legacy=legacy, rung=" (18 epochs)")
    proc = _run(tmp_path, [paired, unpaired])
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "seeds.md").read_text()
    assert (
        "Ours finished 1 of 2 sooner in fold-epochs; ours' fold-epochs over Optuna's, median of the pairs: 0.90."
        in text
    )
    rows = [line for line in text.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")]
    assert rows == [
        "| 0 | 0 | 84 / 4.2 | 0.98360 | 90 / 4.5 | 0.98380 |",
        "| 0 | 1 | 150 / 7.5 | 0.99670 | 110 / 5.5 | 0.99670 |",
    ]
    assert (tmp_path / "seeds-paired.png").read_bytes().startswith(PNG)
    # Without --same-draws the trial numbers name different configurations: no pairs, no paired figure.
    for report in (paired, unpaired):
        report["same_draws"] = False
    (tmp_path / "seeds-paired.png").unlink()
    proc = _run(tmp_path, [paired, unpaired])
    assert proc.returncode == 0, proc.stderr
    assert "Same draws" not in (tmp_path / "seeds.md").read_text() and not (tmp_path / "seeds-paired.png").exists()
