"""Waiting on a condition, never for a fixed time: one ``wait_until`` for the tests, the demo and
the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_S = 0.05


def wait_until(condition: Callable[[], object], timeout: float = 10, why: Callable[[], str] | None = None) -> None:
    """Return once ``condition()`` is true (it may raise to give up early); ``TimeoutError`` after
    ``timeout`` seconds, with ``why()`` (a log's tail, say) in its message."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:g} s" + (f":\n{why()}" if why else ""))
        time.sleep(POLL_S)
