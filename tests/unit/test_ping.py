"""Parallel pings over real loopback sockets (bus/ping.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from bus.ping import TcpPinger, ZmqPinger, prefix_decided, prefix_results
from bus.standin import ServerStandIn
from proxy.address import Address, parse_address

StandInFactory = Callable[..., ServerStandIn]


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    # term() blocks while any socket is open, so a leaked socket fails here.
    closer = threading.Thread(target=context.term, daemon=True)
    closer.start()
    closer.join(5)
    assert not closer.is_alive(), "a ZeroMQ socket was left open"


@pytest.fixture
def standin(ctx: zmq.Context[Any]) -> Iterator[StandInFactory]:
    started: list[ServerStandIn] = []

    def make(bind: str = "tcp://127.0.0.1:*") -> ServerStandIn:
        server = ServerStandIn(bind, context=ctx)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def dead(n: int = 1) -> list[Address]:
    return [Address("127.0.0.1", unused_port()) for _ in range(n)]


def addr_of(server: ServerStandIn) -> Address:
    return parse_address(server.address)


def timed(
    pinger: Callable[[Sequence[Address]], dict[Address, bool]], cands: Sequence[Address]
) -> tuple[dict[Address, bool], float]:
    start = time.monotonic()
    result = pinger(cands)
    return result, time.monotonic() - start


# -- the shared prefix decision ------------------------------------------------


@pytest.mark.parametrize(
    ("results", "decided"),
    [
        ([], True),
        ([None], False),
        ([False, None], False),
        ([False, True, None], True),
        ([None, True], False),
        ([False, False], True),
        ([True, None, None], True),
    ],
)
def test_prefix_decided(results: list[bool | None], decided: bool) -> None:
    assert prefix_decided(results) is decided


@given(st.lists(st.sampled_from([None, False, True]), max_size=8), st.data())
def test_a_decided_prefix_never_changes(results: list[bool | None], data: st.DataObject) -> None:
    """Once decided, however the pending candidates end, the answer is the same."""
    cands = [Address("10.0.0.1", port) for port in range(1, len(results) + 1)]
    if not prefix_decided(results):
        return
    finished = [r if r is not None else data.draw(st.booleans()) for r in results]
    assert prefix_results(cands, results) == prefix_results(cands, finished)


def test_prefix_results_stop_after_first_success() -> None:
    a, b, c = (Address("10.0.0.1", port) for port in (1, 2, 3))
    assert prefix_results([a, b, c], [False, True, None]) == {a: False, b: True}
    assert prefix_results([a, b, c], [None, False, None]) == {a: False, b: False, c: False}


# -- ZmqPinger -----------------------------------------------------------------


def zmq_pinger(ctx: zmq.Context[Any], timeout_s: float) -> ZmqPinger:
    return ZmqPinger(ctx, region="global", rpc_major_version=1, timeout_s=timeout_s)


def test_zmq_live_server_answers(ctx: zmq.Context[Any], standin: StandInFactory) -> None:
    server = standin()
    result, elapsed = timed(zmq_pinger(ctx, 2.0), [addr_of(server)])
    assert result == {addr_of(server): True}
    assert elapsed < 1.0
    assert server.pings == 1


def test_zmq_nobody_listening_fails_after_the_timeout(ctx: zmq.Context[Any]) -> None:
    [addr] = dead()
    result, elapsed = timed(zmq_pinger(ctx, 0.3), [addr])
    assert result == {addr: False}
    assert 0.25 < elapsed < 1.0


def test_zmq_paused_server_fails(ctx: zmq.Context[Any], standin: StandInFactory) -> None:
    server = standin()
    server.pause()
    result, _ = timed(zmq_pinger(ctx, 0.3), [addr_of(server)])
    assert result == {addr_of(server): False}


@pytest.mark.parametrize(
    "reply",
    [
        msgpack.packb({"ok": False}),
        msgpack.packb({"ok": 1}),
        msgpack.packb([True]),
        b"\xc1 not msgpack",
        # {"x": [[[...100k deep...]]], "ok": true}: too deep to decode.
        b"\x82\xa1x" + b"\x91" * 100_000 + b"\xc0" + b"\xa2ok\xc3",
    ],
    ids=["ok-false", "ok-not-bool", "not-a-map", "garbage", "too-deep"],
)
def test_zmq_bad_reply_fails_at_once(
    ctx: zmq.Context[Any], pool: ThreadPoolExecutor, reply: bytes
) -> None:
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.bind("tcp://127.0.0.1:*")
    addr = parse_address(router.last_endpoint.decode().removeprefix("tcp://"))
    try:
        future = pool.submit(timed, zmq_pinger(ctx, 5.0), [addr])
        assert router.poll(5000), "the ping never arrived"
        identity, empty, request = router.recv_multipart()
        assert empty == b""
        assert msgpack.unpackb(request) == {
            "op": "ping",
            "region": "global",
            "rpc_major_version": 1,
        }
        router.send_multipart([identity, b"", reply])
        result, elapsed = future.result(timeout=10)
    finally:
        router.close()
    assert result == {addr: False}
    assert elapsed < 2.5


def test_zmq_dead_servers_cost_one_timeout(ctx: zmq.Context[Any]) -> None:
    k, timeout = 8, 0.5
    cands = dead(k)
    result, elapsed = timed(zmq_pinger(ctx, timeout), cands)
    assert result == dict.fromkeys(cands, False)
    assert elapsed < 0.5 * k * timeout


def test_zmq_live_after_dead_is_chosen(ctx: zmq.Context[Any], standin: StandInFactory) -> None:
    live = addr_of(standin())
    cands = [*dead(3), live]
    result, elapsed = timed(zmq_pinger(ctx, 0.5), cands)
    assert result == {**dict.fromkeys(cands[:3], False), live: True}
    assert elapsed < 1.5


def test_zmq_returns_early_when_the_first_answers(
    ctx: zmq.Context[Any], standin: StandInFactory
) -> None:
    first, second = addr_of(standin()), addr_of(standin())
    timeout = 2.0
    result, elapsed = timed(zmq_pinger(ctx, timeout), [first, *dead(4), second])
    assert result == {first: True}
    assert elapsed < timeout / 2


def test_zmq_empty_candidates(ctx: zmq.Context[Any]) -> None:
    assert zmq_pinger(ctx, 0.1)([]) == {}


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no ::1 on this machine")
def test_zmq_ipv6_literal(ctx: zmq.Context[Any], standin: StandInFactory) -> None:
    server = standin("tcp://[::1]:*")
    assert server.address.startswith("[::1]:")
    result, _ = timed(zmq_pinger(ctx, 2.0), [addr_of(server)])
    assert result == {addr_of(server): True}


# -- TcpPinger -----------------------------------------------------------------


@pytest.fixture
def listeners() -> Iterator[Callable[[], socket.socket]]:
    opened: list[socket.socket] = []

    def make() -> socket.socket:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        opened.append(sock)
        return sock

    yield make
    for sock in opened:
        sock.close()


def tcp_addr(sock: socket.socket, host: str = "127.0.0.1") -> Address:
    return Address(host, sock.getsockname()[1])


@pytest.fixture
def blackholes(
    listeners: Callable[[], socket.socket],
) -> Iterator[Callable[[int], list[Address]]]:
    """Addresses whose SYNs go unanswered, like a server behind a dead link.

    A listener with backlog 0 and one connection nobody accepts has a full
    accept queue; Linux then drops further SYNs, so connects hang.
    """
    fillers: list[socket.socket] = []

    def make(n: int) -> list[Address]:
        addrs = []
        for _ in range(n):
            listener = listeners()
            filler = socket.create_connection(listener.getsockname(), timeout=2)
            fillers.append(filler)
            addrs.append(tcp_addr(listener))
        return addrs

    yield make
    for filler in fillers:
        filler.close()


def test_tcp_listening_socket_answers(listeners: Callable[[], socket.socket]) -> None:
    addr = tcp_addr(listeners())
    result, elapsed = timed(TcpPinger(timeout_s=2.0), [addr])
    assert result == {addr: True}
    assert elapsed < 1.0


def test_tcp_closed_port_fails_fast() -> None:
    [addr] = dead()
    result, elapsed = timed(TcpPinger(timeout_s=2.0), [addr])
    assert result == {addr: False}
    assert elapsed < 1.0


def test_tcp_host_name_is_resolved(listeners: Callable[[], socket.socket]) -> None:
    addr = tcp_addr(listeners(), host="localhost")
    result, _ = timed(TcpPinger(timeout_s=2.0), [addr])
    assert result == {addr: True}


def test_tcp_unresolvable_name_fails() -> None:
    addr = Address("no-such-host.invalid", 4647)
    result, _ = timed(TcpPinger(timeout_s=2.0), [addr])
    assert result == {addr: False}


def test_tcp_many_dead_in_parallel(
    blackholes: Callable[[int], list[Address]], listeners: Callable[[], socket.socket]
) -> None:
    k, timeout = 8, 0.5
    hung = blackholes(k)
    live = tcp_addr(listeners())
    cands = [*hung, *dead(2), live]
    result, elapsed = timed(TcpPinger(timeout_s=timeout), cands)
    assert result == {**dict.fromkeys(cands[:-1], False), live: True}
    assert timeout * 0.8 < elapsed < 0.5 * k * timeout


def test_tcp_returns_early_when_the_first_answers(
    blackholes: Callable[[int], list[Address]], listeners: Callable[[], socket.socket]
) -> None:
    live = tcp_addr(listeners())
    result, elapsed = timed(TcpPinger(timeout_s=2.0), [live, *blackholes(3)])
    assert result == {live: True}
    assert elapsed < 1.0
