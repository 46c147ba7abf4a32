"""Benchmark 3: rebalances with k dead or hung servers ahead of the only live one,
and lookups while a rebalance waits on a name that never resolves.

Dead servers are loopback addresses nobody listens on (refused at once); hung
ones are listeners of this process that accept and never answer, so each
holds a ping for the whole timeout. All are primaries; the live server is a
:class:`bus.standin.ServerStandIn` given as the only backup, and backups
always follow primaries in the candidate order, so every rebalance must give
up on all k before it can pick the live one. Nomad's serial pinging would
take k ping timeouts. Here a window of attempts is open at once (docs/protocol.md
section 4: bounded sockets), so k hung servers cost one timeout per window.
"""

from __future__ import annotations

import contextlib
import math
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from common import CTX, Requester, Result, Spread, call, free_port, running_serve
from lookup import LoadRun, drive

from rpcproxy.bus.probes import NomadProber
from rpcproxy.bus.probes.engine import window_for
from rpcproxy.bus.standins.standin import ServerStandIn
from tests.blackhole import BLACKHOLE, blackhole_prefix

PING_TIMEOUT_S = 0.5
TARGET = 1.3
DEAD_KS = (1, 50, 1100, 4095)
"""Up to ``max_servers`` (4096) with the live one."""
HUNG_KS = (50, 300)


def _dead_addrs(k: int) -> list[str]:
    """``k`` distinct refused addresses: one unused port on many loopback IPs."""
    port = free_port()
    return [f"127.1.{i // 250}.{i % 250 + 1}:{port}" for i in range(k)]


