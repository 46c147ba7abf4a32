"""Parallel pings over real loopback sockets (bus/probes/engine.py, bus/net/resolve.py).

Dead servers are ports nobody listens on (refused at once); hung ones are
listeners that accept and never answer (ZeroMQ pings) or whose full accept
queue drops SYNs (TCP pings). Names that never resolve come from an injected
``getaddrinfo`` that blocks until the test ends.
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
import zmq
from hypothesis import event, given
from hypothesis import strategies as st

from rpcproxy.bus.net.resolve import Resolver
from rpcproxy.bus.probes import TcpProber, WindowedProber, ZmqProber
from rpcproxy.bus.probes.engine import (
    MAX_WINDOW,
    MIN_WINDOW,
    prefix_decided,
    prefix_results,
    window_for,
)
from rpcproxy.bus.standins.standin import ServerStandIn
from rpcproxy.proxy import Address, parse_address
from tests.helpers import free_port
from tests.waiting import poll_until

StandInFactory = Callable[..., ServerStandIn]
REPO = Path(__file__).resolve().parents[2]
NEVER_S = 60.0
"""A ping timeout no test waits out: a ping that ends in under half of it did
not wait for it, however slow the machine. How fast it ends is for bench/."""
HUNG_TIMEOUT_S = 1.0
"""The ping timeout where hung servers must cost about one timeout, not k
(docs/protocol.md sections 3 and 4): bounded at :data:`PARALLEL_BOUND` of them."""
PARALLEL_BOUND = 5
"""Timeouts that k = :data:`HUNG` hung servers probed in parallel stay under
on the slowest machine; probed one after another they would take k."""
HUNG = 12


@pytest.fixture
def standin(ctx: zmq.Context[Any]) -> Iterator[StandInFactory]:
    started: list[ServerStandIn] = []

    def make(bind: str = "tcp://127.0.0.1:*") -> ServerStandIn:
        server = ServerStandIn(bind, protocol="zmq", context=ctx)
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


@pytest.fixture
def probers() -> Iterator[Callable[..., ZmqProber]]:
    """ZmqProbers closed after the test, which must release their context."""
    made: list[ZmqProber] = []

    def make(timeout_s: float, **kwargs: Any) -> ZmqProber:
        prober = ZmqProber(region="global", rpc_major_version=1, timeout_s=timeout_s, **kwargs)
        made.append(prober)
        return prober

    yield make
    for prober in made:
        prober.close()
        assert prober._context is None, "close() left the prober's context"


def dead(n: int = 1) -> list[Address]:
    return [Address("127.0.0.1", free_port()) for _ in range(n)]


def many_dead(n: int) -> list[Address]:
    """``n`` distinct refused addresses: one unused port on many loopback IPs."""
    port = free_port()
    return [Address(f"127.1.{i // 250}.{i % 250 + 1}", port) for i in range(n)]


def addr_of(server: ServerStandIn) -> Address:
    return parse_address(server.address)


def timed(
    prober: Callable[[Sequence[Address]], dict[Address, bool]], cands: Sequence[Address]
) -> tuple[dict[Address, bool], float]:
    start = time.monotonic()
    result = prober(cands)
    return result, time.monotonic() - start


@pytest.fixture
def listeners() -> Iterator[Callable[..., socket.socket]]:
    opened: list[socket.socket] = []

    def make(backlog: int = 0) -> socket.socket:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(backlog)
        opened.append(sock)
        return sock

    yield make
    for sock in opened:
        sock.close()


def tcp_addr(sock: socket.socket, host: str = "127.0.0.1") -> Address:
    return Address(host, sock.getsockname()[1])


@pytest.fixture
def silent(listeners: Callable[..., socket.socket]) -> Callable[[int], list[Address]]:
    """Servers that accept a connection and never say a word (hung ZeroMQ peers)."""

    def make(n: int) -> list[Address]:
        return [tcp_addr(listeners(8)) for _ in range(n)]

    return make


@pytest.fixture
def blackholes(
    listeners: Callable[..., socket.socket],
) -> Iterator[Callable[[int], list[Address]]]:
    """Addresses whose SYNs go unanswered, like a server behind a dead link.

    A listener with backlog 0 whose accept queue is full of connections
    nobody accepts makes Linux drop further SYNs, so connects hang. The
    kernel may still let one more handshake through while the queue fills
    (it drops only once it sees young requests pending), so every listener
    gets probes, all at once, until a probe's connect no longer completes.
    """
    fillers: list[socket.socket] = []

    def make(n: int) -> list[Address]:
        pending = [listeners() for _ in range(n)]
        addrs = [tcp_addr(listener) for listener in pending]
        for _round in range(8):
            if not pending:
                return addrs
            probes = {}
            for listener in pending:
                probe = socket.socket()
                probe.setblocking(False)
                probe.connect_ex(listener.getsockname())
                probes[probe] = listener
            with selectors.DefaultSelector() as selector:  # select() stops at fd 1024
                for probe in probes:
                    selector.register(probe, selectors.EVENT_WRITE)
                ready = {key.fd for key, _ in selector.select(0.3)}
            # A probe that connected joined the queue: that listener needs another.
            connected = [
                p
                for p in probes
                if p.fileno() in ready and p.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            ]
            pending = [probes[p] for p in connected]
            fillers.extend(connected)
            for probe in probes.keys() - set(connected):
                probe.close()
        pytest.fail("could not fill the accept queues of the black-hole listeners")

    yield make
    for filler in fillers:
        filler.close()


class Peers:
    """Live and hung servers for either kind of ping."""

    def __init__(
        self,
        standin: StandInFactory,
        listeners: Callable[..., socket.socket],
        silent: Callable[[int], list[Address]],
        blackholes: Callable[[int], list[Address]],
    ) -> None:
        self._standin = standin
        self._listeners = listeners
        self._silent = silent
        self._blackholes = blackholes

    def live(self, kind: str) -> Address:
        return addr_of(self._standin()) if kind == "zmq" else tcp_addr(self._listeners(8))

    def hung(self, kind: str, n: int) -> list[Address]:
        return self._silent(n) if kind == "zmq" else self._blackholes(n)


@pytest.fixture
def peers(
    standin: StandInFactory,
    listeners: Callable[..., socket.socket],
    silent: Callable[[int], list[Address]],
    blackholes: Callable[[int], list[Address]],
) -> Peers:
    return Peers(standin, listeners, silent, blackholes)


class StuckDns:
    """A ``getaddrinfo`` whose names in ``stuck`` hang until :meth:`release`."""

    def __init__(self, *stuck: str) -> None:
        self.stuck = set(stuck)
        self.released = threading.Event()
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, host: str, port: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        with self._lock:
            self.calls.append(host)
        if host in self.stuck:
            self.released.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "timed out")
        return socket.getaddrinfo(host, port, **kwargs)

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def stuck_dns() -> Iterator[Callable[..., tuple[Resolver, StuckDns]]]:
    made: list[StuckDns] = []

    def make(*stuck: str, max_lookups: int = 8) -> tuple[Resolver, StuckDns]:
        dns = StuckDns(*stuck)
        made.append(dns)
        return Resolver(max_lookups, getaddrinfo=dns), dns

    yield make
    for dns in made:
        dns.release()


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


# Decided prefixes by construction (a filter would throw away about half of
# arbitrary lists, and could silently keep none): every candidate failed, or
# some failed and the next answered, whatever the later ones are doing.
decided_results = st.one_of(
    st.lists(st.just(False), max_size=8),
    st.tuples(
        st.lists(st.just(False), max_size=7),
        st.lists(st.sampled_from([None, False, True]), max_size=7),
    ).map(lambda drawn: [*drawn[0], True, *drawn[1]]),
)


@given(decided_results, st.data())
def test_a_decided_prefix_never_changes(results: list[bool | None], data: st.DataObject) -> None:
    """Once decided, however the pending candidates end, the answer is the same."""
    cands = [Address("10.0.0.1", port) for port in range(1, len(results) + 1)]
    assert prefix_decided(results)
    event("pending after the head" if None in results else "nothing pending")
    finished = [r if r is not None else data.draw(st.booleans()) for r in results]
    assert prefix_results(cands, results) == prefix_results(cands, finished)


def test_prefix_results_stop_after_first_success() -> None:
    a, b, c = (Address("10.0.0.1", port) for port in (1, 2, 3))
    assert prefix_results([a, b, c], [False, True, None]) == {a: False, b: True}
    assert prefix_results([a, b, c], [None, False, None]) == {a: False, b: False, c: False}


# -- the window ------------------------------------------------------------------


def test_the_window_fits_under_the_descriptor_limit() -> None:
    assert window_for(3, fd_limit=1024, resolver_lookups=64) == (1024 - 256 - 128) // 3
    assert window_for(1, fd_limit=1024) == MAX_WINDOW
    assert window_for(3, fd_limit=1 << 20) == MAX_WINDOW
    assert window_for(3, fd_limit=300) == MIN_WINDOW


# -- ZmqProber -----------------------------------------------------------------


def test_zmq_live_server_answers(
    probers: Callable[..., ZmqProber], standin: StandInFactory
) -> None:
    server = standin()
    result, _ = timed(probers(2.0), [addr_of(server)])
    assert result == {addr_of(server): True}
    assert server.pings == 1


def test_zmq_nobody_listening_fails_at_once(probers: Callable[..., ZmqProber]) -> None:
    """A refused connect is known at once; libzmq alone would retry until the deadline."""
    [addr] = dead()
    result, elapsed = timed(probers(NEVER_S), [addr])
    assert result == {addr: False}
    assert elapsed < NEVER_S / 2


def test_zmq_silent_server_fails_after_the_timeout(
    probers: Callable[..., ZmqProber], silent: Callable[[int], list[Address]]
) -> None:
    [addr] = silent(1)
    result, elapsed = timed(probers(0.3), [addr])
    assert result == {addr: False}
    assert elapsed >= 0.3


def test_zmq_paused_server_fails(
    probers: Callable[..., ZmqProber], standin: StandInFactory
) -> None:
    server = standin()
    server.pause()
    result, _ = timed(probers(0.3), [addr_of(server)])
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
    ctx: zmq.Context[Any],
    probers: Callable[..., ZmqProber],
    pool: ThreadPoolExecutor,
    reply: bytes,
) -> None:
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.bind("tcp://127.0.0.1:*")
    addr = parse_address(router.last_endpoint.decode().removeprefix("tcp://"))
    try:
        future = pool.submit(timed, probers(NEVER_S), [addr])
        assert router.poll(int(NEVER_S * 1000)), "the ping never arrived"
        identity, empty, request = router.recv_multipart()
        assert empty == b""
        assert msgpack.unpackb(request) == {
            "op": "ping",
            "region": "global",
            "rpc_major_version": 1,
        }
        router.send_multipart([identity, b"", reply])
        result, elapsed = future.result(timeout=NEVER_S)
    finally:
        router.close()
    assert result == {addr: False}
    assert elapsed < NEVER_S / 2


def test_zmq_hung_servers_cost_one_timeout(
    probers: Callable[..., ZmqProber], silent: Callable[[int], list[Address]]
) -> None:
    cands = silent(HUNG)
    result, elapsed = timed(probers(HUNG_TIMEOUT_S), cands)
    assert result == dict.fromkeys(cands, False)
    assert elapsed < PARALLEL_BOUND * HUNG_TIMEOUT_S, f"{elapsed:.2f} s: serial pings?"


def test_zmq_live_after_dead_is_chosen(
    probers: Callable[..., ZmqProber],
    standin: StandInFactory,
    silent: Callable[[int], list[Address]],
) -> None:
    live = addr_of(standin())
    cands = [*dead(2), *silent(2), live]
    result, _ = timed(probers(0.5), cands)
    assert result == {**dict.fromkeys(cands[:4], False), live: True}


def test_zmq_returns_early_when_the_first_answers(
    probers: Callable[..., ZmqProber],
    standin: StandInFactory,
    silent: Callable[[int], list[Address]],
) -> None:
    first, second = addr_of(standin()), addr_of(standin())
    result, elapsed = timed(probers(NEVER_S), [first, *silent(4), second])
    assert result == {first: True}
    assert elapsed < NEVER_S / 2


def test_zmq_empty_candidates(probers: Callable[..., ZmqProber]) -> None:
    assert probers(0.1)([]) == {}


def test_zmq_host_name_is_resolved(
    probers: Callable[..., ZmqProber], standin: StandInFactory
) -> None:
    addr = Address("localhost", addr_of(standin()).port)
    result, _ = timed(probers(2.0), [addr])
    assert result == {addr: True}


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no ::1 on this machine")
def test_zmq_ipv6_literal(probers: Callable[..., ZmqProber], standin: StandInFactory) -> None:
    server = standin("tcp://[::1]:*")
    assert server.address.startswith("[::1]:")
    result, _ = timed(probers(2.0), [addr_of(server)])
    assert result == {addr_of(server): True}


# -- any number of candidates, a bounded window (issue 9, row 5) ------------------


def test_zmq_live_behind_1100_dead_is_found(
    probers: Callable[..., ZmqProber], standin: StandInFactory
) -> None:
    """More candidates than a context's 1023 sockets: today 'Too many open files'."""
    live = addr_of(standin())
    cands = [*many_dead(1100), live]
    prober = probers(2.0)
    result, _ = timed(prober, cands)
    assert result == {**dict.fromkeys(cands[:-1], False), live: True}
    assert prober.last_peak_open <= prober.window + 3


