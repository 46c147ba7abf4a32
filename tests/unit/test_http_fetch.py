"""The bounded, stoppable HTTP fetch (bus/service/http_fetch*.py) on its own.

The deadline, the client's TLS errors and headers; the body reader against
chunks made here, deadlines with an injected clock;
the network against loopback sockets, a listener whose backlog is full (a
connect that hangs) and a resolver that never answers, and against Unix
sockets (Nomad's Task API) the same way. Fetches from a
misbehaving server through the whole layer are in test_nomad_http.py,
against the Nomad fixture.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import httpcore
import pytest

from rpcproxy.bus.net.resolve import Resolver
from rpcproxy.bus.service.http_fetch import (
    MAX_FETCH_DEADLINE_S,
    MIN_FETCH_DEADLINE_S,
    ClientTls,
    fetch_deadline,
    make_fetch_client,
)
from rpcproxy.bus.service.http_fetch_body import INFLATE_STEP_BYTES, BodyError, read_body
from rpcproxy.bus.service.http_fetch_network import StoppableNetwork
from tests.helpers import socket_dir
from tests.nomadapi import gzip_of_zeros

# --- The deadline of a whole fetch, and the client ----------------------------------


def test_fetch_deadline_follows_the_interval_within_bounds() -> None:
    assert fetch_deadline(0.1) == MIN_FETCH_DEADLINE_S
    assert fetch_deadline(5.0) == 5.0
    assert fetch_deadline(600.0) == MAX_FETCH_DEADLINE_S


def test_an_unusable_tls_file_is_named_with_where_it_was_set(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-ca.pem")
    named = {"ca_cert": "CONSUL_CACERT", "client_cert": "CONSUL_CLIENT_CERT"}
    with pytest.raises(ValueError, match=r"CA file '.*no-ca\.pem' \(CONSUL_CACERT\): "):
        make_fetch_client("https://127.0.0.1:1", tls=ClientTls(ca_cert=missing, named=named))
    with pytest.raises(ValueError, match=r"client certificate '.*no-ca\.pem' / key '' \(CONSUL"):
        make_fetch_client("https://127.0.0.1:1", tls=ClientTls(client_cert=missing, named=named))
    with pytest.raises(ValueError, match=r"CA file '.*no-ca\.pem': "):
        make_fetch_client("https://127.0.0.1:1", tls=ClientTls(ca_cert=missing))


def test_only_gzip_is_asked_for_whatever_the_headers() -> None:
    # read_body decodes gzip alone: a caller's Accept-Encoding must not ask for more.
    headers = {"X-Token": "t", "accept-encoding": "br"}
    with make_fetch_client("http://127.0.0.1:1", headers=headers) as client:
        assert client.headers["Accept-Encoding"] == "gzip"
        assert client.headers["X-Token"] == "t"


# --- Bounded bodies (read_body) -------------------------------------------------


def body_of(chunks: Iterable[bytes], **kw: Any) -> bytes:
    """read_body with roomy bounds and no deadline, unless the test sets them."""
    bounds: dict[str, Any] = {
        "max_wire_bytes": 1 << 20,
        "max_bytes": 1 << 20,
        "deadline_at": float("inf"),
    }
    return read_body(chunks, **{**bounds, **kw})


def test_body_within_its_bounds_is_read_whole() -> None:
    assert body_of([b'{"a":', b" 1}"], content_length="9") == b'{"a": 1}'
    assert body_of([b"x" * 10], max_wire_bytes=10, max_bytes=10) == b"x" * 10
    assert body_of([b"plain"], content_encoding="identity") == b"plain"


def test_body_over_the_wire_bound_fails_as_it_streams() -> None:
    read: list[int] = []

    def chunks() -> Iterator[bytes]:
        for index in range(100):
            read.append(index)
            yield b"x" * 100

    with pytest.raises(BodyError, match="on the wire") as caught:
        body_of(chunks(), max_wire_bytes=1000)
    assert caught.value.kind == "too_large"
    assert len(read) == 11  # stopped at the chunk that crossed the bound, not at the end


def test_body_announced_over_the_bound_fails_before_a_read() -> None:
    def chunks() -> Iterator[bytes]:
        raise AssertionError("read a body whose Content-Length was already too long")
        yield b""

    with pytest.raises(BodyError, match="over 1000") as caught:
        body_of(chunks(), content_length="1001", max_wire_bytes=1000)
    assert caught.value.kind == "too_large"


def test_gzip_body_is_decoded() -> None:
    document = json.dumps({"Members": [], "ServerName": "a"}).encode()
    packed = gzip.compress(document)
    halves = [packed[: len(packed) // 2], packed[len(packed) // 2 :]]
    assert body_of(halves, content_encoding="gzip") == document
    assert body_of([packed], content_encoding="x-gzip") == document


def test_gzip_bomb_fails_at_the_decoded_bound_without_inflating_it() -> None:
    bomb = gzip_of_zeros(64 << 20)  # 64 MiB of zeros in some 64 KB
    assert len(bomb) < 128 * 1024
    tracemalloc.start()
    try:
        # One raw chunk that would inflate to all 64 MiB in a single call.
        with pytest.raises(BodyError, match="once decoded") as caught:
            body_of([bomb], content_encoding="gzip", max_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.kind == "too_large"
    # The body up to its bound and one step, never the 64 MiB.
    assert peak < (1 << 20) + 8 * INFLATE_STEP_BYTES + 2 * len(bomb), peak


@pytest.mark.parametrize(
    ("chunks", "encoding", "match"),
    [
        ([gzip.compress(b"whole")[:-4]], "gzip", "cut short"),
        ([gzip.compress(b"whole") + b"trailing"], "gzip", "after the end"),
        ([gzip.compress(b"whole"), b"more"], "gzip", "after the end"),
        ([b"not gzip at all"], "gzip", "bad gzip"),
        ([b"x"], "br", "unsupported Content-Encoding"),
        ([b"x"], "gzip, gzip", "unsupported Content-Encoding"),
    ],
)
def test_badly_encoded_body_fails(chunks: list[bytes], encoding: str, match: str) -> None:
    with pytest.raises(BodyError, match=match) as caught:
        body_of(chunks, content_encoding=encoding)
    assert caught.value.kind == "encoding"


def test_body_not_in_by_the_deadline_fails_on_the_next_chunk() -> None:
    now = [0.0]

    def chunks(arrivals: list[float]) -> Iterator[bytes]:
        for at in arrivals:
            now[0] = at
            yield b"x"

    clock = lambda: now[0]  # noqa: E731
    assert body_of(chunks([1.0, 5.0, 10.0]), deadline_at=10.0, clock=clock) == b"xxx"
    with pytest.raises(BodyError, match="deadline") as caught:
        body_of(chunks([1.0, 5.0, 10.5, 11.0]), deadline_at=10.0, clock=clock)
    assert caught.value.kind == "timeout"


# --- The network a fetch is bounded and stopped on ---------------------------------


def test_each_wait_is_cut_to_what_is_left_of_the_deadline() -> None:
    now = [100.0]
    network = StoppableNetwork(clock=lambda: now[0])
    assert network.wait_for(5.0, "read") == 5.0  # no fetch: the operation's own timeout
    assert network.wait_for(None, "read") is None
    with network.deadline(2.0):
        assert network.wait_for(5.0, "read") == 2.0
        now[0] = 101.5
        assert network.wait_for(5.0, "read") == pytest.approx(0.5)
        assert network.wait_for(None, "write") == pytest.approx(0.5)
        now[0] = 102.0
        for step, expired in [
            ("read", httpcore.ReadTimeout),
            ("write", httpcore.WriteTimeout),
            ("connect", httpcore.ConnectTimeout),
        ]:
            with pytest.raises(expired):
                network.wait_for(5.0, step)  # type: ignore[arg-type]
    assert network.wait_for(5.0, "read") == 5.0
    network.abort()
    with pytest.raises(httpcore.ReadError, match="stopped"):
        network.wait_for(5.0, "read")
    with pytest.raises(httpcore.ConnectError, match="stopped"):
        network.connect_tcp("127.0.0.1", 1)


def test_abort_wakes_a_connect_that_hangs() -> None:
    # A listener whose backlog is full drops further SYNs: connect() hangs.
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        port = listener.getsockname()[1]
        held = []
        for _ in range(8):
            probe = socket.socket()
            probe.settimeout(0.3)
            try:
                probe.connect(("127.0.0.1", port))
            except OSError:
                probe.close()
                break
            held.append(probe)
        else:
            pytest.skip("this kernel never left a connect hanging on a full backlog")
        try:
            network = StoppableNetwork()
            outcome = run_aside(lambda: network.connect_tcp("127.0.0.1", port, timeout=30.0))
            aborted_at = abort_when_blocked(network, outcome)
            assert isinstance(outcome.result(timeout=10), httpcore.ConnectError)
            assert time.monotonic() - aborted_at < 2.0
        finally:
            for probe in held:
                probe.close()


def test_a_lookup_that_hangs_ends_at_the_deadline_and_at_abort() -> None:
    release = threading.Event()

    def hanging_getaddrinfo(*args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        release.wait(30)
        return []

    try:
        network = StoppableNetwork(resolver=Resolver(getaddrinfo=hanging_getaddrinfo))
        begin = time.monotonic()
        with network.deadline(0.3), pytest.raises(httpcore.ConnectTimeout):
            network.connect_tcp("nomad.example", 4646, timeout=30.0)
        assert time.monotonic() - begin < 3.0
        outcome = run_aside(lambda: network.connect_tcp("nomad.example", 4646, timeout=30.0))
        aborted_at = abort_when_blocked(network, outcome)
        assert isinstance(outcome.result(timeout=10), httpcore.ConnectError)
        assert time.monotonic() - aborted_at < 2.0
    finally:
        release.set()


def run_aside(call: Callable[[], object]) -> Future[object]:
    """``call`` on a thread of its own; the future holds what it returned or raised."""
    outcome: Future[object] = Future()

    def run() -> None:
        try:
            outcome.set_result(call())
        except Exception as exc:
            outcome.set_result(exc)

    threading.Thread(target=run, daemon=True).start()
    return outcome


def abort_when_blocked(network: StoppableNetwork, outcome: Future[object]) -> float:
    """Abort once ``outcome``'s call is blocked (not done within a moment); when aborted."""
    with pytest.raises(FutureTimeout):
        outcome.result(timeout=0.3)  # still blocked: what abort() must end
    aborted_at = time.monotonic()
    network.abort()
    return aborted_at


