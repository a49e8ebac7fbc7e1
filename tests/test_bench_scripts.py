"""The benchmarks of issue 20 in their --quick modes (the shipped sample, the small ``seed`` space, 2 folds,
2 or 3 trials): each runs its variants or peers in processes of their own, and what it reports is checked against
what the runs left behind (the stores' fold runs, the traced folds, the peers' MLflow runs). No timing asserts.

The target is lowered to 0.5 (a model guessing one class of the balanced sample scores exactly that), so the
"reached" path is taken: it must then be the first point of the curve at or above it."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import ROOT, python

pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def stores(tmp_path):
    """The benchmarks' stores (in memory where conftest put the temporary files there: a quick search makes
    hundreds of SQLite commits, each an fsync on disk)."""
    return tmp_path / "stores"


def _bench(script: str, *args: str, fresh: bool = False):
    """``python benchmarks/SCRIPT ARGS``: forked from the tests' CLI server (a refusal: the libraries already
    imported), or ``fresh`` (a quick run, which starts process trees of its own: forked, bench_peers.py's test took
    375 s, beside bench_asha's for its first 68 s; fresh and alone 80 s. Why is not understood yet)."""
    # The timeout is a hang guard only: several fresh TensorFlow processes take minutes on a shared 2-core machine.
    return python(str(ROOT / "benchmarks" / script), *args, timeout=1800, fresh=fresh)


def _fold_runs(store):
    from mlflow import MlflowClient

    from mlflow_mnist import schema

    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=5000)
    return [r for r in runs if r.data.tags.get(schema.LEVEL) == schema.FOLD_LEVEL], runs


def _check_curve(entry: dict, *, numbered: bool = True) -> None:
    """A curve's points in order, closed by what was spent; ``numbered``: each finished point records its trial's
    number (the one its label shows), else none (scikit-learn's candidates are no trials)."""
    curve = entry["curve"]
    assert curve, "a quick search finishes at least one trial at the full budget (ASHA: one of its three trials)"
    *finished, closing = curve
    assert closing["trial"] is None
    for point in finished:
        if numbered:
            assert isinstance(point["trial"], int) and point["candidate"].startswith(f"trial {point['trial']}")
        else:
            assert point["trial"] is None
    assert [p["fold_epochs"] for p in curve] == sorted(p["fold_epochs"] for p in curve)
    assert [p["best_so_far"] for p in curve] == sorted(p["best_so_far"] for p in curve)
    assert curve[-1]["fold_epochs"] == entry["fold_epochs"]
    assert entry["best_mean_cv"] == max(p["mean"] for p in curve if p["mean"] is not None)
    assert 0.5 <= entry["best_mean_cv"] <= 1
    # The best is at least 0.5, so the lowered target is reached, at the first point whose best so far is (a model
    # worse than guessing one class, seen once from a 2-epoch Keras fit, scores a little under 0.5).
    reached = next(p for p in curve if p["best_so_far"] >= 0.5)
    assert entry["fold_epochs_to_target"] == reached["fold_epochs"]
    assert entry["minutes_to_target"] == reached["minutes"] <= entry["minutes"]


def test_bench_asha_quick_reports_what_each_store_holds(tmp_path, stores):
    from mlflow_mnist import schema

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import machine

    out = tmp_path / "out"
    proc = _bench("bench_asha.py", "--quick", "--target", "0.5", "--out", str(out), "--stores", str(stores), fresh=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "asha-seed.json").read_text())
    variants = report["variants"]
    assert list(variants) == ["optuna", "asha", "hyperband"]
    assert report["common_fold_epochs"] == min(v["fold_epochs"] for v in variants.values())
    top = {}
    for name, entry in variants.items():
        folds, runs = _fold_runs(stores / name)
        # The totals are the store's: every fold run's epochs, continued ones counting only what they trained.
        assert entry["fold_epochs"] == sum(r.data.metrics["epochs_run"] for r in folds) > 0
        (search,) = [r for r in runs if r.data.tags.get(schema.LEVEL) == schema.STAGE_LEVEL]
        assert entry["workers_idle_share"] == pytest.approx(search.data.metrics["workers_idle_share"])
        assert 0 <= entry["workers_idle_share"] < 1
        assert entry["trials"] == 3
        # --precision is passed on, and what the search trained in is read back from its run.
        assert "--precision" in entry["arguments"] and entry["precision"] == report["precision"] == "float32"
        _check_curve(entry)
        assert entry["best_at_common_fold_epochs"] is None or (
            entry["best_at_common_fold_epochs"] <= entry["best_mean_cv"]
        )
        trained = [r for r in folds if r.data.tags.get(schema.STATUS) == "ok" and r.data.params["epochs"] == "6"]
        top[name] = sorted({int(r.data.metrics["epochs_run"]) for r in trained})
    # What tells the variants apart (rungs at 2 and 6 epochs): the batched pruner retrains its top rung from scratch;
    # ASHA continues every promoted fold for the 4 extra epochs; with brackets, the second trial starts at 6. (Folds
    # that diverged or failed are left out, and a trial whose rung diverged is never promoted: no model to continue.)
    # Whether hyperband's first trial also reaches the top depends on its 2-epoch rung (one that diverged stops).
    assert top["optuna"] == [6] and top["asha"] == [4] and 6 in top["hyperband"] and set(top["hyperband"]) <= {4, 6}
    text = (out / "asha-seed.md").read_text()
    assert machine.line(report["machine"]) in text and "| hyperband |" in text
    assert (out / "asha-seed.png").read_bytes().startswith(PNG)


