"""Every op of docs/protocol.md section 1 and every error code, over a raw REQ socket."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rpcproxy.bus.standins.standin import ServerStandIn
from tests.helpers import free_port, pack, unpack
from tests.integration.serving import (
    Serve,
    addrs,
    hb_payload,
    hb_server,
    start_serve,
    stop_and_check,
    without_view,
)

pytestmark = pytest.mark.integration

PING_TIMEOUT_S = 0.3


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    proc = start_serve(
        tmp_path_factory.mktemp("ops"), "--ping-timeout-s", str(PING_TIMEOUT_S), events=False
    )
    yield proc
    stop_and_check(proc)


@pytest.fixture
def proxy(serve: Serve) -> Serve:
    """The module's proxy, emptied: no primaries, no backups."""
    state = serve.state()
    for server in state["primary"] + state["backup"]:
        serve.call("remove_server", addr=server["addr"])
    assert serve.call("servers")["servers"] == []
    return serve


def dead_addr() -> str:
    """A loopback address where nothing listens, so its pings time out."""
    return f"127.0.0.1:{free_port()}"


# --------------------------------------------------------------------------
# Success replies.


def test_ping(proxy: Serve) -> None:
    assert without_view(proxy.client.request({"op": "ping"})) == {"ok": True, "pong": True}


def test_find_server_is_nil_when_empty_then_the_head(proxy: Serve) -> None:
    assert without_view(proxy.client.request({"op": "find_server"})) == {"ok": True, "server": None}
    proxy.call("add_primary_server", addr="10.0.0.1")
    proxy.call("add_primary_server", addr="10.0.0.2:5000")
    assert without_view(proxy.client.request({"op": "find_server"})) == {
        "ok": True,
        "server": {"addr": "10.0.0.1:4647"},
    }


def test_servers_is_the_active_list_in_order(proxy: Serve) -> None:
    assert without_view(proxy.client.request({"op": "servers"})) == {"ok": True, "servers": []}
    for addr in ("10.0.0.3", "10.0.0.1", "10.0.0.2"):
        proxy.call("add_primary_server", addr=addr)
    assert without_view(proxy.client.request({"op": "servers"})) == {
        "ok": True,
        "servers": [{"addr": f"10.0.0.{i}:4647"} for i in (3, 1, 2)],
    }


def test_status_has_every_key_with_its_type(proxy: Serve) -> None:
    proxy.call("add_primary_server", addr="10.0.0.1")
    proxy.call("set_backup_servers", addrs=["10.0.0.9"])
    proxy.call(
        "heartbeat",
        **hb_payload(
            [hb_server("10.0.0.1"), hb_server("10.0.0.2")], num_nodes=42, leader="10.0.0.1:4647"
        ),
    )
    status = proxy.client.request({"op": "status"})
    assert set(status) == {
        "ok",
        "servers",
        "primary",
        "backup",
        "leader_addr",
        "num_nodes",
        "num_servers",
        "next_rebalance_s",
        "offline",
        # Freshness additions (issue 5): age of the last heartbeat, per publisher.
        "heartbeat_age_s",
        "publishers",
        # Version 2: the view the reply was built from (section 1).
        "epoch",
        "instance",
        # Version 3: the last discovery that found servers (section 10), nil before one.
        "discovery",
    }
    assert status["discovery"] is None
    assert status["ok"] is True
    assert status["servers"] == [{"addr": "10.0.0.1:4647"}, {"addr": "10.0.0.2:4647"}]
    assert status["primary"] == [{"addr": "10.0.0.1:4647"}, {"addr": "10.0.0.2:4647"}]
    # A heartbeat listing servers replaces the backups with its other-DC servers.
    assert status["backup"] == []
    assert status["leader_addr"] == "10.0.0.1:4647"
    assert type(status["num_nodes"]) is int and status["num_nodes"] == 42
    assert type(status["num_servers"]) is int and status["num_servers"] == 2
    assert type(status["next_rebalance_s"]) is float
    # Defaults: min_reuse_s 600, jitter_fraction 2, so at most 900 s away; the
    # module's proxy may have rebalanced or reset since, which restarts at >= 600
    # less the time this module has run.
    assert 0 < status["next_rebalance_s"] <= 900
    assert type(status["heartbeat_age_s"]) is float and status["heartbeat_age_s"] >= 0
    # hb_payload sends no publisher/seq, so no publisher is tracked.
    assert status["publishers"] == []
    assert type(status["offline"]) is bool


