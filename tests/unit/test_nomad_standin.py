"""The stand-in's Nomad RPC side over loopback (bus/standins/nomad_rpc.py).

Spoken to with raw sockets and the independent ``msgpack`` package, and once
with the Go peer's client (``msgpackrpc.CallWithCodec``, as a Nomad client
calls), so the stand-in that ``rpcproxy demo`` and the compose setup use is
checked against Nomad's codec and not only against our own prober.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

from rpcproxy.bus.probes.msgpackrpc import RequestHeader
from rpcproxy.bus.standins.nomad_rpc import NomadResponder, NomadRpcListener, parse_tcp_bind
from rpcproxy.bus.standins.standin import ServerStandIn
from tests.helpers import port_is_free
from tests.nomadpeer import go_ping
from tests.waiting import poll_until

PING_SEQ_1 = b"\x01\x82\xa3Seq\x01\xadServiceMethod\xabStatus.Ping\x80"
PING_REPLY_SEQ_1 = b"\x83\xa5Error\xa0\xa3Seq\x01\xadServiceMethod\xabStatus.Ping\x80"
READ_DEADLINE_S = 10.0
"""How long a read that must get an answer may wait: a deadline, never a pause."""


def request(method: str, seq: int) -> bytes:
    header: bytes = msgpack.packb({"ServiceMethod": method, "Seq": seq})
    body: bytes = msgpack.packb({})
    return header + body


def port_of(endpoint: str) -> int:
    return int(endpoint.rpartition(":")[2])


class Conn:
    """A raw client connection that reads whole msgpack values."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=READ_DEADLINE_S)
        self.unpacker = msgpack.Unpacker(raw=False)
        self.raw = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def values(self, count: int) -> list[Any]:
        out: list[Any] = []
        while len(out) < count:
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("closed")
            self.raw += data
            self.unpacker.feed(data)
            out += list(self.unpacker)
        return out

    def closed_by_peer(self) -> bool:
        """Whether the stand-in has closed (EOF or reset) within the deadline."""
        try:
            while self.sock.recv(4096):
                pass
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def conns() -> Iterator[Callable[[int], Conn]]:
    opened: list[Conn] = []

    def connect(port: int) -> Conn:
        conn = Conn(port)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


@pytest.fixture
def standin() -> Iterator[ServerStandIn]:
    with ServerStandIn() as server:
        yield server


@pytest.fixture
def listeners() -> Iterator[Callable[..., NomadRpcListener]]:
    started: list[NomadRpcListener] = []

    def make(**kwargs: Any) -> NomadRpcListener:
        listener = NomadRpcListener("tcp://127.0.0.1:*", NomadResponder(), **kwargs)
        listener.start()
        started.append(listener)
        return listener

    yield make
    for listener in started:
        listener.stop()


# -- answering -------------------------------------------------------------------------


def test_the_reply_is_the_captured_bytes(standin: ServerStandIn, conns: Any) -> None:
    conn = conns(port_of(standin.endpoint))
    conn.send(PING_SEQ_1)
    assert conn.values(2) == [{"Error": "", "Seq": 1, "ServiceMethod": "Status.Ping"}, {}]
    assert conn.raw == PING_REPLY_SEQ_1
    assert standin.pings == 1


def test_many_requests_on_one_connection_echo_their_seq(standin: ServerStandIn, conns: Any) -> None:
    conn = conns(port_of(standin.endpoint))
    conn.send(b"\x01" + b"".join(request("Status.Ping", seq) for seq in (5, 2**40, 7)))
    headers = conn.values(6)[::2]
    assert [h["Seq"] for h in headers] == [5, 2**40, 7]
    assert all(h["Error"] == "" for h in headers)


def test_an_unknown_method_gets_net_rpc_s_error(standin: ServerStandIn, conns: Any) -> None:
    conn = conns(port_of(standin.endpoint))
    conn.send(b"\x01" + request("Status.Nope", 3) + request("Job.List", 4))
    first, _, second, _ = conn.values(4)
    assert (first["Seq"], first["Error"]) == (3, "rpc: can't find method Status.Nope")
    assert (second["Seq"], second["Error"]) == (4, "rpc: can't find service Job.List")
    assert standin.pings == 0


def test_the_responder_alone() -> None:
    responder = NomadResponder()
    assert responder(RequestHeader("Status.Ping", 1)) == PING_REPLY_SEQ_1
    assert responder.pings == 1


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\xc1",
        b"\x01" + msgpack.packb({"ServiceMethod": b"Status.Ping", "Seq": 1}, use_bin_type=True),
        b"\x01" + msgpack.packb(["Status.Ping", 1]),
        b"\x02" + request("Status.Ping", 1),
        b"\x04\x16\x03\x01",  # TLS, which this stand-in was not given
        b"GET / HTTP/1.1\r\n\r\n",
    ],
    ids=["bad-byte", "method-as-bin", "array-header", "unknown-first-byte", "tls", "http"],
)
def test_garbage_closes_the_connection(standin: ServerStandIn, conns: Any, data: bytes) -> None:
    """As Nomad's server: an undecodable request ends the connection."""
    conn = conns(port_of(standin.endpoint))
    conn.send(data)
    assert conn.closed_by_peer()
    assert standin.pings == 0


