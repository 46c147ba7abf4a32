"""Every op, as a user sees it, on both clients against both proxies.

One suite, four runs of each test: :class:`ProxyClient` and
:class:`AsyncProxyClient` (``kind``), each against ``rpcproxy.testing``'s
:class:`InMemoryProxy` through the mock transports (``memory``) and against
the real ``rpcproxy serve`` process over ZeroMQ (``serve``, marked
``integration``). The two proxies must agree: the in-memory one is what users
test their code against, so where it differs from ``serve`` their tests lie.

The wire-level cases (malformed replies, ids, timeouts) are in test_client.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rpcproxy import (
    AddResult,
    BadRequestError,
    HeartbeatEntry,
    ProxyInvalidAddressError,
    RebalanceResult,
    Server,
    UnknownOpError,
)
from rpcproxy.bus.standins.standin import ServerStandIn
from rpcproxy.testing import InMemoryProxy
from tests.helpers import free_port
from tests.integration.serving import CTX, Serve, start_serve, stop_and_check
from tests.unit._clients import KINDS, WAIT_S, Driver, Kind, drivers

PING_TIMEOUT_S = 0.3


@dataclass
class Backend:
    """A proxy emptied for one test, and how to reach it."""

    name: str
    make: Callable[..., Driver]
    """``make(**client_options)``: a client of the test's kind connected to the proxy."""
    live: Callable[[], str]
    """A new server address whose pings are answered."""
    dead: Callable[[], str]
    """A new server address whose pings fail."""


@dataclass
class _Standins:
    running: list[ServerStandIn] = field(default_factory=list)

    def live(self) -> str:
        standin = ServerStandIn("tcp://127.0.0.1:*", context=CTX)
        standin.start()
        self.running.append(standin)
        return standin.address

    def stop(self) -> None:
        for standin in self.running:
            standin.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    proc = start_serve(
        Path(tmp_path_factory.mktemp("behaviour")),
        "--ping-timeout-s",
        str(PING_TIMEOUT_S),
        events=False,
    )
    yield proc
    stop_and_check(proc)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> Kind:
    value: Kind = request.param
    return value