@contextlib.contextmanager
def _silent_servers(k: int) -> Iterator[list[str]]:
    """``k`` listeners that accept (the kernel does) and never say a word."""
    socks = []
    try:
        for _ in range(k):
            sock = socket.socket()
            socks.append(sock)
            sock.bind(("127.0.0.1", 0))
            sock.listen(16)
        yield [f"127.0.0.1:{s.getsockname()[1]}" for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _serve_window(pid: int) -> int:
    """The ping window of a running serve, from its descriptor limit."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft = line.split()[3]
            limit = None if soft == "unlimited" else int(soft)
            # serve pings with its default, ping_method = "nomad".
            return window_for(NomadProber.fds_per_attempt, fd_limit=limit)
    raise RuntimeError(f"no descriptor limit for pid {pid}")


def _rebalance_seconds(query: str, live: str) -> float:
    begin = time.perf_counter()
    reply = call(query, "rebalance", timeout_s=60.0)
    elapsed = time.perf_counter() - begin
    if reply.get("healthy") is not True or reply["server"] != {"addr": live}:
        raise RuntimeError(f"rebalance did not pick the live server {live}: {reply!r}")
    return elapsed


def _time_rebalances(ahead: list[str], repetitions: int, live: str) -> tuple[list[float], int]:
    """Rebalance times, and the serve's ping window."""
    with running_serve(
        "--primary-servers",
        ",".join(ahead),
        "--backup-servers",
        live,
        "--ping-timeout-s",
        str(PING_TIMEOUT_S),
    ) as serve:
        window = _serve_window(serve.proc.pid)
        return [_rebalance_seconds(serve.query, live) for _ in range(repetitions)], window


def rebalance(
    repetitions: int,
    ks: tuple[int, ...] = DEAD_KS,
    hung_ks: tuple[int, ...] = HUNG_KS,
) -> Result:
    result = Result(
        "3. Rebalance with k dead or hung servers ahead of the live one",
        [
            "k ahead",
            "rebalance time (s)",
            "time / ping timeout",
            "windows of pings",
            "Nomad's serial pings would need",
        ],
    )
    standin = ServerStandIn("tcp://127.0.0.1:*", context=CTX)
    standin.start()
    try:
        cases: list[tuple[str, int]] = [("dead", k) for k in ks]
        cases += [("hung", k) for k in hung_ks]
        for kind, k in cases:
            if kind == "dead":
                times, window = _time_rebalances(_dead_addrs(k), repetitions, standin.address)
                # Refused connects are known at once: no window waits a timeout.
                rounds, target = 0, TARGET
            else:
                with _silent_servers(k) as silent:
                    times, window = _time_rebalances(silent, repetitions, standin.address)
                rounds = math.ceil(k / window)
                target = rounds + TARGET - 1
            ratio = Spread.of([t / PING_TIMEOUT_S for t in times])
            print(
                f"  {k} {kind}: {statistics.median(times):.3f} s, ratio {ratio.fmt()}",
                flush=True,
            )
            result.rows.append(
                [
                    f"{k} {kind}",
                    Spread.of(times).fmt(3),
                    ratio.fmt(),
                    f"{rounds} (window {window})" if rounds else "- (refused at once)",
                    f"{k} x {PING_TIMEOUT_S:g} s = {k * PING_TIMEOUT_S:g} s",
                ]
            )
            result.check(
                f"{k} {kind}: time / timeout {ratio.median:.2f}",
                f"<= {target:g}",
                ratio.median <= target,
            )
    finally:
        standin.stop()
    result.notes.append(
        f"Ping timeout {PING_TIMEOUT_S} s (`--ping-timeout-s`, `ping_method = nomad`);"
        f" {repetitions} `rebalance` ops per k on one `serve`, timed at the client from"
        " request to reply; median (min-max). The live server (one ServerStandIn in the"
        " benchmark's process) is the only backup, so it is always the last candidate."
        " Dead: a loopback address nobody listens on (refused). Hung: a listener that"
        " accepts and never answers, so its ping holds a slot of the window until the"
        " timeout; the window is what fits under the serve's descriptor limit"
        " (`bus.ping.window_for`), at most 256."
    )
    return result


# -- lookups while a name never resolves ---------------------------------------------

BLACKHOLE_PING_TIMEOUT_S = 1.0
P99_TARGET_MS = 2.0


def _rebalance_loop(query: str, stop: threading.Event, done: list[float]) -> None:
    requester = Requester(query)
    try:
        while not stop.is_set():
            begin = time.perf_counter()
            requester.call("rebalance", timeout_s=30.0)
            done.append(time.perf_counter() - begin)
    finally:
        requester.close()


def lookups_during_blackhole(rounds: int, duration_s: float) -> Result:
    """find_server latency while rebalances wait on a black-hole name, vs idle."""
    result = Result(
        "3b. Lookups while a rebalance waits on a name that never resolves",
        ["phase", "round trips/s", "p50 latency (us)", "p99 latency (us)"],
    )
    with blackhole_prefix() as prefix:
        if isinstance(prefix, str):
            result.notes.append(f"Not measured: {prefix}. The integration test covers it.")
            return result
        standin = ServerStandIn("tcp://127.0.0.1:*", context=CTX)
        standin.start()
        idle: list[LoadRun] = []
        busy: list[LoadRun] = []
        rebalances: list[float] = []
        try:
            with running_serve(
                "--primary-servers",
                f"{BLACKHOLE}:4647",
                "--backup-servers",
                standin.address,
                "--ping-timeout-s",
                str(BLACKHOLE_PING_TIMEOUT_S),
                prefix=prefix,
            ) as serve:
                for index in range(rounds):
                    for phase in (
                        ("idle", "rebalancing") if index % 2 == 0 else ("rebalancing", "idle")
                    ):
                        if phase == "idle":
                            idle.append(drive(serve.query, 1, duration_s))
                            continue
                        stop = threading.Event()
                        loop = threading.Thread(
                            target=_rebalance_loop, args=(serve.query, stop, rebalances)
                        )
                        loop.start()
                        busy.append(drive(serve.query, 1, duration_s))
                        stop.set()
                        loop.join(60)
                    print(
                        f"  round {index + 1}/{rounds}: p99 idle {idle[-1].p99_us:.0f} us,"
                        f" rebalancing {busy[-1].p99_us:.0f} us",
                        flush=True,
                    )
        finally:
            standin.stop()
    for name, runs in (("idle", idle), ("rebalances waiting on the name", busy)):
        result.rows.append(
            [
                name,
                Spread.of([r.throughput for r in runs]).fmt(0),
                Spread.of([r.p50_us for r in runs]).fmt(0),
                Spread.of([r.p99_us for r in runs]).fmt(0),
            ]
        )
    ratio = Spread.of([b.p99_us / i.p99_us for b, i in zip(busy, idle, strict=True)])
    result.rows.append(["**p99 ratio rebalancing / idle**", "", "", ratio.fmt(2)])
    p99_ms = statistics.median(r.p99_us for r in busy) / 1000
    result.check(
        f"p99 while rebalancing {p99_ms:.2f} ms", f"< {P99_TARGET_MS:g} ms", p99_ms < P99_TARGET_MS
    )
    result.notes.append(
        f"`serve` runs in a private mount namespace whose resolv.conf names a UDP socket"
        f" that never answers, so `{BLACKHOLE}` (the only primary) hangs in resolution"
        f" for 10 s; a live ServerStandIn is the only backup. {rounds} alternating rounds"
        f" of {duration_s:g} s: one REQ client sends `find_server` back to back, idle or"
        f" while another thread asks `rebalance` back to back ({len(rebalances)}"
        f" rebalances, median {statistics.median(rebalances or [0]):.2f} s each, ping"
        f" timeout {BLACKHOLE_PING_TIMEOUT_S:g} s). Before issue 9, libzmq resolved the"
        " name on the I/O thread the query socket shares: every request stalled for the"
        " lookup."
    )
    return result
