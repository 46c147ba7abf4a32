"""The metrics endpoint of the real ``rpcproxy serve`` is bounded (issue 9, row 8).

300 idle TCP connections used to hold 300 threads for ever. Now the
process's thread count (``/proc/<pid>/task``) stays within a small bound of
what it was, every idle connection is closed by the proxy, and a scrape
works again once they are.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
import urllib.request
from collections.abc import Callable

import pytest

from tests.helpers import free_port
from tests.integration.serving import Serve
from tests.waiting import poll_until

pytestmark = pytest.mark.integration

IDLE_CONNECTIONS = 300
MAX_CONNECTIONS = 16
"""The threads this test allows the endpoint to add: its bound when it had a
thread per connection (before issue 16). Now it adds none (its loop and two
workers start with it); tests/integration/test_metrics_hostile.py holds that."""
WAIT_S = 30.0
"""A deadline, not a timing: idle connections are closed after a few seconds."""


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text: str = response.read().decode()
            return text
    except OSError:
        return None


def test_idle_connections_cost_bounded_threads_and_are_closed(
    serve_factory: Callable[..., Serve],
) -> None:
    port = free_port()
    proxy = serve_factory("--metrics", f"127.0.0.1:{port}")
    poll_until(lambda: scrape(port), what="the metrics endpoint")
    pid = proxy.proc.pid
    before = threads_of(pid)
    most = before

    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(IDLE_CONNECTIONS)]
    try:
        with selectors.DefaultSelector() as selector:
            for sock in idle:
                selector.register(sock, selectors.EVENT_READ)
            open_ = len(idle)
            deadline = time.monotonic() + WAIT_S
            while open_ and time.monotonic() < deadline:
                most = max(most, threads_of(pid))
                for key, _ in selector.select(0.05):
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)
                    try:
                        data = ready.recv(4096)
                    except ConnectionResetError:
                        data = b""
                    assert data == b"", data  # idle: the proxy never writes, only closes
                    selector.unregister(ready)
                    open_ -= 1
        assert open_ == 0, f"{open_} idle connections still open after {WAIT_S} s"
    finally:
        for sock in idle:
            sock.close()

    assert most - before <= MAX_CONNECTIONS + 1, (before, most)
    text = poll_until(lambda: scrape(port), WAIT_S, what="a scrape after the idle connections")
    assert "rpcproxy_servers" in text