def test_a_value_over_the_bound_closes_the_connection(
    listeners: Callable[..., NomadRpcListener], conns: Any
) -> None:
    listener = listeners(max_value_bytes=1024)
    conn = conns(port_of(listener.endpoint))
    conn.send(b"\x01\xdb\x00\x10\x00\x00")  # A str of 1 MiB, announced.
    assert conn.closed_by_peer()


def test_an_idle_connection_is_closed(
    listeners: Callable[..., NomadRpcListener], conns: Any
) -> None:
    listener = listeners(idle_timeout_s=0.2)
    conn = conns(port_of(listener.endpoint))
    conn.send(b"\x01")
    assert conn.closed_by_peer()
    poll_until(lambda: listener.connections == 0, what="the idle connection to go")


def test_connections_beyond_the_bound_are_closed_at_once(
    listeners: Callable[..., NomadRpcListener], conns: Any
) -> None:
    listener = listeners(max_connections=3)
    held = [conns(port_of(listener.endpoint)) for _ in range(3)]
    poll_until(lambda: listener.connections == 3, what="three connections served")
    extra = conns(port_of(listener.endpoint))
    assert extra.closed_by_peer()
    assert listener.refused == 1
    # The held ones still work.
    held[0].send(PING_SEQ_1)
    assert held[0].values(2)[0]["Seq"] == 1


# -- life cycle -------------------------------------------------------------------------


def test_pause_reads_and_drops_then_resume_answers(
    listeners: Callable[..., NomadRpcListener], conns: Any
) -> None:
    listener = listeners()
    conn = conns(port_of(listener.endpoint))
    listener.paused = True
    conn.send(b"\x01" + request("Status.Ping", 1))
    poll_until(lambda: listener.dropped == 1, what="the paused request to be read")
    listener.paused = False
    conn.send(request("Status.Ping", 2))
    # Only the second is answered: the first was read and dropped while paused.
    assert conn.values(2)[0]["Seq"] == 2


def test_the_stand_in_pauses_and_resumes(standin: ServerStandIn, conns: Any) -> None:
    standin.pause()
    standin.resume()
    conn = conns(port_of(standin.endpoint))
    conn.send(PING_SEQ_1)
    assert conn.values(2)[0]["Seq"] == 1
    assert standin.pings == 1


def test_stop_refuses_connections_and_restart_answers_on_the_same_port(
    standin: ServerStandIn, conns: Any
) -> None:
    port = port_of(standin.endpoint)
    conn = conns(port)
    conn.send(PING_SEQ_1)
    conn.values(2)
    standin.stop()
    assert conn.closed_by_peer(), "a stopped stand-in left a connection open"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=READ_DEADLINE_S).close()
    assert port_is_free(port)
    standin.restart()
    again = conns(port)
    again.send(PING_SEQ_1)
    assert again.values(2)[0]["Error"] == ""


def test_stop_ends_every_thread(listeners: Callable[..., NomadRpcListener], conns: Any) -> None:
    listener = listeners()
    for _ in range(5):
        conns(port_of(listener.endpoint)).send(b"\x01")
    poll_until(lambda: listener.connections == 5, what="five connections served")
    listener.stop()
    assert not listener.alive
    assert listener.connections == 0


def test_a_taken_port_raises_at_start(standin: ServerStandIn) -> None:
    clash = ServerStandIn(standin.endpoint)
    with pytest.raises(OSError, match="in use"):
        clash.start()
    assert not clash.running


def test_wildcard_bind_answers_on_loopback(conns: Any) -> None:
    with ServerStandIn("tcp://*:*") as standin:
        assert standin.address.startswith("127.0.0.1:")
        conn = conns(port_of(standin.endpoint))
        conn.send(PING_SEQ_1)
        assert conn.values(2)[0]["Seq"] == 1


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("tcp://127.0.0.1:4647", (socket.AF_INET, "127.0.0.1", 4647)),
        ("tcp://0.0.0.0:*", (socket.AF_INET, "0.0.0.0", 0)),
        ("tcp://[::1]:99", (socket.AF_INET6, "::1", 99)),
    ],
)
def test_parse_tcp_bind(bind: str, expected: tuple[Any, ...]) -> None:
    assert parse_tcp_bind(bind) == expected


@pytest.mark.parametrize("bind", ["127.0.0.1:4647", "tcp://127.0.0.1", "tcp://:1", "tcp://h:x"])
def test_parse_tcp_bind_refuses(bind: str) -> None:
    with pytest.raises(ValueError):
        parse_tcp_bind(bind)


def test_tls_is_for_the_nomad_protocol_only() -> None:
    with pytest.raises(ValueError):
        ServerStandIn(protocol="zmq", tls=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))


# -- against Nomad's own client ----------------------------------------------------------


def test_the_go_client_pings_the_stand_in(standin: ServerStandIn) -> None:
    """msgpackrpc.CallWithCodec on Nomad's handle, 50 calls on one connection and
    20 on a connection each: the stand-in speaks what a Nomad client speaks."""
    assert go_ping(standin.address, 50)["calls"] == 50
    assert go_ping(standin.address, 20, conn_per_call=True)["calls"] == 20
    assert standin.pings == 70
