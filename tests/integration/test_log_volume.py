"""What a peer sends cannot flood the log (issue 9 row 7, docs/protocol.md section 8).

Garbage heartbeats and heartbeats full of invalid entries used to write a
line each (a line per entry for the latter): megabytes a second. Now every
warning a peer causes is rate-limited per kind, so thousands of them leave a
handful of lines; the unit tests of the gate check the suppressed counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import pack
from tests.integration.serving import HeartbeatPub, Serve, hb_payload, hb_server

pytestmark = pytest.mark.integration

GARBAGE = 2000
BAD_HEARTBEATS = 20
MAX_LOG_GROWTH = 20_000
"""Bytes of log the whole attack may cost (it cost megabytes)."""


def test_garbage_and_invalid_entries_leave_a_few_lines(
    serve_factory: Callable[..., Serve],
) -> None:
    serve = serve_factory(events=False)
    pub = HeartbeatPub(connect=serve.heartbeat)
    try:
        ready = hb_payload([hb_server("10.0.0.1:4647")], num_nodes=1)
        pub.publish_until(ready, lambda: serve.call("status")["num_nodes"] == 1)
        before = len(serve.stderr())

        invalid: dict[str, Any] = hb_payload(
            [hb_server(f"not an address {i}!") for i in range(4096)], num_nodes=2
        )
        for i in range(GARBAGE):
            pub.send(b"\xc1 not msgpack %d" % i)
            pub.send_frames([b"heartbeat/global"])  # one frame, not two
            if i % (GARBAGE // BAD_HEARTBEATS) == 0:
                pub.send(pack(invalid))
        # Messages of one connection arrive in order: once this is applied,
        # everything above has been read (or dropped by the PUB, if it had to).
        sentinel = hb_payload([hb_server("10.0.0.2:4647")], num_nodes=3)
        pub.publish_until(sentinel, lambda: serve.call("status")["num_nodes"] == 3, timeout=10)
    finally:
        pub.close()

    grown = serve.stderr()[before:]
    warnings = [line for line in grown.splitlines() if " WARNING " in line]
    assert len(grown) < MAX_LOG_GROWTH, f"{len(grown)} bytes of log:\n{grown[:3000]}"
    assert 3 <= len(warnings) <= 15, "\n".join(warnings)
    assert any("dropped a heartbeat" in w for w in warnings)
    assert any("whose address does not parse" in w for w in warnings)
