"""A per-key "at most once per interval" gate for repetitive warnings."""

from __future__ import annotations


class Throttle:
    """Allows an event per key at most once every ``interval`` seconds.

    Time is passed in, so the gate is deterministic to test. Keys come from
    peers (server addresses), so the table is bounded: when full, the key
    whose window ends first is forgotten.
    """

    def __init__(self, interval: float, max_keys: int = 4096) -> None:
        self._interval = interval
        self._max_keys = max_keys
        self._until: dict[str, float] = {}

    def allow(self, key: str, now: float) -> bool:
        """True (and start a new window) if ``key`` is not inside its window."""
        until = self._until.get(key)
        if until is not None and now < until:
            return False
        self._until[key] = now + self._interval
        if len(self._until) > self._max_keys:
            del self._until[min(self._until, key=self._until.__getitem__)]
        return True