def test_status_backup_and_leader_types_when_empty(proxy: Serve) -> None:
    proxy.call("set_backup_servers", addrs=["10.0.0.9", "10.0.0.8:1"])
    status = proxy.call("status")
    assert status["backup"] == [{"addr": "10.0.0.9:4647"}, {"addr": "10.0.0.8:1"}]
    assert status["servers"] == status["backup"]
    assert status["primary"] == []
    assert isinstance(status["leader_addr"], str)


def test_first_rebalance_is_min_reuse_plus_jitter_after_start(tmp_path: Path) -> None:
    fresh = start_serve(tmp_path, events=False)
    try:
        next_s = fresh.call("status")["next_rebalance_s"]
        assert 590 <= next_s < 900
    finally:
        stop_and_check(fresh)


def test_notify_failed_server_rotates_only_the_active_server(proxy: Serve) -> None:
    # One server: nothing to rotate to.
    proxy.call("add_primary_server", addr="10.0.0.1")
    reply = proxy.client.request({"op": "notify_failed_server", "addr": "10.0.0.1"})
    assert without_view(reply) == {
        "ok": True,
        "rotated": False,
        "server": {"addr": "10.0.0.1:4647"},
    }
    proxy.call("add_primary_server", addr="10.0.0.2")
    proxy.call("add_primary_server", addr="10.0.0.3")
    # Not the active server: nothing.
    reply = proxy.call("notify_failed_server", addr="10.0.0.2")
    assert reply["rotated"] is False
    assert addrs(proxy.call("servers")["servers"]) == [
        "10.0.0.1:4647",
        "10.0.0.2:4647",
        "10.0.0.3:4647",
    ]
    # The active server, named non-canonically: moved to the end.
    reply = proxy.call("notify_failed_server", addr="10.0.0.1:4647")
    # The reply names the active server after the rotation (version 2).
    assert without_view(reply) == {"ok": True, "rotated": True, "server": {"addr": "10.0.0.2:4647"}}
    assert addrs(proxy.call("servers")["servers"]) == [
        "10.0.0.2:4647",
        "10.0.0.3:4647",
        "10.0.0.1:4647",
    ]
    # Unknown server: nothing.
    assert proxy.call("notify_failed_server", addr="10.9.9.9")["rotated"] is False


def test_add_primary_server_added_then_not(proxy: Serve) -> None:
    reply = proxy.client.request({"op": "add_primary_server", "addr": "10.0.0.7"})
    assert without_view(reply) == {"ok": True, "server": {"addr": "10.0.0.7:4647"}, "added": True}
    reply = proxy.client.request({"op": "add_primary_server", "addr": "10.0.0.7:4647"})
    assert without_view(reply) == {"ok": True, "server": {"addr": "10.0.0.7:4647"}, "added": False}
    reply = proxy.call("add_primary_server", addr="[::1]")
    assert reply["server"] == {"addr": "[::1]:4647"} and reply["added"] is True
    reply = proxy.call("add_primary_server", addr="Server-A.example.com:80")
    assert reply["added"] is True
    status = proxy.call("status")
    assert addrs(status["servers"]) == [
        "10.0.0.7:4647",
        "[::1]:4647",
        addrs([reply["server"]])[0],
    ]
    assert status["primary"] == status["servers"]


def test_set_backup_servers_replaces_the_backups(proxy: Serve) -> None:
    proxy.call("add_primary_server", addr="10.0.0.1")
    reply = proxy.client.request({"op": "set_backup_servers", "addrs": ["10.0.1.1", "10.0.1.2:99"]})
    assert without_view(reply) == {
        "ok": True,
        "servers": [{"addr": "10.0.1.1:4647"}, {"addr": "10.0.1.2:99"}],
    }
    reply = proxy.call("set_backup_servers", addrs=["10.0.1.2:99", "10.0.1.3"])
    assert addrs(reply["servers"]) == ["10.0.1.2:99", "10.0.1.3:4647"]
    status = proxy.call("status")
    assert addrs(status["backup"]) == ["10.0.1.2:99", "10.0.1.3:4647"]
    # 10.0.1.1 stopped being a backup, so it left the active list at once.
    assert addrs(status["servers"]) == ["10.0.0.1:4647", "10.0.1.2:99", "10.0.1.3:4647"]
    assert proxy.call("set_backup_servers", addrs=[])["servers"] == []
    assert addrs(proxy.call("servers")["servers"]) == ["10.0.0.1:4647"]


