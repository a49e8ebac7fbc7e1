"""--precision auto: bfloat16 only on a CPU where it measures faster, the measurement kept per CPU and task."""

from __future__ import annotations

import json

import pytest

from mlflow_mnist import precision
from mlflow_mnist.tasks import get_task
from mlflow_mnist.testing import tiny_dataset


@pytest.fixture
def probe(monkeypatch, tmp_path):
    """A stand-in for the timing probe (seconds per epoch by precision), counting its calls."""
    monkeypatch.setattr(precision, "CACHE", tmp_path / "precision.json")
    calls = []

    def install(flags: set[str], seconds: dict[str, float | list[float]]):
        monkeypatch.setattr(precision, "cpu_identity", lambda: ("Test CPU", flags))

        def timed(task_spec, data, *, threads):
            calls.extend(["float32", "mixed_bfloat16"] * precision.PROBE_ROUNDS)  # what the probe's process times
            return {name: t if isinstance(t, list) else [t] * precision.PROBE_ROUNDS for name, t in seconds.items()}

        monkeypatch.setattr(precision, "measure", timed)
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
    assert sorted(calls) == ["float32"] * 3 + ["mixed_bfloat16"] * 3  # interleaved, three rounds
    assert precision.choose_precision(task, data, "auto")[0] == expected and len(calls) == 6  # kept, not re-probed
    kept = next(iter(json.loads(precision.CACHE.read_text()).values()))
    assert kept["seconds"]["mixed_bfloat16"] == [bf16_seconds] * precision.PROBE_ROUNDS  # what it measured, kept


def test_stalled_rounds_do_not_flip_the_verdict(probe):
    """A probe measured on an AMX Xeon: two bfloat16 epochs stalled to 1.30 s; their median read 0.76x, float32."""
    probe({"amx_bf16"}, {"float32": [1.001, 0.991, 0.979], "mixed_bfloat16": [1.303, 0.841, 1.31]})
    chosen, why = precision.choose_precision(get_task("digits"), tiny_dataset(), "auto")
    assert chosen == "mixed_bfloat16" and "1.16x" in why  # each precision's fastest epoch: 0.979 / 0.841


def test_an_explicit_precision_is_kept(probe):
    calls = probe({"amx_bf16"}, {"float32": 1.0, "mixed_bfloat16": 0.5})
    assert precision.choose_precision(get_task("digits"), tiny_dataset(), "float32") == ("float32", "as asked")
    assert not calls


def test_a_verdict_is_kept_per_probe_model(probe, monkeypatch):
    """A verdict measured on another probe model (an older release's, another task setting) is measured again."""
    calls = probe({"amx_bf16"}, {"float32": 1.0, "mixed_bfloat16": 0.5})
    task, data = get_task("digits"), tiny_dataset()
    precision.choose_precision(task, data, "auto")
    monkeypatch.setattr(type(task), "probe_params", {"batch_size": 64})
    precision.choose_precision(task, data, "auto")
    assert len(calls) == 12


@pytest.mark.slow  # imports TensorFlow
def test_the_probe_times_the_tasks_typical_model(monkeypatch):
    """The probe builds ``start`` with the task's ``probe_params`` over it, for two epochs of the examples given."""
    task, data = get_task("mnist"), tiny_dataset()
    built, fitted = [], []

    class Model:
        def fit(self, x, y, *, batch_size, epochs, verbose):
            fitted.append((len(x), batch_size, epochs))

    def build_model(params, **options):
        built.append((params, options["precision"]))
        return Model()

    monkeypatch.setattr(task, "build_model", build_model)
    precision.seconds_per_epoch(task, data.x_train, data.y_train, data.n_classes, "mixed_bfloat16")
    ((params, chosen),) = built
    assert chosen == "mixed_bfloat16" and params["epochs"] == 2
    assert all(params[k] == v for k, v in task.probe_params.items()) and task.probe_params
    assert params["neurons_2"] == 25 and params["kernel_size"] == (5, 5)  # the seed's best, not its 4/8/16 start
    assert fitted == [(len(data.x_train), 20, 1)] * 2


@pytest.mark.slow  # trains the digits model a few batches in a new process
def test_the_probe_runs_in_its_own_process_with_the_workers_threads(monkeypatch):
    """A real probe process on the digits task: both precisions timed each round, with the thread count asked for."""
    monkeypatch.setattr(precision, "PROBE_EXAMPLES", 64)
    seen = []
    real_run = precision.subprocess.run

    def run(command, **options):
        seen.append(command)
        return real_run(command, **options)

    monkeypatch.setattr(precision.subprocess, "run", run)
    times = precision.measure("digits", get_task("digits").load(""), threads=1)
    assert sorted(times) == ["float32", "mixed_bfloat16"]
    assert all(len(v) == precision.PROBE_ROUNDS and min(v) > 0 for v in times.values())
    ((executable, flag, _program, task_spec, examples, threads),) = seen
    assert (flag, task_spec, threads) == ("-c", "digits", "1") and examples.endswith(".npz")


