"""rpcproxy.testing: the mock transports and the in-memory proxy users test their code with.

The mock transports run on both clients (``kind``); what the in-memory proxy
answers per op is checked against ``rpcproxy serve`` in test_client_behaviour.py,
here its epochs, events and errors.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from rpcproxy import (
    BadRequestError,
    ProtocolError,
    ProxyError,
    ProxyInvalidAddressError,
    ProxyTimeoutError,
    Server,
    UnknownOpError,
    UnsupportedVersionError,
)
from rpcproxy.testing import (
    DEFAULT_INSTANCE,
    AsyncMockTransport,
    InMemoryProxy,
    MockTransport,
)
from tests.unit._clients import KINDS, Driver, Kind, drivers


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> Kind:
    value: Kind = request.param
    return value


@pytest.fixture
def make(kind: Kind) -> Iterator[Any]:
    with drivers(kind, None) as factory:
        yield factory


# --------------------------------------------------------------------------
# The mock transports.


def test_the_handler_gets_the_request_and_the_transport_fills_the_envelope(make: Any) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: dict[str, Any]) -> dict[str, Any]:
        seen.append(request)
        return {"server": {"addr": "10.0.0.1:4647"}}

    client: Driver = make(handler=handler)
    assert client(lambda c: c.find_server()) == Server("10.0.0.1:4647")
    reply = client(lambda c: c.request("find_server"))
    assert reply["ok"] is True
    assert (reply["epoch"], reply["instance"]) == (0, DEFAULT_INSTANCE)
    assert reply["id"] == seen[1]["id"] != seen[0]["id"]
    assert seen[0] == {"op": "find_server", "v": 1, "id": seen[0]["id"]}
    assert client.client._transport.requests == seen


def test_a_handler_raises_an_error_to_answer_with_it(make: Any) -> None:
    def handler(_request: dict[str, Any]) -> dict[str, Any]:
        raise ProxyInvalidAddressError("port out of range")

    client: Driver = make(handler=handler)
    with pytest.raises(ProxyInvalidAddressError) as info:
        client(lambda c: c.add_primary_server("10.0.0.1:0"))
    assert (info.value.code, info.value.message) == ("invalid_address", "port out of range")


def test_a_handler_returns_a_whole_error_map(make: Any) -> None:
    client: Driver = make(
        handler=lambda _r: {"ok": False, "error": {"code": "rate_limited", "message": "later"}}
    )
    with pytest.raises(ProxyError) as info:
        client(lambda c: c.ping())
    assert (type(info.value), info.value.code) == (ProxyError, "rate_limited")


def test_a_handler_returns_raw_bytes(make: Any) -> None:
    client: Driver = make(handler=lambda _r: b"\xc1")
    with pytest.raises(ProtocolError):
        client(lambda c: c.ping())


def test_a_handler_that_raises_timeout_leaves_each_try_unanswered(make: Any) -> None:
    tries: list[int] = []

    def down(request: dict[str, Any]) -> dict[str, Any]:
        tries.append(request["id"])
        raise ProxyTimeoutError("down")

    client: Driver = make(handler=down, timeout_s=30.0, retries=4)
    with pytest.raises(ProxyTimeoutError) as info:
        client(lambda c: c.ping())  # no 4 x 30 s wait: a mock never sleeps
    assert "4 tries" in info.value.message
    assert tries == [tries[0]] * 4


def test_the_transport_sets_its_epoch_and_instance() -> None:
    transport = MockTransport(lambda _r: {"pong": True}, epoch=7, instance="ab" * 8)
    reply = msgspec.msgpack.decode(transport.exchange(msgspec.msgpack.encode({"op": "ping"}), 1))
    assert reply == {"ok": True, "pong": True, "epoch": 7, "instance": "ab" * 8}


def test_a_closed_transport_refuses() -> None:
    frame = msgspec.msgpack.encode({"op": "ping", "id": 1})
    transport = MockTransport(lambda _r: {"pong": True})
    transport.close()
    with pytest.raises(RuntimeError, match="closed"):
        transport.exchange(frame, 1.0)
    async_transport = AsyncMockTransport(lambda _r: {"pong": True})
    async_transport.close()
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(async_transport.exchange(frame, 1.0))


# --------------------------------------------------------------------------
# The in-memory proxy.


def test_epochs_count_changes_of_the_active_server_one_event_each() -> None:
    proxy = InMemoryProxy(instance="0123456789abcdef")
    with proxy.client() as client:
        client.add_primary_server("10.0.0.1")  # head None -> .1
        client.add_primary_server("10.0.0.2")  # head unchanged
        client.set_backup_servers(["10.0.1.1"])  # unchanged
        client.notify_failed_server("10.0.0.1")  # .1 -> .2
        client.notify_failed_server("10.0.0.1")  # not the head: unchanged
        client.remove_server("10.0.0.2")  # .2 -> the backup (.1 was rotated behind it)
        client.rebalance()  # may or may not change it
    assert [e["epoch"] for e in proxy.events] == list(range(1, proxy.epoch + 1))
    assert [(e["reason"], e["server"]) for e in proxy.events[:3]] == [
        ("added", {"addr": "10.0.0.1:4647"}),
        ("failed", {"addr": "10.0.0.2:4647"}),
        ("removed", {"addr": "10.0.1.1:4647"}),
    ]
    assert {e["instance"] for e in proxy.events} == {"0123456789abcdef"}


def test_every_reply_carries_the_epoch_after_it() -> None:
    proxy = InMemoryProxy(["10.0.0.1", "10.0.0.2"])
    with proxy.client() as client:
        assert client.request("find_server")["epoch"] == 0
        reply = client.request("notify_failed_server", addr="10.0.0.1")
        assert (reply["rotated"], reply["server"], reply["epoch"]) == (
            True,
            {"addr": "10.0.0.2:4647"},
            1,
        )
        assert reply["instance"] == proxy.instance


def test_each_proxy_is_an_instance_of_its_own() -> None:
    first, second = InMemoryProxy(), InMemoryProxy()
    assert first.instance != second.instance
    assert len(first.instance) == 16 and int(first.instance, 16) >= 0


def test_the_proxys_errors() -> None:
    proxy = InMemoryProxy(max_servers=1)
    with pytest.raises(UnsupportedVersionError):
        proxy({"op": "ping", "v": 2})
    with pytest.raises(UnknownOpError):
        proxy({"op": "nope"})
    with pytest.raises(BadRequestError):
        proxy({"op": "add_primary_server"})
    with pytest.raises(BadRequestError):
        proxy({"op": "set_backup_servers", "addrs": "10.0.0.1"})
    proxy({"op": "add_primary_server", "addr": "10.0.0.1"})
    with pytest.raises(BadRequestError, match="max_servers"):
        proxy({"op": "add_primary_server", "addr": "10.0.0.2"})
    assert proxy.requests == 6


def test_concurrent_failovers_from_threads_rotate_once_each() -> None:
    """Threads reporting the head they saw: each rotation is one epoch, none is lost."""
    proxy = InMemoryProxy([f"10.0.0.{i}" for i in range(1, 9)])
    rotations: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        with proxy.client() as client:
            for _ in range(50):
                server = client.find_server()
                assert server is not None
                rotated = client.notify_failed_server(server.addr)
                with lock:
                    rotations.append(rotated)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(rotations) == proxy.epoch > 0
    assert len(proxy.state.active) == 8


def test_a_users_failover_code_against_the_in_memory_proxy() -> None:
    """What the module is for: a user's function, tested with no proxy running."""

    def call_with_failover(client: Any, rpc: Any) -> str:
        for _ in range(3):
            server = client.find_server()
            if server is None:
                raise LookupError("no server")
            try:
                return str(rpc(server.addr))
            except ConnectionError:
                client.notify_failed_server(server.addr)
        raise LookupError("every try failed")

    def rpc(addr: str) -> str:
        if addr == "10.0.0.1:4647":
            raise ConnectionError(addr)
        return f"answered by {addr}"

    proxy = InMemoryProxy(["10.0.0.1", "10.0.0.2"])
    with proxy.client() as client:
        assert call_with_failover(client, rpc) == "answered by 10.0.0.2:4647"
    assert [e["reason"] for e in proxy.events] == ["failed"]
