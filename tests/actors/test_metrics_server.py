"""MetricsServer: the /metrics endpoint, bounded in connections, threads and time.

A real server on loopback with small bounds. Every wait is on a socket (a
peer sees its connection closed) or a poll with a deadline.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from rpcproxy.bus.service.metrics import MetricsServer
from tests.waiting import poll_until

WAIT_S = 10.0
"""Generous: the bounds under test are a fraction of a second."""


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("rpcproxy_test_things", "Things counted by a test", registry=registry).inc(3)
    return registry


@pytest.fixture
def server(registry: CollectorRegistry) -> Iterator[MetricsServer]:
    server = MetricsServer(
        registry, "127.0.0.1", 0, max_connections=2, idle_timeout_s=0.3, request_deadline_s=1.0
    )
    server.start()
    yield server
    server.stop()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def scrape_or_none(port: int) -> str | None:
    try:
        return scrape(port)
    except OSError:
        return None


def closed_by_peer(sock: socket.socket, timeout: float = WAIT_S) -> bool:
    """Wait until the server closes ``sock``; False if it stays open that long."""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(left):
                continue
            try:
                if sock.recv(4096) == b"":
                    return True
            except ConnectionResetError:
                return True
    return False


def handler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("Thread-") and t.daemon]


def test_a_scrape_shows_the_registry(server: MetricsServer) -> None:
    text = scrape(server.port)
    assert "rpcproxy_test_things_total 3.0" in text


def test_a_connection_beyond_the_limit_is_closed_at_once(server: MetricsServer) -> None:
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
    try:
        poll_until(lambda: len(handler_threads()) >= 2, WAIT_S, what="both slots taken")
        with socket.create_connection(("127.0.0.1", server.port)) as extra:
            # Closed long before the idle timeout would have closed it.
            assert closed_by_peer(extra, timeout=WAIT_S)
        assert server.refused >= 1
    finally:
        for sock in held:
            sock.close()


def test_idle_connections_are_closed_and_free_their_slots(server: MetricsServer) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    try:
        assert all(closed_by_peer(sock) for sock in idle)
    finally:
        for sock in idle:
            sock.close()
    assert poll_until(lambda: scrape_or_none(server.port), WAIT_S, what="a scrape")


def test_a_peer_that_trickles_bytes_is_cut_off_at_the_deadline(server: MetricsServer) -> None:
    """Never idle for the idle timeout, yet it cannot keep its slot past the deadline."""
    with socket.create_connection(("127.0.0.1", server.port)) as slow:
        slow.sendall(b"GET /metrics HTTP/1.0\r\n")
        deadline = time.monotonic() + WAIT_S
        pause = threading.Event()
        cut = False
        while time.monotonic() < deadline and not cut:
            try:
                slow.sendall(b"X-Slow: 1\r\n")
            except OSError:
                cut = True
                break
            cut = closed_by_peer(slow, timeout=0.1)
            pause.wait(0.05)
        assert cut


def test_threads_stay_bounded_under_many_connections(server: MetricsServer) -> None:
    before = len(handler_threads())
    most = before
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
    try:
        pending = list(idle)
        deadline = time.monotonic() + WAIT_S * 3
        while pending and time.monotonic() < deadline:
            most = max(most, len(handler_threads()))
            pending = [sock for sock in pending if not closed_by_peer(sock, timeout=0.01)]
        assert pending == []
    finally:
        for sock in idle:
            sock.close()
    assert most - before <= 2


def test_stop_closes_the_listener(registry: CollectorRegistry) -> None:
    server = MetricsServer(registry, "127.0.0.1", 0)
    server.start()
    port = server.port
    assert scrape(port)
    server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_an_ipv6_literal_in_brackets(registry: CollectorRegistry) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = MetricsServer(registry, "[::1]", 0)
    except OSError:
        pytest.skip("no IPv6 loopback")
    server.start()
    try:
        with urllib.request.urlopen(f"http://[::1]:{server.port}/", timeout=5) as response:
            assert b"rpcproxy_test_things_total" in response.read()
    finally:
        server.stop()