def test_a_probe_process_that_prints_nothing_is_a_failure(monkeypatch):
    class Silent:
        returncode, stdout = 0, ""

    monkeypatch.setattr(precision.subprocess, "run", lambda command, **options: Silent())
    with pytest.raises(RuntimeError, match="0 lines of output"):
        precision.measure("digits", tiny_dataset(), threads=1)


def test_a_failed_probe_gives_float32_and_says_so(probe, monkeypatch):
    probe({"amx_bf16"}, {"float32": 1.0, "mixed_bfloat16": 0.5})

    def broken(task_spec, data, *, threads):
        raise RuntimeError("the probe process exited with 1")

    monkeypatch.setattr(precision, "measure", broken)
    chosen, why = precision.choose_precision(get_task("digits"), tiny_dataset(), "auto")
    assert chosen == "float32" and "probe failed" in why and not precision.CACHE.exists()


class _Pool:
    """An executor stand-in that records when it is started."""

    threads_per_worker = 1
    remote = False

    def __init__(self, events: list[str]):
        self.events = events

    def start(self, *, warm_up) -> None:
        self.events.append("pool")


def test_a_store_that_refuses_the_command_is_named_before_the_probe_trains(probe, monkeypatch, tmp_path):
    from mlflow_mnist.campaign import Campaign
    from mlflow_mnist.tracking import TrackingError

    calls = probe({"amx_bf16"}, {"float32": 1.0, "mixed_bfloat16": 0.5})
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}")
    with pytest.raises(TrackingError, match="cannot write the SQLite store"):
        Campaign.open(task="digits", precision="auto", dataset=tiny_dataset())
    assert not calls  # no probe trained for a command the store refuses


