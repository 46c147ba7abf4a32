"""A hostile but allowed publisher floods the real ``rpcproxy serve`` (issue 9 rows 1 and 2).

docs/protocol.md section 2: heartbeats are state, so a flood is conflated, not
queued; memory stays bounded whatever the rate, queries and writes are still
answered, the last heartbeat is applied soon after the flood ends, and
SIGTERM still stops the process (section 8). Timings here are generous
deadlines only; the figures (p99, RSS, time to the last) are in bench/flood.py.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.flood import FIRST, Flood, server_list
from tests.integration.serving import CTX, Serve, assert_clean_log
from tests.waiting import poll_until

pytestmark = pytest.mark.integration

FLOOD_S = 3.0
MAX_RSS_GROWTH_MIB = 100.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def flooded(serve: Serve) -> Flood:
    """A flood that is reaching the proxy (the first flood heartbeat is applied)."""
    flood = Flood(CTX, serve.heartbeat).start()
    poll_until(lambda: serve.call("status")["num_nodes"] >= FIRST, 10, what="the flood to arrive")
    return flood


def test_a_flood_is_conflated_bounded_and_still_served(
    serve_factory: Callable[..., Serve],
) -> None:
    serve = serve_factory(events=False)
    # Warm up with one heartbeat of the same size, so the baseline has its tables.
    serve.call("heartbeat", servers=server_list(99), num_nodes=1, leader_rpc_addr="")
    base = peak = rss_mib(serve.proc.pid)

    flood = flooded(serve)
    try:
        lookups = writes = 0
        end = time.monotonic() + FLOOD_S
        while time.monotonic() < end:
            assert serve.call("find_server")["server"] is not None
            lookups += 1
            if lookups % 50 == 0:
                # A write is admitted and answered, not refused or left to time out.
                serve.call("notify_failed_server", addr="10.0.0.1:4647")
                writes += 1
            peak = max(peak, rss_mib(serve.proc.pid))
    finally:
        last = flood.stop()

    # The last heartbeat sent is the one the proxy ends up with, under its publisher.
    poll_until(
        lambda: serve.call("status")["num_nodes"] == last, 10, what="the last heartbeat to apply"
    )
    publishers = {p["publisher"]: p["seq"] for p in serve.call("status")["publishers"]}
    assert publishers["flood"] == last
    assert writes > 0
    assert peak - base < MAX_RSS_GROWTH_MIB, f"RSS grew {peak - base:.0f} MiB from {base:.0f}"


def test_sigterm_during_a_flood_exits_0(serve_factory: Callable[..., Serve]) -> None:
    serve = serve_factory(events=False)
    flood = flooded(serve)
    try:
        end = time.monotonic() + FLOOD_S
        while time.monotonic() < end:
            serve.call("find_server")
        code = serve.stop(signal.SIGTERM)  # fails after STOP_TIMEOUT_S (10 s)
    finally:
        flood.stop()
    assert code == 0, serve.stderr()
    assert_clean_log(serve)
