"""ASHA's top rung in parts (``--top-rung-parts``): checkpoints where nothing is decided, each fold's next part
queued behind that fold alone, so the search's last folds fill every worker; killed between a checkpoint and its
next part, a rerun trains nothing twice. Decisions and timing are checked on the real engine and store with a
scripted fold worker and a simulated clock (a fold takes as long as the epochs it trains)."""

from __future__ import annotations

import json

import pytest
from test_strategies import (
    MNIST,
    ContinuingWorker,
    _rungs_of_trials,
    assert_each_configuration_is_one_trial,
    campaign,
    runs,
    search,
)

from mlflow_mnist import schema
from mlflow_mnist.executors import SerialExecutor
from mlflow_mnist.params import StageError
from mlflow_mnist.strategies.asha import AsyncHalving, stops
from mlflow_mnist.tasks.mnist.steps import SEED
from mlflow_mnist.testing import run


def test_the_top_rung_splits_at_even_checkpoints_and_every_part_trains_an_epoch():
    assert stops([2, 6, 18], 1) == [2, 6, 18]
    assert stops([2, 6, 18], 2) == [2, 6, 12, 18]
    assert stops([2, 6, 18], 3) == [2, 6, 10, 14, 18]
    assert stops([2, 6, 18], 12) == [2, 6, *range(7, 19)]
    assert stops([18], 2) == [9, 18]  # one rung: from scratch
    assert stops([2, 6, 20], 5) == [2, 6, 8, 11, 14, 17, 20]  # uneven spans: whole epochs, none empty
    with pytest.raises(StageError, match="--top-rung-parts 13: the top rung trains 12 epoch.s. past the rung before"):
        stops([2, 6, 18], 13)


def test_the_parts_name_their_search_and_one_part_keeps_the_keys_stored_before_the_option():
    from mlflow_mnist.strategies.base import SearchRequest

    def key(**options):
        request = SearchRequest(MNIST, 6, space=SEED, search_key=lambda *parts: json.dumps(parts), **options)
        return AsyncHalving.from_request(request).search_key

    assert key() == key(top_rung_parts=1) == json.dumps(["asha", SEED.name, 3, 0, 0, 1])
    assert key(top_rung_parts=2) != key()
    assert key(top_rung_parts=2, promotion="eager") not in (key(top_rung_parts=2), key(promotion="eager"))


class Clocked(SerialExecutor):
    """``workers`` workers on a simulated clock: a fold takes as long as the epochs it trains, and
    ``wait_first`` hands back the fold that ends first (the oldest on ties). Keeps each fold's label, fold number,
    start and end."""

    def __init__(self, workers: int = 2):
        super().__init__()
        self.n_workers, self.now, self.ends, self.spans = workers, 0, {}, []

    def submit(self, fn, task):
        handle = super().submit(fn, task)
        self.ends[handle] = self.now + task.params["epochs"] - task.initial_epoch
        self.spans.append((task.label, task.fold, self.now, self.ends[handle]))
        return handle

    def wait_first(self, handles, timeout=None):
        first = min(handles, key=lambda handle: self.ends[handle])
        self.now = self.ends[first]
        return [first]

    def idle(self) -> int:
        """Worker-epochs without a fold to train, from the first fold to the last."""
        return self.n_workers * self.now - sum(end - start for _, _, start, end in self.spans)


#: What make champion's trials scored on the 2-core AMD EPYC, campaign seed 0 (the store of
#: benchmarks/results/champion-epyc-auto.json): mean CV by epochs and trial number. Its search ended with trial 1's
#: three 12-epoch continuations alone on two workers, the third beside an idle worker for 88 s of 467. At 12
#: epochs (no checkpoint in that run) trial 1 is given its 18-epoch score.
EPYC_SCORES = {
    2: dict(enumerate([0.9723, 0.9949, 0.9723, 0.9863, 0.8199, 0.981, 0.9935, 0.9903])),
    6: {1: 0.9957, 3: 0.9906, 6: 0.9939},
    12: {1: 0.9963},
    18: {1: 0.9963},
}


class Replayed(ContinuingWorker):
    """Scores each trial's folds what ``EPYC_SCORES`` says for its number and epochs."""

    def __call__(self, task):
        result = super().__call__(task)
        result.accuracy = EPYC_SCORES[task.params["epochs"]][int(task.label.split()[1])]
        return result


def _champion(parts: int) -> AsyncHalving:
    return AsyncHalving(
        MNIST.get_space("wide"), n_trials=8, factor=3, min_epochs=2, top_rung_parts=parts, seed=0, search_key="w"
    )


