"""The benchmark's --quick mode as a smoke test: one variant of each kind runs and the report is written. No timing
asserts.

Every variant trains the same grid: ours runs the step with ``reuse_reference=True``, as GridSearchCV does not
retrain the step's reference; the four candidates of the pool_size grid are all there is, in every variant."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_quick_benchmark_runs_each_kind_of_variant_and_writes_its_report(tmp_path):
    """One variant of each kind: GridSearchCV (a2; a is the same code with n_jobs=1), ours tracked (b; c is b with
    tracking off, d is b in bfloat16), the ceiling (e; e2 is e with two threads a process) and its fits in Python
    threads of one process (t). Those left out add nothing a smoke test needs: c runs b's code less its logging,
    a and d train the slowest on 2 cores, e2 is e's code."""
    script = str(ROOT / "benchmarks" / "bench_stage.py")
    proc = subprocess.run(
        [sys.executable, script, "--quick", "--variants", "a2,b,e,t", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1800,  # a hang guard only: four fresh TensorFlow processes take minutes on a shared 2-core machine
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "bench_stage-quick-a2bet.json").read_text())
    assert set(report["seconds"]) == {"a2", "b", "e", "t"}
    assert all(len(v) == 1 and v[0] > 0 for v in report["seconds"].values())
    assert report["setup"]["n_candidates"] == 4
    assert all(len(report["mean_accuracy"][k]) == 4 for k in ("a2", "b", "e", "t"))
    # The ceiling trains the very models ours trains (same folds, seeds, batches): the same held-out scores.
    assert report["mean_accuracy"]["e"] == pytest.approx(report["mean_accuracy"]["b"], abs=1e-6)
    assert all(0.5 < accuracy <= 1 for accuracy in report["mean_accuracy"]["b"] + report["mean_accuracy"]["t"])
    assert (
        set(report["warm_up_seconds"]) == {"e", "t"}
        and report["ceiling_warm_up_seconds"] == report["warm_up_seconds"]["e"]
    )
    assert report["machine"]["matmul_peak_gflops"] > 0 and report["setup"]["flops"]["ours"] > 0
    table = (tmp_path / "bench_stage-quick-a2bet.md").read_text()
    assert "vs GridSearchCV(n_jobs=cores)" in table and "over the ceiling (b/e - 1)" in table
    assert "two Python threads (t/e - 1)" in table
