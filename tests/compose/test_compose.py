"""The whole system in containers: three servers, a publisher, the proxy and a client.

The servers are the reference Nomad peer (Go, on Nomad's own libraries) and
the proxy pings them with Nomad's Status.Ping; one test checks that they are.
Each test starts a fresh compose project (see ``conftest.project``), breaks
something the way production breaks it (a stopped container, a cut network,
a restarted proxy, a drained server, a frozen process) and watches the proxy
and the client-loop's records recover. CURVE is on throughout: the host-side
clients use the ``client`` certificate from the project's keys volume, and
one test checks that strangers get nowhere. Times worth knowing are printed in
the session summary ("compose measurements").
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rpcproxy.bus.client import ProxyClient, ProxyTimeoutError
from rpcproxy.bus.net.keys import CurveClient, create_key_pair, load_key_pair
from rpcproxy.bus.probes import NomadProber
from rpcproxy.proxy import parse_address
from tests.compose.compose import (
    PROXY_PUBLIC_KEY,
    SERVER_SERVICES,
    SERVERS,
    ClientRecord,
    ComposeProject,
    hold_for,
    wait_for,
)

pytestmark = pytest.mark.compose

REBALANCE_TIMEOUT_S = 10.0
"""Per-try wait of a rebalance: the proxy's ping timeout is 0.5 s, and a
rebalance that must succeed gets room for a loaded host (not a timing check)."""
NOTICE_TIMEOUT_S = 15.0
"""How long the client-loop (a lookup every 0.2 s) may take to report a failure."""


def active_server(proxy: ProxyClient) -> str:
    server = proxy.find_server()
    assert server is not None, "the proxy knows no server"
    return server.addr


def service_of(addr: str) -> str:
    """``server1:4647`` -> ``server1``, the compose service (and DNS name)."""
    return addr.partition(":")[0]


def failed_record(project: ComposeProject, addr: str, since: float) -> ClientRecord | None:
    """The client-loop's first record of a failed lookup of ``addr`` after ``since``."""
    for record in project.client_records():
        if record.server == addr and record.ok is False and record.t >= since - 1.0:
            return record
    return None


def wait_client_rotates(project: ComposeProject, addr: str, since: float) -> ClientRecord:
    """Wait until the client saw ``addr`` fail and had it rotated to the end."""
    record = wait_for(
        lambda: failed_record(project, addr, since),
        NOTICE_TIMEOUT_S,
        f"the client to report {addr} as failed",
        interval_s=0.2,
    )
    assert record.rotated is True, f"the client's report did not rotate {addr}: {record}"
    return record


def assert_rebalances_avoid(proxy: ProxyClient, dead: str, times: int = 8) -> None:
    """Run ``times`` rebalances: each picks a live server and ``dead`` is never first."""
    for attempt in range(times):
        result = proxy.rebalance(timeout_s=REBALANCE_TIMEOUT_S)
        assert result.healthy is True, f"rebalance {attempt}: no server answered"
        assert result.server is not None
        assert result.server.addr != dead, f"rebalance {attempt} put the dead {dead} first"
        assert active_server(proxy) != dead


def test_all_services_healthy_and_a_server_is_found(
    project: ComposeProject, measure: list[str]
) -> None:
    for service in ("server1", "server2", "server3", "proxy"):
        state = project.state(service)
        assert state["Running"], f"{service}: {state}"
        assert state["Health"]["Status"] == "healthy", f"{service}: {state['Health']}"
    for service in ("publisher", "client"):
        state = project.state(service)
        assert state["Running"], f"{service}: {state}"

    with project.proxy() as proxy:
        assert active_server(proxy) in SERVERS
        status = proxy.status()
    assert sorted(s.addr for s in status.servers) == sorted(SERVERS)
    assert status.num_nodes == 3

    ok = wait_for(
        lambda: [r for r in project.client_records() if r.ok and r.server in SERVERS],
        10.0,
        "a successful lookup by the client",
        interval_s=0.2,
    )
    measure.append(f"client lookups so far: {len(project.client_records())}, ok: {len(ok)}")


# What the Go peer logs when a connection's first byte is not one of Nomad's
# (a ZeroMQ greeting starts 0xff) or when one closes before sending any (a TCP
# connect ping): the proxy pinging with zmq or tcp would leave these.
_NOT_A_NOMAD_PING = re.compile(r"unrecognised first byte|reading the first byte")


