"""What ProxyActor logs because of a heartbeat stays a few lines.

A peer decides what a heartbeat holds, so what the actor writes to the log
because of one must stay a few lines (docs/protocol.md section 8), however many
entries are wrong or new.
"""

from __future__ import annotations

import logging

import pytest

from rpcproxy.actors import ApplyHeartbeat
from rpcproxy.proxy import Heartbeat, HeartbeatServer

from ._fakes import A, FakeClock, hb
from .conftest import StartProxy

MANY = 4096


def servers(count: int, datacenter: str = "dc1", major: int = 1, minor: int = 1) -> Heartbeat:
    return Heartbeat(
        servers=tuple(
            HeartbeatServer(f"10.{i >> 8}.{i & 255}.1:4647", major, minor, datacenter)
            for i in range(count)
        ),
        num_nodes=count,
        leader_rpc_addr="",
    )


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_membership_change_names_a_few_servers_and_counts_the_rest(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    h = start_proxy()

    h.request(lambda r: ApplyHeartbeat(servers(MANY), r))

    (line,) = [m for m in (r.getMessage() for r in caplog.records) if "servers changed" in m]
    assert line.startswith(f"primary servers changed (heartbeat): +{MANY} [10.0.0.1:4647, ")
    assert f"and {MANY - 5} more] -0 []" in line
    assert line.count(":4647") == 5
    assert len(line) < 300


def test_invalid_entries_make_one_line_per_heartbeat(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    h = start_proxy(clock=FakeClock())
    bad = Heartbeat(
        servers=tuple(HeartbeatServer(f"bad address {i}", 1, 1, "dc1") for i in range(MANY)),
        num_nodes=0,
        leader_rpc_addr="",
    )

    h.request(lambda r: ApplyHeartbeat(bad, r))

    (line,) = warnings(caplog)
    assert line.startswith(f"skipping {MANY} heartbeat servers whose address does not parse:")
    assert f"and {MANY - 3} more" in line
    assert len(line) < 1000


def test_peer_caused_warnings_are_rate_limited_per_kind(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    clock = FakeClock()
    h = start_proxy(clock=clock)
    bad = Heartbeat((HeartbeatServer("not an address!", 1, 1, "dc1"),), 0, "")

    for _ in range(200):
        h.request(lambda r: ApplyHeartbeat(bad, r))
    assert len(warnings(caplog)) == 5  # the burst, then nothing

    clock.advance(60.0)
    h.request(lambda r: ApplyHeartbeat(bad, r))
    assert "(195 similar messages suppressed)" in warnings(caplog)[-1]


def test_fresh_newer_api_names_cannot_flood_the_log(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    h = start_proxy(clock=FakeClock())

    h.request(lambda r: ApplyHeartbeat(servers(MANY, major=2), r))

    lines = warnings(caplog)
    assert len(lines) == 5
    assert all("newer than our v1.1" in line for line in lines)
    assert h.state.active == ()


def test_an_empty_heartbeat_is_a_rate_limited_warning(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    h = start_proxy(primaries=(A,), clock=FakeClock())

    for _ in range(50):
        h.request(lambda r: ApplyHeartbeat(hb(publisher="bridge"), r))

    lines = warnings(caplog)
    assert len(lines) == 5
    assert lines[0] == (
        "a heartbeat from bridge lists no servers: every primary is dropped, backups stay"
    )
    assert h.state.primaries == ()
