"""Benchmarks 1 and 2: ``find_server`` through ``rpcproxy serve`` vs a raw echo server.

Both servers run in their own processes for the whole benchmark; clients are
separate processes running the same REQ loop (``req_client.py``). Rounds
alternate the side that goes first, and each round's ratio compares two runs
made seconds apart under the same conditions.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from common import (
    Result,
    Spread,
    call,
    free_port,
    percentile,
    request,
    running_script,
    running_serve,
    script,
    tcp,
)

PRIMARIES = "10.0.0.1:4647,10.0.0.2:4647,10.0.0.3:4647"
THROUGHPUT_TARGET = 1.0
"""Issue 20: the proxy answers find_server at least as fast as a raw echo server
(it recognises the common frames by their bytes, bus/service/codec.py)."""
CONCURRENCY_TARGET = 0.95


@dataclass(frozen=True)
class LoadRun:
    """Aggregate round trips per second and latency percentiles of one run."""

    throughput: float
    p50_us: float
    p99_us: float


def drive(endpoint: str, clients: int, duration_s: float) -> LoadRun:
    """Run ``clients`` REQ-loop processes against ``endpoint`` for one shared window."""
    start_at = time.time() + 0.4 + 0.2 * clients  # room for the processes to start
    procs = [
        subprocess.Popen(
            script("req_client.py", endpoint, repr(start_at), repr(duration_s)),
            stdout=subprocess.PIPE,
        )
        for _ in range(clients)
    ]
    outputs = [json.loads(proc.communicate(timeout=60 + duration_s)[0]) for proc in procs]
    latencies = sorted(x for out in outputs for x in out["lat_us"])
    return LoadRun(
        throughput=sum(out["count"] / out["elapsed"] for out in outputs),
        p50_us=percentile(latencies, 0.50),
        p99_us=percentile(latencies, 0.99),
    )


def _wait_answering(endpoint: str) -> None:
    for _ in range(100):
        with contextlib.suppress(TimeoutError):
            request(endpoint, {"op": "find_server"}, timeout_s=0.2)
            return
    raise RuntimeError(f"nobody answers at {endpoint}")


@contextlib.contextmanager
def servers() -> Iterator[tuple[str, str]]:
    """The proxy's and the echo server's query endpoints, both answering."""
    echo = tcp(free_port())
    with (
        running_serve("--primary-servers", PRIMARIES) as serve,
        running_script("echo_server.py", echo),
    ):
        _wait_answering(echo)
        head = call(serve.query, "find_server")["server"]
        if head is None:
            raise RuntimeError("the proxy has no active server")
        yield serve.query, echo


def compare(clients: int, rounds: int, duration_s: float) -> tuple[list[LoadRun], list[LoadRun]]:
    """Alternating rounds of proxy and echo runs; the first side alternates too."""
    proxy_runs: list[LoadRun] = []
    echo_runs: list[LoadRun] = []
    with servers() as (proxy, echo):
        for index in range(rounds):
            sides = [(proxy, proxy_runs), (echo, echo_runs)]
            for endpoint, runs in sides if index % 2 == 0 else sides[::-1]:
                runs.append(drive(endpoint, clients, duration_s))
            print(
                f"  round {index + 1}/{rounds}: proxy {proxy_runs[-1].throughput:,.0f}/s,"
                f" echo {echo_runs[-1].throughput:,.0f}/s,"
                f" ratio {proxy_runs[-1].throughput / echo_runs[-1].throughput:.3f}",
                flush=True,
            )
    return proxy_runs, echo_runs


NOISY_SPREAD = 1.5
"""Per-round ratios further apart than this factor mean the machine was busy."""


def _noise_note(ratio: Spread) -> list[str]:
    if ratio.high <= NOISY_SPREAD * ratio.low:
        return []
    return [
        "",
        f"**Noisy:** per-round ratios range {ratio.low:.2f}-{ratio.high:.2f}; other load on"
        " the machine (see the load average) dominates, so the median is not conclusive."
        " Rerun on a quiet machine.",
    ]


def _ratio(proxy_runs: list[LoadRun], echo_runs: list[LoadRun]) -> Spread:
    return Spread.of(
        [p.throughput / e.throughput for p, e in zip(proxy_runs, echo_runs, strict=True)]
    )


def _side_rows(proxy_runs: list[LoadRun], echo_runs: list[LoadRun]) -> list[list[str]]:
    rows = []
    for name, runs in (("rpcproxy serve", proxy_runs), ("raw pyzmq+msgpack echo", echo_runs)):
        rows.append(
            [
                name,
                Spread.of([r.throughput for r in runs]).fmt(0),
                Spread.of([r.p50_us for r in runs]).fmt(0),
                Spread.of([r.p99_us for r in runs]).fmt(0),
            ]
        )
    return rows


def lookup_throughput(rounds: int, duration_s: float) -> Result:
    proxy_runs, echo_runs = compare(1, rounds, duration_s)
    ratio = _ratio(proxy_runs, echo_runs)
    result = Result(
        "1. Lookup throughput (one REQ client)",
        ["server", "round trips/s", "p50 latency (us)", "p99 latency (us)"],
        _side_rows(proxy_runs, echo_runs),
    )
    result.rows.append(["**ratio proxy / echo**", ratio.fmt(3), "", ""])
    result.check(
        f"throughput ratio {ratio.fmt(3)}",
        f">= {THROUGHPUT_TARGET}",
        ratio.median >= THROUGHPUT_TARGET,
    )
    result.notes.append(
        f"{rounds} alternating rounds of {duration_s:g} s per side; one client process sends"
        ' raw msgpack `{"op": "find_server"}` (no `id`) on a REQ socket and waits for'
        " each reply. The proxy knows 3 primaries; the echo server decodes each request"
        " with msgpack and answers a fixed reply of the same shape. The request is one"
        " of the frames the proxy recognises by its bytes and answers without decoding"
        " (bus/service/codec.py, find_server_id); a request written any other way is"
        " decoded. Figures are median (min-max) over rounds; the ratio is taken per round."
    )
    result.notes += _noise_note(ratio)
    return result


def concurrency(rounds: int, duration_s: float, clients: int = 8) -> Result:
    proxy_runs, echo_runs = compare(clients, rounds, duration_s)
    ratio = _ratio(proxy_runs, echo_runs)
    result = Result(
        f"2. Concurrency ({clients} client processes)",
        ["server", "aggregate round trips/s", "p50 latency (us)", "p99 latency (us)"],
        _side_rows(proxy_runs, echo_runs),
    )
    result.rows.append(["**ratio proxy / echo**", ratio.fmt(3), "", ""])
    result.check(
        f"aggregate throughput ratio {ratio.fmt(3)}",
        f">= {CONCURRENCY_TARGET}",
        ratio.median >= CONCURRENCY_TARGET,
    )
    result.notes.append(
        f"{rounds} alternating rounds of {duration_s:g} s per side; {clients} REQ-loop"
        " processes start together (a shared start time after a warm-up) against one"
        " server. Latency percentiles are over every round trip of every client of a run."
    )
    result.notes += _noise_note(ratio)
    return result
