"""Rebalancing against real servers: parallel pings and the timer (sections 3 and 4)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from rpcproxy.bus.standins.standin import ServerStandIn
from tests.helpers import free_port
from tests.integration.serving import EventSub, Serve, addrs, without_view
from tests.waiting import poll_until

pytestmark = pytest.mark.integration

PING_TIMEOUT_S = 0.5
HUNG_TIMEOUT_S = 1.0
K = 10
PARALLEL_BOUND = 5
"""Ping timeouts that K hung servers probed in parallel stay under on the slowest
machine (section 3: about one, not K; one after another they would take K). The
tight figure is bench/rebalance.py's."""


def dead_addrs(count: int) -> list[str]:
    return [f"127.0.0.1:{free_port()}" for _ in range(count)]


@pytest.fixture
def hung_addrs() -> Iterator[Callable[[int], list[str]]]:
    """Servers that accept a connection (the kernel does) and never answer a ping.

    Each costs a ping its whole timeout, where a refused port fails at once.
    """
    opened: list[socket.socket] = []

    def make(count: int) -> list[str]:
        made = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
        opened.extend(made)
        return [f"127.0.0.1:{sock.getsockname()[1]}" for sock in made]

    yield make
    for sock in opened:
        sock.close()


def test_dead_servers_are_pinged_in_parallel(
    serve_factory: Callable[..., Serve], hung_addrs: Callable[[int], list[str]]
) -> None:
    dead = hung_addrs(K)
    proxy = serve_factory(
        "--ping-timeout-s", str(HUNG_TIMEOUT_S), "--primary-servers", ",".join(dead)
    )
    assert addrs(proxy.call("servers")["servers"]) == dead
    started = time.monotonic()
    reply = proxy.call("rebalance", timeout=K * HUNG_TIMEOUT_S + 5)
    elapsed = time.monotonic() - started
    assert reply["healthy"] is False
    assert elapsed < PARALLEL_BOUND * HUNG_TIMEOUT_S, f"rebalance took {elapsed:.2f} s: serial?"
    # No server answered: the list is kept as it was.
    assert addrs(proxy.call("servers")["servers"]) == dead


def test_the_live_server_becomes_the_head(
    serve_factory: Callable[..., Serve],
    standins: Callable[[], ServerStandIn],
    hung_addrs: Callable[[int], list[str]],
) -> None:
    live = standins().address
    dead = hung_addrs(K)
    proxy = serve_factory(
        "--ping-timeout-s",
        str(HUNG_TIMEOUT_S),
        "--primary-servers",
        ",".join([*dead[:4], live, *dead[4:]]),
    )
    for attempt in range(3):
        started = time.monotonic()
        reply = proxy.call("rebalance", timeout=K * HUNG_TIMEOUT_S + 5)
        elapsed = time.monotonic() - started
        assert without_view(reply) == {"ok": True, "server": {"addr": live}, "healthy": True}, (
            attempt
        )
        servers = addrs(proxy.call("servers")["servers"])
        assert servers[0] == live
        assert sorted(servers) == sorted([*dead, live])
        assert elapsed < PARALLEL_BOUND * HUNG_TIMEOUT_S, f"round {attempt}: {elapsed:.2f} s"
        # Put a dead server back in front for the next round.
        proxy.call("notify_failed_server", addr=live)
        assert addrs(proxy.call("servers")["servers"])[-1] == live


def test_backups_are_tried_after_primaries(
    serve_factory: Callable[..., Serve], standins: Callable[[], ServerStandIn]
) -> None:
    live_primary, live_backup = standins().address, standins().address
    proxy = serve_factory(
        "--ping-timeout-s",
        str(PING_TIMEOUT_S),
        "--backup-servers",
        ",".join([live_backup, *dead_addrs(2)]),
        "--primary-servers",
        ",".join([*dead_addrs(2), live_primary]),
    )
    for _ in range(3):
        assert proxy.call("rebalance")["server"] == {"addr": live_primary}
        proxy.call("notify_failed_server", addr=live_primary)
    proxy.call("remove_server", addr=live_primary)
    assert proxy.call("rebalance")["server"] == {"addr": live_backup}


def test_the_timer_rebalances_by_itself(
    serve_factory: Callable[..., Serve], standins: Callable[[], ServerStandIn]
) -> None:
    proxy = serve_factory("--min-reuse-s", "0.3", "--ping-timeout-s", str(PING_TIMEOUT_S))
    events = EventSub(proxy.events)
    try:
        events.sync(proxy.client)
        first = proxy.call("status")["next_rebalance_s"]
        assert 0 <= first < 0.45
        live = [standins().address for _ in range(2)]
        for addr in live:
            proxy.call("add_primary_server", addr=addr)
        event = events.next()
        assert event == {"server": {"addr": live[0]}, "reason": "added"}
        # Two live servers: each rebalance picks either; wait for one that moves the head.
        deadline = time.monotonic() + 15
        while True:
            event = events.next(timeout=max(0.0, deadline - time.monotonic()))
            if event["reason"] == "rebalance":
                break
        assert event["server"]["addr"] in live
        # The timer keeps restarting: next_rebalance_s stays within one interval.
        seen: list[float] = []

        def restarted() -> bool:
            seen.append(proxy.call("status")["next_rebalance_s"])
            return len(seen) > 1 and seen[-1] > seen[-2] + 0.05

        poll_until(restarted, timeout=5, what="next_rebalance_s to jump back up")
        assert all(0 <= s <= 0.45 for s in seen)
    finally:
        events.close()


def test_tcp_ping_method_counts_an_accepted_connection(
    serve_factory: Callable[..., Serve],
) -> None:
    # A plain TCP listener that never speaks ZeroMQ: alive for ping_method=tcp only.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        live = f"127.0.0.1:{listener.getsockname()[1]}"
        dead = dead_addrs(3)
        servers = ",".join([*dead, live])
        tcp_proxy = serve_factory(
            "--ping-method",
            "tcp",
            "--ping-timeout-s",
            str(PING_TIMEOUT_S),
            "--primary-servers",
            servers,
        )
        for _ in range(3):
            assert tcp_proxy.call("rebalance")["server"] == {"addr": live}
            tcp_proxy.call("notify_failed_server", addr=live)
        zmq_proxy = serve_factory(
            "--ping-timeout-s", str(PING_TIMEOUT_S), "--primary-servers", servers
        )
        assert zmq_proxy.call("rebalance")["healthy"] is False