def test_two_parts_keep_both_workers_busy_to_the_end_of_the_champions_search(store):
    """make champion's search on the EPYC, replayed: its last rung is trial 1's three 12-epoch continuations on
    two workers, the third alone beside an idle worker. In two parts the six 6-epoch parts end together: the
    idle tail is gone, the search is 6 epochs shorter, the same trials go as far, and trial 1 passes through its
    checkpoint at 12 epochs, where nothing is decided."""
    whole, split = Clocked(), Clocked()
    run(campaign(store), _champion(1), worker=Replayed(), with_model=False, executor=whole)
    other = store.replace("mlflow.db", "split.db")
    worker = Replayed()
    run(campaign(other), _champion(2), worker=worker, with_model=False, executor=split)
    assert (whole.idle(), split.idle()) == (12, 0) and whole.now - split.now == 6
    assert _rungs_of_trials(other) == {
        **{str(trial): {1} for trial in (0, 2, 4, 5, 7)},
        **{"1": {1, 2, 3, 4}, "3": {1, 2}, "6": {1, 2}},
    }
    assert _rungs_of_trials(store)["1"] == {1, 2, 3}
    # Trial 1's folds went 2, 6, 12, 18 epochs, each part continuing the last (the worker checks its model).
    parts = [label for label in worker.order if label.startswith("trial 1 (")]
    assert sorted(parts) == sorted(f"trial 1 ({epochs} epochs)" for epochs in (2, 6, 12, 18) for _ in range(3))
    (checkpoint,) = [
        r for r in runs(other) if r.data.tags.get(schema.TRIAL) == "1" and r.data.tags.get(schema.RUNG) == "3"
    ]
    assert checkpoint.data.params["epochs"] == "12" and checkpoint.data.tags[schema.RUNGS] == "4"
    assert checkpoint.data.metrics["mean_heldout_accuracy"] == pytest.approx(EPYC_SCORES[12][1])


def test_each_part_waits_for_its_own_folds_checkpoint_and_no_longer(store):
    """On three workers a free worker would take a 18-epoch part while its 12-epoch checkpoint still trains: the
    engine holds it back until that fold's checkpoint is in (the worker checks it got it), not until the whole
    checkpoint rung is."""
    clock = Clocked(workers=4)
    run(campaign(store), _champion(2), worker=Replayed(), with_model=False, executor=clock)
    ends = {fold: end for label, fold, _, end in clock.spans if label == "trial 1 (12 epochs)"}
    starts = {fold: start for label, fold, start, _ in clock.spans if label == "trial 1 (18 epochs)"}
    assert len(ends) == len(starts) == 3 and all(starts[fold] == ends[fold] for fold in starts)


class StopAtSecondFold(ContinuingWorker):
    """Stops the driver when it hands out the second fold of the first checkpoint part, ``(4 epochs)``."""

    def __call__(self, task):
        if task.label.endswith("(4 epochs)") and task.fold == 1:
            raise KeyboardInterrupt
        return super().__call__(task)


def _in_parts(n_trials: int) -> AsyncHalving:
    return AsyncHalving(SEED, n_trials=n_trials, factor=3, min_epochs=2, top_rung_parts=2, seed=0, search_key="p")


def test_a_search_killed_between_a_checkpoint_and_the_part_after_it_resumes_and_trains_nothing_twice(store):
    """Killed while a checkpoint part is half done and the part after it already queued (the 4-epoch part's run
    exists, unfinished, with its one finished fold; the 6-epoch part's is made with its first fold, so none yet):
    the rerun goes on at the checkpoint, not past it (the 6-epoch part would have no model to continue on two of
    its folds), reuses the fold that was done, and each continued fold gets its own checkpoint (the worker
    checks)."""
    first = StopAtSecondFold()
    with pytest.raises(KeyboardInterrupt):
        search(store, _in_parts(6), first)
    started = {
        r.data.tags[schema.RUNG]: r.info.status
        for r in runs(store)
        if r.data.tags.get(schema.LEVEL) == schema.CANDIDATE_LEVEL and r.data.tags.get(schema.RUNG) in ("2", "3")
    }
    assert set(started) == {"2"} and "FINISHED" not in started.values()
    second = ContinuingWorker()
    search(store, _in_parts(6), second)
    assert not set(first.trained) & set(second.trained)
    assert_each_configuration_is_one_trial(store, 6)
    finished_top = [
        r
        for r in runs(store)
        if r.data.tags.get(schema.RUNG) == "3"
        and r.data.tags.get(schema.LEVEL) == schema.CANDIDATE_LEVEL
        and r.info.status == "FINISHED"
    ]
    assert finished_top and all(r.data.params["epochs"] == "6" for r in finished_top)


def test_a_top_bracket_starts_from_scratch_at_the_first_checkpoint_and_goes_on_to_the_full_budget(store):
    """Hyperband's brackets start at the rungs that decide: over ``seed`` (rungs 2 and 6 epochs, a checkpoint at 4
    in two parts) bracket 1 is the top one, so its trials train 4 epochs from scratch, then their second part."""
    strategy = AsyncHalving(
        SEED, n_trials=4, factor=3, min_epochs=2, brackets=2, top_rung_parts=2, seed=0, search_key="b"
    )
    assert strategy.budgets == [2, 4, 6] and strategy.brackets == 2
    search(store, strategy, ContinuingWorker())
    rungs = _rungs_of_trials(store)
    assert {trial: reached for trial, reached in rungs.items() if min(reached) == 2} == {"1": {2, 3}, "3": {2, 3}}
    assert all(min(reached) == 1 for trial, reached in rungs.items() if trial in ("0", "2"))
