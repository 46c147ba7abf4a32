"""The health routes (docs/protocol.md section 11), on snapshots and a stopping flag."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from rpcproxy.actors import Snapshot, SnapshotBox
from rpcproxy.bus.service.health import health_routes
from rpcproxy.bus.service.http_wire import Request
from rpcproxy.proxy import ProxyState, add_primary, parse_address


def answer(routes: Any, path: str) -> tuple[int, dict[str, Any], str]:
    response = routes[path](Request("GET", path))
    return response.status, json.loads(response.body), response.content_type


def box_with(*addrs: str, offline: bool = False) -> SnapshotBox:
    state = ProxyState()
    for text in addrs:
        state, _ = add_primary(state, parse_address(text))
    return SnapshotBox(Snapshot(state, float("inf"), 1, offline=offline))


def test_alive_and_ready_with_a_server() -> None:
    routes = health_routes(box_with("10.0.0.1", "10.0.0.2"), lambda: False)
    assert answer(routes, "/healthz") == (200, {"status": "ok"}, "application/json")
    assert answer(routes, "/readyz") == (
        200,
        {"status": "ready", "active": "10.0.0.1:4647"},
        "application/json",
    )


def test_a_proxy_without_servers_is_alive_but_not_ready() -> None:
    routes = health_routes(box_with(), lambda: False)
    assert answer(routes, "/healthz")[:2] == (200, {"status": "ok"})
    assert answer(routes, "/readyz")[:2] == (503, {"status": "not_ready", "reason": "no_servers"})


def test_an_offline_proxy_is_alive_but_not_ready() -> None:
    """Its cluster is down: restarting it would not help, sending clients to it would not either."""
    routes = health_routes(box_with("10.0.0.1", offline=True), lambda: False)
    assert answer(routes, "/healthz")[:2] == (200, {"status": "ok"})
    assert answer(routes, "/readyz")[:2] == (503, {"status": "not_ready", "reason": "offline"})


def test_a_stopping_proxy_is_neither() -> None:
    stopping = [False]
    box = box_with("10.0.0.1")
    routes = health_routes(box, lambda: stopping[0])
    assert answer(routes, "/readyz")[0] == 200
    stopping[0] = True
    assert answer(routes, "/healthz")[:2] == (503, {"status": "stopping"})
    assert answer(routes, "/readyz")[:2] == (503, {"status": "not_ready", "reason": "stopping"})


def test_each_answer_reads_the_latest_snapshot() -> None:
    box = box_with()
    routes = health_routes(box, lambda: False)
    assert answer(routes, "/readyz")[0] == 503
    box.publish(replace(box_with("10.0.0.9").current, version=2))
    assert answer(routes, "/readyz")[1] == {"status": "ready", "active": "10.0.0.9:4647"}
