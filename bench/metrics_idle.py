"""Benchmark: scrapes of the metrics endpoint while hostile peers hold its port (issue 16, item 5).

:func:`metrics_idle` runs ``serve --metrics`` and times scrapes (a fresh
urllib connection each, as Prometheus makes) in alternating rounds: with no
other connection (the baseline), and while 300 idle TCP connections and 20
slowloris ones (a header byte every half second) are held open, each reopened
as soon as the proxy closes it (tests/hostile_http.py). It reports the
latency ratio, failed scrapes, and the process's extra threads and
descriptors. Before issue 16 the same peers took all 16 threads of the
endpoint, and every scrape failed ("Remote end closed connection"; 5 of 5 in a
check against that server).
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from common import Requester, Result, Spread, free_port, percentile, running_serve

from tests.hostile_http import HostilePeers

IDLE_CONNECTIONS = 300
SLOW_CONNECTIONS = 20
MAX_CONNECTIONS = 64
"""MetricsServer's default cap on open connections."""
FD_SLACK = 16
HELD_TIMEOUT_S = 30.0


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Threads line for pid {pid}")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _scrape_s(port: int) -> float | None:
    """Seconds one scrape took, or None when it failed."""
    begin = time.perf_counter()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            if response.status != 200 or b"rpcproxy_servers" not in response.read():
                return None
    except OSError:
        return None
    return time.perf_counter() - begin


def _timed(port: int, into: list[float]) -> bool:
    """Scrape once; append its seconds to ``into``, or return True when it failed."""
    took = _scrape_s(port)
    if took is None:
        return True
    into.append(took)
    return False


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()  # never set: a wait that is not a bare sleep
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout_s} s")
        pause.wait(0.02)


class _Peak:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.threads = _threads(pid)
        self.fds = _fds(pid)

    def sample(self) -> None:
        self.threads = max(self.threads, _threads(self.pid))
        self.fds = max(self.fds, _fds(self.pid))


def metrics_idle(
    scrapes: int = 300,
    rounds: int = 3,
    count: int = IDLE_CONNECTIONS,
    slow: int = SLOW_CONNECTIONS,
) -> Result:
    """Scrape latency with ``count`` idle + ``slow`` slowloris connections held, vs none.

    Args:
        scrapes: scrapes per condition, split over ``rounds`` alternating rounds.
        rounds: rounds of each condition.
        count: idle connections held.
        slow: slowloris connections held.
    """
    port = free_port()
    quiet: list[float] = []
    held: list[float] = []
    failed = attempts = evicted = pings = 0
    per_round = max(1, scrapes // rounds)
    with running_serve("--metrics", f"127.0.0.1:{port}") as serve:
        pid = serve.proc.pid
        _wait(lambda: _scrape_s(port) is not None, 10.0, "the metrics endpoint")
        query = Requester(serve.query)
        try:
            query.call("ping")  # its connection is part of the baseline
            base_threads, base_fds = _threads(pid), _fds(pid)
            peak = _Peak(pid)
            back_s: list[float] = []
            for _ in range(rounds):
                for _ in range(per_round):
                    failed += _timed(port, quiet)
                with HostilePeers(port, idle=count, slow=slow) as peers:
                    # Idle peers reach the proxy a second after connecting (TCP_DEFER_ACCEPT).
                    _wait(
                        lambda: _fds(pid) >= base_fds + MAX_CONNECTIONS // 2,
                        HELD_TIMEOUT_S,
                        "the hostile connections held",
                    )
                    for _ in range(per_round):
                        failed += _timed(port, held)
                        query.call("ping")
                        pings += 1
                        peak.sample()
                    attempts += peers.attempts
                    evicted += peers.closed_by_server
                closed = time.monotonic()
                _wait(
                    lambda: _threads(pid) <= base_threads and _fds(pid) <= base_fds,
                    HELD_TIMEOUT_S,
                    "threads and descriptors back to the baseline",
                )
                back_s.append(time.monotonic() - closed)
        finally:
            query.close()
    quiet.sort()
    held.sort()
    p50 = (percentile(quiet, 0.5), percentile(held, 0.5))
    p99 = (percentile(quiet, 0.99), percentile(held, 0.99))
    extra_threads, extra_fds = peak.threads - base_threads, peak.fds - base_fds
    result = Result(
        f"Metrics endpoint: scrapes while {count} idle and {slow} slowloris connections are held",
        ["serve", "scrape p50 (ms)", "scrape p99 (ms)", "threads", "descriptors"],
        [
            [
                "no other connection (baseline)",
                f"{p50[0] * 1e3:.2f}",
                f"{p99[0] * 1e3:.2f}",
                str(base_threads),
                str(base_fds),
            ],
            [
                f"{count} idle + {slow} slowloris held (most seen)",
                f"{p50[1] * 1e3:.2f}",
                f"{p99[1] * 1e3:.2f}",
                str(peak.threads),
                str(peak.fds),
            ],
            [
                "**held / baseline**",
                f"{p50[1] / p50[0]:.2f}",
                f"{p99[1] / p99[0]:.2f}",
                f"+{extra_threads}",
                f"+{extra_fds}",
            ],
        ],
    )
    total = len(quiet) + len(held) + failed
    result.check(f"{failed} failed scrapes of {total}", "0", failed == 0)
    result.check(
        f"{extra_threads} extra threads", "0 (no thread per connection)", extra_threads <= 0
    )
    result.check(
        f"{extra_fds} extra descriptors",
        f"<= {MAX_CONNECTIONS + FD_SLACK} (the connection cap + {FD_SLACK})",
        extra_fds <= MAX_CONNECTIONS + FD_SLACK,
    )
    result.notes.append(
        f"{rounds} rounds of {per_round} scrapes each way, alternating; {attempts} hostile"
        f" connects, {evicted} of them closed by the proxy (evicted at its cap of"
        f" {MAX_CONNECTIONS} or timed out); {pings} queries on the ZeroMQ socket meanwhile,"
        f" all answered. Threads and descriptors were back to the baseline"
        f" {Spread.of(back_s).fmt(2)} s after the peers closed. Before issue 16 the same peers"
        " made every scrape fail (5 of 5)."
    )
    return result


if __name__ == "__main__":
    print(metrics_idle().markdown())
