"""``epoch`` and ``instance`` in replies and events, and refresh events (docs/protocol.md 1, 5).

All against a real ``rpcproxy serve``: a client that holds (server, epoch,
instance) from any reply and then follows the events must never see a gap
that did not happen nor a step back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.serving import (
    EventSub,
    Serve,
    start_serve,
    stop_and_check,
)

pytestmark = pytest.mark.integration

A, B, C = "10.0.0.1:4647", "10.0.0.2:4647", "10.0.0.3:4647"
REFRESH_S = 0.1


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    serve = start_serve(tmp_path_factory.mktemp("epochs"), "--events-refresh-s", str(REFRESH_S))
    yield serve
    stop_and_check(serve)


@pytest.fixture
def sub(proxy: Serve) -> Iterator[EventSub]:
    events = EventSub(proxy.events)
    # Refreshes make the slow joiner's wait short: the first one says it joined.
    events.next_event(timeout=10 * REFRESH_S + 5)
    yield events
    events.close()


def view(reply: dict[str, Any]) -> tuple[int, str]:
    assert isinstance(reply["epoch"], int) and isinstance(reply["instance"], str), reply
    return reply["epoch"], reply["instance"]


def empty(proxy: Serve) -> None:
    state = proxy.state()
    for server in state["primary"] + state["backup"]:
        proxy.call("remove_server", addr=server["addr"])


READS: list[tuple[str, dict[str, Any]]] = [
    ("ping", {}),
    ("find_server", {}),
    ("servers", {}),
    ("status", {}),
]
WRITES: list[tuple[str, dict[str, Any]]] = [
    ("add_primary_server", {"addr": A}),
    ("set_backup_servers", {"addrs": [C]}),
    ("notify_failed_server", {"addr": A}),
    ("remove_server", {"addr": C}),
    ("heartbeat", {"servers": [], "num_nodes": 3, "leader_rpc_addr": ""}),
    ("rebalance", {}),
    ("reset_rebalance_timer", {}),
]


@pytest.mark.parametrize(("op", "keys"), READS + WRITES, ids=[op for op, _ in READS + WRITES])
def test_every_success_reply_carries_epoch_and_instance(
    proxy: Serve, op: str, keys: dict[str, Any]
) -> None:
    instance = proxy.call("ping")["instance"]
    reply = proxy.call(op, **keys)
    assert view(reply)[1] == instance
    assert len(instance) == 16 and int(instance, 16) >= 0
    # With or without an id: the id-less find_server is served pre-encoded.
    raw = proxy.client.request({"op": op, **keys})
    assert raw["ok"] is True and view(raw)[1] == instance


def test_a_write_reply_carries_the_epoch_of_its_own_event(proxy: Serve, sub: EventSub) -> None:
    empty(proxy)
    before = proxy.call("find_server")
    added = proxy.call("add_primary_server", addr=A)
    event = sub.next_event()
    while event["reason"] == "refresh" or event["server"] != {"addr": A}:
        event = sub.next_event()
    assert (event["reason"], event["epoch"]) == ("added", added["epoch"])
    assert added["epoch"] > before["epoch"]

    proxy.call("add_primary_server", addr=B)  # not the head: no new epoch
    assert proxy.call("find_server")["epoch"] == added["epoch"]

    notified = proxy.call("notify_failed_server", addr=A)
    assert notified["rotated"] is True
    assert notified["server"] == {"addr": B}
    assert notified["epoch"] == added["epoch"] + 1
    assert sub.next() == {"server": {"addr": B}, "reason": "failed"}
    assert sub.epoch == notified["epoch"]

    stale = proxy.call("notify_failed_server", addr=A)  # A is no longer the head
    assert (stale["rotated"], stale["server"], stale["epoch"]) == (
        False,
        {"addr": B},
        notified["epoch"],
    )
    found = proxy.call("find_server")
    assert (found["server"], found["epoch"]) == ({"addr": B}, notified["epoch"])


def test_refreshes_repeat_the_current_server_and_epoch(proxy: Serve, sub: EventSub) -> None:
    empty(proxy)
    proxy.call("add_primary_server", addr=C)
    current = proxy.call("find_server")
    refreshes: list[dict[str, Any]] = []
    while len(refreshes) < 3:
        event = sub.next_event(timeout=10 * REFRESH_S + 5)
        if event["reason"] == "refresh" and event["epoch"] == current["epoch"]:
            refreshes.append(event)
    for event in refreshes:
        assert event["server"] == current["server"] == {"addr": C}
        assert event["instance"] == current["instance"]


def test_each_start_is_a_new_instance(tmp_path: Any) -> None:
    instances = set()
    for _ in range(2):
        serve = start_serve(tmp_path, "--events-refresh-s", "0")
        try:
            instances.add(serve.call("ping")["instance"])
            assert serve.call("find_server")["epoch"] == 0
        finally:
            stop_and_check(serve)
    assert len(instances) == 2


def test_refresh_off_sends_changes_only(tmp_path: Any) -> None:
    serve = start_serve(tmp_path, "--events-refresh-s", "0")
    events = EventSub(serve.events)
    try:
        events.sync(serve.client)
        serve.call("add_primary_server", addr=A)
        assert events.next_event()["reason"] == "added"
        # Nothing else comes: a marker change arrives next, not a refresh.
        serve.call("remove_server", addr=A)
        assert events.next_event()["reason"] == "removed"
    finally:
        events.close()
        stop_and_check(serve)
