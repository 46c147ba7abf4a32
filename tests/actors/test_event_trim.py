"""EventPublisher hands the heap departed subscribers freed back to the OS (issue 16).

:class:`HeapTrimmer`'s rule on a fake heap (trim only after a burst of
frees, never twice for the same one), the real glibc functions it loads, and
the actor running it at each refresh. The memory it returns is measured
against the real ``serve`` in tests/integration/test_idle_subscribers.py.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from typing import Any

import pytest
import zmq

from rpcproxy.bus.service.events import EventPublisher
from rpcproxy.bus.service.heap_trim import HeapTrimmer

from ._fakes import TIMEOUT, ManualScheduler

MIB = 1 << 20


class FakeHeap:
    """Free bytes set by the test; counts the trims."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.trims = 0

    def free_bytes(self) -> int:
        return self.free

    def trim(self) -> None:
        self.trims += 1


def trimmer_on(heap: FakeHeap) -> HeapTrimmer:
    return HeapTrimmer((heap.free_bytes, heap.trim), after_bytes=8 * MIB)


def test_the_first_look_only_takes_the_mark() -> None:
    heap = FakeHeap(100 * MIB)
    assert trimmer_on(heap).check() is False
    assert heap.trims == 0


def test_a_burst_of_frees_is_trimmed_once() -> None:
    heap = FakeHeap(2 * MIB)
    trimmer = trimmer_on(heap)
    trimmer.check()
    heap.free += 7 * MIB  # below the threshold: steady use
    assert trimmer.check() is False
    heap.free += 1 * MIB  # 8 MiB more than the mark: subscribers left
    assert trimmer.check() is True
    # Trimmed pages still count as free: the same free bytes are no new burst.
    assert [trimmer.check() for _ in range(3)] == [False, False, False]
    assert heap.trims == trimmer.trims == 1


def test_free_space_used_again_lowers_the_mark() -> None:
    heap = FakeHeap(40 * MIB)
    trimmer = trimmer_on(heap)
    trimmer.check()
    heap.free = 2 * MIB  # new subscribers took the freed memory
    trimmer.check()
    heap.free = 11 * MIB  # and left: 9 MiB freed since the lowest point
    assert trimmer.check() is True


def test_without_glibc_it_does_nothing() -> None:
    trimmer = HeapTrimmer(None)
    assert trimmer.enabled is False
    assert trimmer.check() is False


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_the_real_heap_is_found_and_trimmed() -> None:
    # In a fresh interpreter: the holes below depend on where malloc puts the
    # small blocks, which earlier tests' leftovers in this process's free
    # lists decide (in some orders the big blocks ended up side by side,
    # merged with the heap's top when freed, and glibc trimmed them itself).
    out = subprocess.run(
        [sys.executable, "-c", _REAL_HEAP], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert out == ["enabled", "trimmed", "512"]


_REAL_HEAP = """
from rpcproxy.bus.service.heap_trim import HeapTrimmer

trimmer = HeapTrimmer.for_this_process()
print("enabled" if trimmer.enabled else "disabled")
# 32 MiB of blocks from malloc's heap, each followed by a small one kept
# alive (1 KiB: above pymalloc's 512 bytes, so from malloc too): freed, the
# big ones are holes malloc cannot give back by itself, as the queues of
# departed subscribers are among libzmq's live allocations.
blocks = [(bytearray(64 * 1024), bytearray(1024)) for _ in range(512)]
trimmer.check()
pins = [pin for _, pin in blocks]
del blocks
print("trimmed" if trimmer.check() else "not trimmed")
print(len(pins))
"""


class CountingTrimmer(HeapTrimmer):
    def __init__(self) -> None:
        super().__init__(None)
        self.checks = 0

    def check(self) -> bool:
        self.checks += 1
        return False


def test_each_refresh_runs_the_trimmer() -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    scheduler = ManualScheduler()
    trimmer = CountingTrimmer()
    ref = EventPublisher.start(
        ctx, "tcp://127.0.0.1:0", refresh_s=1.0, scheduler=scheduler, trimmer=trimmer
    )
    try:
        for expected in range(1, 4):
            scheduler.advance(1.0)
            # Answered after the refresh (the mailbox is FIFO).
            ref.proxy().endpoint().get(timeout=TIMEOUT)
            assert trimmer.checks == expected
    finally:
        ref.stop(timeout=TIMEOUT)
        ctx.term()
