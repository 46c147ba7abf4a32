"""tests.helpers.free_port: no two endpoints of a test run are ever handed the same port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    PortAllocator,
    PortClaims,
    ephemeral_range,
    free_port,
    port_pool,
)

ROOT = Path(__file__).resolve().parents[2]


def test_many_calls_never_repeat_a_port_and_stay_outside_the_ephemeral_range() -> None:
    low, high = ephemeral_range()
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
    assert all(1024 < port <= 65535 for port in ports)
    assert not [port for port in ports if low <= port <= high]


def test_a_handed_out_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_the_ephemeral_range_is_read_from_the_kernel(tmp_path: Path) -> None:
    custom = tmp_path / "range"
    custom.write_text("40000\t50000\n", encoding="ascii")
    assert ephemeral_range(str(custom)) == (40000, 50000)
    assert ephemeral_range(str(tmp_path / "missing")) == (32768, 60999)


def test_the_pool_leaves_out_the_ephemeral_range_and_low_ports() -> None:
    pool = port_pool((32768, 60999))
    assert pool[0] == 10000 and pool[-1] == 65535
    assert 32767 in pool and 61000 in pool
    assert 32768 not in pool and 60999 not in pool
    assert len(pool) == len(set(pool)) == (32768 - 10000) + (65536 - 61000)


def test_a_taken_port_is_skipped_not_handed_out() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        allocate = PortAllocator([busy, busy + 1 if busy < 65535 else busy - 1], start=0)
        assert allocate() != busy


def test_an_exhausted_pool_raises_rather_than_repeat() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        allocate = PortAllocator([busy], start=0)
        with pytest.raises(RuntimeError, match="handed out or are taken"):
            allocate()


def test_the_walk_starts_at_its_offset_wraps_round_and_never_repeats() -> None:
    pool = [free_port() for _ in range(3)]
    allocate = PortAllocator(pool, start=2)
    assert [allocate(), allocate(), allocate()] == [pool[2], pool[0], pool[1]]
    with pytest.raises(RuntimeError):
        allocate()


@contextlib.contextmanager
def another_process(code: str) -> Iterator[list[int]]:
    """Run ``code`` in a Python process that prints a line of ports and then waits.

    Yields the ports it printed while it still lives (so it still holds
    them); on the way out it is told to leave, and must exit 0.
    """
    waiting = f"import sys; {code}; sys.stdin.read()"
    with subprocess.Popen(
        [sys.executable, "-c", waiting],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as other:
        assert other.stdout is not None and other.stdin is not None
        yield [int(field) for field in other.stdout.readline().split()]
        other.stdin.close()  # it leaves, and lets go of its ports
        assert other.wait(timeout=60) == 0


def test_two_processes_are_never_handed_the_same_port() -> None:
    """A second process (bench, a subprocess), alive while this one takes its ports."""
    code = (
        "from tests.helpers import free_port; print(*(free_port() for _ in range(50)), flush=True)"
    )
    with another_process(code) as theirs:
        ours = [free_port() for _ in range(50)]
    assert len(theirs) == 50
    assert not set(theirs) & set(ours)


def test_a_forked_child_is_never_handed_its_parents_ports() -> None:
    """Nor the ports its parent takes while the child lives."""
    reader, writer = os.pipe()
    leave_reader, leave_writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its ports and leave without running pytest's atexit
        try:
            os.close(reader)
            os.close(leave_writer)
            os.write(writer, " ".join(str(free_port()) for _ in range(50)).encode())
            os.close(writer)
            os.read(leave_reader, 1)  # until the parent has taken its ports
        finally:
            os._exit(0)
    os.close(writer)
    os.close(leave_reader)
    with os.fdopen(reader, "rb") as pipe:
        theirs = {int(field) for field in pipe.read().split()}
    ours = {free_port() for _ in range(50)}
    os.close(leave_writer)
    os.waitpid(pid, 0)
    assert len(theirs) == 50
    assert not theirs & ours


def test_a_port_claimed_by_a_live_process_is_skipped(tmp_path: Path) -> None:
    """Two allocators over one pool from one place: the second walks past the first's."""
    path = str(tmp_path / "ports.lock")
    pool = [free_port() for _ in range(4)]
    code = (
        "from tests.helpers import PortAllocator, PortClaims;"
        f" a = PortAllocator({pool!r}, start=0, claims=PortClaims({path!r}));"
        " print(a(), a(), flush=True)"
    )
    with another_process(code) as theirs:
        ours = PortAllocator(pool, start=0, claims=PortClaims(path))
        assert theirs == pool[:2]
        assert [ours(), ours()] == pool[2:]
