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
