"""MLflow's searches answer a page at a time (at most 1,000 runs, 100 registered models): one loop reads them all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def all_pages(search: Callable[[str | None], Any]) -> list:
    """Every result of a paged MLflow search: ``search(page_token)``, from no token, until a page comes back
    without a next one."""
    found, token = [], None
    while True:
        page = search(token)
        found += list(page)
        if not (token := page.token):
            return found


def experiment_batches(client, *, view_type=None, but: str = "") -> list[list[str]]:
    """Every experiment's id (``view_type``: MLflow's, default active ones; ``but``: one left out), in batches of
    100: a run search takes at most 100 experiments."""
    from mlflow.entities import ViewType

    view = ViewType.ACTIVE_ONLY if view_type is None else view_type
    found = all_pages(lambda token: client.search_experiments(view_type=view, max_results=1000, page_token=token))
    ids = [e.experiment_id for e in found if e.experiment_id != but]
    return [ids[start : start + 100] for start in range(0, len(ids), 100)]
