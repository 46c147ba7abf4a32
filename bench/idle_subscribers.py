"""Benchmark: subscribers of the events socket that never read (issue 16, item 2).

Many SUB sockets connect to ``rpcproxy serve``'s events endpoint, subscribe,
and never read, while a client changes the active server at a fixed rate; a
REQ client measures ``find_server`` and the proxy's resident memory is
sampled. Then the subscribers close, and the benchmark watches the memory
come back. The same changes and client without subscribers, just before, are
the baseline.

The subscribers are as hostile as a SUB can be without code of its own: a
receive queue of one message and a 4 KiB kernel receive buffer, so almost
nothing the proxy sends is absorbed downstream: what it queues for them stays
on its side, in its process and in its kernel send buffers
(tests/never_reading.py, which the integration test uses too).

Run through bench/run.py; ``idle_subscribers(subscribers=1000, rate=5000.0,
duration_s=20.0)`` is issue 16's figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from common import Result, tcp
from events_socket import (
    CONNECT_TIMEOUT_S,
    EVENT_TOPIC,
    WINDOW,
    WINDOW_HEADERS,
    Changer,
    Window,
    serving_events,
    start_rss_mib,
)
from flood import RssSampler
from lookup import drive

from tests.never_reading import never_reading
from tests.procfs import connections_to, vm_rss_kib, vm_rss_mib

RSS_GROWTH_TARGET_MIB = 100.0
RSS_RETURN_TARGET_MIB = 20.0
"""How far above its start RSS may stay once the subscribers are gone."""
RSS_SETTLED_MIB = 4.0
"""Above its start by at most this, RSS counts as back (the wait for it ends)."""
P99_RATIO_TARGET = 2.0
"""find_server p99 with the subscribers over p99 with the same changes and none.

A ratio, not milliseconds: on a shared machine the changes alone move p99
by several ms from run to run; what the subscribers add is the question.
"""
SETTLE_S = 15.0
"""How long RSS may take to come back after the subscribers leave."""


@dataclass(frozen=True)
class Phase(Window):
    """One window of changes: latency, memory, the changes made and the kernel's queues."""

    changes_per_s: float
    refused: int
    kernel_queued_mib: float
    """What the kernel holds for the subscribers at the window's end (socket memory, not RSS)."""

    def row(self, name: str, start_mib: float) -> list[str]:
        changes = f"{self.changes_per_s:.0f}"
        return [name, changes, *self.cells(start_mib), f"{self.kernel_queued_mib:.1f}"]


def _wait_connections(port: int, want: int, timeout_s: float) -> float:
    """Poll until ``want`` events connections are established; the seconds it took."""
    begin = time.monotonic()
    while (got := connections_to(port).count) != want:
        if time.monotonic() - begin > timeout_s:
            raise RuntimeError(f"{got} events connections, not {want}, after {timeout_s} s")
        time.sleep(0.05)
    return time.monotonic() - begin


def _changing(query: str, pid: int, port: int, rate: float, duration_s: float) -> Phase:
    with RssSampler(pid) as rss, Changer(query, rate) as changer:
        load = drive(query, 1, duration_s)
        queued = connections_to(port).send_queue_bytes
    return Phase(load, rss.peak_mib, changer.changes_per_s, changer.refused, queued / 2**20)


def _settle(pid: int, target_kib: int, timeout_s: float) -> tuple[float, float]:
    """Poll RSS until it is at most ``target_kib``; (RSS in MiB, seconds it took or the timeout)."""
    begin = time.monotonic()
    while (rss := vm_rss_kib(pid)) > target_kib and time.monotonic() - begin < timeout_s:
        time.sleep(0.05)
    return rss / 1024, time.monotonic() - begin


