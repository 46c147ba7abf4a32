"""``max_servers`` through the real ``rpcproxy serve`` (docs/protocol.md section 8).

At most ``max_servers`` servers per heartbeat, per ``set_backup_servers``, and
in the primary and backup lists together. Beyond it, a request gets
``bad_request`` and a heartbeat is dropped whole (section 2, rule 1); either
way nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.serving import HeartbeatPub, Serve, addrs, hb_payload, hb_server
from tests.waiting import poll_until

pytestmark = pytest.mark.integration

A, B, C, D = (f"10.0.0.{n}:4647" for n in range(1, 5))


def bad_request(serve: Serve, op: str, **keys: Any) -> str:
    """Send ``op`` and return its error message, asserting it is ``bad_request``."""
    error = serve.client.error({"op": op, "id": op, **keys})
    assert error["code"] == "bad_request", error
    message: str = error["message"]
    return message


def test_max_servers_bounds_adds_backups_and_heartbeats(
    serve_factory: Callable[..., Serve],
) -> None:
    serve = serve_factory("--max-servers", "3", events=False)
    for addr in (A, B, C):
        assert serve.call("add_primary_server", addr=addr)["added"] is True
    before = serve.state()
    assert addrs(before["servers"]) == [A, B, C]

    # The fourth server is refused, and changes nothing.
    message = bad_request(serve, "add_primary_server", addr=D)
    assert "max_servers (3)" in message and D in message
    # A server already on the lists is no new server.
    assert serve.call("add_primary_server", addr=A)["added"] is False
    # Backups count too: one new backup is one too many; known servers fit.
    assert "max_servers (3)" in bad_request(serve, "set_backup_servers", addrs=[D])
    # More addresses than max_servers are refused by the codec already.
    assert "addrs" in bad_request(serve, "set_backup_servers", addrs=[A, B, C, D])
    assert serve.state() == before
    reply = serve.call("set_backup_servers", addrs=[C, A])
    assert addrs(reply["servers"]) == [C, A]
    assert addrs(serve.call("servers")["servers"]) == [A, B, C]

    # A heartbeat listing more than max_servers servers: bad_request as an op...
    four = hb_payload([hb_server(a) for a in (A, B, C, D)], publisher="big", seq=1)
    assert "servers" in bad_request(serve, "heartbeat", **four)
    # ...and dropped whole from the heartbeat socket. Messages of one PUB
    # connection arrive in order, so once the sentinel is applied, the big
    # one before it has been read; its publisher was never applied.
    pub = HeartbeatPub(connect=serve.heartbeat)
    try:
        sentinel = hb_payload([hb_server(a) for a in (D, C)], publisher="sync", seq=1)

        def sentinel_applied() -> bool:
            pub.send(four)
            pub.send(sentinel)
            publishers = {p["publisher"] for p in serve.call("status")["publishers"]}
            return "sync" in publishers

        poll_until(sentinel_applied, 10.0, interval=0.02, what="the sentinel heartbeat")
    finally:
        pub.close()
    status = serve.call("status")
    assert "big" not in {p["publisher"] for p in status["publishers"]}
    assert addrs(status["primary"]) == [C, D]
    assert addrs(status["servers"]) == [C, D]
