"""The search's progress line: one tqdm bar over the folds known so far (groups add theirs as they start), naming
the candidate, fold, status and accuracy of the last fold in, the workers' idle share, and tqdm's ETA."""

from __future__ import annotations

import math
from typing import Any

from mlflow_mnist.planning import FoldTask, Plan
from mlflow_mnist.results import FoldResult


class Progress:
    """A listener; ``workers`` (the executor's) makes it show the workers' idle share."""

    def __init__(self, enabled: bool = True, *, workers: int = 0):
        from mlflow_mnist.search import IdleClock

        self.enabled, self.bar = enabled, None
        self.clock = IdleClock(workers) if workers else None

    def group_started(self, plan: Plan) -> None:
        from tqdm.auto import tqdm

        if self.enabled:
            n_folds = len(plan.candidates[0].fold_keys) if plan.candidates else 0
            line = (
                f"{plan.group.name}: {len(plan.candidates)} candidates x {n_folds} folds, "
                f"{len(plan.to_train)} to train, {len(plan.reused)} reused from the store"
            )
            if plan.group.carry is not None:  # which earlier choices this step stands on
                line += f"\n  {plan.group.carry.describe()}"
            (self.bar.write if self.bar is not None else print)(line, **({} if self.bar else {"flush": True}))
        if not plan.to_train:
            return
        if self.clock is not None:
            self.clock.begin()
        if self.bar is None:  # made with its first folds: a notebook's widget keeps the total it is made with
            self.bar = tqdm(
                total=len(plan.to_train),
                desc=plan.group.name,
                unit="fold",
                disable=not self.enabled,
                dynamic_ncols=True,
            )
        else:
            self.bar.total += len(plan.to_train)
            _widget_grows_to(self.bar)
        self.bar.refresh()

    def fold_finished(self, plan: Plan, task: FoldTask, result: FoldResult) -> None:
        repeated = len(plan.candidates[task.candidate_index].fold_keys) > task.n_folds
        where = f"{f'repeat {task.repeat + 1} ' if repeated else ''}fold {task.fold + 1}/{task.n_folds}"
        if self.clock is not None:
            self.clock.finished(result)
        idle = self.clock.idle_share if self.clock is not None else math.nan
        shown = f", workers idle {idle:.0%}" if math.isfinite(idle) else ""
        self.bar.set_description_str(plan.group.name, refresh=False)
        self.bar.set_postfix_str(f"{task.label} {where}: {result.status} {result.accuracy:.4f}{shown}")
        self.bar.update()

    def group_finished(self, plan: Plan, rows: list[dict[str, Any]]) -> None:
        pass

    def search_finished(self, outcome) -> None:
        self.close()

    def search_failed(self, error: BaseException) -> None:
        self.close()  # before the one-line message, so that line is the last one printed

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _widget_grows_to(bar) -> None:
    """A notebook's bar (tqdm.notebook: label, bar, text) to ``bar.total``: its widget's maximum is fixed when it is
    made (a bar made empty stayed full, in its "info" style, whatever the count said); a terminal's has none."""
    children = getattr(getattr(bar, "container", None), "children", ())
    if len(children) == 3 and hasattr(children[1], "max"):
        children[1].max = bar.total