def test_remove_server_removed_then_not(proxy: Serve) -> None:
    proxy.call("add_primary_server", addr="10.0.0.1")
    proxy.call("add_primary_server", addr="10.0.0.2")
    proxy.call("set_backup_servers", addrs=["10.0.0.2", "10.0.0.3"])
    assert without_view(proxy.client.request({"op": "remove_server", "addr": "10.0.0.2"})) == {
        "ok": True,
        "removed": True,
    }
    status = proxy.call("status")
    assert addrs(status["servers"]) == ["10.0.0.1:4647", "10.0.0.3:4647"]
    assert addrs(status["primary"]) == ["10.0.0.1:4647"]
    assert addrs(status["backup"]) == ["10.0.0.3:4647"]
    assert without_view(proxy.call("remove_server", addr="10.0.0.2:4647")) == {
        "ok": True,
        "removed": False,
    }


def test_heartbeat_op_changed_true_then_false(proxy: Serve) -> None:
    payload = hb_payload(
        [hb_server("10.0.0.1"), hb_server("10.0.2.1", datacenter="dc2")],
        num_nodes=3,
        leader="10.0.0.1:4647",
    )
    reply = proxy.client.request({"op": "heartbeat", **payload})
    assert reply["ok"] is True and reply["changed"] is True
    reply = proxy.client.request({"op": "heartbeat", **payload, "num_nodes": 4})
    assert reply["ok"] is True and reply["changed"] is False
    status = proxy.call("status")
    assert addrs(status["primary"]) == ["10.0.0.1:4647"]
    assert addrs(status["backup"]) == ["10.0.2.1:4647"]
    assert status["num_nodes"] == 4  # Stored on every heartbeat, changed or not.


def test_rebalance_with_fewer_than_two_servers_is_nil(proxy: Serve) -> None:
    assert without_view(proxy.client.request({"op": "rebalance"})) == {
        "ok": True,
        "server": None,
        "healthy": None,
    }
    proxy.call("add_primary_server", addr=dead_addr())
    reply = proxy.call("rebalance")
    assert reply["healthy"] is None
    assert reply["server"] == proxy.call("find_server")["server"]


def test_rebalance_with_live_servers_is_healthy(
    proxy: Serve, standins: Callable[[], ServerStandIn]
) -> None:
    live = [standins().address for _ in range(3)]
    for addr in live:
        proxy.call("add_primary_server", addr=addr)
    reply = proxy.client.request({"op": "rebalance"})
    assert set(reply) == {"ok", "server", "healthy", "epoch", "instance"}
    assert reply["ok"] is True and reply["healthy"] is True
    assert reply["server"]["addr"] in live
    servers = addrs(proxy.call("servers")["servers"])
    assert sorted(servers) == sorted(live)
    assert servers[0] == reply["server"]["addr"]


def test_rebalance_with_only_dead_servers_keeps_the_list(proxy: Serve) -> None:
    dead = [dead_addr() for _ in range(3)]
    for addr in dead:
        proxy.call("add_primary_server", addr=addr)
    reply = proxy.call("rebalance")
    assert reply["healthy"] is False
    assert reply["server"] == {"addr": dead[0]}
    assert addrs(proxy.call("servers")["servers"]) == dead


def test_reset_rebalance_timer(proxy: Serve) -> None:
    reply = proxy.client.request({"op": "reset_rebalance_timer"})
    assert without_view(reply) == {"ok": True, "next_rebalance_s": 600.0}
    assert type(reply["next_rebalance_s"]) is float
    next_s = proxy.call("status")["next_rebalance_s"]
    assert 595 < next_s <= 600


