"""The events socket's guard against subscriptions no event can match (docs/protocol.md section 8).

What is counted, on frames a fake hands over; the rest on a real XPUB set
up as the events actor sets it up, with real SUB peers over TCP, the test's
thread owning the XPUB and taking the actor's turns (a send, then
:meth:`SubscriptionGuard.read`); and :func:`shut_down` on plain sockets.
Against the real ``serve``, under a flood, in
tests/integration/test_subscription_flood.py.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import zmq

from rpcproxy.bus.service.subscriptions import (
    JUNK_BYTES,
    LocalMatch,
    SubscriptionGuard,
    local_match,
    prepare,
    shut_down,
)
from rpcproxy.bus.wire import EVENT_TOPIC
from tests.waiting import poll_until

TOPIC_BYTES = 100
UNDER_BUDGET = JUNK_BYTES // (1 + TOPIC_BYTES)
"""Junk subscriptions that fit the budget (each counts its flag byte too)."""


def junk(index: int) -> bytes:
    head = f"{index:04d}".encode()
    return head + b"j" * (TOPIC_BYTES - len(head))


class Events:
    """An XPUB prepared as the events actor's, its guard, and SUBs with monitors."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self.ctx = ctx
        self.xpub: zmq.Socket[bytes] = ctx.socket(zmq.XPUB)
        self.xpub.linger = 0
        prepare(self.xpub)
        self.xpub.bind("tcp://127.0.0.1:*")
        self.endpoint = self.xpub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.closes: list[int] = []
        self.guard = SubscriptionGuard(
            self.xpub, EVENT_TOPIC, local_match(self.endpoint), close=self._close
        )
        self.socks: list[zmq.Socket[bytes]] = []

    def _close(self, fd: int, inode: int, is_local: LocalMatch) -> bool:
        self.closes.append(fd)
        return shut_down(fd, inode, is_local)

    def sub(self, *topics: bytes) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
        """A SUB that subscribes to ``topics`` in order, and a monitor of its disconnections."""
        sub: zmq.Socket[bytes] = self.ctx.socket(zmq.SUB)
        sub.linger = 0
        for topic in topics:
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        monitor = sub.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        sub.connect(self.endpoint)
        self.socks += [monitor, sub]
        return sub, monitor

    def turn(self) -> None:
        """What the actor does per event: send, then read what was handed over."""
        self.xpub.send_multipart([EVENT_TOPIC, b"payload"])
        self.guard.read()

    def close(self) -> None:
        for sock in self.socks:
            sock.close(linger=0)
        self.xpub.close(linger=0)


@pytest.fixture
def events(ctx: zmq.Context[Any]) -> Iterator[Events]:
    it = Events(ctx)
    try:
        yield it
    finally:
        it.close()


def heard(sock: zmq.Socket[bytes]) -> bool:
    """Whether ``sock`` got something; reads it all."""
    got = False
    while sock.poll(0):
        sock.recv_multipart()
        got = True
    return got


def turns_until(events: Events, done: Callable[[], object], what: str) -> None:
    """Take the actor's turns until ``done()`` holds."""

    def turned() -> bool:
        events.turn()
        return bool(done())

    poll_until(turned, timeout=10, interval=0, what=what)


def test_the_libzmq_in_use_names_the_connection_a_subscription_came_on(events: Events) -> None:
    events.sub(junk(0))
    assert events.xpub.poll(5000), "no subscription arrived"
    frame = events.xpub.recv(copy=False)
    assert frame.bytes == b"\x01" + junk(0)
    fd = frame.get(zmq.SRCFD)
    with socket.socket(fileno=os.dup(fd)) as sock:
        is_local = local_match(events.endpoint)
        assert is_local is not None and is_local(sock.getsockname())
        assert sock.getpeername()


