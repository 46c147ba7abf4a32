"""``ProxyClient.call`` against a real ``serve`` and real TCP servers (issue: failover as one call).

The user's function here is a tiny RPC: connect, send, read the echo, with
its own timeout. Live servers echo; dead ones refuse (ConnectionRefusedError);
hung ones accept and never answer (TimeoutError): both are OSErrors, so the
default ``retry_on`` retries them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from rpcproxy import AsyncProxyClient, NoServerError, ProxyClient, Server
from tests.helpers import free_port
from tests.integration.serving import HeartbeatPub, Serve, hb_payload, hb_server

pytestmark = pytest.mark.integration

RPC_TIMEOUT_S = 0.5


def rpc(server: Server) -> bytes:
    """A request to ``server`` and its answer: the user's own RPC, with its own timeout."""
    host, _, port = server.addr.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=RPC_TIMEOUT_S) as sock:
        sock.sendall(b"ping")
        answer = sock.recv(4)
    if not answer:
        raise ConnectionResetError(f"{server.addr} hung up")
    return answer + b" from " + server.addr.encode()


@pytest.fixture
def echo_servers() -> Iterator[Callable[[], str]]:
    """Live servers: each accepts and echoes four bytes."""
    listeners: list[socket.socket] = []
    stopping = threading.Event()

    def serve(listener: socket.socket) -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(conn.recv(4))

    def start() -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)
        threading.Thread(target=serve, args=(listener,), daemon=True).start()
        return f"127.0.0.1:{listener.getsockname()[1]}"

    yield start
    stopping.set()
    for listener in listeners:
        listener.close()


@pytest.fixture
def hung_servers() -> Iterator[Callable[[], str]]:
    """Servers that accept (the kernel does) and never answer."""
    opened: list[socket.socket] = []

    def start() -> str:
        listener = socket.create_server(("127.0.0.1", 0), backlog=16)
        opened.append(listener)
        return f"127.0.0.1:{listener.getsockname()[1]}"

    yield start
    for listener in opened:
        listener.close()


def dead() -> str:
    return f"127.0.0.1:{free_port()}"


class CountingClient(ProxyClient):
    """A real client that remembers what it reported as failed."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.reported: list[str] = []

    def notify_failed_server(self, addr: str) -> bool:
        self.reported.append(addr)
        return bool(super().notify_failed_server(addr))


def primaries(*addrs: str) -> tuple[str, ...]:
    return ("--primary-servers", ",".join(addrs))


def test_a_dead_head_then_a_live_server(
    serve_factory: Callable[..., Serve], echo_servers: Callable[[], str]
) -> None:
    gone, live = dead(), echo_servers()
    proxy = serve_factory(*primaries(gone, live))
    with CountingClient(proxy.query, events=proxy.events, watch=True) as client:
        assert client.call(rpc) == f"ping from {live}".encode()
        assert client.reported == [gone]
        assert client.find_server() == Server(live)


def test_a_hung_server_times_out_by_the_callers_own_timeout_and_is_reported(
    serve_factory: Callable[..., Serve],
    echo_servers: Callable[[], str],
    hung_servers: Callable[[], str],
) -> None:
    hung, live = hung_servers(), echo_servers()
    proxy = serve_factory(*primaries(hung, live))
    with CountingClient(proxy.query) as client:
        assert client.call(rpc) == f"ping from {live}".encode()
        assert client.reported == [hung]


def test_every_server_dead_respects_the_hold_and_raises_the_last_error(
    serve_factory: Callable[..., Serve],
) -> None:
    gone = [dead() for _ in range(3)]
    proxy = serve_factory(*primaries(*gone))
    tries: list[str] = []

    def counted(server: Server) -> bytes:
        tries.append(server.addr)
        return rpc(server)

    hold_s = 1.0
    with CountingClient(proxy.query) as client:
        started = time.monotonic()
        with pytest.raises(ConnectionRefusedError) as raised:
            client.call(counted, hold_s=hold_s)
        elapsed = time.monotonic() - started
    # Each failure reported once, and only failures.
    assert client.reported == tries
    assert len(tries) >= 2
    assert set(tries) <= set(gone)
    assert getattr(raised.value, "servers_tried", None) == tuple(tries)
    assert any("tries failed within 1 s" in note for note in raised.value.__notes__)
    # The hold bounds its waits: the last try started within it (a try's own
    # time is the function's); every dead server refuses at once here.
    assert elapsed >= hold_s


def test_an_error_outside_retry_on_is_raised_at_once_and_nothing_reported(
    serve_factory: Callable[..., Serve], echo_servers: Callable[[], str]
) -> None:
    gone, live = dead(), echo_servers()
    proxy = serve_factory(*primaries(gone, live))
    with CountingClient(proxy.query) as client:
        # A write that must not run twice retries nothing.
        with pytest.raises(ConnectionRefusedError):
            client.call(rpc, retry_on=())
        assert client.reported == []
        # A predicate says what is safe: here, only refusals.
        assert client.call(rpc, retry_on=lambda e: isinstance(e, ConnectionRefusedError))


def test_a_watching_client_waiting_for_a_server_proceeds_when_a_heartbeat_brings_one(
    serve_factory: Callable[..., Serve], echo_servers: Callable[[], str]
) -> None:
    live = echo_servers()
    proxy = serve_factory()
    hold_s = 160.0  # a pause of up to 10 s: the wait must end long before it would
    with ProxyClient(proxy.query, events=proxy.events, watch=True) as client:
        client._random = FixedRandom(0.99)  # the longest pause: 9.9 s
        outcome: list[object] = []
        caller = threading.Thread(target=lambda: outcome.append(client.call(rpc, hold_s=hold_s)))
        caller.start()
        pub = HeartbeatPub(connect=proxy.heartbeat)
        try:
            pub.publish_until(
                hb_payload([hb_server(live)], leader_rpc_addr=live),
                lambda: proxy.call("find_server")["server"] is not None,
            )
            sent = time.monotonic()
            caller.join(timeout=30)
            waited = time.monotonic() - sent
        finally:
            pub.close()
    assert outcome == [f"ping from {live}".encode()]
    assert waited < 5.0, f"the call waited {waited:.1f} s after the server came"


def test_no_server_within_the_hold_is_no_server_error(serve_factory: Callable[..., Serve]) -> None:
    proxy = serve_factory()
    with ProxyClient(proxy.query) as client, pytest.raises(NoServerError):
        client.call(rpc, hold_s=0.3)


def test_the_async_client_fails_over_the_same_way(
    serve_factory: Callable[..., Serve], echo_servers: Callable[[], str]
) -> None:
    gone, live = dead(), echo_servers()
    proxy = serve_factory(*primaries(gone, live))

    async def arpc(server: Server) -> bytes:
        return await asyncio.to_thread(rpc, server)

    async def main() -> list[bytes]:
        async with AsyncProxyClient(proxy.query, events=proxy.events, watch=True) as client:
            return list(await asyncio.gather(*(client.call(arpc) for _ in range(8))))

    answers = asyncio.run(main())
    assert answers == [f"ping from {live}".encode()] * 8


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value