@pytest.mark.parametrize(
    "request_id",
    [0, 7, -3, 2**40, "abc", "", [1, [2, ["x", None]]], {"k": [1, 2]}, None, 1.5, True],
)
def test_id_is_echoed(proxy: Serve, request_id: Any) -> None:
    for op in ("ping", "find_server", "servers", "status", "rebalance"):
        reply = proxy.client.request({"op": op, "id": request_id})
        assert reply["ok"] is True and reply["id"] == request_id, reply
    reply = proxy.client.request({"op": "add_primary_server", "addr": "10.0.0.1", "id": request_id})
    assert reply["id"] == request_id
    reply = proxy.client.request({"op": "no_such_op", "id": request_id})
    assert reply["ok"] is False and reply["id"] == request_id


def test_id_absent_means_no_id_in_reply(proxy: Serve) -> None:
    assert "id" not in proxy.client.request({"op": "ping"})
    assert "id" not in proxy.client.request({"op": "remove_server", "addr": "10.0.0.1"})


def test_version_1_is_accepted(proxy: Serve) -> None:
    assert without_view(proxy.client.request({"op": "ping", "v": 1, "id": 5})) == {
        "ok": True,
        "pong": True,
        "id": 5,
    }
    reply = proxy.client.request({"op": "add_primary_server", "v": 1, "addr": "10.0.0.1"})
    assert reply["added"] is True


def test_unknown_keys_in_a_request_are_accepted(proxy: Serve) -> None:
    assert proxy.call("ping", extra="ignored", more=[1, 2])["pong"] is True


# --------------------------------------------------------------------------
# Errors: the right code, nothing changes, and the proxy keeps answering.


@pytest.fixture
def seeded(proxy: Serve) -> Serve:
    """A proxy holding primaries, backups, nodes and a leader."""
    proxy.call(
        "heartbeat",
        **hb_payload(
            [hb_server("10.0.0.1"), hb_server("10.0.0.2"), hb_server("10.0.5.1", "dc5")],
            num_nodes=17,
            leader="10.0.0.2:4647",
        ),
    )
    return proxy


def nesting(depth: int) -> bytes:
    """``[[[...nil...]]]`` nested ``depth`` levels, written by hand (packers refuse)."""
    return b"\x91" * depth + b"\xc0"


BAD_REQUESTS: list[tuple[str, bytes]] = [
    ("not msgpack", b"\xc1"),
    ("truncated msgpack", pack({"op": "ping"})[:-2]),
    ("text", b"hello, proxy"),
    ("empty frame", b""),
    ("not a map: list", pack(["op", "ping"])),
    ("not a map: str", pack("ping")),
    ("not a map: int", pack(1)),
    ("not a map: nil", pack(None)),
    ("missing op", pack({"id": 1})),
    ("op not str", pack({"op": 1})),
    ("op is bytes", pack({"op": b"ping"})),
    ("missing addr", pack({"op": "add_primary_server"})),
    ("missing addrs", pack({"op": "set_backup_servers"})),
    ("missing heartbeat keys", pack({"op": "heartbeat", "servers": []})),
    ("addr not str", pack({"op": "add_primary_server", "addr": 5})),
    ("addr nil", pack({"op": "remove_server", "addr": None})),
    ("addrs not list", pack({"op": "set_backup_servers", "addrs": "10.0.0.1"})),
    ("addrs item not str", pack({"op": "set_backup_servers", "addrs": ["10.0.0.1", 7]})),
    (
        "heartbeat num_nodes str",
        pack({"op": "heartbeat", **hb_payload([hb_server("10.0.0.9")]), "num_nodes": "3"}),
    ),
    (
        "heartbeat negative num_nodes",
        pack({"op": "heartbeat", **hb_payload([hb_server("10.0.0.9")]), "num_nodes": -1}),
    ),
    (
        "heartbeat server missing datacenter",
        pack(
            {
                "op": "heartbeat",
                "servers": [
                    {
                        "rpc_advertise_addr": "10.0.0.9",
                        "rpc_major_version": 1,
                        "rpc_minor_version": 1,
                    }
                ],
                "num_nodes": 1,
                "leader_rpc_addr": "",
            }
        ),
    ),
    ("non-string key", b"\x82\xa2op\xa4ping\x01\x02"),
    ("id nested 10,000 levels", b"\x82\xa2op\xa4ping\xa2id" + nesting(10_000)),
    ("addrs nested deep", b"\x82\xa2op\xb2set_backup_servers\xa5addrs" + nesting(10_000)),
]


