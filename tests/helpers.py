"""Loopback ports, Unix socket paths and MessagePack: the small pieces every test layer
(and bench/) shares.

MessagePack here is the independent ``msgpack`` package, never the product's
codec, so a test that speaks the wire with these checks docs/protocol.md and
not the codec's own idea of it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import msgpack  # type: ignore[import-untyped]

EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
DEFAULT_EPHEMERAL = (32768, 60999)
"""Linux's default, used when the file above cannot be read."""
LOWEST_PORT = 10000
"""Below this live too many well-known services (databases, web servers)."""


def ephemeral_range(path: str = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (inclusive)."""
    try:
        with open(path, encoding="ascii") as file:
            low, high = (int(field) for field in file.read().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return low, high


def port_pool(ephemeral: tuple[int, int], lowest: int = LOWEST_PORT) -> list[int]:
    """Every port from ``lowest`` to 65535 outside ``ephemeral``, in order."""
    low, high = ephemeral
    return [port for port in range(lowest, 65536) if not low <= port <= high]


class PortClaims:
    """Ports claimed by the processes alive on this machine, one lock byte each.

    Each claim is a POSIX record lock on byte ``port`` of one shared file:
    another process (a forked child, a subprocess, a second test run) cannot
    take the byte while the claimer lives, and the kernel lets go of every
    claim when the claimer exits, however it exits. One open file per
    process, whatever the number of claims.
    """

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)

    def claim(self, port: int) -> bool:
        """Whether this process now holds ``port`` (it may hold it already)."""
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
        except OSError:
            return False
        return True


class PortAllocator:
    """Hands out loopback TCP ports, never the same one twice.

    Binding port 0 and closing lets the kernel hand the same port to the next
    caller (two endpoints of one test then collide) and draws from the
    ephemeral range, where any outgoing connection may take it before the
    endpoint binds. Here a port comes from outside that range, is never
    handed out twice by one allocator, and was bindable when handed out.
    With ``claims``, it is also never one that another live process was
    handed. Each process starts at its own pid-derived place in the pool, so
    concurrent test processes (bench, subprocesses) rarely meet.
    """

    def __init__(self, pool: list[int], start: int, claims: PortClaims | None = None) -> None:
        if not pool:
            raise ValueError("an empty port pool")
        self._pool = pool
        self._given: set[int] = set()
        self._claims = claims
        self.restart_at(start)

    def restart_at(self, start: int) -> None:
        """Walk on from ``start`` (a forked child), still never repeating a port."""
        self._order: Iterator[int] = (
            self._pool[(start + step) % len(self._pool)] for step in itertools.count()
        )
        self._lock = threading.Lock()  # new: a fork may copy it held by another thread

    def __call__(self) -> int:
        with self._lock:
            for _ in range(len(self._pool)):
                port = next(self._order)
                if port in self._given:
                    continue
                self._given.add(port)  # given or unusable: never tried again
                claimed = self._claims is None or self._claims.claim(port)
                if claimed and _bindable(port):
                    return port
            raise RuntimeError(f"all {len(self._pool)} ports have been handed out or are taken")


def _bindable(port: int) -> bool:
    """Whether ``port`` can be bound on loopback now (no SO_REUSEADDR: strict)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _process_start(pool: list[int]) -> int:
    # A stride of a prime spreads neighbouring pids (a test run and its
    # subprocesses) far apart in the pool.
    return (os.getpid() * 7919) % len(pool)


_POOL = port_pool(ephemeral_range())
_CLAIMS = PortClaims(os.path.join(tempfile.gettempdir(), "rpcproxy-test-ports.lock"))
_free_port = PortAllocator(_POOL, start=_process_start(_POOL), claims=_CLAIMS)
# A forked child would otherwise walk its parent's stretch of the pool.
os.register_at_fork(after_in_child=lambda: _free_port.restart_at(_process_start(_POOL)))


def free_port() -> int:
    """A loopback TCP port for an endpoint to bind: distinct for every call in a process.

    Outside the kernel's ephemeral range, so no outgoing connection takes it
    meanwhile; bindable when handed out; never one another live process of
    this machine was handed (a forked child, bench's processes, a second
    test run). See :class:`PortAllocator`.
    """
    return _free_port()


def in_ci() -> bool:
    """Whether the tests run under CI (``CI=true``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def port_is_free(port: int) -> bool:
    """Whether a new listener could bind ``port`` now (as a restarted proxy would)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
        return True


@contextlib.contextmanager
def socket_dir() -> Iterator[str]:
    """A fresh directory for Unix sockets, removed after; its path is short.

    A socket's path may be 107 bytes at most, which pytest's ``tmp_path``
    (named after the test) can exceed.
    """
    directory = tempfile.mkdtemp(prefix="rpx")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def tcp(port: int) -> str:
    return f"tcp://127.0.0.1:{port}"


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack(data: bytes) -> Any:
    # strict_map_key=False: a test may look at a reply or frame with int keys.
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