@pytest.fixture(params=["memory", pytest.param("serve", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest, kind: Kind) -> Iterator[Backend]:
    if request.param == "memory":
        dead: set[str] = set()
        numbers = itertools.count(1)
        proxy = InMemoryProxy(healthy=lambda addr: addr not in dead)

        def dead_addr() -> str:
            addr = f"10.8.0.{next(numbers)}:4647"
            dead.add(addr)
            return addr

        with drivers(kind, None) as make:
            yield Backend(
                "memory",
                lambda **options: make(handler=proxy, **options),
                lambda: f"10.9.0.{next(numbers)}:4647",
                dead_addr,
            )
        return
    serve: Serve = request.getfixturevalue("served")
    state = serve.state()
    for server in state["primary"] + state["backup"]:
        serve.call("remove_server", addr=server["addr"])
    assert serve.call("servers")["servers"] == []
    standins = _Standins()
    try:
        with drivers(kind, CTX) as make:
            yield Backend(
                "serve",
                lambda **options: make(serve.query, **options),
                standins.live,
                lambda: f"127.0.0.1:{free_port()}",
            )
    finally:
        standins.stop()


@pytest.fixture
def client(backend: Backend) -> Driver:
    return backend.make(timeout_s=WAIT_S, retries=1)


def names(servers: list[Server]) -> list[str]:
    return [s.addr for s in servers]


def adding(addr: str) -> Callable[[Any], Any]:
    """The op that adds ``addr`` as a primary server (one per address, in a loop)."""
    return lambda c: c.add_primary_server(addr)


# --------------------------------------------------------------------------
# Reads.


def test_ping(client: Driver) -> None:
    assert client(lambda c: c.ping()) is True


def test_find_server_is_none_when_empty_then_the_head(client: Driver) -> None:
    assert client(lambda c: c.find_server()) is None
    client(lambda c: c.add_primary_server("10.0.0.1"))
    client(lambda c: c.add_primary_server("10.0.0.2:5000"))
    assert client(lambda c: c.find_server()) == Server("10.0.0.1:4647")


def test_servers_is_the_active_list_in_order(client: Driver) -> None:
    assert client(lambda c: c.servers()) == []
    for addr in ("10.0.0.3", "10.0.0.1", "10.0.0.2"):
        client(adding(addr))
    assert names(client(lambda c: c.servers())) == [
        "10.0.0.3:4647",
        "10.0.0.1:4647",
        "10.0.0.2:4647",
    ]


def test_status_holds_every_list(client: Driver) -> None:
    client(lambda c: c.add_primary_server("10.0.0.1"))
    client(lambda c: c.set_backup_servers(["10.0.1.1"]))
    status = client(lambda c: c.status())
    assert names(status.servers) == ["10.0.0.1:4647", "10.0.1.1:4647"]
    assert names(status.primary) == ["10.0.0.1:4647"]
    assert names(status.backup) == ["10.0.1.1:4647"]
    assert status.num_servers == 2
    assert isinstance(status.leader_addr, str)
    assert isinstance(status.num_nodes, int)
    assert isinstance(status.next_rebalance_s, float) and status.next_rebalance_s > 0
    assert isinstance(status.offline, bool)


def test_call_returns_the_whole_reply(client: Driver) -> None:
    client(lambda c: c.add_primary_server("10.0.0.1"))
    reply = client(lambda c: c.request("find_server"))
    assert reply["ok"] is True
    assert reply["server"] == {"addr": "10.0.0.1:4647"}
    assert isinstance(reply["epoch"], int) and isinstance(reply["instance"], str)


# --------------------------------------------------------------------------
# Writes.


def test_add_primary_server_added_then_not(client: Driver) -> None:
    assert client(lambda c: c.add_primary_server("10.0.0.7")) == AddResult(
        Server("10.0.0.7:4647"), added=True
    )
    assert client(lambda c: c.add_primary_server("10.0.0.7:4647")) == AddResult(
        Server("10.0.0.7:4647"), added=False
    )
    assert client(lambda c: c.add_primary_server("[::1]")).server == Server("[::1]:4647")


def test_notify_failed_server_rotates_only_the_active_server(client: Driver) -> None:
    client(lambda c: c.add_primary_server("10.0.0.1"))
    assert client(lambda c: c.notify_failed_server("10.0.0.1")) is False  # nothing to rotate to
    client(lambda c: c.add_primary_server("10.0.0.2"))
    client(lambda c: c.add_primary_server("10.0.0.3"))
    assert client(lambda c: c.notify_failed_server("10.0.0.2")) is False  # not the head
    assert client(lambda c: c.notify_failed_server("10.0.0.1:4647")) is True
    assert names(client(lambda c: c.servers())) == [
        "10.0.0.2:4647",
        "10.0.0.3:4647",
        "10.0.0.1:4647",
    ]
    assert client(lambda c: c.find_server()) == Server("10.0.0.2:4647")
    assert client(lambda c: c.notify_failed_server("10.9.9.9")) is False  # unknown


def test_set_backup_servers_returns_the_backups_behind_the_primaries(client: Driver) -> None:
    client(lambda c: c.add_primary_server("10.0.0.1"))
    backups = client(lambda c: c.set_backup_servers(["10.0.1.1", "10.0.1.2:99"]))
    assert names(backups) == ["10.0.1.1:4647", "10.0.1.2:99"]
    client(lambda c: c.add_primary_server("10.0.0.2"))
    assert names(client(lambda c: c.servers())) == [
        "10.0.0.1:4647",
        "10.0.0.2:4647",
        "10.0.1.1:4647",
        "10.0.1.2:99",
    ]
    assert client(lambda c: c.set_backup_servers([])) == []
    assert names(client(lambda c: c.servers())) == ["10.0.0.1:4647", "10.0.0.2:4647"]


def test_remove_server_then_the_next_is_active(client: Driver) -> None:
    client(lambda c: c.add_primary_server("10.0.0.1"))
    client(lambda c: c.add_primary_server("10.0.0.2"))
    assert client(lambda c: c.remove_server("10.0.0.1:4647")) is True
    assert client(lambda c: c.remove_server("10.0.0.1")) is False
    assert client(lambda c: c.find_server()) == Server("10.0.0.2:4647")


def test_heartbeat_sets_primaries_and_backups(client: Driver) -> None:
    entries = [HeartbeatEntry("10.0.0.1", 1, 1, "dc1"), HeartbeatEntry("10.0.2.1", 1, 1, "dc2")]
    beat = lambda c: c.heartbeat(entries, num_nodes=3, leader_rpc_addr="10.0.0.1:4647")  # noqa: E731
    assert client(beat) is True
    assert client(beat) is False
    status = client(lambda c: c.status())
    assert names(status.primary) == ["10.0.0.1:4647"]
    assert names(status.backup) == ["10.0.2.1:4647"]
    assert names(status.servers) == ["10.0.0.1:4647", "10.0.2.1:4647"]
    assert (status.num_nodes, status.leader_addr) == (3, "10.0.0.1:4647")


def test_rebalance_with_fewer_than_two_servers_pings_nobody(client: Driver) -> None:
    assert client(lambda c: c.rebalance()) == RebalanceResult(None, None)
    client(lambda c: c.add_primary_server("10.0.0.1"))
    assert client(lambda c: c.rebalance()) == RebalanceResult(Server("10.0.0.1:4647"), None)


def test_rebalance_puts_the_server_that_answers_first(backend: Backend, client: Driver) -> None:
    dead = [backend.dead() for _ in range(3)]
    live = backend.live()
    for addr in [*dead, live]:
        client(adding(addr))
    result = client(lambda c: c.rebalance())
    assert result == RebalanceResult(Server(live), healthy=True)
    assert client(lambda c: c.find_server()) == Server(live)
    assert client(lambda c: c.status()).offline is False


def test_rebalance_keeps_the_list_when_nobody_answers(backend: Backend, client: Driver) -> None:
    dead = [backend.dead() for _ in range(2)]
    for addr in dead:
        client(adding(addr))
    before = client(lambda c: c.servers())
    assert client(lambda c: c.rebalance()) == RebalanceResult(Server(dead[0]), healthy=False)
    assert client(lambda c: c.servers()) == before
    assert client(lambda c: c.status()).offline is True


def test_reset_rebalance_timer(client: Driver) -> None:
    next_s = client(lambda c: c.reset_rebalance_timer())
    assert isinstance(next_s, float) and next_s > 0


# --------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize(
    "write",
    [
        lambda c: c.add_primary_server("10.0.0.1:99999"),
        lambda c: c.notify_failed_server("::1"),
        lambda c: c.remove_server("bad host!"),
        lambda c: c.set_backup_servers(["10.0.1.1", "10.0.1.2:0"]),
    ],
)
def test_an_invalid_address_changes_nothing(client: Driver, write: Callable[[Any], Any]) -> None:
    client(lambda c: c.add_primary_server("10.0.0.1"))
    before = client(lambda c: c.status())
    with pytest.raises(ProxyInvalidAddressError) as info:
        client(write)
    assert info.value.code == "invalid_address"
    assert client(lambda c: c.status()).servers == before.servers


def test_an_unknown_op_raises_unknown_op(client: Driver) -> None:
    with pytest.raises(UnknownOpError):
        client(lambda c: c.request("no_such_op"))


def test_a_key_of_the_wrong_type_raises_bad_request(client: Driver) -> None:
    with pytest.raises(BadRequestError):
        client(lambda c: c.request("add_primary_server", addr=5))


# --------------------------------------------------------------------------
# The view each lookup reply carries (the watch mode's hook).


def test_find_server_and_notify_report_their_view(client: Driver) -> None:
    seen: list[tuple[Server | None, int | None, str | None]] = []
    client.client._observed = lambda server, epoch, instance: seen.append((server, epoch, instance))
    client(lambda c: c.add_primary_server("10.0.0.1"))
    client(lambda c: c.add_primary_server("10.0.0.2"))
    client(lambda c: c.find_server())
    [(server, epoch, instance)] = seen
    assert server == Server("10.0.0.1:4647")
    assert isinstance(epoch, int) and isinstance(instance, str) and len(instance) == 16
    assert client(lambda c: c.notify_failed_server("10.0.0.1")) is True
    # One change of the active server: one epoch more, and the reply names the new head.
    assert seen[-1] == (Server("10.0.0.2:4647"), epoch + 1, instance)
    assert client(lambda c: c.notify_failed_server("10.0.0.1")) is False
    assert seen[-1] == (Server("10.0.0.2:4647"), epoch + 1, instance)
    client(lambda c: c.servers())  # other ops report nothing
    assert len(seen) == 3