def test_tcp_live_behind_1100_dead_is_found(listeners: Callable[..., socket.socket]) -> None:
    live = tcp_addr(listeners(8))
    cands = [*many_dead(1100), live]
    result, _ = timed(TcpProber(timeout_s=2.0), cands)
    assert result == {**dict.fromkeys(cands[:-1], False), live: True}


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_zmq_hung_servers_beyond_the_window_are_pinged_a_window_at_a_time(
    probers: Callable[..., ZmqProber],
    standin: StandInFactory,
    silent: Callable[[int], list[Address]],
) -> None:
    """Sockets and descriptors stay within the window; the live server is still reached."""
    window, hung = 8, 30
    live = addr_of(standin())
    cands = [*silent(hung), live]
    prober = probers(0.3, window=window)
    before = _open_fds()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        # Sampling can only miss a peak, never invent one.
        while not done.is_set():
            peak[0] = max(peak[0], _open_fds())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result, _ = timed(prober, cands)
    finally:
        done.set()
        sampler.join(5)
    assert result == {**dict.fromkeys(cands[:-1], False), live: True}
    assert prober.last_peak_open <= window
    # The prober's context and waker (a few fds), plus 3 per attempt at most.
    assert peak[0] - before <= 24 + window * ZmqProber.fds_per_attempt


