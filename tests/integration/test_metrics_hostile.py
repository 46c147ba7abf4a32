"""Hostile peers cannot lock Prometheus out of the real ``rpcproxy serve`` (issue 16, item 5).

300 idle TCP connections and 20 slowloris ones, each reopened as soon as the
proxy closes it, used to take every slot of the metrics endpoint, and a
scrape failed ("Remote end closed connection"). Now, while they are held:
every scrape (a plain urllib client, one attempt each) gets a 200 with valid
Prometheus text; the process's threads do not grow (no thread per
connection) and its descriptors stay under the endpoint's cap plus a little;
the query socket answers throughout; and once the peers go, threads and
descriptors are back where they were.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import free_port
from tests.hostile_http import HostilePeers
from tests.integration.serving import Serve
from tests.waiting import poll_until

pytestmark = pytest.mark.integration

IDLE = 300
SLOW = 20
ATTEMPTS = 600
"""Connects tried before the scrapes: the first 320 and as many reopened."""
SCRAPES = 5
MAX_CONNECTIONS = 64
"""MetricsServer's default cap on open connections."""
FD_SLACK = 16
"""Descriptors beyond the cap the process may open meanwhile: the endpoint's
listener, wake-up pair and epoll are there before; libzmq's for a query."""
THREAD_SLACK = 2
"""Threads other parts of serve may start meanwhile (a rebalance's ping)."""
WAIT_S = 30.0
"""A deadline, not a timing."""


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads line for {pid}")


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def scrape(port: int) -> str:
    """One GET /metrics: a 200 whose body parses as Prometheus text, or an exception."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text: str = response.read().decode()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"rpcproxy_servers", "rpcproxy_request_duration_seconds"} <= names, names
    return text


def scrape_or_none(port: int) -> str | None:
    try:
        return scrape(port)
    except OSError:
        return None


class Peak:
    """The most threads and descriptors seen in ``pid`` at each :meth:`sample`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.threads = threads_of(pid)
        self.fds = fds_of(pid)

    def sample(self) -> tuple[int, int]:
        threads, fds = threads_of(self.pid), fds_of(self.pid)
        self.threads, self.fds = max(self.threads, threads), max(self.fds, fds)
        return threads, fds


def test_scrapes_succeed_while_hostile_peers_hold_the_metrics_port(
    serve_factory: Callable[..., Serve],
) -> None:
    port = free_port()
    proxy = serve_factory("--metrics", f"127.0.0.1:{port}")
    poll_until(lambda: scrape_or_none(port), what="the metrics endpoint")
    proxy.call("ping")  # the test's query connection is part of the baseline
    pid = proxy.proc.pid
    base_threads, base_fds = threads_of(pid), fds_of(pid)
    peak = Peak(pid)

    with HostilePeers(port, idle=IDLE, slow=SLOW) as peers:

        def held_and_churned() -> bool:
            _, fds = peak.sample()
            assert proxy.call("ping")["pong"] is True
            return fds >= base_fds + MAX_CONNECTIONS // 2 and peers.attempts >= ATTEMPTS

        # The proxy holds many of their connections, and has closed plenty.
        poll_until(held_and_churned, WAIT_S, what=f"{ATTEMPTS} hostile connects")
        for _ in range(SCRAPES):
            scrape(port)  # one attempt: no retry hides a refusal
            assert proxy.call("status")["ok"] is True
            peak.sample()
        # Evicted or timed out; slowloris ones too, though never silent.
        assert peers.slow_closed >= 1, vars(peers)
        peak.sample()

    assert peak.threads <= base_threads + THREAD_SLACK, (base_threads, peak.threads)
    assert peak.fds <= base_fds + MAX_CONNECTIONS + FD_SLACK, (base_fds, peak.fds)

    def at_baseline() -> bool:
        threads, fds = peak.sample()
        return threads <= base_threads and fds <= base_fds

    poll_until(at_baseline, WAIT_S, what="threads and descriptors back to their baseline")
    scrape(port)
    assert proxy.call("ping")["pong"] is True
