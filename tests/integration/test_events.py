"""The events PUB socket (docs/protocol.md section 5).

"No event" is proven with a marker: events are published in the order of the
changes, so when the next event received is the one of a later, known change,
nothing was published in between.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from rpcproxy.bus.standins.standin import ServerStandIn
from tests.helpers import free_port
from tests.integration.serving import (
    EventSub,
    HeartbeatPub,
    Serve,
    addrs,
    hb_payload,
    hb_server,
    start_serve,
    stop_and_check,
)

pytestmark = pytest.mark.integration

A, B, C = "10.0.0.1:4647", "10.0.0.2:4647", "10.0.0.3:4647"
MARK = "10.9.9.9:4647"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    serve = start_serve(tmp_path_factory.mktemp("events"), "--ping-timeout-s", "0.3")
    yield serve
    stop_and_check(serve)


@pytest.fixture(scope="module")
def sub(shared: Serve) -> Iterator[EventSub]:
    events = EventSub(shared.events)
    events.sync(shared.client)
    yield events
    events.close()


@pytest.fixture
def proxy(shared: Serve, sub: EventSub) -> Serve:
    """The module's proxy, emptied, with every event of the emptying read."""
    state = shared.state()
    if state["servers"]:
        for server in state["primary"] + state["backup"]:
            shared.call("remove_server", addr=server["addr"])
        # The last removal empties the list: read up to its event.
        while sub.next() != {"server": None, "reason": "removed"}:
            pass
    assert shared.call("servers")["servers"] == []
    return shared


def expect(sub: EventSub, addr: str | None, reason: str) -> None:
    server = None if addr is None else {"addr": addr}
    assert sub.next() == {"server": server, "reason": reason}


def expect_nothing_since(proxy: Serve, sub: EventSub) -> None:
    """No event since the last one read: the next ones are the marker's own.

    The marker leaves the state as it found it: with two or more servers it
    rotates the whole list once round (each rotation publishes ``failed``).
    """
    status = proxy.call("status")
    servers = addrs(status["servers"])
    if not servers:
        proxy.call("add_primary_server", addr=MARK)
        expect(sub, MARK, "added")
        proxy.call("remove_server", addr=MARK)
        expect(sub, None, "removed")
    elif len(servers) == 1:
        (only,) = servers
        proxy.call("remove_server", addr=only)
        expect(sub, None, "removed")
        if only in addrs(status["primary"]):
            proxy.call("add_primary_server", addr=only)
            expect(sub, only, "added")
        if only in addrs(status["backup"]):
            proxy.call("set_backup_servers", addrs=[only])
            if only not in addrs(status["primary"]):
                expect(sub, only, "backup")
    else:
        for turn in range(len(servers)):
            assert proxy.call("notify_failed_server", addr=servers[turn])["rotated"] is True
            expect(sub, servers[(turn + 1) % len(servers)], "failed")
    after = proxy.state()
    assert after["servers"] == status["servers"]
    assert after["primary"] == status["primary"]
    assert after["backup"] == status["backup"]


def test_added(proxy: Serve, sub: EventSub) -> None:
    proxy.call("add_primary_server", addr=A)
    expect(sub, A, "added")
    proxy.call("add_primary_server", addr=B)  # Appended: the head stays.
    proxy.call("add_primary_server", addr=A)  # Known: nothing.
    expect_nothing_since(proxy, sub)


def test_failed(proxy: Serve, sub: EventSub) -> None:
    proxy.call("add_primary_server", addr=A)
    expect(sub, A, "added")
    proxy.call("notify_failed_server", addr=A)  # Alone: not rotated.
    expect_nothing_since(proxy, sub)
    proxy.call("add_primary_server", addr=B)
    proxy.call("add_primary_server", addr=C)
    proxy.call("notify_failed_server", addr=C)  # Not the head: nothing.
    expect_nothing_since(proxy, sub)
    assert proxy.call("notify_failed_server", addr=A)["rotated"] is True
    expect(sub, B, "failed")


def test_removed(proxy: Serve, sub: EventSub) -> None:
    proxy.call("add_primary_server", addr=A)
    expect(sub, A, "added")
    proxy.call("add_primary_server", addr=B)
    proxy.call("remove_server", addr=B)  # Not the head.
    proxy.call("remove_server", addr=C)  # Unknown.
    expect_nothing_since(proxy, sub)
    proxy.call("add_primary_server", addr=B)
    proxy.call("remove_server", addr=A)
    expect(sub, B, "removed")
    proxy.call("remove_server", addr=B)
    expect(sub, None, "removed")


def test_backup(proxy: Serve, sub: EventSub) -> None:
    proxy.call("set_backup_servers", addrs=[B, C])
    expect(sub, B, "backup")
    proxy.call("set_backup_servers", addrs=[C, B])  # Same members, head kept.
    expect_nothing_since(proxy, sub)
    proxy.call("set_backup_servers", addrs=[C])
    expect(sub, C, "backup")
    proxy.call("set_backup_servers", addrs=[])
    expect(sub, None, "backup")


def test_heartbeat_op(proxy: Serve, sub: EventSub) -> None:
    proxy.call("heartbeat", **hb_payload([hb_server(A), hb_server(B)]))
    expect(sub, A, "heartbeat")
    proxy.call("heartbeat", **hb_payload([hb_server(A), hb_server(B)], num_nodes=5))
    proxy.call("heartbeat", **hb_payload([hb_server(A), hb_server(C)], num_nodes=5))
    expect_nothing_since(proxy, sub)
    proxy.call("heartbeat", **hb_payload([hb_server(C)]))
    expect(sub, C, "heartbeat")


def test_heartbeat_over_pub_sub(proxy: Serve, sub: EventSub) -> None:
    pub = HeartbeatPub(connect=proxy.heartbeat)
    try:
        payload = hb_payload([hb_server(B), hb_server(A)], num_nodes=77)
        pub.publish_until(payload, lambda: proxy.call("status")["num_nodes"] == 77)
        expect(sub, B, "heartbeat")
        expect_nothing_since(proxy, sub)
    finally:
        pub.close()


def test_rebalance(proxy: Serve, sub: EventSub, standins: Callable[[], ServerStandIn]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    live = standins().address
    proxy.call("add_primary_server", addr=dead)
    expect(sub, dead, "added")
    proxy.call("add_primary_server", addr=live)
    assert proxy.call("rebalance")["server"] == {"addr": live}
    expect(sub, live, "rebalance")
    # The live server is the only one that answers: it stays the head.
    assert proxy.call("rebalance")["server"] == {"addr": live}
    assert addrs(proxy.call("servers")["servers"]) == [live, dead]
    expect_nothing_since(proxy, sub)
    # Nothing answers: the list is kept, nothing is published.
    standin_dead = f"127.0.0.1:{free_port()}"
    proxy.call("remove_server", addr=live)
    expect(sub, dead, "removed")
    proxy.call("add_primary_server", addr=standin_dead)
    assert proxy.call("rebalance")["healthy"] is False
    expect_nothing_since(proxy, sub)


def test_events_can_be_turned_off(serve_factory: Callable[..., Serve]) -> None:
    proxy = serve_factory(events=False)
    assert proxy.events == ""
    assert "events on (off)" in proxy.stderr()
    proxy.call("add_primary_server", addr=A)
    assert proxy.call("find_server")["server"] == {"addr": A}
