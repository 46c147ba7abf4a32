"""A scrape of /metrics shows every metric move as the proxy works."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rpcproxy.bus.standins.standin import ServerStandIn
from tests.helpers import free_port
from tests.integration.serving import HeartbeatPub, Serve, hb_payload, hb_server
from tests.waiting import poll_until

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_every_metric_moves(
    serve_factory: Callable[..., Serve], standins: Callable[[], ServerStandIn]
) -> None:
    port = free_port()
    live = [standins().address for _ in range(2)]
    proxy = serve_factory("--metrics", f"127.0.0.1:{port}", "--ping-timeout-s", "0.5")
    before = poll_until(lambda: scrape(port), what="the metrics endpoint")
    assert value(before, "rpcproxy_servers", list="active") == 0
    assert value(before, "rpcproxy_active_server_info", addr="") == 1

    # Heartbeats: applied and stale ones, over the SUB socket, from a publisher.
    pub = HeartbeatPub(connect=proxy.heartbeat)
    try:
        beat = hb_payload(
            [hb_server(live[0]), hb_server(live[1]), hb_server("10.9.0.1", datacenter="dc9")],
            num_nodes=12,
            publisher="p1",
            seq=5,
        )
        pub.publish_until(beat, lambda: len(proxy.call("servers")["servers"]) == 3)
        pub.send(beat)  # the same seq again: stale
        pub.send_frames([b"heartbeat/global", b"\xc1"])  # not MessagePack
        pub.send(beat, topic="heartbeat/global2")  # another region's topic
        poll_until(
            lambda: value(scrape(port), "rpcproxy_heartbeats_rejected_total", reason="topic") >= 1,
            what="the rejected heartbeats to be counted",
        )
    finally:
        pub.close()

    proxy.call("find_server")
    head = proxy.call("find_server")["server"]["addr"]
    assert proxy.call("notify_failed_server", addr=head)["rotated"] is True
    assert proxy.call("rebalance")["healthy"] is True
    assert proxy.client.request({"op": "frob"})["error"]["code"] == "unknown_op"

    def observed() -> Samples | None:
        # A request's duration is observed just after its reply is sent (it
        # measures up to the send), so a quick scrape can come before it. The
        # stale heartbeat reaches the actor through the ingest queue, which
        # owes no order to the requests above, so it is waited for too.
        samples = scrape(port)
        counted = value(samples, "rpcproxy_request_duration_seconds_count", op="unknown_op")
        stale = value(samples, "rpcproxy_heartbeats_total", result="stale")
        return samples if counted and stale else None

    after = poll_until(
        observed, what="the last request's duration and the stale heartbeat to be observed"
    )
    assert value(after, "rpcproxy_servers", list="active") == 3
    assert value(after, "rpcproxy_servers", list="primary") == 2
    assert value(after, "rpcproxy_servers", list="backup") == 1
    active = proxy.call("find_server")["server"]["addr"]
    assert value(after, "rpcproxy_active_server_info", addr=active) == 1
    assert value(after, "rpcproxy_num_nodes") == 12
    assert value(after, "rpcproxy_failovers_total") == 1
    assert value(after, "rpcproxy_heartbeats_total", result="applied") >= 1
    assert value(after, "rpcproxy_heartbeats_total", result="stale") >= 1
    assert value(after, "rpcproxy_heartbeats_rejected_total", reason="payload") >= 1
    assert value(after, "rpcproxy_heartbeats_rejected_total", reason="topic") >= 1
    rebalanced = sum(value(after, "rpcproxy_rebalances_total", result=r) for r in ("moved", "kept"))
    assert rebalanced == 1
    assert value(after, "rpcproxy_probe_duration_seconds_count") == 1
    assert value(after, "rpcproxy_ping_duration_seconds_count") == 1  # its old name, one release
    assert value(after, "rpcproxy_request_duration_seconds_count", op="find_server") >= 2
    assert value(after, "rpcproxy_request_duration_seconds_count", op="rebalance") == 1
    assert value(after, "rpcproxy_request_duration_seconds_count", op="unknown_op") == 1
    assert value(after, "rpcproxy_heartbeat_age_seconds", publisher="p1") >= 0
    assert ("rpcproxy_heartbeat_age_seconds", (("publisher", "p1"),)) in after
    assert 0 < value(after, "rpcproxy_next_rebalance_seconds") <= 900
