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
on its side, in its process and in its kernel send buffers.

Run through bench/run.py; ``idle_subscribers(subscribers=1000, rate=5000.0,
duration_s=20.0)`` is issue 16's figure.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from common import CTX, Result, free_port, pack, running_serve, tcp, unpack, vm_rss_kib
from flood import RssSampler
from lookup import LoadRun, drive

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
EVENT_TOPIC = b"event/active_server"
WINDOW = 64
"""Change requests in flight (the proxy admits at most 128 waiting writes)."""
SETTLE_S = 15.0
"""How long RSS may take to come back after the subscribers leave."""
CONNECT_TIMEOUT_S = 60.0
SERVER = "10.0.0.1:4647"


# --------------------------------------------------------------------------
# The kernel's view of the events connections (IPv4 loopback only).


@dataclass(frozen=True)
class Connections:
    """The proxy's established events connections and what their send queues hold."""

    count: int
    send_queue_bytes: int


def events_connections(port: int) -> Connections:
    """Established TCP connections whose local port is ``port``, from ``/proc/net/tcp``.

    Only the proxy's ends have the events port as their local port. The
    send queue is what the kernel holds for the subscribers (socket memory,
    not RSS, but charged to the proxy's memory cgroup all the same).
    """
    count = queued = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
            count += 1
            queued += int(queues.split(":")[0], 16)
    return Connections(count, queued)


def _wait_connections(port: int, want: int, timeout_s: float) -> float:
    """Poll until ``want`` connections are established; the seconds it took."""
    begin = time.monotonic()
    while (got := events_connections(port).count) != want:
        if time.monotonic() - begin > timeout_s:
            raise RuntimeError(f"{got} events connections, not {want}, after {timeout_s} s")
        time.sleep(0.05)
    return time.monotonic() - begin


# --------------------------------------------------------------------------
# The subscribers and the changes.


@contextlib.contextmanager
def never_reading(endpoint: str, count: int) -> Iterator[None]:
    """``count`` SUB sockets subscribed to the events that never read them."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    # The default (1023) would not hold 1,000 subscribers and their mailboxes.
    context.set(zmq.MAX_SOCKETS, count + 16)
    socks: list[zmq.Socket[bytes]] = []
    try:
        for _ in range(count):
            sub: zmq.Socket[bytes] = context.socket(zmq.SUB)
            sub.linger = 0
            sub.rcvhwm = 1
            sub.rcvbuf = 4096
            sub.setsockopt(zmq.SUBSCRIBE, EVENT_TOPIC)
            sub.connect(endpoint)
            socks.append(sub)
        yield
    finally:
        for sub in socks:
            sub.close(linger=0)
        context.term()


class Changer:
    """Changes the active server ``rate`` times a second from a thread.

    ``add_primary_server`` and ``remove_server`` of one address, pipelined on
    a DEALER: from an empty list each one changes the active server (to the
    address, then to none), and a write the proxy refuses (``unavailable``)
    does not put the next ones out of step, as alternating
    ``notify_failed_server`` between two servers would.
    """

    def __init__(self, endpoint: str, rate: float) -> None:
        self._endpoint = endpoint
        self._rate = rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0
        self.refused = 0
        self.first_epoch: int | None = None
        self.last_epoch = 0
        self.elapsed_s = 0.0
        self.error: BaseException | None = None

    def __enter__(self) -> Changer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise RuntimeError("the changer failed") from self.error

    @property
    def changes_per_s(self) -> float:
        if self.first_epoch is None or self.elapsed_s <= 0:
            return 0.0
        return (self.last_epoch - self.first_epoch) / self.elapsed_s

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported by __exit__, on the caller's thread
            self.error = exc

    def _loop(self) -> None:
        dealer: zmq.Socket[bytes] = CTX.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(self._endpoint)
        ops = [
            pack({"op": "add_primary_server", "addr": SERVER}),
            pack({"op": "remove_server", "addr": SERVER}),
        ]
        replied = 0
        begin = time.monotonic()
        try:
            while True:
                # Read once per turn: the wait and its meaning must agree.
                stopping = self._stop.is_set()
                if stopping and replied == self.sent:
                    break
                now = time.monotonic()
                due = int((now - begin) * self._rate)
                while not stopping and self.sent < due and self.sent - replied < WINDOW:
                    dealer.send_multipart([b"", ops[self.sent % 2]])
                    self.sent += 1
                # Wake for the next reply or the next send that falls due; once
                # stopping, only for the replies still owed.
                wait_ms = max(1, int(1000 * ((due + 1) / self._rate - (now - begin))))
                if not dealer.poll(10_000 if stopping else wait_ms):
                    if stopping:
                        raise RuntimeError(
                            f"no reply in 10 s ({replied} of {self.sent} changes answered)"
                        )
                    continue
                while dealer.poll(0):
                    reply: dict[str, Any] = unpack(dealer.recv_multipart()[-1])
                    replied += 1
                    if reply.get("ok") is not True:
                        self.refused += 1
                        continue
                    if self.first_epoch is None:
                        self.first_epoch = reply["epoch"]
                    self.last_epoch = max(self.last_epoch, reply["epoch"])
            self.elapsed_s = time.monotonic() - begin
        finally:
            dealer.close(linger=0)


# --------------------------------------------------------------------------
# The benchmark.


@dataclass(frozen=True)
class Phase:
    """One window of changes: latency, memory, the changes made and the kernel's queues."""

    load: LoadRun
    rss_peak_mib: float
    changes_per_s: float
    refused: int
    kernel_queued_mib: float


