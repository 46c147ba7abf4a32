"""``/healthz`` and ``/readyz`` over HTTP from a real ``serve`` (docs/protocol.md section 11)."""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from rpcproxy.bus.standins.standin import ServerStandIn
from rpcproxy.cli.config import Config
from rpcproxy.cli.service import ProxyService
from rpcproxy.proxy import parse_address
from tests.helpers import free_port
from tests.integration.serving import Serve
from tests.waiting import poll_until

pytestmark = pytest.mark.integration


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read()


def status_and_body(port: int, path: str) -> tuple[int, Any]:
    code, content_type, body = get(port, path)
    assert content_type == "application/json"
    return code, json.loads(body)


def test_alive_while_serving_ready_only_with_a_live_server(
    serve_factory: Callable[..., Serve], standins: Callable[[], ServerStandIn]
) -> None:
    port = free_port()
    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    proxy = serve_factory("--metrics", f"127.0.0.1:{port}", "--ping-timeout-s", "0.5")
    poll_until(lambda: get(port, "/healthz")[0] == 200, what="the health endpoint")
    assert status_and_body(port, "/healthz") == (200, {"status": "ok"})
    assert status_and_body(port, "/readyz") == (
        503,
        {"status": "not_ready", "reason": "no_servers"},
    )

    # Two dead servers: a rebalance finds nobody, the proxy goes offline.
    for addr in dead:
        proxy.call("add_primary_server", addr=addr)
    assert proxy.call("rebalance")["healthy"] is False
    assert status_and_body(port, "/readyz") == (503, {"status": "not_ready", "reason": "offline"})
    assert status_and_body(port, "/healthz") == (200, {"status": "ok"})

    live = standins().address
    proxy.call("add_primary_server", addr=live)
    assert proxy.call("rebalance")["server"] == {"addr": live}
    assert status_and_body(port, "/readyz") == (200, {"status": "ready", "active": live})


def test_other_paths_are_404_and_head_has_no_body(serve_factory: Callable[..., Serve]) -> None:
    port = free_port()
    serve_factory("--metrics", f"127.0.0.1:{port}")
    poll_until(lambda: get(port, "/healthz")[0] == 200, what="the health endpoint")
    assert get(port, "/health")[0] == 404
    assert get(port, "/healthz/x")[0] == 404
    code, content_type, body = get(port, "/healthz", method="HEAD")
    assert (code, content_type, body) == (200, "application/json", b"")
    # The query string is not part of the path.
    assert get(port, "/readyz?verbose=1")[0] == 503


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ProxyService]:
    config = dataclasses.replace(
        Config(),
        query="tcp://127.0.0.1:*",
        heartbeat_bind=("tcp://127.0.0.1:*",),
        events="",
        metrics=f"127.0.0.1:{free_port()}",
        primary_servers=(parse_address("10.0.0.1"),),
    )
    running = ProxyService(config)
    running.start()
    try:
        yield running
    finally:
        running.stop()
        pykka.ActorRegistry.stop_all(timeout=10.0)


def test_a_dead_part_makes_it_not_alive_before_serve_exits(service: ProxyService) -> None:
    """The supervisor exits 1 within its period; meanwhile the checks already say so."""
    port = service.metrics_port
    assert status_and_body(port, "/healthz") == (200, {"status": "ok"})
    assert status_and_body(port, "/readyz")[0] == 200
    assert service._heartbeats is not None
    service._heartbeats.stop()
    assert status_and_body(port, "/healthz") == (503, {"status": "stopping"})
    assert status_and_body(port, "/readyz") == (503, {"status": "not_ready", "reason": "stopping"})
