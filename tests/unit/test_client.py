"""ProxyClient against a scripted ROUTER on loopback (docs/protocol.md section 1).

The fake proxy is raw pyzmq + msgpack in its own thread, so these tests check
the client against the wire contract, not against our own codec. Nothing
sleeps: the tests wait on events and conditions with deadlines.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
import zmq

from rpcproxy.bus.client.client import (
    AddResult,
    BadRequestError,
    HeartbeatEntry,
    ProtocolError,
    ProxyClient,
    ProxyError,
    ProxyInvalidAddressError,
    ProxyTimeoutError,
    RebalanceResult,
    Server,
    Status,
    UnavailableError,
    UnknownOpError,
    UnsupportedVersionError,
)

WAIT_S = 5.0
"""Upper bound for anything the tests wait on; only reached when a test fails."""


@dataclass(frozen=True)
class Received:
    """One request as the fake proxy saw it."""

    envelope: list[bytes]
    request: Any

    @property
    def identity(self) -> bytes:
        return self.envelope[0]


Handler = Callable[["FakeProxy", Received], Any]
"""Returns the reply (bytes are sent raw, anything else is msgpack-packed), or None to drop."""


class FakeProxy:
    """A ROUTER owned by one thread that answers with a scripted handler."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], handler: Handler) -> None:
        self._context = context
        self._handler = handler
        self._started = threading.Event()
        self._stop = threading.Event()
        self._seen = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="fake-proxy", daemon=True)
        self._socket: zmq.Socket[bytes] | None = None
        self.received: list[Received] = []
        self.endpoint = ""

    def start(self) -> None:
        self._thread.start()
        assert self._started.wait(WAIT_S), "fake proxy did not start"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive()

    def send(self, envelope: list[bytes], reply: Any) -> None:
        """Send a reply; only call from the handler (the socket's own thread)."""
        assert self._socket is not None
        body = reply if isinstance(reply, bytes) else msgpack.packb(reply)
        self._socket.send_multipart([*envelope, body])

    def wait_for(self, count: int) -> list[Received]:
        """Wait until ``count`` requests have arrived."""
        with self._seen:
            assert self._seen.wait_for(lambda: len(self.received) >= count, WAIT_S)
            return list(self.received)

    def _run(self) -> None:
        socket = self._context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.bind("tcp://127.0.0.1:*")
        self._socket = socket
        self.endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._started.set()
        try:
            while not self._stop.is_set():
                if socket.poll(20, zmq.POLLIN):
                    self._serve_one(socket.recv_multipart())
        finally:
            socket.close(linger=0)

    def _serve_one(self, frames: list[bytes]) -> None:
        envelope, body = frames[:-1], frames[-1]
        received = Received(envelope, msgpack.unpackb(body, strict_map_key=False))
        with self._seen:
            self.received.append(received)
            self._seen.notify_all()
        reply = self._handler(self, received)
        if reply is not None:
            self.send(envelope, reply)


def ok(received: Received, **fields: Any) -> dict[str, Any]:
    """A success reply echoing the request's id."""
    return {"ok": True, "id": received.request["id"], **fields}


def err(received: Received, code: str, message: str = "nope") -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}, "id": received.request["id"]}


def silent(_proxy: FakeProxy, _received: Received) -> None:
    return None


