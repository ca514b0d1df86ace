"""Bounded waiting for tests: poll a condition until it holds or a deadline passes."""
from __future__ import annotations

import time
from typing import Any, Callable


def wait_for(predicate: Callable[[], Any], what: str, timeout: float, poll: float = 0.05,
             detail: Callable[[], Any] | None = None) -> Any:
    """The first true value of predicate(), called every `poll` seconds; after `timeout`
    seconds an AssertionError naming `what` (and detail(), what to show of the state)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            shown = f": {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{shown}")
        time.sleep(poll)
