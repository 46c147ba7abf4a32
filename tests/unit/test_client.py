"""Both clients against a scripted ROUTER on loopback (docs/protocol.md section 1).

Every test runs twice, on :class:`ProxyClient` and on :class:`AsyncProxyClient`
(the ``kind`` fixture): the two must send the same requests, read replies
the same way and raise the same exceptions. The fake proxy is raw pyzmq +
msgpack in its own thread, so these tests check the clients against the wire
contract, not against our own codec. Nothing sleeps: the tests wait on
events and conditions with deadlines.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type hints
import pytest
import zmq

from rpcproxy import AsyncProxyClient
from rpcproxy.bus.client import (
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
from tests.unit._clients import (
    KINDS,
    WAIT_S,
    Driver,
    FakeHandler,
    FakeProxy,
    Kind,
    Received,
    drivers,
    err,
    keys_of,
    ok,
    replying,
    silent,
)

Serve = Callable[..., tuple[FakeProxy, Driver]]

SHORT_S = 0.1
"""A try's timeout where the test needs a try to go unanswered: the timeout firing
is what the test is about, and how slow the machine is only makes it fire later."""

PATIENT_RETRIES = 100
"""Tries of ``SHORT_S`` for a call that must still succeed after a silent try: a
reply to any earlier try of the call counts, so the reply has about 10 s to
arrive however slow the machine."""


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> Kind:
    value: Kind = request.param
    return value


@pytest.fixture
def serve(kind: Kind, ctx: zmq.Context[Any]) -> Iterator[Serve]:
    """Start a fake proxy with a handler and a client of ``kind`` connected to it."""
    proxies: list[FakeProxy] = []
    with drivers(kind, ctx) as make:

        def start(handler: FakeHandler, **client_options: Any) -> tuple[FakeProxy, Driver]:
            proxy = FakeProxy(ctx, handler)
            proxy.start()
            proxies.append(proxy)
            # Calls that must succeed wait long; tests about timeouts pass their own.
            options: dict[str, Any] = {"timeout_s": WAIT_S, "retries": 2, **client_options}
            return proxy, make(proxy.endpoint, **options)

        yield start
    for proxy in proxies:
        proxy.stop()


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
            lambda c: c.rebalance(timeout_s=2 * WAIT_S),
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
    serve: Serve,
    call: Callable[[Any], Any],
    sent: dict[str, Any],
    reply: dict[str, Any],
    result: Any,
) -> None:
    proxy, client = serve(replying(**reply))
    assert client(call) == result
    [received] = proxy.wait_for(1)
    assert keys_of(received) == sent
    assert received.request["v"] == 1


def test_status_reads_every_field(serve: Serve) -> None:
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
    assert client(lambda c: c.status()) == Status(
        servers=[Server("10.0.0.1:4647"), Server("10.0.0.2:4647")],
        primary=[Server("10.0.0.1:4647")],
        backup=[Server("10.0.0.2:4647")],
        leader_addr="10.0.0.1:4647",
        num_nodes=5000,
        num_servers=2,
        next_rebalance_s=612.5,
    )
    assert keys_of(proxy.wait_for(1)[0]) == {"op": "status"}


def test_status_reads_offline(serve: Serve) -> None:
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
    assert client(lambda c: c.status()).offline is True


def test_heartbeat_sends_the_section_2_keys(
    serve: Serve,
) -> None:
    proxy, client = serve(replying(changed=True))
    changed = client(
        lambda c: c.heartbeat(
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
    serve: Serve,
) -> None:
    proxy, client = serve(replying(changed=False))
    assert client(lambda c: c.heartbeat([])) is False
    assert keys_of(proxy.wait_for(1)[0]) == {
        "op": "heartbeat",
        "servers": [],
        "num_nodes": 0,
        "leader_rpc_addr": "",
    }


def test_call_sends_any_op_and_returns_the_whole_reply(
    serve: Serve,
) -> None:
    proxy, client = serve(replying(answer=42))
    reply = client(lambda c: c.request("future_op", flag=True, items=[1, 2]))
    assert reply["ok"] is True
    assert reply["answer"] == 42
    assert keys_of(proxy.wait_for(1)[0]) == {"op": "future_op", "flag": True, "items": [1, 2]}


def test_every_request_has_a_fresh_id(
    serve: Serve,
) -> None:
    proxy, client = serve(replying(pong=True))
    client(lambda c: c.ping())
    client(lambda c: c.ping())
    ids = [r.request["id"] for r in proxy.wait_for(2)]
    assert len(set(ids)) == 2


def test_a_reply_without_id_is_accepted(
    serve: Serve,
) -> None:
    _, client = serve(lambda _p, _r: {"ok": True, "pong": True})
    assert client(lambda c: c.ping()) is True


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
    serve: Serve,
    code: str,
    exception: type[ProxyError],
) -> None:
    _, client = serve(lambda _p, r: err(r, code, "why it failed"))
    with pytest.raises(exception) as info:
        client(lambda c: c.remove_server("x"))
    assert (info.value.code, info.value.message) == (code, "why it failed")
    assert isinstance(info.value, ProxyError)


def test_an_unknown_error_code_raises_the_base_error(
    serve: Serve,
) -> None:
    _, client = serve(lambda _p, r: err(r, "rate_limited", "slow down"))
    with pytest.raises(ProxyError) as info:
        client(lambda c: c.ping())
    assert type(info.value) is ProxyError
    assert (info.value.code, info.value.message) == ("rate_limited", "slow down")


def test_an_error_reply_is_not_retried(
    serve: Serve,
) -> None:
    proxy, client = serve(lambda _p, r: err(r, "invalid_address"), retries=3)
    with pytest.raises(ProxyInvalidAddressError):
        client(lambda c: c.add_primary_server("a:0"))
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
    ],
)
def test_a_malformed_reply_raises_protocol_error(
    serve: Serve,
    reply: bytes,
) -> None:
    _, client = serve(lambda _p, _r: reply)
    with pytest.raises(ProtocolError) as info:
        client(lambda c: c.ping())
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
    serve: Serve,
    call: Callable[[Any], Any],
    reply: dict[str, Any],
) -> None:
    _, client = serve(replying(**reply))
    with pytest.raises(ProtocolError):
        client(call)


def test_the_client_still_works_after_a_protocol_error(
    serve: Serve,
) -> None:
    replies = iter([b"\xc1", None])
    _, client = serve(lambda _p, r: next(replies) or ok(r, pong=True))
    with pytest.raises(ProtocolError):
        client(lambda c: c.ping())
    assert client(lambda c: c.ping()) is True


# --------------------------------------------------------------------------
# Retries, timeouts and late replies.


def test_a_dropped_request_is_resent_as_it_was(serve: Serve) -> None:
    def drop_first(proxy: FakeProxy, received: Received) -> Any:
        return None if len(proxy.received) == 1 else ok(received, removed=True)

    proxy, client = serve(drop_first, timeout_s=SHORT_S, retries=PATIENT_RETRIES)
    assert client(lambda c: c.remove_server("10.0.0.1")) is True
    # A slow machine may make a third try before the reply to the second lands.
    first, second = proxy.wait_for(2)[:2]
    assert first.request == second.request, "a retry resends the same request, id included"
    # DEALER: a silent try does not wedge the socket, so the retry needs no new one.
    assert first.identity == second.identity


def test_a_slow_reply_to_an_earlier_try_of_the_call_still_counts(serve: Serve) -> None:
    """The proxy answers the first try only once the second has been sent."""

    def answer_first_try_late(proxy: FakeProxy, received: Received) -> Any:
        if len(proxy.received) == 2:
            proxy.send(proxy.received[0].envelope, ok(proxy.received[0], pong=True))
        return None

    proxy, client = serve(answer_first_try_late, timeout_s=SHORT_S, retries=PATIENT_RETRIES)
    # Only the first try is ever answered, once the second has been sent (a
    # slow machine may have sent more tries by the time the reply lands).
    assert client(lambda c: c.ping()) is True
    assert len(proxy.received) >= 2


def test_a_late_reply_to_a_timed_out_call_is_never_the_next_calls(serve: Serve) -> None:
    def answer_late(proxy: FakeProxy, received: Received) -> Any:
        if len(proxy.received) == 1:
            return None  # the first call times out
        proxy.send(proxy.received[0].envelope, ok(proxy.received[0], server={"addr": "stale:1"}))
        return ok(received, server={"addr": "fresh:1"})

    # The first call alone has a short timeout (per call): the next ones must succeed.
    _, client = serve(answer_late, timeout_s=WAIT_S, retries=1)
    with pytest.raises(ProxyTimeoutError):
        client(lambda c: c.request("find_server", timeout_s=SHORT_S))
    assert client(lambda c: c.find_server()) == Server("fresh:1")
    assert client(lambda c: c.find_server()) == Server("fresh:1")


def test_a_stale_reply_with_an_old_id_is_skipped(serve: Serve) -> None:
    def stale_first(proxy: FakeProxy, received: Received) -> Any:
        old = {"ok": True, "id": received.request["id"] - 1, "server": {"addr": "stale:1"}}
        proxy.send(received.envelope, old)
        return ok(received, server={"addr": "fresh:1"})

    _, client = serve(stale_first)
    assert client(lambda c: c.find_server()) == Server("fresh:1")


def test_a_reply_with_someone_elses_id_is_not_an_answer(serve: Serve) -> None:
    proxy, client = serve(
        lambda _p, _r: {"ok": True, "pong": True, "id": "someone else's"}, timeout_s=0.1, retries=2
    )
    with pytest.raises(ProxyTimeoutError):
        client(lambda c: c.ping())
    assert len(proxy.wait_for(2)) == 2


def test_a_silent_proxy_raises_timeout_after_every_try(serve: Serve) -> None:
    proxy, client = serve(silent, timeout_s=0.1, retries=3)
    with pytest.raises(ProxyTimeoutError) as info:
        client(lambda c: c.ping())
    assert info.value.code == "timeout"
    assert "3 tries of 0.1 s" in info.value.message
    assert len(proxy.wait_for(3)) == 3


def test_the_per_call_timeout_overrides_the_default(serve: Serve) -> None:
    _, client = serve(silent, timeout_s=30.0, retries=1)
    with pytest.raises(ProxyTimeoutError) as info:
        client(lambda c: c.rebalance(timeout_s=0.05))
    assert "1 tries of 0.05 s" in info.value.message


def test_the_client_recovers_after_a_timeout(serve: Serve) -> None:
    answering = threading.Event()

    def maybe(_proxy: FakeProxy, received: Received) -> Any:
        return ok(received, pong=True) if answering.is_set() else None

    # The first call alone has a short timeout (per call): the next one must succeed.
    _, client = serve(maybe, timeout_s=WAIT_S, retries=1)
    with pytest.raises(ProxyTimeoutError):
        client(lambda c: c.ping(timeout_s=SHORT_S))
    answering.set()
    assert client(lambda c: c.ping()) is True


def test_no_proxy_at_all_times_out(kind: Kind, ctx: zmq.Context[Any]) -> None:
    with drivers(kind, ctx) as make:
        client = make("tcp://127.0.0.1:1", timeout_s=0.05, retries=2)
        with pytest.raises(ProxyTimeoutError):
            client(lambda c: c.find_server())


def test_a_transport_that_never_answers_times_out_and_the_client_goes_on(kind: Kind) -> None:
    """The same through the transport seam: a handler that leaves tries unanswered."""
    answering = threading.Event()
    seen: list[dict[str, Any]] = []

    def handler(request: dict[str, Any]) -> dict[str, Any]:
        seen.append(request)
        if not answering.is_set():
            raise ProxyTimeoutError("down")
        return {"pong": True}

    with drivers(kind, None) as make:
        client = make(handler=handler, timeout_s=0.1, retries=3)
        with pytest.raises(ProxyTimeoutError):
            client(lambda c: c.ping())
        assert len(seen) == 3
        answering.set()
        assert client(lambda c: c.ping()) is True
        assert seen[0]["id"] == seen[2]["id"] != seen[3]["id"]


# --------------------------------------------------------------------------
# Lifecycle and arguments.


def test_a_closed_client_refuses_calls(serve: Serve) -> None:
    _, client = serve(replying(pong=True))
    assert client(lambda c: c.ping()) is True
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client(lambda c: c.ping())
    client.close()  # idempotent


def test_the_context_manager_closes(serve: Serve, ctx: zmq.Context[Any]) -> None:
    proxy, _ = serve(replying(pong=True))
    with ProxyClient(proxy.endpoint, context=ctx, timeout_s=WAIT_S) as client:
        assert client.ping() is True
    with pytest.raises(RuntimeError, match="closed"):
        client.ping()


@pytest.mark.parametrize("cls", [ProxyClient, AsyncProxyClient])
@pytest.mark.parametrize(("timeout_s", "retries"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_bad_arguments_are_refused(cls: type[Any], timeout_s: float, retries: int) -> None:
    with pytest.raises(ValueError):
        cls(timeout_s=timeout_s, retries=retries)
