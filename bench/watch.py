"""Benchmark: the watching client (issue 12) and AsyncProxyClient.

(a) Watched ``find_server()`` (a local read) against a request
``find_server()`` (a round trip), from the same process, alternating rounds.
(b) Staleness: a notifier process changes the active server; a watching
client in a third process records when its answer changes. (c)
``AsyncProxyClient`` with 64 coroutines in one process against the blocking
client in 8 threads (one client each), real requests, alternating rounds.
(d) ``call(fn)`` with a trivial ``fn`` against ``fn(find_server())`` by
hand, one watching client, alternating rounds: what the failover loop costs
on the happy path.
Client code runs in ``watch_worker.py`` processes.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from common import Result, Spread, free_port, percentile, running_serve, script, tcp

PRIMARIES = "10.0.0.1:4647,10.0.0.2:4647,10.0.0.3:4647"
RATIO_TARGET = 100.0
STALENESS_P99_TARGET_MS = 5.0
STALENESS_P99_ISSUE_20_MS = 1.0
"""Issue 20's target for the same figure."""
CALL_COST_TARGET = 1.2
"""``call(fn)`` costs at most this many times ``fn(find_server())`` (issue 19)."""


def _worker(*args: str, timeout_s: float = 300.0) -> dict[str, Any]:
    done = subprocess.run(
        script("watch_worker.py", *args),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"watch_worker {args[0]} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def _throughput(query: str, events: str, rounds: int, duration_s: float) -> Result:
    out = _worker("lookups", query, events, str(rounds), repr(duration_s))
    watched, asking = out["watched"], out["request"]
    ratio = Spread.of([w / r for w, r in zip(watched, asking, strict=True)])
    result = Result(
        "Watch (a): watched find_server() against a request (one process)",
        ["client", "lookups/s"],
        [
            ["ProxyClient(watch=True)", Spread.of(watched).fmt(0)],
            ["ProxyClient (a round trip)", Spread.of(asking).fmt(0)],
            ["**ratio watched / request**", ratio.fmt(0)],
        ],
    )
    result.check(f"throughput ratio {ratio.fmt(0)}", f">= {RATIO_TARGET:g}", ratio.median >= 100)
    result.notes.append(
        f"{rounds} alternating rounds of {duration_s:g} s per side in one process, one thread,"
        " against one `rpcproxy serve` (3 primaries, events on, refresh 1 s)."
    )
    return result


def _staleness(query: str, events: str, changes: int) -> Result:
    watcher = subprocess.Popen(
        script("watch_worker.py", "watcher", query, events),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdin is not None and watcher.stdout is not None
    try:
        if watcher.stdout.readline().strip() != "ready":
            raise RuntimeError("the watcher process did not get a fresh view")
        notes = _worker("notifier", query, str(changes), "0.02")
    finally:
        watcher.stdin.close()
    output = watcher.stdout.read()
    watcher.wait(60)
    seen = json.loads(output.splitlines()[-1])
    transitions: list[tuple[int, str | None]] = [(c[0], c[1]) for c in seen["changes"]]
    delays_ms: list[float] = []
    after_reply_ms: list[float] = []
    missed = 0
    rows = notes["notes"]
    for index, (sent, replied, server) in enumerate(rows):
        until = rows[index + 1][0] if index + 1 < len(rows) else None
        match = next(
            (
                t
                for t, addr in transitions
                if addr == server and t >= sent and (until is None or t < until)
            ),
            None,
        )
        if match is None:
            missed += 1
        else:
            delays_ms.append((match - sent) / 1e6)
            after_reply_ms.append((match - replied) / 1e6)
    delays_ms.sort()
    after_reply_ms.sort()
    rtt_ms = sorted(r / 1e6 for r in notes["rtt_ns"])
    paced_ms = sorted(r / 1e6 for r in notes["paced_rtt_ns"])
    notify_ms = sorted((replied - sent) / 1e6 for sent, replied, _ in rows)
    p99 = percentile(delays_ms, 0.99)
    result = Result(
        "Watch (b): staleness after a change (three processes)",
        ["measured", "p50 (ms)", "p99 (ms)", "samples"],
        [
            [
                "notify sent -> the watcher returns the new server",
                f"{percentile(delays_ms, 0.5):.3f}",
                f"{p99:.3f}",
                str(len(delays_ms)),
            ],
            [
                "notify's reply -> the watcher returns it (< 0: before the reply)",
                f"{percentile(after_reply_ms, 0.5):.3f}",
                f"{percentile(after_reply_ms, 0.99):.3f}",
                str(len(after_reply_ms)),
            ],
            [
                "request find_server() round trip",
                f"{percentile(rtt_ms, 0.5):.3f}",
                f"{percentile(rtt_ms, 0.99):.3f}",
                str(len(rtt_ms)),
            ],
            [
                "request find_server() round trip after the same pause as each notify",
                f"{percentile(paced_ms, 0.5):.3f}",
                f"{percentile(paced_ms, 0.99):.3f}",
                str(len(paced_ms)),
            ],
            [
                "notify_failed_server round trip",
                f"{percentile(notify_ms, 0.5):.3f}",
                f"{percentile(notify_ms, 0.99):.3f}",
                str(len(notify_ms)),
            ],
        ],
    )
    result.check(
        f"staleness p99 {p99:.3f} ms",
        f"< {STALENESS_P99_TARGET_MS:g} ms",
        p99 < STALENESS_P99_TARGET_MS and not missed,
    )
    result.check(
        f"staleness p99 {p99:.3f} ms",
        f"< {STALENESS_P99_ISSUE_20_MS:g} ms (issue 20)",
        p99 < STALENESS_P99_ISSUE_20_MS and not missed,
    )
    result.notes.append(
        f"A notifier process rotates the active server {changes} times, 20 ms apart; a"
        " watching client in a third process looks up every ~0.1 ms (sleeping between"
        " lookups, as a service does between pieces of work: a loop that never released the"
        " GIL would hold the watcher's thread back by up to the 5 ms switch interval) and"
        " records when its answer changes. The delay runs from just before the notify was"
        " sent (an upper bound: the change is applied later) to the first lookup returning"
        " the new server, so it includes the proxy's own time to apply the write (the notify"
        " round trip's row); measured from the notifier's receipt of the reply it is a lower"
        " bound. The target is judged on the upper bound. Both ends read CLOCK_MONOTONIC"
        " (`time.monotonic_ns`), one clock"
        f" across processes on Linux. Changes never seen before the next one: {missed}."
    )
    result.notes.append(
        "Rows 3 and 4 are reads: back to back (1000 before the changes), and after the same"
        " pause as each notify (the lookup that picks the server to fail). After a pause the"
        " threads a change passes through (the notifier's, the proxy's query, actor and"
        " events threads, libzmq's I/O threads, the watcher's) have gone idle and must each"
        f" be woken: a read alone then takes {percentile(paced_ms, 0.99):.3f} ms at p99,"
        " against issue 20's 1 ms for the whole change. The delay after the notify's reply"
        " (row 2) is what the events path adds."
    )
    return result


def _concurrency(query: str, rounds: int, duration_s: float) -> Result:
    async_rates: list[float] = []
    thread_rates: list[float] = []
    for index in range(rounds):
        sides = [("async", "64", async_rates), ("threads", "8", thread_rates)]
        for mode, n, rates in sides if index % 2 == 0 else sides[::-1]:
            out = _worker(mode, query, n, repr(duration_s))
            rates.append(out["count"] / out["elapsed"])
    ratio = Spread.of([a / t for a, t in zip(async_rates, thread_rates, strict=True)])
    result = Result(
        "Watch (c): AsyncProxyClient, 64 coroutines, against ProxyClient in 8 threads",
        ["client", "aggregate lookups/s"],
        [
            ["AsyncProxyClient, 64 coroutines, one process", Spread.of(async_rates).fmt(0)],
            ["ProxyClient, 8 threads (a client each), one process", Spread.of(thread_rates).fmt(0)],
            ["**ratio async / threads**", ratio.fmt(2)],
        ],
    )
    result.report(f"aggregate ratio {ratio.fmt(2)}")
    result.notes.append(
        f"{rounds} alternating rounds of {duration_s:g} s per side, each side a fresh process;"
        " real `find_server` requests (watch=False) to one `rpcproxy serve`."
    )
    return result


def _call_cost(query: str, events: str, rounds: int, duration_s: float) -> Result:
    out = _worker("calls", query, events, str(rounds), repr(duration_s))
    through_call, by_hand = out["call"], out["by_hand"]
    cost = Spread.of([h / c for c, h in zip(through_call, by_hand, strict=True)])
    result = Result(
        "Watch (d): call(fn) against fn(find_server()) by hand, watched, trivial fn",
        ["way", "calls/s"],
        [
            ["client.call(fn)", Spread.of(through_call).fmt(0)],
            ["fn(client.find_server())", Spread.of(by_hand).fmt(0)],
            ["**cost ratio call / by hand**", cost.fmt(2)],
        ],
    )
    result.check(
        f"cost ratio {cost.fmt(2)}", f"<= {CALL_COST_TARGET:g}", cost.median <= CALL_COST_TARGET
    )
    result.notes.append(
        f"{rounds} alternating rounds of {duration_s:g} s per side in one process, one thread,"
        " one ProxyClient(watch=True); the ratio is time per call through call() over time"
        " per call by hand (the by-hand rate over the call() rate)."
    )
    return result


def watch_benchmarks(
    rounds: int, duration_s: float, changes: int, concurrency_rounds: int
) -> list[Result]:
    events = tcp(free_port())
    with running_serve("--primary-servers", PRIMARIES, "--events", events) as serve:
        return [
            _throughput(serve.query, events, rounds, duration_s),
            _staleness(serve.query, events, changes),
            _concurrency(serve.query, concurrency_rounds, duration_s),
            _call_cost(serve.query, events, rounds, duration_s),
        ]