def test_past_the_budget_a_connection_is_shut_and_no_other(events: Events) -> None:
    topic_sub, topic_closed = events.sub(EVENT_TOPIC)
    everything, everything_closed = events.sub(b"")
    # Ends on the event topic: once it hears an event, the guard has been
    # handed all it sent before.
    within, within_closed = events.sub(*map(junk, range(UNDER_BUDGET)), EVENT_TOPIC)
    _, flooder_closed = events.sub(*map(junk, range(UNDER_BUDGET + 1)))

    others = (topic_sub, everything, within)
    heard_one = set[int]()

    def settled() -> bool:
        heard_one.update(index for index, sock in enumerate(others) if heard(sock))
        return bool(flooder_closed.poll(0)) and len(heard_one) == len(others)

    turns_until(events, settled, "the flooder to be shut and the others to hear an event")
    events.turn()  # reads whatever came with the last event the others heard
    assert len(events.closes) == 1
    for monitor in (topic_closed, everything_closed, within_closed):
        assert not monitor.poll(0)
    # The others still hear the events.
    for sock in others:
        turns_until(events, functools.partial(heard, sock), "an event")


def test_a_connection_after_one_that_left_starts_from_nothing(events: Events) -> None:
    port = int(events.endpoint.rsplit(":", 1)[1])
    first, _ = events.sub(*map(junk, range(UNDER_BUDGET)), EVENT_TOPIC)
    turns_until(events, functools.partial(heard, first), "an event")
    events.turn()
    events.socks.remove(first)
    first.close(linger=0)
    turns_until(events, lambda: _connections_to(port) == 0, "the connection to close")
    # Its descriptor number is free, and likely the next connection's: that
    # one is counted on its own.
    second, second_closed = events.sub(*map(junk, range(100, 103)), EVENT_TOPIC)
    turns_until(events, functools.partial(heard, second), "an event")
    events.turn()
    assert events.closes == []
    assert not second_closed.poll(0)
    assert events.guard.tracked <= 2


def _connections_to(port: int) -> int:
    count = 0
    with open("/proc/net/tcp") as table:
        for line in table.read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


class FakeFrame:
    """What the guard reads of a frame: its bytes, and the descriptor it came on."""

    def __init__(self, data: bytes, fd: int) -> None:
        self.bytes = data
        self._fd = fd

    def get(self, option: int | str) -> int | str:
        return self._fd if option == zmq.SRCFD else "127.0.0.1"


class FakeXpub:
    """Hands over the frames given, then says there is nothing more (as libzmq's NOBLOCK)."""

    def __init__(self) -> None:
        self.frames: list[FakeFrame] = []

    def recv(self, flags: int, copy: bool) -> FakeFrame:
        if not self.frames:
            raise zmq.Again
        return self.frames.pop(0)


def fake_guard(xpub: FakeXpub, closes: list[tuple[int, int]]) -> SubscriptionGuard:
    def close(fd: int, inode: int, is_local: LocalMatch) -> bool:
        closes.append((fd, inode))
        return True

    sock = cast("zmq.Socket[Any]", xpub)
    return SubscriptionGuard(sock, EVENT_TOPIC, lambda name: True, close=close)


def test_what_is_counted_and_what_is_not() -> None:
    xpub, closes = FakeXpub(), list[tuple[int, int]]()
    guard = fake_guard(xpub, closes)
    prefixes = [EVENT_TOPIC[:n] for n in range(len(EVENT_TOPIC) + 1)]
    a, b = socket.socketpair()
    with a, b:
        fd = a.fileno()
        # The event topic and its prefixes, however often, unsubscriptions of
        # anything, and what an XSUB sends that is no subscription: free.
        for _ in range(1000):
            xpub.frames += [FakeFrame(b"\x01" + prefix, fd) for prefix in prefixes]
            xpub.frames += [FakeFrame(b"\x00" + prefix, fd) for prefix in prefixes]
            xpub.frames += [FakeFrame(b"\x00" + junk(0), fd), FakeFrame(b"data", fd)]
        guard.read()
        assert closes == [] and guard.tracked == 0
        # Other topics count their bytes, flag included, up to the budget...
        xpub.frames += [FakeFrame(b"\x01" + junk(i), fd) for i in range(UNDER_BUDGET)]
        xpub.frames.append(FakeFrame(b"\x01" + b"j" * (JUNK_BYTES - UNDER_BUDGET * 101 - 1), fd))
        guard.read()
        assert closes == []
        # ... and the next one past it shuts the connection, once.
        xpub.frames += [FakeFrame(b"\x01x", fd), FakeFrame(b"\x01" + junk(1), fd)]
        xpub.frames += [FakeFrame(b"\x01" + junk(i), fd) for i in range(50)]
        guard.read()
        assert closes == [(fd, os.fstat(fd).st_ino)]

        # The same number on another socket (libzmq closed the first and a
        # new connection got it) starts from nothing.
        c, d = socket.socketpair()
        with c, d:
            os.dup2(c.fileno(), fd)
            xpub.frames += [FakeFrame(b"\x01" + junk(i), fd) for i in range(UNDER_BUDGET)]
            guard.read()
            assert len(closes) == 1 and guard.tracked == 1


