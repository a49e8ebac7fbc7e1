"""--precision auto: bfloat16 only on a CPU where it measures faster, the measurement kept per CPU and task."""

from __future__ import annotations

import pytest

from mlflow_mnist import precision
from mlflow_mnist.tasks import get_task
from mlflow_mnist.testing import tiny_dataset


@pytest.fixture
def probe(monkeypatch, tmp_path):
    """A stand-in for the timing probe (seconds per epoch by precision), counting its calls."""
    monkeypatch.setattr(precision, "CACHE", tmp_path / "precision.json")
    calls = []

    def install(flags: set[str], seconds: dict[str, float]):
        monkeypatch.setattr(precision, "cpu_identity", lambda: ("Test CPU", flags))

        def timed(task, data, chosen, *, seed=0):
            calls.append(chosen)
            return seconds[chosen]

        monkeypatch.setattr(precision, "seconds_per_epoch", timed)
        return calls

    return install


def test_without_native_bfloat16_auto_is_float32_and_measures_nothing(probe):
    calls = probe({"avx2", "avx512f"}, {"float32": 1.0, "mixed_bfloat16": 0.1})
    chosen, why = precision.choose_precision(get_task("digits"), tiny_dataset(), "auto")
    assert chosen == "float32" and "no native bfloat16" in why and not calls


@pytest.mark.parametrize("bf16_seconds, expected", [(0.5, "mixed_bfloat16"), (0.95, "float32"), (1.4, "float32")])
def test_with_native_bfloat16_auto_follows_the_measurement(probe, bf16_seconds, expected):
    calls = probe({"amx_bf16", "avx512_bf16"}, {"float32": 1.0, "mixed_bfloat16": bf16_seconds})
    task, data = get_task("digits"), tiny_dataset()
    chosen, why = precision.choose_precision(task, data, "auto")
    assert chosen == expected and f"{1 / bf16_seconds:.2f}x" in why
    assert sorted(calls) == ["float32", "float32", "mixed_bfloat16", "mixed_bfloat16"]  # interleaved, twice
    assert precision.choose_precision(task, data, "auto")[0] == expected and len(calls) == 4  # kept, not re-probed


def test_an_explicit_precision_is_kept(probe):
    calls = probe({"amx_bf16"}, {"float32": 1.0, "mixed_bfloat16": 0.5})
    assert precision.choose_precision(get_task("digits"), tiny_dataset(), "float32") == ("float32", "as asked")
    assert not calls