def test_servers_are_go_nomad_peers_the_proxy_pings_with_nomad(
    project: ComposeProject, measure: list[str]
) -> None:
    assert project.go_peer_problems() == []

    # They answer Nomad's Status.Ping from outside their containers too.
    with NomadProber(timeout_s=2.0) as prober:
        for service in SERVER_SERVICES:
            ip = project.ip_address(service)
            assert ip is not None, f"{service} has no address on {project.network}"
            addr = parse_address(f"{ip}:4647")
            assert prober([addr]).get(addr), f"{service} ({addr}) did not answer Status.Ping"

    # Every rebalance pings every server; only a Nomad ping makes them all
    # healthy without a complaint in the peers' logs.
    with project.proxy() as proxy:
        for attempt in range(5):
            result = proxy.rebalance(timeout_s=REBALANCE_TIMEOUT_S)
            assert result.healthy is True, f"rebalance {attempt}: no server answered"
            assert result.server is not None
            assert result.server.addr in SERVERS
    for service in SERVER_SERVICES:
        logs = project.logs(service)
        assert not _NOT_A_NOMAD_PING.search(logs), f"{service} saw a non-Nomad ping:\n{logs}"
    measure.append(f"{len(SERVER_SERVICES)} Go peers, ping_method {project.proxy_ping_method()}")


def test_stopped_server_is_rotated_out(project: ComposeProject, measure: list[str]) -> None:
    with project.proxy() as proxy:
        dead = active_server(proxy)
        since = time.time()
        project.stop(service_of(dead))
        record = wait_client_rotates(project, dead, since)
        measure.append(f"client rotated stopped {dead} {record.t - since:.2f} s after the stop")

        following = active_server(proxy)
        assert following != dead
        assert following in SERVERS
        assert_rebalances_avoid(proxy, dead)


def test_disconnected_server_leaves_and_returns(
    project: ComposeProject, measure: list[str]
) -> None:
    with project.proxy() as proxy:
        cut = active_server(proxy)
        service = service_of(cut)
        since = time.time()
        project.disconnect(service)
        record = wait_client_rotates(project, cut, since)
        measure.append(f"client rotated disconnected {cut} {record.t - since:.2f} s after")
        assert active_server(proxy) != cut
        assert_rebalances_avoid(proxy, cut)

        project.connect(service)
        rebalances = 0

        def back_first() -> bool:
            nonlocal rebalances
            rebalances += 1
            result = proxy.rebalance(timeout_s=REBALANCE_TIMEOUT_S)
            return result.server is not None and result.server.addr == cut

        wait_for(back_first, 30.0, f"a rebalance to put the reconnected {cut} first")
        assert active_server(proxy) == cut
        measure.append(f"reconnected {cut} first again after {rebalances} rebalance(s)")


def test_restarted_proxy_relearns_servers_from_heartbeats(
    project: ComposeProject, measure: list[str]
) -> None:
    started_before = project.state("proxy")["StartedAt"]
    restarted = time.monotonic()
    restarted_wall = time.time()
    project.restart("proxy")
    assert project.state("proxy")["StartedAt"] != started_before

    wait_for(project.answers_ping, 30.0, "the restarted proxy to answer a ping", interval_s=0.05)
    answering = time.monotonic()
    # A deadline, not a timing: heartbeats come every second, and how soon
    # they are relearnt is a measurement (the session summary), not an assert.
    wait_for(
        lambda: sorted(project.active_servers() or []) == sorted(SERVERS),
        30.0,
        "the restarted proxy to know every server",
        interval_s=0.05,
    )
    known = time.monotonic()
    relearned = known - answering
    measure.append(
        f"`docker restart` began -> pong {answering - restarted:.2f} s -> "
        f"all {len(SERVERS)} servers known {relearned:.2f} s later "
        f"({known - restarted:.2f} s in all)"
    )

    wait_for(
        lambda: [
            r for r in project.client_records() if r.ok and r.t >= restarted_wall and r.server
        ],
        10.0,
        "the client to find a working server through the restarted proxy",
        interval_s=0.2,
    )