def test_later_candidates_are_not_opened_once_an_earlier_one_answered(
    probers: Callable[..., ZmqProber],
    standin: StandInFactory,
    listeners: Callable[..., socket.socket],
) -> None:
    live = addr_of(standin())
    behind = [listeners(8) for _ in range(20)]
    result, _ = timed(probers(2.0, window=1), [live, *(tcp_addr(s) for s in behind)])
    assert result == {live: True}
    for sock in behind:
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.accept()  # Nobody ever connected.


FD_LIMIT_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
    from rpcproxy.bus.probes.engine import TcpProber, ZmqProber
    from rpcproxy.proxy.address import Address, parse_address

    kind, live, port, hung = sys.argv[1], parse_address(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    cands = [Address(f"127.1.{i // 250}.{i % 250 + 1}", port) for i in range(1100)]
    cands += [parse_address(a) for a in hung.split(",")] + [live]
    if kind == "zmq":
        prober = ZmqProber(region="global", rpc_major_version=1, timeout_s=1.0)
    else:
        prober = TcpProber(timeout_s=1.0)
    result = prober(cands)
    prober.close()
    failed = sum(1 for a in cands[:-1] if result.get(a) is False)
    print(result.get(live), failed, len(cands) - 1, prober.window)
    """
)


@pytest.mark.parametrize("kind", ["zmq", "tcp"])
def test_many_candidates_under_a_1024_descriptor_limit(kind: str, peers: Peers) -> None:
    """``ulimit -n 1024`` is common: 1100 dead and 300 hung, then the live one."""
    live, hung = peers.live(kind), peers.hung(kind, 300)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            FD_LIMIT_SCRIPT,
            kind,
            live.canonical,
            str(free_port()),
            ",".join(a.canonical for a in hung),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    answered, failed, total, window = proc.stdout.split()
    assert (answered, failed, total) == ("True", "1400", "1400"), proc.stdout
    assert int(window) < 300


# -- names: resolved off the shared threads, bounded (issue 9, row 4) -------------


@pytest.mark.parametrize("kind", ["zmq", "tcp"])
def test_a_name_that_never_resolves_costs_its_deadline_and_nothing_else(
    kind: str,
    probers: Callable[..., ZmqProber],
    peers: Peers,
    stuck_dns: Callable[..., tuple[Resolver, StuckDns]],
) -> None:
    resolver, _ = stuck_dns("blackhole.invalid")
    hole = Address("blackhole.invalid", 4647)

    def make(timeout_s: float) -> WindowedProber:
        if kind == "zmq":
            return probers(timeout_s, resolver=resolver)
        return TcpProber(timeout_s=timeout_s, resolver=resolver)

    live = peers.live(kind)
    # First in order: the live one answers, nothing waits for the name.
    result, elapsed = timed(make(NEVER_S), [live, hole])
    assert result == {live: True}
    assert elapsed < NEVER_S / 2
    # Behind the name: the live one answered, the name fails at its deadline.
    result, elapsed = timed(make(0.5), [hole, live])
    assert result == {hole: False, live: True}
    assert elapsed >= 0.5
    # Nobody waits for the stuck lookup any more.
    assert resolver.waiting == 0


def test_lookups_are_capped_across_calls_and_joined(
    probers: Callable[..., ZmqProber],
    standin: StandInFactory,
    stuck_dns: Callable[..., tuple[Resolver, StuckDns]],
) -> None:
    names = [f"hole{i}.invalid" for i in range(10)]
    resolver, dns = stuck_dns(*names, max_lookups=3)
    holes = [Address(name, 4647) for name in names]
    live = addr_of(standin())
    prober = probers(0.3, resolver=resolver)
    for _ in range(3):
        result, _ = timed(prober, [*holes, live])
        # Names beyond the cap fail at once instead of queueing behind stuck ones.
        assert result == {**dict.fromkeys(holes, False), live: True}
        assert resolver.running == 3
        assert resolver.waiting == 0
    # Later calls joined the three stuck lookups rather than starting more.
    assert sorted(dns.calls) == sorted(names[:3])
    dns.release()
    poll_until(lambda: resolver.running == 0, 10, what="the lookups to end")
    assert prober([holes[0], live]) == {holes[0]: False, live: True}


def test_tcp_host_name_is_resolved(listeners: Callable[..., socket.socket]) -> None:
    addr = tcp_addr(listeners(), host="localhost")
    result, _ = timed(TcpProber(timeout_s=2.0), [addr])
    assert result == {addr: True}


def test_unresolvable_name_fails(probers: Callable[..., ZmqProber]) -> None:
    addr = Address("no-such-host.invalid", 4647)
    assert TcpProber(timeout_s=2.0)([addr]) == {addr: False}
    assert probers(2.0)([addr]) == {addr: False}


# -- close(): shutdown never waits a ping timeout (issue 9, row 9) -------------------


@pytest.mark.parametrize("kind", ["zmq", "tcp"])
def test_close_ends_a_ping_in_flight_and_fails_later_calls(
    kind: str,
    probers: Callable[..., ZmqProber],
    pool: ThreadPoolExecutor,
    peers: Peers,
    stuck_dns: Callable[..., tuple[Resolver, StuckDns]],
) -> None:
    timeout = 60.0
    if kind == "zmq":
        prober: ZmqProber | TcpProber = probers(timeout)
        hung = peers.hung(kind, 3)
    else:
        # Names whose lookup never ends keep a TCP ping in flight for sure; a
        # port whose SYNs the kernel drops can still let one handshake through.
        names = [f"stuck-{i}.example" for i in range(3)]
        resolver, _ = stuck_dns(*names)
        prober = TcpProber(timeout_s=timeout, resolver=resolver)
        hung = [parse_address(f"{name}:4647") for name in names]
    live = peers.live(kind)
    future = pool.submit(timed, prober, [*hung, live])
    poll_until(lambda: prober.in_flight, 10, what="the ping to start")
    prober.close()
    result, elapsed = future.result(timeout=timeout / 4)
    assert result == dict.fromkeys([*hung, live], False)
    assert elapsed < timeout / 4
    assert prober.closed
    # Closed: even a live server fails, at once; closing again is harmless.
    assert prober([live]) == {live: False}
    prober.close()
    if isinstance(prober, ZmqProber):
        assert prober._context is None


def test_close_before_any_call(probers: Callable[..., ZmqProber], standin: StandInFactory) -> None:
    prober = probers(1.0)
    prober.close()
    prober.close()
    live = addr_of(standin())
    assert prober([live]) == {live: False}
    assert prober._context is None


# -- TcpProber -----------------------------------------------------------------


def test_tcp_listening_socket_answers(listeners: Callable[..., socket.socket]) -> None:
    addr = tcp_addr(listeners())
    result, _ = timed(TcpProber(timeout_s=2.0), [addr])
    assert result == {addr: True}


def test_tcp_closed_port_fails_fast() -> None:
    [addr] = dead()
    result, elapsed = timed(TcpProber(timeout_s=NEVER_S), [addr])
    assert result == {addr: False}
    assert elapsed < NEVER_S / 2


def test_tcp_many_dead_in_parallel(
    blackholes: Callable[[int], list[Address]], listeners: Callable[..., socket.socket]
) -> None:
    hung = blackholes(HUNG)
    live = tcp_addr(listeners())
    cands = [*hung, *dead(2), live]
    result, elapsed = timed(TcpProber(timeout_s=HUNG_TIMEOUT_S), cands)
    assert result == {**dict.fromkeys(cands[:-1], False), live: True}
    assert HUNG_TIMEOUT_S * 0.8 < elapsed < PARALLEL_BOUND * HUNG_TIMEOUT_S


def test_tcp_returns_early_when_the_first_answers(
    blackholes: Callable[[int], list[Address]], listeners: Callable[..., socket.socket]
) -> None:
    live = tcp_addr(listeners())
    result, elapsed = timed(TcpProber(timeout_s=NEVER_S), [live, *blackholes(3)])
    assert result == {live: True}
    assert elapsed < NEVER_S / 2


def test_every_answers_for_each_candidate_past_the_first_success(
    listeners: Callable[..., socket.socket],
) -> None:
    """set_servers' question: every candidate's answer, not a prefix."""
    first, second = tcp_addr(listeners(8)), tcp_addr(listeners(8))
    [gone, also_gone] = dead(2)
    cands = [first, gone, second, also_gone, first]
    with TcpProber(timeout_s=2.0) as prober:
        assert prober.every(cands) == {first: True, gone: False, second: True, also_gone: False}
        # The rebalance's question, on the same candidates, stops at the first.
        assert prober(cands) == {first: True}


def test_every_on_a_closed_prober_fails_them_all(listeners: Callable[..., socket.socket]) -> None:
    live = tcp_addr(listeners())
    prober = TcpProber(timeout_s=2.0)
    prober.close()
    assert prober.every([live]) == {live: False}