@pytest.fixture
def serve(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> Iterator[Callable[..., tuple[FakeProxy, ProxyClient]]]:
    """Start a fake proxy with a handler and a client connected to it."""
    started: list[tuple[FakeProxy, ProxyClient]] = []

    def start(handler: Handler, **client_options: Any) -> tuple[FakeProxy, ProxyClient]:
        proxy = FakeProxy(ctx, handler)
        proxy.start()
        options: dict[str, Any] = {"timeout_s": 1.0, "retries": 2, **client_options}
        client = ProxyClient(proxy.endpoint, context=ctx, **options)
        started.append((proxy, client))
        return proxy, client

    yield start
    for proxy, client in started:
        client.close()
        proxy.stop()


def replying(**fields: Any) -> Handler:
    """A handler that answers every request ``ok`` with ``fields``."""
    return lambda _proxy, received: ok(received, **fields)


def keys_of(received: Received) -> dict[str, Any]:
    """The request's op keys, without the envelope keys the client adds."""
    return {k: v for k, v in received.request.items() if k not in ("v", "id")}


# --------------------------------------------------------------------------
# Each method: what it sends and how it reads the reply.

A = {"addr": "10.0.0.1:4647"}
B = {"addr": "10.0.0.2:4647", "future_key": [1, 2]}


@pytest.mark.parametrize(
    ("call", "sent", "reply", "result"),
    [
        (lambda c: c.ping(), {"op": "ping"}, {"pong": True}, True),
        (lambda c: c.find_server(), {"op": "find_server"}, {"server": A}, Server(A["addr"])),
        (lambda c: c.find_server(), {"op": "find_server"}, {"server": None}, None),
        (
            lambda c: c.servers(),
            {"op": "servers"},
            {"servers": [A, B]},
            [Server("10.0.0.1:4647"), Server("10.0.0.2:4647")],
        ),
        (
            lambda c: c.notify_failed_server("10.0.0.1"),
            {"op": "notify_failed_server", "addr": "10.0.0.1"},
            {"rotated": True},
            True,
        ),
        (
            lambda c: c.add_primary_server("10.0.0.1"),
            {"op": "add_primary_server", "addr": "10.0.0.1"},
            {"server": A, "added": False},
            AddResult(Server("10.0.0.1:4647"), added=False),
        ),
        (
            lambda c: c.set_backup_servers(("b1", "b2:80")),
            {"op": "set_backup_servers", "addrs": ["b1", "b2:80"]},
            {"servers": [A]},
            [Server("10.0.0.1:4647")],
        ),
        (
            lambda c: c.set_backup_servers([]),
            {"op": "set_backup_servers", "addrs": []},
            {"servers": []},
            [],
        ),
        (
            lambda c: c.remove_server("10.0.0.1"),
            {"op": "remove_server", "addr": "10.0.0.1"},
            {"removed": True},
            True,
        ),
        (
            lambda c: c.rebalance(),
            {"op": "rebalance"},
            {"server": B, "healthy": True},
            RebalanceResult(Server("10.0.0.2:4647"), healthy=True),
        ),
        (
            lambda c: c.rebalance(timeout_s=3.0),
            {"op": "rebalance"},
            {"server": None, "healthy": None},
            RebalanceResult(None, None),
        ),
        (
            lambda c: c.reset_rebalance_timer(),
            {"op": "reset_rebalance_timer"},
            {"next_rebalance_s": 600},
            600.0,
        ),
    ],
)
def test_each_method_sends_its_op_and_reads_its_reply(
    serve: Callable[..., tuple[FakeProxy, ProxyClient]],
    call: Callable[[ProxyClient], Any],
    sent: dict[str, Any],
    reply: dict[str, Any],
    result: Any,
) -> None:
    proxy, client = serve(replying(**reply))
    assert call(client) == result
    [received] = proxy.wait_for(1)
    assert keys_of(received) == sent
    assert received.request["v"] == 1


def test_status_reads_every_field(serve: Callable[..., tuple[FakeProxy, ProxyClient]]) -> None:
    proxy, client = serve(
        replying(
            servers=[A, B],
            primary=[A],
            backup=[B],
            leader_addr="10.0.0.1:4647",
            num_nodes=5000,
            num_servers=2,
            next_rebalance_s=612.5,
            added_in_v2="ignored",
        )
    )
    assert client.status() == Status(
        servers=[Server("10.0.0.1:4647"), Server("10.0.0.2:4647")],
        primary=[Server("10.0.0.1:4647")],
        backup=[Server("10.0.0.2:4647")],
        leader_addr="10.0.0.1:4647",
        num_nodes=5000,
        num_servers=2,
        next_rebalance_s=612.5,
    )
    assert keys_of(proxy.wait_for(1)[0]) == {"op": "status"}


def test_status_reads_offline(serve: Callable[..., tuple[FakeProxy, ProxyClient]]) -> None:
    _, client = serve(
        replying(
            servers=[A],
            primary=[A],
            backup=[],
            leader_addr="",
            num_nodes=0,
            num_servers=1,
            next_rebalance_s=1.0,
            offline=True,
        )
    )
    assert client.status().offline is True


def test_heartbeat_sends_the_section_2_keys(
    serve: Callable[..., tuple[FakeProxy, ProxyClient]],
) -> None:
    proxy, client = serve(replying(changed=True))
    changed = client.heartbeat(
        [
            HeartbeatEntry("10.0.0.1", 1, 1, "dc1"),
            {
                "rpc_advertise_addr": "10.0.0.2",
                "rpc_major_version": 1,
                "rpc_minor_version": 0,
                "datacenter": "dc2",
            },
        ],
        num_nodes=7,
        leader_rpc_addr="10.0.0.1:4647",
        publisher="pub",
        seq=3,
    )
    assert changed is True
    assert keys_of(proxy.wait_for(1)[0]) == {
        "op": "heartbeat",
        "servers": [
            {
                "rpc_advertise_addr": "10.0.0.1",
                "rpc_major_version": 1,
                "rpc_minor_version": 1,
                "datacenter": "dc1",
            },
            {
                "rpc_advertise_addr": "10.0.0.2",
                "rpc_major_version": 1,
                "rpc_minor_version": 0,
                "datacenter": "dc2",
            },
        ],
        "num_nodes": 7,
        "leader_rpc_addr": "10.0.0.1:4647",
        "publisher": "pub",
        "seq": 3,
    }


def test_heartbeat_leaves_out_absent_publisher_and_seq(
    serve: Callable[..., tuple[FakeProxy, ProxyClient]],
) -> None:
    proxy, client = serve(replying(changed=False))
    assert client.heartbeat([]) is False
    assert keys_of(proxy.wait_for(1)[0]) == {
        "op": "heartbeat",
        "servers": [],
        "num_nodes": 0,
        "leader_rpc_addr": "",
    }


def test_call_sends_any_op_and_returns_the_whole_reply(
    serve: Callable[..., tuple[FakeProxy, ProxyClient]],
) -> None:
    proxy, client = serve(replying(answer=42))
    reply = client.call("future_op", flag=True, items=[1, 2])
    assert reply["ok"] is True
    assert reply["answer"] == 42
    assert keys_of(proxy.wait_for(1)[0]) == {"op": "future_op", "flag": True, "items": [1, 2]}


def test_every_request_has_a_fresh_id(
    serve: Callable[..., tuple[FakeProxy, ProxyClient]],
) -> None:
    proxy, client = serve(replying(pong=True))
    client.ping()
    client.ping()
    ids = [r.request["id"] for r in proxy.wait_for(2)]
    assert len(set(ids)) == 2


def test_a_reply_without_id_is_accepted(
    serve: Callable[..., tuple[FakeProxy, ProxyClient]],
) -> None:
    _, client = serve(lambda _p, _r: {"ok": True, "pong": True})
    assert client.ping() is True


# --------------------------------------------------------------------------
# Error replies.


@pytest.mark.parametrize(
    ("code", "exception"),
    [
        ("bad_request", BadRequestError),
        ("unknown_op", UnknownOpError),
        ("invalid_address", ProxyInvalidAddressError),
        ("unsupported_version", UnsupportedVersionError),
        ("unavailable", UnavailableError),
    ],
)
def test_error_replies_raise_their_exception(
    serve: Callable[..., tuple[FakeProxy, ProxyClient]],
    code: str,
    exception: type[ProxyError],
) -> None:
    _, client = serve(lambda _p, r: err(r, code, "why it failed"))
    with pytest.raises(exception) as info:
        client.remove_server("x")
    assert (info.value.code, info.value.message) == (code, "why it failed")
    assert isinstance(info.value, ProxyError)


def test_an_unknown_error_code_raises_the_base_error(
    serve: Callable[..., tuple[FakeProxy, ProxyClient]],
) -> None:
    _, client = serve(lambda _p, r: err(r, "rate_limited", "slow down"))
    with pytest.raises(ProxyError) as info:
        client.ping()
    assert type(info.value) is ProxyError
    assert (info.value.code, info.value.message) == ("rate_limited", "slow down")


def test_an_error_reply_is_not_retried(
    serve: Callable[..., tuple[FakeProxy, ProxyClient]],
) -> None:
    proxy, client = serve(lambda _p, r: err(r, "invalid_address"), retries=3)
    with pytest.raises(ProxyInvalidAddressError):
        client.add_primary_server("a:0")
    client.close()
    assert len(proxy.received) == 1


@pytest.mark.parametrize(
    "reply",
    [
        b"\xc1",
        b"\x91\x01",
        msgpack.packb([True]),
        msgpack.packb({"pong": True}),
        msgpack.packb({"ok": "yes", "pong": True}),
        msgpack.packb({"ok": True}),
        msgpack.packb({"ok": True, "pong": "true"}),
        msgpack.packb({"ok": False}),
        msgpack.packb({"ok": False, "error": "bad"}),
        msgpack.packb({"ok": False, "error": {"code": 1, "message": "m"}}),
        msgpack.packb({"ok": True, "pong": True, "id": "someone else's"}),
    ],
)
def test_a_malformed_reply_raises_protocol_error(
    serve: Callable[..., tuple[FakeProxy, ProxyClient]],
    reply: bytes,
) -> None:
    _, client = serve(lambda _p, _r: reply)
    with pytest.raises(ProtocolError) as info:
        client.ping()
    assert info.value.code == "protocol_error"


@pytest.mark.parametrize(
    ("call", "reply"),
    [
        (lambda c: c.find_server(), {"server": "10.0.0.1:4647"}),
        (lambda c: c.find_server(), {"server": {"name": "no addr"}}),
        (lambda c: c.servers(), {"servers": None}),
        (lambda c: c.status(), {"servers": [], "primary": []}),
        (lambda c: c.rebalance(), {"server": None, "healthy": "yes"}),
    ],
)
def test_a_reply_missing_or_mistyping_a_key_raises_protocol_error(
    serve: Callable[..., tuple[FakeProxy, ProxyClient]],
    call: Callable[[ProxyClient], Any],
    reply: dict[str, Any],
) -> None:
    _, client = serve(replying(**reply))
    with pytest.raises(ProtocolError):
        call(client)


def test_the_client_still_works_after_a_protocol_error(
    serve: Callable[..., tuple[FakeProxy, ProxyClient]],
) -> None:
    replies = iter([b"\xc1", None])
    _, client = serve(lambda _p, r: next(replies) or ok(r, pong=True))
    with pytest.raises(ProtocolError):
        client.ping()
    assert client.ping() is True


# --------------------------------------------------------------------------
# Lazy Pirate.


def test_a_dropped_request_is_resent_on_a_fresh_socket(
    serve: Callable[..., tuple[FakeProxy, ProxyClient]],
) -> None:
    def drop_first(proxy: FakeProxy, received: Received) -> Any:
        return None if len(proxy.received) == 1 else ok(received, removed=True)

    proxy, client = serve(drop_first, timeout_s=0.1, retries=3)
    assert client.remove_server("10.0.0.1") is True
    first, second = proxy.wait_for(2)
    assert first.request == second.request
    assert first.identity != second.identity, "the resend must come from a new socket"


def test_a_late_reply_to_an_abandoned_try_is_never_seen(
    serve: Callable[..., tuple[FakeProxy, ProxyClient]],
) -> None:
    def answer_late(proxy: FakeProxy, received: Received) -> Any:
        if len(proxy.received) == 1:
            return None
        proxy.send(proxy.received[0].envelope, ok(received, server={"addr": "stale:1"}))
        return ok(received, server={"addr": "fresh:1"})

    _, client = serve(answer_late, timeout_s=0.1, retries=2)
    assert client.find_server() == Server("fresh:1")


def test_a_silent_proxy_raises_timeout_after_every_try(
    serve: Callable[..., tuple[FakeProxy, ProxyClient]],
) -> None:
    proxy, client = serve(silent, timeout_s=0.1, retries=3)
    start = time.monotonic()
    with pytest.raises(ProxyTimeoutError) as info:
        client.ping()
    elapsed = time.monotonic() - start
    assert info.value.code == "timeout"
    assert "3 tries" in info.value.message
    assert len(proxy.wait_for(3)) == 3
    # Three waits of 0.1 s; libzmq's poll may wake a fraction of a millisecond early.
    assert 0.29 <= elapsed < 3.0


def test_the_per_call_timeout_overrides_the_default(
    serve: Callable[..., tuple[FakeProxy, ProxyClient]],
) -> None:
    _, client = serve(silent, timeout_s=30.0, retries=1)
    start = time.monotonic()
    with pytest.raises(ProxyTimeoutError):
        client.rebalance(timeout_s=0.05)
    assert time.monotonic() - start < 5.0


def test_the_client_recovers_after_a_timeout(
    serve: Callable[..., tuple[FakeProxy, ProxyClient]],
) -> None:
    answering = threading.Event()

    def maybe(_proxy: FakeProxy, received: Received) -> Any:
        return ok(received, pong=True) if answering.is_set() else None

    _, client = serve(maybe, timeout_s=0.1, retries=1)
    with pytest.raises(ProxyTimeoutError):
        client.ping()
    answering.set()
    assert client.ping() is True


def test_no_proxy_at_all_times_out(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    with (
        ProxyClient("tcp://127.0.0.1:1", timeout_s=0.05, retries=2, context=ctx) as client,
        pytest.raises(ProxyTimeoutError),
    ):
        client.find_server()


# --------------------------------------------------------------------------
# Lifecycle and arguments.


def test_context_manager_closes_and_a_closed_client_refuses_calls(
    serve: Callable[..., tuple[FakeProxy, ProxyClient]],
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    proxy, _ = serve(replying(pong=True))
    with ProxyClient(proxy.endpoint, context=ctx) as client:
        assert client.ping() is True
    with pytest.raises(RuntimeError, match="closed"):
        client.ping()
    client.close()  # idempotent


@pytest.mark.parametrize(("timeout_s", "retries"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_bad_arguments_are_refused(timeout_s: float, retries: int) -> None:
    with pytest.raises(ValueError):
        ProxyClient(timeout_s=timeout_s, retries=retries)