def idle_subscribers(subscribers: int, rate: float, duration_s: float) -> Result:
    """``subscribers`` never-reading SUBs while the active server changes ``rate`` times/s."""
    with serving_events() as (serve, port):
        pid = serve.proc.pid
        # The baseline: the same changes with nobody subscribed. It also warms
        # the proxy up, so the start RSS below is a running proxy's.
        baseline = _changing(serve.query, pid, port, rate, duration_s)
        start_mib = start_rss_mib(pid, baseline.load)
        with never_reading(tcp(port), subscribers, EVENT_TOPIC):
            connect_s = _wait_connections(port, subscribers, CONNECT_TIMEOUT_S)
            connected_mib = vm_rss_mib(pid)
            hostile = _changing(serve.query, pid, port, rate, duration_s)
            before_leaving_mib = vm_rss_mib(pid)
        _wait_connections(port, 0, CONNECT_TIMEOUT_S)
        target_kib = int((start_mib + RSS_SETTLED_MIB) * 1024)
        after_mib, settle_s = _settle(pid, target_kib, SETTLE_S)
        print(
            f"  {subscribers} subscribers: connected in {connect_s:.1f} s, RSS {connected_mib:.1f}"
            f" MiB connected, peak {hostile.rss_peak_mib:.1f}, {after_mib:.1f} after they left;"
            f" p99 {hostile.load.p99_us:.0f} us",
            flush=True,
        )
    return _result(
        subscribers,
        rate,
        duration_s,
        baseline=baseline,
        hostile=hostile,
        start_mib=start_mib,
        connected_mib=connected_mib,
        before_leaving_mib=before_leaving_mib,
        after_mib=after_mib,
        settle_s=settle_s,
    )


def _result(
    subscribers: int,
    rate: float,
    duration_s: float,
    *,
    baseline: Phase,
    hostile: Phase,
    start_mib: float,
    connected_mib: float,
    before_leaving_mib: float,
    after_mib: float,
    settle_s: float,
) -> Result:
    result = Result(
        f"Events subscribers that never read ({subscribers:,} of them, {rate:,.0f} changes/s)",
        [
            "phase",
            "changes/s made",
            *WINDOW_HEADERS,
            "kernel send queues (MiB)",
        ],
        [
            baseline.row("no subscriber", start_mib),
            hostile.row(f"{subscribers:,} never-reading subscribers", start_mib),
        ],
    )
    growth = hostile.rss_peak_mib - start_mib
    left = after_mib - start_mib
    p99_ms = hostile.load.p99_us / 1000
    ratio = hostile.load.p99_us / baseline.load.p99_us
    result.check(
        f"RSS growth with {subscribers:,} idle subscribers {growth:.1f} MiB",
        f"< {RSS_GROWTH_TARGET_MIB:g} MB",
        growth < RSS_GROWTH_TARGET_MIB,
    )
    result.check(
        f"RSS {settle_s:.1f} s after they left: {left:+.1f} MiB from the start",
        f"< {RSS_RETURN_TARGET_MIB:g} MB within {SETTLE_S:g} s",
        left < RSS_RETURN_TARGET_MIB,
    )
    result.check(
        f"find_server p99 with them {p99_ms:.2f} ms, {ratio:.2f} x without",
        f"<= {P99_RATIO_TARGET:g} x",
        ratio <= P99_RATIO_TARGET,
    )
    result.notes += [
        f"One `rpcproxy serve`; {duration_s:g} s of changes without subscribers (the baseline,"
        f" which also warms the proxy up; start RSS read after it: {start_mib:.1f} MiB), then"
        f" {subscribers:,} SUB sockets in the benchmark's process connect (RSS"
        f" {connected_mib:.1f} MiB once all are established) and the same {duration_s:g} s of"
        f" changes run again (RSS {before_leaving_mib:.1f} MiB at its end). The subscribers"
        " subscribe to `event/active_server` and never read, with `ZMQ_RCVHWM` 1 and a 4 KiB"
        " `ZMQ_RCVBUF`, so what the proxy sends them stays queued on its side.",
        "",
        f"Changes: `add_primary_server` and `remove_server` of one address, {rate:,.0f} a"
        f" second, pipelined ({WINDOW} in flight) on one DEALER; each is a change of the active"
        " server, so an event; the rate made is the epochs the replies report over the"
        f" window ({hostile.refused} refused). One REQ client (`req_client.py`) sends"
        " `find_server` back to back during each window; RSS is sampled every 20 ms."
        " Kernel send queues: the `tx_queue` of the proxy's events connections in"
        " `/proc/net/tcp` at the window's end (socket memory, outside RSS).",
        "",
        "After they close, once the proxy has no events connection left, RSS is polled"
        f" every 50 ms until it is within {RSS_SETTLED_MIB:g} MiB of the start or"
        f" {SETTLE_S:g} s have passed; the figure is the last reading. The p99 verdict is"
        " a ratio to the baseline's, measured minutes apart on the same proxy.",
    ]
    return result
