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
from typing import NoReturn

import pytest
from prometheus_client import CollectorRegistry, Counter

from rpcproxy.bus.service.http_wire import Request, Response
from rpcproxy.bus.service.metrics import MetricsServer
from tests.helpers import in_ci
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


def test_a_scrape_shows_the_registry(server: MetricsServer) -> None:
    text = scrape(server.port)
    assert "rpcproxy_test_things_total 3.0" in text


def slow_peer(port: int) -> socket.socket:
    """A connection that has sent part of a head (and so is handed over at once)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /metrics HTTP/1.1\r\n")
    return sock


def test_at_the_cap_a_new_connection_evicts_the_oldest_unfinished_one(
    registry: CollectorRegistry,
) -> None:
    """Whoever holds every slot only pushes out its own older connections."""
    server = MetricsServer(registry, "127.0.0.1", 0, max_connections=2, idle_timeout_s=WAIT_S)
    server.start()
    oldest = slow_peer(server.port)
    older = slow_peer(server.port)
    try:
        with slow_peer(server.port):
            assert closed_by_peer(oldest)  # long before its idle timeout
            assert server.evicted == 1
            # Both slots held by slow peers, yet the scrape gets in (evicting ``older``).
            assert "rpcproxy_test_things_total 3.0" in scrape(server.port)
            assert closed_by_peer(older)
    finally:
        oldest.close()
        older.close()
        server.stop()


def test_a_scrape_succeeds_while_idle_and_slow_peers_hold_every_slot(
    registry: CollectorRegistry,
) -> None:
    server = MetricsServer(registry, "127.0.0.1", 0, max_connections=4, idle_timeout_s=WAIT_S)
    server.start()
    before = threading.active_count()
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(18)]
    held += [slow_peer(server.port) for _ in range(2)]
    try:
        # Idle ones are handed over by the kernel after a second (TCP_DEFER_ACCEPT).
        poll_until(lambda: server.evicted >= 16, WAIT_S, what="every slot held")
        for _ in range(3):
            assert "rpcproxy_test_things_total 3.0" in scrape(server.port)
        assert threading.active_count() == before  # no thread per connection
    finally:
        for sock in held:
            sock.close()
        server.stop()


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
    """The loop and its workers start with the server; connections add none."""
    before = threading.active_count()
    most = before
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
    try:
        pending = list(idle)
        deadline = time.monotonic() + WAIT_S * 3
        while pending and time.monotonic() < deadline:
            most = max(most, threading.active_count())
            pending = [sock for sock in pending if not closed_by_peer(sock, timeout=0.01)]
        assert pending == []
    finally:
        for sock in idle:
            sock.close()
    assert most == before


def test_stop_closes_the_listener(registry: CollectorRegistry) -> None:
    server = MetricsServer(registry, "127.0.0.1", 0)
    server.start()
    port = server.port
    assert scrape(port)
    server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def skip_unless_ci(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason}, under CI=true", pytrace=False)
    pytest.skip(reason)


def test_an_ipv6_literal_in_brackets(registry: CollectorRegistry) -> None:
    # Skipped on a machine without IPv6, never under CI, whose machine has it.
    if not socket.has_ipv6:
        skip_unless_ci("no IPv6")
    try:
        server = MetricsServer(registry, "[::1]", 0)
    except OSError:
        skip_unless_ci("no IPv6 loopback")
    server.start()
    try:
        url = f"http://[::1]:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert b"rpcproxy_test_things_total" in response.read()
    finally:
        server.stop()


def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` as is and read the whole response (the server closes after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_other_paths_are_404_and_other_methods_405(server: MetricsServer) -> None:
    assert status_of(exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")) == 404
    refused = exchange(server.port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert status_of(refused) == 405
    assert b"\r\nAllow: GET, HEAD\r\n" in refused


def test_head_has_the_headers_of_get_and_no_body(server: MetricsServer) -> None:
    head = exchange(server.port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    got = exchange(server.port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
    assert status_of(head) == status_of(got) == 200
    headers, _, body = got.partition(b"\r\n\r\n")
    assert head == headers + b"\r\n\r\n"
    assert f"Content-Length: {len(body)}".encode() in headers


def test_openmetrics_when_the_scraper_asks(server: MetricsServer) -> None:
    accept = b"Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n"
    response = exchange(server.port, b"GET /metrics HTTP/1.1\r\n" + accept + b"\r\n")
    assert b"Content-Type: application/openmetrics-text" in response
    assert response.endswith(b"# EOF\n")


def test_bad_and_oversized_heads_get_an_error_and_a_close(server: MetricsServer) -> None:
    assert status_of(exchange(server.port, b"nonsense\r\n\r\n")) == 400
    assert status_of(exchange(server.port, b"GET /metrics HTTP/2.0\r\n\r\n")) == 505
    huge = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n"
    assert status_of(exchange(server.port, huge)) == 431


def test_a_failing_route_is_a_500_and_the_server_goes_on(registry: CollectorRegistry) -> None:
    def broken(request: Request) -> Response:
        raise RuntimeError("a bug in a route")

    server = MetricsServer(registry, "127.0.0.1", 0, routes={"/broken": broken})
    server.start()
    try:
        assert status_of(exchange(server.port, b"GET /broken HTTP/1.0\r\n\r\n")) == 500
        assert "rpcproxy_test_things_total 3.0" in scrape(server.port)
    finally:
        server.stop()


def test_a_peer_that_never_reads_its_response_blocks_nobody(registry: CollectorRegistry) -> None:
    """A response larger than the socket buffers waits for its reader, not the scrapes."""
    big = b"x" * (32 << 20)
    server = MetricsServer(
        registry,
        "127.0.0.1",
        0,
        request_deadline_s=WAIT_S,
        routes={"/big": lambda request: Response(200, big)},
    )
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as stuck:
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stuck.sendall(b"GET /big HTTP/1.0\r\n\r\n")
            for _ in range(3):
                assert "rpcproxy_test_things_total 3.0" in scrape(server.port)
    finally:
        server.stop()