def _changing(query: str, pid: int, port: int, rate: float, duration_s: float) -> Phase:
    with RssSampler(pid) as rss, Changer(query, rate) as changer:
        load = drive(query, 1, duration_s)
        queued = events_connections(port).send_queue_bytes
    return Phase(load, rss.peak_mib, changer.changes_per_s, changer.refused, queued / 2**20)


def _settle(pid: int, target_kib: int, timeout_s: float) -> tuple[float, float]:
    """Poll RSS until it is at most ``target_kib``; (RSS in MiB, seconds it took or the timeout)."""
    begin = time.monotonic()
    while (rss := vm_rss_kib(pid)) > target_kib and time.monotonic() - begin < timeout_s:
        time.sleep(0.05)
    return rss / 1024, time.monotonic() - begin


def idle_subscribers(subscribers: int, rate: float, duration_s: float) -> Result:
    """``subscribers`` never-reading SUBs while the active server changes ``rate`` times/s."""
    port = free_port()
    with running_serve("--events", tcp(port)) as serve:
        pid = serve.proc.pid
        # The baseline: the same changes with nobody subscribed. It also warms
        # the proxy up, so the start RSS below is a running proxy's.
        baseline = _changing(serve.query, pid, port, rate, duration_s)
        start_mib = vm_rss_kib(pid) / 1024
        print(f"  baseline: RSS {start_mib:.1f} MiB, p99 {baseline.load.p99_us:.0f} us", flush=True)
        with never_reading(tcp(port), subscribers):
            connect_s = _wait_connections(port, subscribers, CONNECT_TIMEOUT_S)
            connected_mib = vm_rss_kib(pid) / 1024
            hostile = _changing(serve.query, pid, port, rate, duration_s)
            before_leaving_mib = vm_rss_kib(pid) / 1024
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


def _row(name: str, phase: Phase, start_mib: float) -> list[str]:
    return [
        name,
        f"{phase.changes_per_s:.0f}",
        f"{phase.load.p50_us:.0f}",
        f"{phase.load.p99_us:.0f}",
        f"{phase.rss_peak_mib:.1f}",
        f"{phase.rss_peak_mib - start_mib:.1f}",
        f"{phase.kernel_queued_mib:.1f}",
    ]


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
            "find_server p50 (us)",
            "find_server p99 (us)",
            "serve RSS peak (MiB)",
            "RSS growth (MiB)",
            "kernel send queues (MiB)",
        ],
        [
            _row("no subscriber", baseline, start_mib),
            _row(f"{subscribers:,} never-reading subscribers", hostile, start_mib),
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