def test_bench_peers_quick_reports_what_each_peer_trained(tmp_path, stores):
    """The two peers, each in its own process, on the same draws, and the finals of their picks: scikit-learn's
    halving run alone first, then plain Optuna with halving's result taken from that report (``--others-from``:
    each peer trains once). ``ours`` is left out here: it is the `tune --strategy asha` run and store reading that
    the bench_asha test above checks (the same functions), and its first draws are ``sample_configs``'s
    (``test_asha_first_draws_are_the_seeded_sample``)."""
    from mlflow_mnist.params import from_json
    from mlflow_mnist.strategies.sampling import sample_configs
    from mlflow_mnist.tasks import get_task

    first, out = tmp_path / "first", tmp_path / "out"
    common = ("--quick", "--target", "0.5", "--same-draws")
    alone_args = ("--peers", "halving", "--out", str(first), "--stores", str(stores))
    proc = _bench("bench_peers.py", *common, *alone_args, fresh=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    alone = json.loads((first / "peers-seed-samedraws.json").read_text())
    assert list(alone["results"]) == ["halving"] and alone["finals"] == {}
    args = ("--peers", "optuna", "--final-seeds", "1", "--out", str(out), "--stores", str(tmp_path / "then"))
    earlier = ("--others-from", str(first / "peers-seed-samedraws.json"))
    proc = _bench("bench_peers.py", *common, *args, *earlier, fresh=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "peers-seed-samedraws.json").read_text())
    results = report["results"]
    assert list(results) == ["optuna", "halving"] and report["peers"] == ["optuna"]
    # Halving's result as the first report had it, marked as taken; plain Optuna trained here.
    assert results["halving"] == {**alone["results"]["halving"], "taken_from": "peers-seed-samedraws"}
    assert "taken_from" not in results["optuna"]
    task = get_task("mnist")
    for name, entry in results.items():
        _check_curve(entry, numbered=name == "optuna")
        picked = task.validate(from_json(entry["best_config"]))
        assert picked["epochs"] == task.get_space("seed").max_epochs
    # Plain Optuna: every reported epoch trained each of the 2 folds; MLflow holds one run per trial.
    optuna = results["optuna"]
    assert optuna["fold_epochs"] == 2 * sum(optuna["epochs_per_trial"].values()) > 0
    # --same-draws: plain Optuna's trials are the seeded draws halving took (its own threads would draw others).
    drawn = [spec.sampled for spec in sample_configs(task.get_space("seed"), 2, seed=0)]
    assert [optuna["sampled"][str(n)] for n in range(2)] == drawn
    _, runs = _fold_runs(tmp_path / "then" / "optuna")
    assert sorted(r.info.run_name for r in runs) == sorted(optuna["epochs_per_trial"])
    # scikit-learn: 2 candidates x 2 folds, all in one iteration at the full 6 epochs, every fold traced.
    lines = [json.loads(line) for line in (stores / "halving" / "scored_folds.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and {(line["epochs"], line["budget"]) for line in lines} == {(6, 6)}
    assert results["halving"]["fold_epochs"] == 24
    # Each pick, the taken one's too, tested once with seed 0: its errors are its accuracy on the sample's 2-vs-7
    # test images.
    test_size = len(task.load("sample").y_test)
    assert set(report["finals"]) == set(results)
    for final in report["finals"].values():
        (seed,) = final["seeds"]
        assert seed["seed"] == 0 and final["median_test_accuracy"] == seed["test_accuracy"]
        assert seed["errors"] == round((1 - seed["test_accuracy"]) * test_size)
    assert (out / "peers-seed-samedraws.png").read_bytes().startswith(PNG)
    text = (out / "peers-seed-samedraws.md").read_text()
    assert "| halving |" in text and "Same draws" in text
    assert "halving: taken from peers-seed-samedraws, an earlier run of the same settings." in text


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("bench_asha.py", ["--trials", "asha=0", "--data", "sample"], "at least 1 trial"),
        ("bench_asha.py", ["--trials", "bohb=3", "--data", "sample"], "unknown variant 'bohb'"),
        ("bench_asha.py", ["--data", "sample", "--space", "huge"], "unknown search space 'huge'"),
        ("bench_asha.py", ["--data", "sample", "--precision", "half"], "--precision half: give float32"),
        ("bench_asha.py", ["--data", "sample", "--promotion", "lazy"], "--promotion lazy: give quota or eager"),
        ("bench_peers.py", ["--peers", "ray", "--data", "sample"], "--peers 'ray'"),
        ("bench_peers.py", ["--data", "/no/such/mnist"], "no such file or folder"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, script, args, message):
    out = tmp_path / "out"
    proc = _bench(script, *args, "--out", str(out), "--stores", str(tmp_path / "stores"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists() and not (tmp_path / "stores").exists()


@pytest.mark.parametrize(
    ("report", "message"),
    [
        ({"seed": 1}, "its seed differ from this run's; give the same"),
        ({"peers": ["ours"]}, "it holds no peer besides --peers ours"),
        (None, "not a bench_peers.py report (JSONDecodeError)"),
    ],
)
def test_a_report_to_take_peers_from_must_have_the_same_settings(tmp_path, report, message):
    """``--others-from``: a report of another seed, one without other peers, or no report at all is one line,
    before anything runs."""
    earlier = {
        **{"task": "mnist", "data": "sample", "space": "seed", "trials": 2, "folds": 2, "seed": 0},
        **{"same_draws": False, "target": 0.99656, "stem": "peers-seed", "results": {"optuna": {}}},
    }
    path = tmp_path / "earlier.json"
    if report is None:
        path.write_text("{")
    else:
        earlier.update(report)
        if report.get("peers"):
            earlier["results"] = {"ours": {}}
        path.write_text(json.dumps(earlier))
    out, stores = tmp_path / "out", tmp_path / "stores"
    args = ("--quick", "--peers", "ours", "--others-from", str(path), "--out", str(out), "--stores", str(stores))
    proc = _bench("bench_peers.py", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"error: --others-from {path}: {message}"]
    assert not out.exists() and not stores.exists()


def test_a_stores_folder_that_holds_a_run_is_refused(tmp_path):
    used = tmp_path / "stores" / "ours"
    used.mkdir(parents=True)
    (used / "mlflow.db").write_bytes(b"")
    proc = _bench("bench_peers.py", "--quick", "--out", str(tmp_path / "out"), "--stores", str(tmp_path / "stores"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --stores {tmp_path / 'stores'}: ours/ there already holds a run; give a new or empty folder"
    ]
    assert not (tmp_path / "out").exists() and [p.name for p in (tmp_path / "stores").iterdir()] == ["ours"]


@pytest.mark.parametrize(
    ("report", "message"),
    [
        (None, "not a bench_champion.py report"),
        ({"minutes": {"search": 3.0}, "settings": {"seed": "1"}}, "not a bench_champion.py report"),
        ({"store": "/no/such/store", "minutes": {"search": 3.0}, "settings": {"seed": "1"}}, "is gone"),
    ],
)
def test_a_final_from_an_earlier_search_needs_its_report_and_store(tmp_path, report, message):
    """``bench_champion.py --final-from``: a file that is not a report, or one whose store is gone, is one line
    before anything runs."""
    path = tmp_path / "earlier.json"
    path.write_text("{" if report is None else json.dumps(report))
    out = tmp_path / "out"
    proc = _bench("bench_champion.py", "--data", "sample", "--final-from", str(path), "--out", str(out))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --final-from {path}: ") and message in lines[0]
    assert not out.exists()


def test_family_probes_add_up_whole_variants_draw_them_and_refuse_an_unknown_one(tmp_path):
    """benchmarks/family_probes.py: a variant's total counts only when it has every fold; the figure is drawn from
    the JSON alone (--plot-only); an unknown variant is one line, exit 2, before any data is read."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("family_probes", ROOT / "benchmarks" / "family_probes.py")
    probes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probes)
    rows = [
        {"fold": fold, "variant": variant, "errors": errors, "n": 100}
        for fold in (0, 1)
        for variant, errors in (("plain", 3 + fold), ("long", 2), ("elastic", 50))
    ] + [{"fold": 0, "variant": "shear", "errors": 1, "n": 100}]  # stopped after one fold
    assert probes.totals(rows) == {"plain": 7, "long": 4, "elastic": 100}
    out = tmp_path / "probes.json"
    out.write_text(json.dumps(rows))
    proc = _bench("family_probes.py", "--config", "unused.json", "--plot-only", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "probes.png").read_bytes()[:4] == b"\x89PNG"
    refused = _bench("family_probes.py", "--config", "unused.json", "--variants", "plain,bohb", "--out", str(out))
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "error: unknown variant(s) bohb: choose from plain, tta, shear, elastic, deeper, long"
    ]
