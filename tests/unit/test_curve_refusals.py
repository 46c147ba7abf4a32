"""CURVE refusals are counted every time and logged rate-limited per socket."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import zmq

from rpcproxy.bus.net.keys import create_key_pair
from rpcproxy.bus.service.curve import HEARTBEAT_DOMAIN, QUERY_DOMAIN, AllowList

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


def test_strangers_with_fresh_keys_cannot_flood_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    allowed = tmp_path / "allowed"
    create_key_pair(allowed, "publisher")
    (allowed / "publisher.key_secret").unlink()
    now = [0.0]
    refusals: list[str] = []
    allow = AllowList(
        allowed, warn_interval_s=60.0, on_refused=refusals.append, clock=lambda: now[0]
    )

    # Every handshake brings a key never seen before, as a hostile peer's would.
    for i in range(1000):
        assert allow.callback(HEARTBEAT_DOMAIN, f"stranger-{i:035d}".encode()) is False
    assert allow.callback(QUERY_DOMAIN, b"another stranger") is False

    assert allow.refused == {HEARTBEAT_DOMAIN: 1000, QUERY_DOMAIN: 1}
    assert len(refusals) == 1001
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if "refused a heartbeat peer" in m]) == 5
    assert len([m for m in lines if "refused a query peer" in m]) == 1

    now[0] = 60.0
    allow.callback(HEARTBEAT_DOMAIN, b"one more")
    last = caplog.records[-1].getMessage()
    assert "(1001 refused so far) (995 similar messages suppressed)" in last
