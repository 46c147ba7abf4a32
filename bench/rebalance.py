"""Benchmark 3: a rebalance with k dead servers ahead of the only live one.

The dead servers are primaries on loopback ports nobody listens on; the live
one is a :class:`bus.standin.ServerStandIn` given as the only backup, and
backups always follow primaries in the candidate order, so every rebalance
must give up on all k dead ones before it can pick the live one. Nomad's
serial pinging would take k ping timeouts; the target is about one.
"""

from __future__ import annotations

import statistics
import time

from common import CTX, Result, Spread, call, free_port, running_serve

from bus.standin import ServerStandIn

PING_TIMEOUT_S = 0.5
TARGET = 1.3


def _rebalance_seconds(query: str, live: str) -> float:
    begin = time.perf_counter()
    reply = call(query, "rebalance", timeout_s=30.0)
    elapsed = time.perf_counter() - begin
    if reply.get("healthy") is not True or reply["server"] != {"addr": live}:
        raise RuntimeError(f"rebalance did not pick the live server {live}: {reply!r}")
    return elapsed


def _time_rebalances(dead: int, repetitions: int, live: str) -> list[float]:
    dead_addrs = ",".join(f"127.0.0.1:{free_port()}" for _ in range(dead))
    with running_serve(
        "--primary-servers",
        dead_addrs,
        "--backup-servers",
        live,
        "--ping-timeout-s",
        str(PING_TIMEOUT_S),
    ) as serve:
        return [_rebalance_seconds(serve.query, live) for _ in range(repetitions)]


def rebalance(repetitions: int, ks: tuple[int, ...] = (1, 5, 20, 50)) -> Result:
    result = Result(
        "3. Rebalance with k dead servers ahead of the live one",
        [
            "k dead",
            "rebalance time (s)",
            "time / ping timeout",
            "Nomad's serial pings would need",
        ],
    )
    standin = ServerStandIn("tcp://127.0.0.1:*", context=CTX)
    standin.start()
    try:
        for k in ks:
            times = _time_rebalances(k, repetitions, standin.address)
            ratio = Spread.of([t / PING_TIMEOUT_S for t in times])
            print(f"  k={k}: {statistics.median(times):.3f} s, ratio {ratio.fmt()}", flush=True)
            result.rows.append(
                [
                    str(k),
                    Spread.of(times).fmt(3),
                    ratio.fmt(),
                    f"{k} x {PING_TIMEOUT_S:g} s = {k * PING_TIMEOUT_S:g} s",
                ]
            )
            result.check(
                f"k={k}: time / timeout {ratio.median:.2f}", f"<= {TARGET}", ratio.median <= TARGET
            )
    finally:
        standin.stop()
    result.notes.append(
        f"Ping timeout {PING_TIMEOUT_S} s (`--ping-timeout-s`, `ping_method = zmq`);"
        f" {repetitions} `rebalance` ops per k on one `serve`, timed at the client from"
        " request to reply; median (min-max). The live server (one ServerStandIn in the"
        " benchmark's process) is the only backup, so it is always the last candidate."
    )
    return result
