"""The latest pending value per key, bounded: heartbeats are state, not events.

docs/protocol.md section 2: when heartbeats come faster than the proxy applies
them, a pending heartbeat is superseded by a newer one from the same
publisher, and memory held for pending ones is bounded whatever the rate.
This table is that rule, kept apart from sockets so it is tested alone.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, NamedTuple, TypeVar

K = TypeVar("K")
T = TypeVar("T")


class Offered(NamedTuple):
    """What :meth:`Conflator.offer` did.

    Attributes:
        kept: the value is now pending (False: a pending one of its key
            has a higher ``seq``, so the offered one would be stale anyway).
        superseded: values dropped because a newer one of their key came
            (the pending one, or the offered one when ``kept`` is False).
        evicted: pending values of other keys dropped to stay in bounds.
    """

    kept: bool
    superseded: int
    evicted: int


class _Entry(NamedTuple, Generic[T]):
    # A NamedTuple: made once per message of a flood, so it must be cheap.
    seq: int | None
    value: T
    size: int


class Conflator(Generic[K, T]):
    """Pending values by key; a newer value supersedes the pending one of its key.

    Entries are kept in the order of their latest arrival (a superseded key
    moves to the end), so :meth:`drain` hands them over in the order the
    values now pending came in. Two bounds hold at every moment: at most
    ``max_entries`` keys and ``max_size`` summed sizes; past either, the
    entries that arrived first are evicted. The newest value is always kept,
    even alone above ``max_size``, so a single large value still gets through.

    Not thread-safe: one thread (the socket's) offers and drains.

    Args:
        max_entries: most keys pending at once (peers invent keys).
        max_size: most summed ``size`` of pending values (e.g. bytes).
    """

    def __init__(self, max_entries: int, max_size: int) -> None:
        if max_entries < 1 or max_size < 1:
            raise ValueError("max_entries and max_size must be >= 1")
        self._max_entries = max_entries
        self._max_size = max_size
        self._entries: OrderedDict[K, _Entry[T]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """The summed sizes of the pending values."""
        return self._size

    def offer(self, key: K, seq: int | None, value: T, size: int) -> Offered:
        """Make ``value`` the pending one of ``key`` unless a newer one is pending.

        Args:
            key: who the value is from (a heartbeat's publisher, or None).
            seq: its sequence number, when it has one; compared only when
                the pending value of the same key has one too.
            value: what to hand over later.
            size: its weight against ``max_size``.
        """
        superseded = 0
        pending = self._entries.get(key)
        if pending is not None:
            if seq is not None and pending.seq is not None and seq <= pending.seq:
                return Offered(kept=False, superseded=1, evicted=0)
            del self._entries[key]
            self._size -= pending.size
            superseded = 1
        self._entries[key] = _Entry(seq, value, size)
        self._size += size
        evicted = 0
        while len(self._entries) > 1 and (
            len(self._entries) > self._max_entries or self._size > self._max_size
        ):
            _, oldest = self._entries.popitem(last=False)
            self._size -= oldest.size
            evicted += 1
        return Offered(kept=True, superseded=superseded, evicted=evicted)

    def drain(self) -> list[T]:
        """Take every pending value, in arrival order; the table is empty after."""
        values = [entry.value for entry in self._entries.values()]
        self._entries.clear()
        self._size = 0
        return values