def test_server_dropped_from_heartbeat_leaves_active_list(
    project: ComposeProject, measure: list[str]
) -> None:
    with project.proxy() as proxy:
        drained = active_server(proxy)
        kept = sorted(s for s in SERVERS if s != drained)
        # Write, then rename: the publisher must never read a half-written file.
        script = 'printf "%s\\n" "$@" > /tmp/servers.new && mv /tmp/servers.new /tmp/servers'
        written = time.monotonic()
        project.exec("publisher", "sh", "-c", script, "sh", *kept)
        # A deadline, not a timing (heartbeats come every second): how soon it
        # left is a measurement for the session summary.
        wait_for(
            lambda: sorted(project.active_servers() or []) == kept,
            30.0,
            f"{drained} to leave the active list",
            interval_s=0.05,
        )
        left = time.monotonic() - written
        measure.append(f"drained {drained} left the active list {left:.2f} s after the edit")
        assert active_server(proxy) in kept

        hold_for(
            lambda: sorted(project.active_servers() or []) == kept,
            2.5,
            f"{drained} stays out of the active list over the next heartbeats",
        )


def test_paused_server_counts_as_dead(project: ComposeProject, measure: list[str]) -> None:
    with project.proxy() as proxy:
        frozen = active_server(proxy)
        service = service_of(frozen)
        since = time.time()
        project.pause(service)
        try:
            record = wait_client_rotates(project, frozen, since)
            measure.append(f"client rotated paused {frozen} {record.t - since:.2f} s after")
            assert active_server(proxy) != frozen
            assert_rebalances_avoid(proxy, frozen)
        finally:
            project.unpause(service)


_CURVE_REJECTIONS = re.compile(
    r'^rpcproxy_heartbeats_rejected_total\{reason="curve"\}\s+(\S+)$', re.MULTILINE
)


def curve_rejections(project: ComposeProject) -> float:
    """The proxy's count of heartbeat peers refused for their CURVE key."""
    found = _CURVE_REJECTIONS.search(project.metrics_text())
    assert found is not None, "no rpcproxy_heartbeats_rejected_total{reason=curve} in /metrics"
    return float(found.group(1))


def rpcproxy_command() -> list[str]:
    """This environment's ``rpcproxy`` command (the console script next to Python)."""
    script = Path(sys.executable).with_name("rpcproxy")
    if script.exists():
        return [str(script)]
    found = shutil.which("rpcproxy")
    return [found] if found else [sys.executable, "-m", "rpcproxy.cli.main"]


def test_strangers_get_no_answer_and_cannot_publish(
    project: ComposeProject, measure: list[str], tmp_path: Path
) -> None:
    _, stranger_cert = create_key_pair(tmp_path, "stranger")
    stranger = CurveClient(project.curve().server_public, load_key_pair(stranger_cert))
    endpoint = project.query_endpoint()

    # The allowed key answers: what follows is a refusal, not a dead port.
    with project.proxy() as proxy:
        assert proxy.ping()
    stranger_client = ProxyClient(endpoint, timeout_s=1.0, retries=1, curve=stranger)
    with stranger_client, pytest.raises(ProxyTimeoutError):
        stranger_client.find_server()
    plain_client = ProxyClient(endpoint, timeout_s=1.0, retries=1)
    with plain_client, pytest.raises(ProxyTimeoutError):
        plain_client.find_server()
    wait_for(
        lambda: "refused a query peer" in project.logs("proxy", tail=200),
        10.0,
        "the proxy to log the refused query key",
        interval_s=0.2,
    )

    before = curve_rejections(project)
    publish = subprocess.Popen(
        [
            *rpcproxy_command(),
            "publish",
            "--connect",
            project.heartbeat_endpoint(),
            "--servers",
            "stranger1:4647,stranger2:4647",
            "--num-nodes",
            "99",
            "--interval-s",
            "0.2",
            "--publisher",
            "stranger",
            "--curve-server-key",
            str(project.keys_dir / PROXY_PUBLIC_KEY),
            "--curve-cert",
            str(stranger_cert),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        started = time.monotonic()
        wait_for(
            lambda: curve_rejections(project) > before,
            15.0,
            "the proxy to refuse the stranger publisher's CURVE key",
            interval_s=0.2,
        )
        refused_after = time.monotonic() - started
        assert publish.poll() is None, "the stranger publisher exited early"
        hold_for(
            lambda: sorted(project.active_servers() or []) == sorted(SERVERS),
            3.0,
            "the stranger's heartbeats leave the server list alone",
        )
        with project.proxy() as proxy:
            status = proxy.status()
        assert status.num_nodes == 3, status
        assert "stranger" not in {p.publisher for p in status.publishers}, status.publishers
        refused = curve_rejections(project) - before
    finally:
        publish.terminate()
        publish.wait(timeout=10)
    measure.append(
        f"stranger publisher first refused {refused_after:.2f} s after start, "
        f"{refused:g} handshake(s) refused in all; query refusals logged"
    )
