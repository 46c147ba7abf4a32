"""SUB sockets that subscribe and never read: the hostile subscriber of the events socket.

Shared by tests/integration/test_idle_subscribers.py and
bench/idle_subscribers.py, so the test and the figure are of the same peer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import zmq


@contextlib.contextmanager
def never_reading(endpoint: str, count: int, topic: bytes) -> Iterator[None]:
    """``count`` SUB sockets subscribed to ``topic`` at ``endpoint`` that never read it."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    # The default (1023) would not hold 1,000 subscribers and their mailboxes.
    context.set(zmq.MAX_SOCKETS, count + 16)
    socks: list[zmq.Socket[bytes]] = []
    try:
        for _ in range(count):
            sub: zmq.Socket[bytes] = context.socket(zmq.SUB)
            sub.linger = 0
            # One message and 4 KiB of kernel buffer: the least a SUB takes
            # off the proxy's hands before it stops reading the connection,
            # so what the proxy queues for it stays on the proxy's side.
            sub.rcvhwm = 1
            sub.rcvbuf = 4096
            sub.setsockopt(zmq.SUBSCRIBE, topic)
            sub.connect(endpoint)
            socks.append(sub)
        yield
    finally:
        for sub in socks:
            sub.close(linger=0)
        context.term()
