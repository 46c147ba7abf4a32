"""Handing the heap that departed subscribers freed back to the OS (glibc's ``malloc_trim``).

A process-memory utility, not a part of the events themselves: the events
actor (:mod:`rpcproxy.bus.service.events`) runs a :class:`HeapTrimmer` at
each refresh, because that is where subscribers come and go, but the rule
knows nothing of events: it watches malloc's free bytes and trims after a
burst of frees.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

TRIM_AFTER_BYTES = 8 << 20
"""Free heap that must pile up since the last look before it is handed back to the OS.

Far above how much the heap's free space moves in steady use (under a MiB
with 5,000 changes a second in bench/idle_subscribers.py), well below what a
few hundred departed subscribers leave (about 80 KB each).
"""


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc 2.33 and later), every field a ``size_t``."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]
    fordblks: int
    """Free bytes held by the allocator, in every arena."""


def _glibc_heap() -> tuple[Callable[[], int], Callable[[], object]] | None:
    """glibc's free heap bytes and ``malloc_trim(0)``; None under another libc (musl, macOS)."""
    try:
        libc = ctypes.CDLL(None)
        mallinfo2 = libc.mallinfo2
        malloc_trim = libc.malloc_trim
    except (AttributeError, OSError):
        return None
    mallinfo2.argtypes = []
    mallinfo2.restype = _MallInfo2
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int

    def free_bytes() -> int:
        info: _MallInfo2 = mallinfo2()
        return info.fordblks

    return free_bytes, lambda: malloc_trim(0)


class HeapTrimmer:
    """Hands freed heap back to the OS after a burst of frees (glibc only).

    libzmq allocates a connection's queues and buffers on its I/O thread, in
    a malloc arena of that thread. When many subscribers leave at once their
    memory is freed but stays resident: the arena only shrinks from its top,
    and long-lived allocations sit above the freed ones. Measured in
    bench/idle_subscribers.py, 1,000 departed subscribers left RSS 50 MB
    above where it started, for good; ``malloc_trim(0)`` returns the free
    pages in the middle of every arena too (about 0.1 ms here), and RSS came
    back.

    :meth:`check` trims only when the heap's free bytes have grown by
    ``after_bytes`` since the last trim (or since their lowest point after
    it), so a proxy in steady use never pays for it, and what was returned
    is not counted again.

    Args:
        heap: the free heap bytes and the trim; None turns the trimmer off
            (another libc). Tests pass fakes.
        after_bytes: the growth of free bytes that calls for a trim.
    """

    def __init__(
        self,
        heap: tuple[Callable[[], int], Callable[[], object]] | None,
        after_bytes: int = TRIM_AFTER_BYTES,
    ) -> None:
        self._heap = heap
        self._after_bytes = after_bytes
        self._floor: int | None = None
        self.trims = 0

    @classmethod
    def for_this_process(cls) -> HeapTrimmer:
        return cls(_glibc_heap())

    @property
    def enabled(self) -> bool:
        return self._heap is not None

    def check(self) -> bool:
        """Trim if enough was freed since the last look; whether it trimmed."""
        if self._heap is None:
            return False
        free_bytes, trim = self._heap
        free = free_bytes()
        if self._floor is not None and free - self._floor >= self._after_bytes:
            trim()
            self.trims += 1
            # What is free now is returned: only more freeing calls for another.
            self._floor = free
            log.debug("returned freed heap to the OS (%d MiB free in malloc's arenas)", free >> 20)
            return True
        # Free space used again lowers the mark: the next burst is measured from here.
        self._floor = free if self._floor is None else min(self._floor, free)
        return False
