"""Heartbeats over real PUB/SUB sockets (docs/protocol.md section 2).

Proving that a heartbeat was *dropped* needs a sentinel: messages of one PUB
connection arrive in order, so once a later good heartbeat is visible, every
bad one sent before it has been read. The state is chosen so that the
sentinel leaves a different active-list order depending on whether the bad
one was applied: after ``[A, C]``, a wrongly applied ``[B]`` and the sentinel
``[A, B, C]`` give ``[B, A, C]``; a dropped one gives ``[A, C, B]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from tests.helpers import free_port, pack, tcp
from tests.integration.serving import (
    HeartbeatPub,
    Serve,
    addrs,
    hb_payload,
    hb_server,
    start_serve,
    stop_and_check,
)
from tests.waiting import poll_until

pytestmark = pytest.mark.integration

A, B, C = "10.0.0.1:4647", "10.0.0.2:4647", "10.0.0.3:4647"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """One proxy for the module: every test starts by publishing the state it needs.

    Publishers with ``seq`` use names of their own, so tests do not go stale
    on each other.
    """
    serve = start_serve(tmp_path_factory.mktemp("heartbeats"), events=False)
    yield serve
    stop_and_check(serve)


@pytest.fixture(scope="module")
def pub(proxy: Serve) -> Iterator[HeartbeatPub]:
    publisher = HeartbeatPub(connect=proxy.heartbeat)
    yield publisher
    publisher.close()


def status_has(proxy: Serve, **expected: Any) -> Callable[[], bool]:
    def check() -> bool:
        status = proxy.call("status")
        return all(status[key] == value for key, value in expected.items())

    return check


def sync_a_c(proxy: Serve, pub: HeartbeatPub, **extra: Any) -> None:
    """Publish ``[A, C]`` until the proxy has it: the connection is up."""
    payload = hb_payload([hb_server(A), hb_server(C)], num_nodes=1, leader=A, **extra)
    pub.publish_until(payload, status_has(proxy, num_nodes=1))
    assert addrs(proxy.call("servers")["servers"]) == [A, C]


def assert_dropped(
    proxy: Serve, pub: HeartbeatPub, send_bad: Callable[[], None], **sentinel_extra: Any
) -> None:
    """``send_bad`` (which would install ``[B]`` or nodes 666) is dropped whole."""
    sync_a_c(proxy, pub, **sentinel_extra.pop("sync_extra", {}))
    send_bad()
    sentinel = hb_payload(
        [hb_server(A), hb_server(B), hb_server(C)], num_nodes=2, leader=C, **sentinel_extra
    )
    pub.send(sentinel)
    poll_status = status_has(proxy, num_nodes=2)
    poll_until(poll_status, what="the sentinel heartbeat")
    status = proxy.call("status")
    assert addrs(status["servers"]) == [A, C, B], "a bad heartbeat was applied"
    assert status["leader_addr"] == C


def test_a_heartbeat_on_the_bound_endpoint_applies(proxy: Serve, pub: HeartbeatPub) -> None:
    payload = hb_payload(
        [hb_server(A), hb_server(B), hb_server("10.9.0.1", "dc9")], num_nodes=250, leader=B
    )
    pub.publish_until(payload, status_has(proxy, num_nodes=250))
    status = proxy.call("status")
    assert addrs(status["primary"]) == [A, B]
    assert addrs(status["backup"]) == ["10.9.0.1:4647"]
    assert addrs(status["servers"]) == [A, B, "10.9.0.1:4647"]
    assert status["leader_addr"] == B


def test_heartbeat_connect_subscribes_to_a_bound_publisher(
    serve_factory: Callable[..., Serve],
) -> None:
    endpoint = tcp(free_port())
    publisher = HeartbeatPub(bind=endpoint)
    try:
        proxy = serve_factory(heartbeat_connect=endpoint, events=False)
        payload = hb_payload([hb_server(A), hb_server(C)], num_nodes=9, leader=C)
        publisher.publish_until(payload, status_has(proxy, num_nodes=9))
        assert addrs(proxy.call("servers")["servers"]) == [A, C]
    finally:
        publisher.close()


def test_other_regions_and_the_prefix_trap_are_ignored(proxy: Serve, pub: HeartbeatPub) -> None:
    def send_bad() -> None:
        bad = hb_payload([hb_server(B)], num_nodes=666, leader=B)
        for topic in ("heartbeat/east", "heartbeat/global2", "heartbeat/globa", "heartbeat/"):
            pub.send(bad, topic=topic)

    assert_dropped(proxy, pub, send_bad)


def test_region_flag_selects_the_topic(serve_factory: Callable[..., Serve]) -> None:
    proxy = serve_factory("--region", "east", events=False)
    publisher = HeartbeatPub(connect=proxy.heartbeat)
    try:
        good = hb_payload([hb_server(A)], num_nodes=5)
        publisher.publish_until(good, status_has(proxy, num_nodes=5), topic="heartbeat/east")
        publisher.send(hb_payload([hb_server(B)], num_nodes=666), topic="heartbeat/global")
        publisher.send(hb_payload([hb_server(B)], num_nodes=666), topic="heartbeat/east2")
        publisher.send(hb_payload([hb_server(A), hb_server(C)], num_nodes=6), "heartbeat/east")
        poll_until(status_has(proxy, num_nodes=6))
        assert addrs(proxy.call("servers")["servers"]) == [A, C]
    finally:
        publisher.close()


def _without(payload: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != key}


def _bad_payloads() -> list[tuple[str, Sequence[bytes]]]:
    topic = b"heartbeat/global"
    good_b = hb_payload([hb_server(B)], num_nodes=666, leader=B)
    server_b = hb_server(B)
    cases: list[tuple[str, Any]] = [
        ("garbage", b"\xc1\xc1\xc1"),
        ("truncated", pack(good_b)[:-3]),
        ("not a map", pack([good_b])),
        ("missing servers", _without(good_b, "servers")),
        ("missing num_nodes", _without(good_b, "num_nodes")),
        ("missing leader", _without(good_b, "leader_rpc_addr")),
        ("num_nodes str", {**good_b, "num_nodes": "666"}),
        ("num_nodes negative", {**good_b, "num_nodes": -666}),
        ("num_nodes float", {**good_b, "num_nodes": 666.0}),
        ("leader int", {**good_b, "leader_rpc_addr": 5}),
        ("servers not list", {**good_b, "servers": server_b}),
        ("server not map", {**good_b, "servers": [B]}),
        ("server addr int", {**good_b, "servers": [{**server_b, "rpc_advertise_addr": 1}]}),
        ("server major str", {**good_b, "servers": [{**server_b, "rpc_major_version": "1"}]}),
        ("server minor nil", {**good_b, "servers": [{**server_b, "rpc_minor_version": None}]}),
        ("server dc missing", {**good_b, "servers": [_without(server_b, "datacenter")]}),
        ("seq str", {**good_b, "publisher": "p", "seq": "9"}),
        ("publisher int", {**good_b, "publisher": 7, "seq": 9}),
        ("deep nesting", b"\x83\xa7servers" + b"\x91" * 10_000 + b"\xc0"),
    ]
    frames: list[tuple[str, Sequence[bytes]]] = [
        (name, [topic, body if isinstance(body, bytes) else pack(body)]) for name, body in cases
    ]
    frames.append(("three frames", [topic, pack(good_b), b"extra"]))
    frames.append(("topic only", [topic]))
    frames.append(("four frames", [topic, pack(good_b), pack(good_b), pack(good_b)]))
    return frames


BAD_PAYLOADS = _bad_payloads()


@pytest.mark.parametrize(("name", "frames"), BAD_PAYLOADS, ids=[n for n, _ in BAD_PAYLOADS])
def test_a_malformed_heartbeat_is_dropped_whole(
    proxy: Serve, pub: HeartbeatPub, name: str, frames: Sequence[bytes]
) -> None:
    assert_dropped(proxy, pub, lambda: pub.send_frames(frames))
    assert proxy.call("ping")["pong"] is True


def test_every_malformed_heartbeat_at_once(proxy: Serve, pub: HeartbeatPub) -> None:
    def send_all() -> None:
        for _, frames in BAD_PAYLOADS:
            pub.send_frames(frames)

    assert_dropped(proxy, pub, send_all)


def test_a_replayed_seq_is_dropped(proxy: Serve, pub: HeartbeatPub) -> None:
    def replay() -> None:
        pub.send(hb_payload([hb_server(B)], num_nodes=666, publisher="replay", seq=5))
        pub.send(hb_payload([hb_server(B)], num_nodes=666, publisher="replay", seq=4))

    assert_dropped(
        proxy,
        pub,
        replay,
        publisher="replay",
        seq=6,
        sync_extra={"publisher": "replay", "seq": 5},
    )


def test_seq_is_per_publisher(proxy: Serve, pub: HeartbeatPub) -> None:
    sync_a_c(proxy, pub, publisher="per-p", seq=100)
    # Another publisher's low seq is not stale.
    payload = hb_payload([hb_server(B)], num_nodes=3, publisher="per-q", seq=1)
    pub.publish_until(payload, status_has(proxy, num_nodes=3))
    assert addrs(proxy.call("servers")["servers"]) == [B]


def test_other_datacenters_become_backups_and_newer_apis_are_ignored(
    proxy: Serve, pub: HeartbeatPub
) -> None:
    payload = hb_payload(
        [
            hb_server("10.0.0.1", "dc1"),
            hb_server("10.2.0.1", "dc2"),
            hb_server("10.0.0.5", "dc1", major=2, minor=0),
            hb_server("10.0.0.6", "dc1", major=1, minor=2),
            hb_server("10.2.0.7", "dc2", major=1, minor=9),
            hb_server("10.0.0.8", "dc1", major=1, minor=0),
            hb_server("10.0.0.9", "dc1", major=0, minor=99),
            hb_server("not an address:x", "dc1"),
        ],
        num_nodes=4,
    )
    pub.publish_until(payload, status_has(proxy, num_nodes=4))
    status = proxy.call("status")
    assert addrs(status["primary"]) == ["10.0.0.1:4647", "10.0.0.8:4647", "10.0.0.9:4647"]
    assert addrs(status["backup"]) == ["10.2.0.1:4647"]
    # Primaries stand before the backup-only server, whatever the heartbeat's order.
    assert addrs(status["servers"]) == [
        "10.0.0.1:4647",
        "10.0.0.8:4647",
        "10.0.0.9:4647",
        "10.2.0.1:4647",
    ]


def test_a_heartbeat_supersedes_set_backup_servers_and_never_reorders(
    proxy: Serve, pub: HeartbeatPub
) -> None:
    sync_a_c(proxy, pub)
    proxy.call("set_backup_servers", addrs=["10.5.0.1"])
    proxy.call("notify_failed_server", addr=A)
    assert addrs(proxy.call("servers")["servers"]) == [C, "10.5.0.1:4647", A]
    # Same primaries, no other DC: the backups are dropped, the order kept.
    pub.publish_until(
        hb_payload([hb_server(A), hb_server(C)], num_nodes=8),
        status_has(proxy, num_nodes=8),
    )
    status = proxy.call("status")
    assert status["backup"] == []
    assert addrs(status["servers"]) == [C, A]
