"""benchmarks/asha_seeds.py: bench_asha.py's variants read over several seeds (no training; reports made here)."""

from __future__ import annotations

import pytest
from test_peers_seeds import PNG, _rows
from test_peers_seeds import _run as run_seeds


def _report(seed: int, common: float, variants: dict[str, tuple], **settings) -> dict:
    """A bench_asha.py report: per variant (fold-epochs to the target or None, minutes to it, spent fold-epochs,
    spent minutes, best at the common fold-epochs, best in all, idle share)."""
    run = {"space": "wide", "folds": 3, "target": 0.99656, "task": "mnist", "precision": "auto", **settings}
    return {
        "machine": {"cpu": "Test CPU"},
        "seed": seed,
        "trials": {"optuna": 12, "asha": 17, "hyperband": 6},
        **run,
        "common_fold_epochs": common,
        "variants": {
            name: {
                "fold_epochs_to_target": to_fe,
                "minutes_to_target": to_min,
                "fold_epochs": spent_fe,
                "minutes": spent_min,
                "best_at_common_fold_epochs": at_common,
                "best_mean_cv": best,
                "workers_idle_share": idle,
            }
            for name, (to_fe, to_min, spent_fe, spent_min, at_common, best, idle) in variants.items()
        },
    }


def _run(tmp_path, reports: list[dict]):
    return run_seeds(tmp_path, reports, "asha_seeds.py")


def test_each_seed_is_read_at_equal_fold_epochs_and_for_reach(tmp_path):
    """Seed 0: optuna first to the target, hyperband highest at equal fold-epochs; seed 1: asha first, and asha and
    hyperband tie for highest (both count); seed 2: optuna never reaches it and had no full-budget trial by the
    common total (`-`, left out of its median at equal fold-epochs but not of its reach, which counts as never)."""
    reports = [
        _report(
            0,
            232,
            {
                "optuna": (94, 15.3, 232, 27.4, 0.99681, 0.99681, 0.131),
                "asha": (136, 15.8, 318, 38.9, 0.99673, 0.99673, 0.019),
                "hyperband": (192, 19.7, 240, 23.9, 0.99689, 0.99689, 0.038),
            },
        ),
        _report(
            1,
            210,
            {
                "optuna": (180, 9.0, 210, 11.0, 0.99661, 0.99661, 0.10),
                "asha": (90, 5.0, 260, 14.0, 0.99700, 0.99710, 0.03),
                "hyperband": (150, 8.0, 230, 12.0, 0.99700, 0.99700, 0.05),
            },
        ),
        _report(
            2,
            200,
            {
                "optuna": (None, None, 200, 10.0, None, 0.99600, 0.20),
                "asha": (120, 6.0, 250, 12.0, 0.99665, 0.99670, 0.01),
                "hyperband": (None, None, 220, 11.0, 0.99620, 0.99640, 0.04),
            },
        ),
    ]
    proc = _run(tmp_path, reports)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "seeds.md").read_text()
    reach, equal = text.split("## At equal fold-epochs")
    rows = _rows(reach)
    assert rows["optuna"] == ["94 / 15.3", "180 / 9.0", "- (200 / 10.0)", "2 of 3", "180", "15.3", "1", "1"]
    assert rows["asha"] == ["136 / 15.8", "90 / 5.0", "120 / 6.0", "3 of 3", "120", "6.0", "2", "2"]
    assert rows["hyperband"][3:] == ["2 of 3", "192", "19.7", "0", "0"]
    assert "seed 0 (at 232) | seed 1 (at 210) | seed 2 (at 200)" in equal
    rows = _rows(equal)
    # optuna's median at equal fold-epochs is of the two seeds that had a score by then, in all of all three.
    assert rows["optuna"] == [
        "0.99681 / 0.99681",
        "0.99661 / 0.99661",
        "- / 0.99600",
        "0.99671 / 0.99661",
        "0 of 3",
        "13.1%, 10.0%, 20.0%",
        "13.1%",
    ]
    assert rows["asha"][3:] == ["0.99673 / 0.99673", "2 of 3", "1.9%, 3.0%, 1.0%", "1.9%"]
    assert rows["hyperband"][3:] == ["0.99689 / 0.99689", "2 of 3", "3.8%, 5.0%, 4.0%", "4.0%"]
    for suffix in (".png", "-equal.png"):
        assert (tmp_path / f"seeds{suffix}").read_bytes().startswith(PNG)


@pytest.mark.parametrize(
    "second, message",
    [
        ({"precision": "float32"}, "precision differ"),
        ({"promotion": "eager"}, "promotion differ"),  # the first report, from before --promotion, ran quota
        ({"seed": 0}, "give each variant's run of each seed once"),
        ({"no_variants": True}, "not a bench_asha.py report"),
    ],
)
def test_reports_not_run_alike_are_refused(tmp_path, second, message):
    one = {"asha": (90, 5.0, 260, 14.0, 0.997, 0.997, 0.03)}
    first = _report(0, 260, one)
    drop = second.pop("no_variants", False)
    other = _report(second.pop("seed", 1), 260, one, **second)
    if drop:  # e.g. a bench_peers.py report given by mistake
        del other["variants"]
    proc = _run(tmp_path, [first, other])
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "seeds.md").exists()


def test_bench_asha_gives_its_promotion_rule_to_the_asha_variants_only():
    """``bench_asha.py --promotion eager``: the two ASHA variants run with it, the batched pruner (which has no
    such rule) without it, and the report's name says so."""
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_asha import parser, report_stem, variant_arguments

    run = {"space": "seed", "trials": dict.fromkeys(("optuna", "asha", "hyperband"), 3), "data": "sample"}
    run |= {"folds": 2, "seed": 0, "min_epochs": 2, "precision": "float32"}
    for promotion in ("quota", "eager"):
        run["promotion"] = parser().parse_args(["--promotion", promotion]).promotion
        given = {name: variant_arguments(name, run) for name in run["trials"]}
        assert "--promotion" not in given["optuna"]
        for name in ("asha", "hyperband"):  # quota, the default, is left out of the command line
            assert ("--promotion" in given[name]) == (promotion != "quota")
            if promotion != "quota":
                assert given[name][given[name].index("--promotion") + 1] == promotion
        assert report_stem("asha", run) == ("asha-seed" if promotion == "quota" else "asha-seed-eager")