def test_a_closed_descriptor_is_not_counted() -> None:
    xpub, closes = FakeXpub(), list[tuple[int, int]]()
    guard = fake_guard(xpub, closes)
    a, b = socket.socketpair()
    fd = a.fileno()
    a.close()
    b.close()
    xpub.frames += [FakeFrame(b"\x01" + junk(i), fd) for i in range(3 * UNDER_BUDGET)]
    guard.read()
    assert closes == [] and guard.tracked == 0


def test_an_inproc_socket_is_read_and_never_shut(ctx: zmq.Context[Any]) -> None:
    xpub: zmq.Socket[bytes] = ctx.socket(zmq.XPUB)
    sub: zmq.Socket[bytes] = ctx.socket(zmq.SUB)
    closes: list[int] = []

    def close(fd: int, inode: int, is_local: LocalMatch) -> bool:
        closes.append(fd)
        return True

    try:
        prepare(xpub)
        xpub.bind("inproc://events-guard")
        assert local_match("inproc://events-guard") is None
        guard = SubscriptionGuard(xpub, EVENT_TOPIC, None, close=close)
        for index in range(UNDER_BUDGET * 3):
            sub.setsockopt(zmq.SUBSCRIBE, junk(index))
        sub.connect("inproc://events-guard")
        poll_until(lambda: xpub.poll(0), timeout=5, what="the subscriptions")
        guard.read()
        assert not xpub.poll(0)
        assert closes == [] and guard.tracked == 0
    finally:
        sub.close(linger=0)
        xpub.close(linger=0)


@pytest.mark.parametrize(
    ("endpoint", "name", "matches"),
    [
        ("tcp://127.0.0.1:4652", ("127.0.0.1", 4652), True),
        ("tcp://127.0.0.1:4652", ("127.0.0.1", 4653), False),
        ("tcp://[::1]:4652", ("::1", 4652, 0, 0), True),
        ("ipc:///tmp/events.sock", "/tmp/events.sock", True),
        ("ipc:///tmp/events.sock", "/tmp/other.sock", False),
        ("ipc://@events", b"\0events", True),
        ("ipc://@events", "", False),
    ],
)
def test_the_local_address_of_the_socket_s_connections(
    endpoint: str, name: object, matches: bool
) -> None:
    is_local = local_match(endpoint)
    assert is_local is not None
    assert is_local(name) is matches


@contextlib.contextmanager
def connected_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Both ends of a loopback TCP connection: the accepted one first."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    with accepted, client:
        yield accepted, client


def test_shut_down_shuts_only_the_socket_counted_and_only_one_of_ours() -> None:
    with connected_pair() as (accepted, client):
        fd, inode = accepted.fileno(), os.fstat(accepted.fileno()).st_ino
        port = accepted.getsockname()[1]
        ours = local_match(f"tcp://127.0.0.1:{port}")
        other = local_match(f"tcp://127.0.0.1:{port + 1}")
        assert ours is not None and other is not None

        assert shut_down(fd, inode + 1, ours) is False  # another socket took the number
        assert shut_down(fd, inode, other) is False  # not the events socket's
        client.sendall(b"still open")
        assert accepted.recv(64) == b"still open"

        assert shut_down(fd, inode, ours) is True
        assert client.recv(64) == b""  # the peer sees the end
        # The descriptor is still the owner's to close.
        assert os.fstat(fd).st_ino == inode


def test_shut_down_leaves_a_listener_and_a_closed_descriptor_alone() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        ours = local_match(f"tcp://127.0.0.1:{port}")
        assert ours is not None
        fd, inode = listener.fileno(), os.fstat(listener.fileno()).st_ino
        assert shut_down(fd, inode, ours) is False
        with socket.create_connection(("127.0.0.1", port)):
            pass  # still listening
    assert shut_down(fd, inode, ours) is False