@pytest.mark.parametrize(("name", "frame"), BAD_REQUESTS, ids=[n for n, _ in BAD_REQUESTS])
def test_bad_request(seeded: Serve, name: str, frame: bytes) -> None:
    before = seeded.state()
    reply = seeded.client.send_raw(frame)
    decoded = unpack(reply)
    assert decoded["ok"] is False, decoded
    assert decoded["error"]["code"] == "bad_request", decoded
    assert isinstance(decoded["error"]["message"], str) and decoded["error"]["message"]
    assert seeded.state() == before
    assert seeded.call("ping")["pong"] is True


def test_bad_request_echoes_the_id_when_readable(seeded: Serve) -> None:
    error = seeded.client.request({"op": "add_primary_server", "addr": 5, "id": "x1"})
    assert error["id"] == "x1" and error["error"]["code"] == "bad_request"
    error = seeded.client.request({"id": [1, 2]})
    assert error["id"] == [1, 2] and error["error"]["code"] == "bad_request"


@pytest.mark.parametrize("op", ["no_such_op", "", "PING", "ping ", "status2"])
def test_unknown_op(seeded: Serve, op: str) -> None:
    before = seeded.state()
    error = seeded.client.error({"op": op, "id": 9})
    assert error["code"] == "unknown_op"
    assert seeded.state() == before
    assert seeded.call("ping")["pong"] is True


@pytest.mark.parametrize(
    "message",
    [
        {"op": "add_primary_server", "addr": "10.0.0.1:0"},
        {"op": "add_primary_server", "addr": "10.0.0.1:65536"},
        {"op": "add_primary_server", "addr": "10.0.0.1:port"},
        {"op": "add_primary_server", "addr": ""},
        {"op": "add_primary_server", "addr": "::1"},
        {"op": "add_primary_server", "addr": "[::1"},
        {"op": "add_primary_server", "addr": "bad host:1"},
        {"op": "notify_failed_server", "addr": "10.0.0.1:-1"},
        {"op": "remove_server", "addr": "a:b:c"},
        {"op": "set_backup_servers", "addrs": ["10.0.0.1", "10.0.0.2:99999"]},
        {"op": "set_backup_servers", "addrs": ["not an address", "10.0.0.3"]},
    ],
)
def test_invalid_address_changes_nothing(seeded: Serve, message: dict[str, Any]) -> None:
    before = seeded.state()
    error = seeded.client.error({**message, "id": 3})
    assert error["code"] == "invalid_address", error
    assert seeded.state() == before
    assert seeded.call("ping")["pong"] is True


def test_set_backup_servers_with_one_bad_address_changes_nothing(seeded: Serve) -> None:
    seeded.call("set_backup_servers", addrs=["10.0.7.1", "10.0.7.2"])
    before = seeded.state()
    error = seeded.client.error(
        {"op": "set_backup_servers", "addrs": ["10.0.7.3", "10.0.7.1", "300.1.1.1:0"]}
    )
    assert error["code"] == "invalid_address"
    assert seeded.state() == before
    assert addrs(before["backup"]) == ["10.0.7.1:4647", "10.0.7.2:4647"]


@pytest.mark.parametrize("version", [0, 2, -1, "1", 1.0, None, True, [1]])
def test_unsupported_version(seeded: Serve, version: Any) -> None:
    before = seeded.state()
    error = seeded.client.request({"op": "add_primary_server", "addr": "10.0.9.9", "v": version})
    assert error["ok"] is False and error["error"]["code"] == "unsupported_version", error
    assert seeded.state() == before
    assert seeded.call("ping", v=1)["pong"] is True


def test_errors_in_a_burst_keep_the_proxy_serving(seeded: Serve) -> None:
    before = seeded.state()
    for _, frame in BAD_REQUESTS * 5:
        seeded.client.send_raw(frame)  # each answered, within send_raw's own timeout
    assert seeded.state() == before
