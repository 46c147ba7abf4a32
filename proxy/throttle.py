"""A per-key "at most once per interval" gate for repetitive warnings."""

from __future__ import annotations

from collections import OrderedDict


class Throttle:
    """Allows an event per key at most once every ``interval`` seconds.

    Time is passed in, so the gate is deterministic to test. Keys come from
    peers (server addresses), so the table is bounded: when full, the key
    whose window ends first is forgotten.

    Every window has the same length, so with a clock that does not go back
    the windows end in the order they started. The table is kept in that
    order (a window that starts moves its key to the end), which makes the
    key to forget the first one: each call costs O(1), where a scan for the
    earliest end cost O(max_keys) per eviction, and a heartbeat naming
    thousands of new keys paid that thousands of times.
    """

    def __init__(self, interval: float, max_keys: int = 4096) -> None:
        self._interval = interval
        self._max_keys = max_keys
        self._until: OrderedDict[str, float] = OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        """True (and start a new window) if ``key`` is not inside its window."""
        until = self._until.get(key)
        if until is not None and now < until:
            return False
        self._until[key] = now + self._interval
        self._until.move_to_end(key)
        if len(self._until) > self._max_keys:
            self._until.popitem(last=False)
        return True

    def __len__(self) -> int:
        """How many keys the table holds (at most ``max_keys``)."""
        return len(self._until)