# --- The network on a Unix socket (Nomad's Task API) -------------------------------


@pytest.fixture
def unix_listener() -> Iterator[tuple[socket.socket, str]]:
    """A listening Unix socket that accepts nobody (a connect queues in its backlog)."""
    with socket_dir() as directory:
        path = os.path.join(directory, "api.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(path)
            listener.listen(0)
            yield listener, path


def fill_backlog(path: str) -> list[socket.socket]:
    """Connect to ``path`` until its listener's backlog is full; the connected sockets."""
    held: list[socket.socket] = []
    for _ in range(8):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(0.3)  # non-blocking connect: a full backlog fails it with EAGAIN
        try:
            probe.connect(path)
        except BlockingIOError:
            probe.close()
            return held
        held.append(probe)
    for probe in held:
        probe.close()
    pytest.skip("this kernel never filled a Unix listener's backlog")


def test_a_read_on_a_unix_socket_ends_at_the_deadline_and_at_abort(
    unix_listener: tuple[socket.socket, str],
) -> None:
    _, path = unix_listener
    network = StoppableNetwork()
    stream = network.connect_unix_socket(path, timeout=5.0)
    try:
        begin = time.monotonic()
        with network.deadline(0.3), pytest.raises(httpcore.ReadTimeout):
            stream.read(1024, timeout=30.0)  # the agent never answers
        assert time.monotonic() - begin < 3.0
        outcome = run_aside(lambda: stream.read(1024, timeout=30.0))
        aborted_at = abort_when_blocked(network, outcome)
        # Woken at once: the shut-down socket reads as closed (which ends
        # httpcore's response), or the read fails; any later one is refused.
        woken = outcome.result(timeout=10)
        assert woken == b"" or isinstance(woken, httpcore.ReadError), woken
        assert time.monotonic() - aborted_at < 2.0
        with pytest.raises(httpcore.ReadError, match="stopped"):
            stream.read(1024, timeout=30.0)
    finally:
        stream.close()
    with pytest.raises(httpcore.ConnectError, match="stopped"):
        network.connect_unix_socket(path)


def test_a_unix_connect_waits_out_a_full_backlog_until_the_deadline_or_abort(
    unix_listener: tuple[socket.socket, str],
) -> None:
    listener, path = unix_listener
    held = fill_backlog(path)
    try:
        # Where a non-blocking connect fails at once, this one waits, as TCP's would...
        network = StoppableNetwork()
        begin = time.monotonic()
        with network.deadline(0.3), pytest.raises(httpcore.ConnectTimeout):
            network.connect_unix_socket(path, timeout=30.0)
        with pytest.raises(httpcore.ConnectTimeout, match="backlog"):
            network.connect_unix_socket(path, timeout=0.3)
        assert time.monotonic() - begin < 5.0
        # ...until abort(),
        outcome = run_aside(lambda: network.connect_unix_socket(path, timeout=30.0))
        aborted_at = abort_when_blocked(network, outcome)
        assert isinstance(outcome.result(timeout=10), httpcore.ConnectError)
        assert time.monotonic() - aborted_at < 2.0
        # ...or until the listener takes a connection off its backlog.
        network = StoppableNetwork()
        outcome = run_aside(lambda: network.connect_unix_socket(path, timeout=30.0))
        with pytest.raises(FutureTimeout):
            outcome.result(timeout=0.3)
        accepted, _ = listener.accept()
        stream = outcome.result(timeout=10)
        assert isinstance(stream, httpcore.NetworkStream)
        stream.close()
        accepted.close()
    finally:
        for probe in held:
            probe.close()


def test_a_unix_socket_nobody_listens_on_fails_at_once() -> None:
    with socket_dir() as directory:
        network = StoppableNetwork()
        begin = time.monotonic()
        with network.deadline(5.0), pytest.raises(httpcore.ConnectError):
            network.connect_unix_socket(os.path.join(directory, "none.sock"), timeout=5.0)
        assert time.monotonic() - begin < 1.0
