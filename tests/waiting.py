"""Waiting on a condition with a deadline: the one helper every test layer uses."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")


def poll_until(
    predicate: Callable[[], _T | None],
    timeout: float = 5.0,
    interval: float = 0.01,
    what: str = "",
) -> _T:
    """Call ``predicate`` until it returns something truthy; return that.

    Between calls this waits on an Event that nobody sets, so no bare sleep
    hides in a test, and the wait never overshoots the deadline.

    Raises:
        AssertionError: ``timeout`` seconds passed first; the message names ``what``.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        result = predicate()
        if result:
            return result
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        pause.wait(min(interval, left))