def test_the_probe_runs_before_the_pool_starts_and_the_store_is_made(probe, monkeypatch, tmp_path):
    """The pool's TensorFlow imports would share the cores with the timed epochs; a new store is made after."""
    from mlflow_mnist.campaign import Campaign

    events: list[str] = []
    calls = probe({"amx_bf16"}, {"float32": 1.0, "mixed_bfloat16": 0.5})
    store = tmp_path / "mlflow.db"
    timed = precision.measure
    monkeypatch.setattr(
        precision, "measure", lambda *a, **k: events.append(f"probe, store {store.exists()}") or timed(*a, **k)
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    campaign = Campaign.open(task="digits", precision="auto", dataset=tiny_dataset(), executor=_Pool(events))
    assert events == ["probe, store False", "pool"] and calls
    assert campaign.settings.precision == "mixed_bfloat16" and store.exists()


def _no_local_probe(monkeypatch):
    """This machine's CPU and probe must not be consulted: a remote cluster's worker is."""

    def refuse(*args, **kwargs):
        raise AssertionError("probed this machine, not the worker")

    monkeypatch.setattr(precision, "cpu_identity", refuse)
    monkeypatch.setattr(precision, "measure", refuse)


class _Cluster:
    """A remote cluster's workers (``precision.ClusterWorkers``): per address its CPU (model, flags, a fold's
    threads) and, per CPU model, the seconds its probe measures. Records what it was asked; ``leave``: addresses
    whose workers are gone by the time their kind's probe runs (another worker runs it)."""

    def __init__(self, cpus: dict[str, tuple], seconds: dict[str, dict], *, leave: tuple[str, ...] = ()):
        self.cpus, self.seconds, self.leave, self.asked = cpus, seconds, leave, []

    def run_on_each_worker(self, fn, task):
        assert fn is precision.worker_cpu
        self.asked.append("cpus")
        return dict(self.cpus)

    def run_on(self, workers, fn, task):
        assert fn is precision.probe_task and len(task.x) <= precision.PROBE_EXAMPLES
        ran_on = next((w for w in workers if w not in self.leave), None)
        ran_on = ran_on or next(w for w in self.cpus if w not in self.leave)
        model, _, threads = self.cpus[ran_on]
        assert task.threads == threads  # the probe takes a fold's thread share on that worker
        self.asked.append(f"probe on {ran_on}")
        return ran_on, self.seconds[model]


AMX = ("amx_bf16", "avx512f")
FASTER = {"float32": [1.5] * 3, "mixed_bfloat16": [1.0] * 3}  # bfloat16 1.5x
SLOWER = {"float32": [1.0] * 3, "mixed_bfloat16": [1.2] * 3}


def test_a_remote_clusters_worker_is_probed_and_its_cpu_names_the_verdict(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "CACHE", tmp_path / "precision.json")
    _no_local_probe(monkeypatch)
    # Two workers of one kind: one probe, on the first.
    cluster = _Cluster({"w1": ("Worker CPU", AMX, 8), "w2": ("Worker CPU", AMX, 8)}, {"Worker CPU": FASTER})
    task, data = get_task("digits"), tiny_dataset()
    chosen, why = precision.choose_precision(task, data, "auto", workers=cluster)
    assert chosen == "mixed_bfloat16" and "Worker CPU (a Dask worker's)" in why and "8 thread(s)" in why
    assert cluster.asked == ["cpus", "probe on w1"]
    assert precision.choose_precision(task, data, "auto", workers=cluster)[0] == "mixed_bfloat16"
    assert cluster.asked == ["cpus", "probe on w1", "cpus"]  # kept under the worker's CPU: not probed again
    assert next(iter(json.loads(precision.CACHE.read_text()).values()))["model"] == "Worker CPU"


def test_a_cluster_of_mixed_cpus_is_bfloat16_only_where_every_kind_measures_it_faster(monkeypatch, tmp_path):
    """Each kind of CPU is probed once, on one of its workers; one kind that would train slower (no native
    bfloat16, or measured slower) keeps the whole cluster in float32, and the reason names every kind."""
    monkeypatch.setattr(precision, "CACHE", tmp_path / "precision.json")
    _no_local_probe(monkeypatch)
    task, data = get_task("digits"), tiny_dataset()
    cpus = {"x1": ("Xeon AMX", AMX, 2), "e1": ("EPYC", ("avx512f", "avx2"), 2), "x2": ("Xeon AMX", AMX, 2)}
    cluster = _Cluster(cpus, {"Xeon AMX": FASTER})
    chosen, why = precision.choose_precision(task, data, "auto", workers=cluster)
    assert chosen == "float32" and cluster.asked == ["cpus", "probe on x1"]  # nothing to measure on the EPYC
    assert "2 kinds of CPU" in why and "1.50x float32's speed on Xeon AMX (2 of the cluster's 3 workers)" in why
    assert "EPYC (1 of the cluster's 3 workers) has no native bfloat16" in why

    # Both kinds native: bfloat16 only if both measure it faster. A kind measured slower keeps float32.
    cpus = {"x1": ("Xeon AMX", AMX, 2), "s1": ("Sapphire", AMX, 4)}
    slower = _Cluster(cpus, {"Xeon AMX": FASTER, "Sapphire": SLOWER})
    assert precision.choose_precision(task, data, "auto", workers=slower)[0] == "float32"
    assert slower.asked == ["cpus", "probe on s1"]  # the Xeon's verdict was kept from the first cluster
    monkeypatch.setattr(precision, "CACHE", tmp_path / "another.json")
    faster = _Cluster(cpus, {"Xeon AMX": FASTER, "Sapphire": FASTER})
    assert precision.choose_precision(task, data, "auto", workers=faster)[0] == "mixed_bfloat16"
    assert sorted(faster.asked) == ["cpus", "probe on s1", "probe on x1"]


def test_a_kind_whose_workers_left_before_its_probe_does_not_decide(monkeypatch, tmp_path):
    """The EPYC's only worker leaves after saying what it is: its probe would run on a Xeon and be read as the
    EPYC's, so that kind is left out (it trains nothing now) and the Xeons decide."""
    monkeypatch.setattr(precision, "CACHE", tmp_path / "precision.json")
    _no_local_probe(monkeypatch)
    cpus = {"e1": ("EPYC", AMX, 2), "x1": ("Xeon AMX", AMX, 2)}
    cluster = _Cluster(cpus, {"Xeon AMX": FASTER, "EPYC": SLOWER}, leave=("e1",))
    chosen, why = precision.choose_precision(get_task("digits"), tiny_dataset(), "auto", workers=cluster)
    assert chosen == "mixed_bfloat16" and "EPYC" not in why and "Xeon AMX" in why
    assert [entry["model"] for entry in json.loads(precision.CACHE.read_text()).values()] == ["Xeon AMX"]


def test_a_remote_worker_without_native_bfloat16_is_float32_and_a_lost_cluster_is_its_own_error(monkeypatch):
    from mlflow_mnist.executors.base import ExecutorError

    _no_local_probe(monkeypatch)
    plain = precision.choose_precision(
        get_task("digits"), tiny_dataset(), "auto", workers=_Cluster({"w": ("Old CPU", ["avx2"], 4)}, {})
    )
    assert plain[0] == "float32" and "Old CPU (a Dask worker's) has no native bfloat16" in plain[1]

    class Lost(_Cluster):
        def run_on(self, workers, fn, task):
            raise ExecutorError("lost the Dask scheduler")

    with pytest.raises(ExecutorError, match="lost the Dask scheduler"):
        lost = Lost({"w": ("Worker CPU", ["amx_bf16"], 2)}, {})
        precision.choose_precision(get_task("digits"), tiny_dataset(), "auto", workers=lost)
