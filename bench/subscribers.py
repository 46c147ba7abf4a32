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

:func:`subscription_flood` is the other way a subscriber can try to grow the
proxy: one peer sends distinct subscriptions, ``rate`` a second, while two
subscribers that read (the event topic, and everything) count what reaches
them; the same changes and lookups without the flood, just before, are the
baseline.
"""

from __future__ import annotations

import contextlib
import socket
import struct
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


# --------------------------------------------------------------------------
# A subscriber that floods the events socket with subscriptions.

FLOOD_GROWTH_TARGET_MIB = 30.0
"""RSS growth allowed over the flood: a few MiB are measured; keeping them all is 46 MiB per
10,000 subscriptions of 100 bytes."""
FLOOD_EVENTS_TARGET = 0.9
"""Events each reading subscriber gets during the flood, over the changes made then."""
FLOOD_CHANGES_PER_S = 100.0
"""Changes during both windows: events for the readers, and turns of the events actor."""
FLOOD_ABORT_MIB = 512.0
"""RSS growth at which the flood stops early: the figure has failed already, and a
build that keeps every subscription would otherwise take gigabytes of the machine."""
FLOOD_CHUNK = 500
"""Subscriptions written at once (one ``sendall``)."""


def _zmtp_frame(body: bytes, *, command: bool = False) -> bytes:
    """One ZMTP 3.0 frame: flags (command, long), size, body."""
    flags = 0x04 if command else 0x00
    if len(body) > 255:
        return bytes([flags | 0x02]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


def _zmtp_sub_handshake() -> bytes:
    """A SUB's greeting (ZMTP 3.0, NULL mechanism, as client) and its READY command."""
    greeting = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + bytes(32)
    name, value = b"Socket-Type", b"SUB"
    ready = b"\x05READY" + bytes([len(name)]) + name + struct.pack(">I", len(value)) + value
    return greeting + _zmtp_frame(ready, command=True)


class SubscriptionFlooder:
    """Sends distinct subscriptions to the events endpoint, ``rate`` a second, from a thread.

    It speaks ZMTP by hand (a SUB's greeting and READY, then one frame
    ``\\x01`` + topic per subscription) rather than through a libzmq SUB: a
    SUB keeps every subscription it sends, to send them again when it
    reconnects, so a million would cost the benchmark gigabytes; this keeps
    none, and never waits on libzmq's queues: it writes as fast as the
    proxy's kernel buffers take. When the proxy closes the connection it
    connects again and goes on with the next topics.
    """

    def __init__(self, port: int, subscriptions: int, rate: float, topic_bytes: int) -> None:
        self._port = port
        self._total = subscriptions
        self._rate = rate
        self._topic_bytes = topic_bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0
        self.connections = 0
        self.elapsed_s = 0.0
        self.error: BaseException | None = None

    def __enter__(self) -> SubscriptionFlooder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.error is not None:
            raise RuntimeError("the flooder failed") from self.error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def _topic(self, index: int) -> bytes:
        # Past the digits no two share a byte: a trie stores each one's tail apart.
        head = f"{index:09d}".encode()
        return head + b"t" * (self._topic_bytes - len(head))

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported by __exit__, on the caller's thread
            self.error = exc

    def _loop(self) -> None:
        begin = time.monotonic()
        while self.sent < self._total and not self._stop.is_set():
            try:
                conn = socket.create_connection(("127.0.0.1", self._port), timeout=1.0)
            except OSError:
                self._stop.wait(0.01)  # the proxy is busy accepting: try again shortly
                continue
            self.connections += 1
            try:
                conn.sendall(_zmtp_sub_handshake())
                while self.sent < self._total and not self._stop.is_set():
                    due = min(self._total, int((time.monotonic() - begin) * self._rate))
                    if due <= self.sent:
                        self._stop.wait(0.001)
                        continue
                    upto = min(due, self.sent + FLOOD_CHUNK)
                    chunk = b"".join(
                        _zmtp_frame(b"\x01" + self._topic(i)) for i in range(self.sent, upto)
                    )
                    conn.sendall(chunk)
                    self.sent = upto
            except OSError:
                pass  # closed by the proxy (or stuck for a second): a new connection
            finally:
                conn.close()
        self.elapsed_s = time.monotonic() - begin


class EventCounter:
    """Two SUBs that read every event, one of the event topic and one of everything."""

    def __init__(self, endpoint: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(endpoint,), daemon=True)
        self._lock = threading.Lock()
        self._counts = [0, 0]
        self.error: BaseException | None = None

    def __enter__(self) -> EventCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise RuntimeError("the event counter failed") from self.error

    def counts(self) -> tuple[int, int]:
        """Events read so far by the topic subscriber and by the everything subscriber."""
        with self._lock:
            return self._counts[0], self._counts[1]

    def _run(self, endpoint: str) -> None:
        try:
            self._loop(endpoint)
        except BaseException as exc:
            self.error = exc

    def _loop(self, endpoint: str) -> None:
        socks: list[zmq.Socket[bytes]] = []
        poller = zmq.Poller()
        try:
            for prefix in (EVENT_TOPIC, b""):
                sub: zmq.Socket[bytes] = CTX.socket(zmq.SUB)
                sub.linger = 0
                sub.setsockopt(zmq.SUBSCRIBE, prefix)
                sub.connect(endpoint)
                poller.register(sub, zmq.POLLIN)
                socks.append(sub)
            while not self._stop.is_set():
                ready = dict(poller.poll(50))
                for index, sub in enumerate(socks):
                    while sub in ready and sub.poll(0):
                        sub.recv_multipart()
                        with self._lock:
                            self._counts[index] += 1
        finally:
            for sub in socks:
                sub.close(linger=0)


@dataclass(frozen=True)
class FloodPhase:
    """One window: lookups, memory, the changes made and the events each reader got."""

    load: LoadRun
    rss_peak_mib: float
    changes: int
    topic_events: int
    all_events: int
    sent: int = 0
    connections: int = 0
    flood_s: float = 0.0


def _flood_window(
    serve_query: str, pid: int, port: int, duration_s: float, flood: SubscriptionFlooder | None
) -> FloodPhase:
    with (
        EventCounter(tcp(port)) as counter,
        RssSampler(pid) as rss,
        Changer(serve_query, FLOOD_CHANGES_PER_S) as changer,
    ):
        # The readers join first: what they miss later is the flood's doing.
        _wait_for_events(counter)
        topic0, all0 = counter.counts()
        epoch0 = changer.last_epoch
        start_kib = vm_rss_kib(pid)
        if flood is None:
            load = drive(serve_query, 1, duration_s)
        else:
            with flood:
                load = drive(serve_query, 1, duration_s)
                while not flood.done() and vm_rss_kib(pid) - start_kib < FLOOD_ABORT_MIB * 1024:
                    time.sleep(0.05)
        topic1, all1 = counter.counts()
        changes = changer.last_epoch - epoch0
    return FloodPhase(
        load,
        rss.peak_mib,
        changes,
        topic1 - topic0,
        all1 - all0,
        sent=flood.sent if flood else 0,
        connections=flood.connections if flood else 0,
        flood_s=flood.elapsed_s if flood else 0.0,
    )


def _wait_for_events(counter: EventCounter) -> None:
    """Until both readers have had an event (a change's or a refresh's)."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while min(counter.counts()) == 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the readers had no event in {CONNECT_TIMEOUT_S:g} s")
        time.sleep(0.02)


def subscription_flood(subscriptions: int, rate: float, topic_bytes: int = 100) -> Result:
    """One peer sends ``subscriptions`` distinct ``topic_bytes``-byte topics, ``rate`` a second."""
    duration_s = subscriptions / rate
    port = free_port()
    with running_serve("--events", tcp(port)) as serve:
        pid = serve.proc.pid
        baseline = _flood_window(serve.query, pid, port, duration_s, None)
        start_mib = vm_rss_kib(pid) / 1024
        print(f"  baseline: RSS {start_mib:.1f} MiB, p99 {baseline.load.p99_us:.0f} us", flush=True)
        flooder = SubscriptionFlooder(port, subscriptions, rate, topic_bytes)
        flooded = _flood_window(serve.query, pid, port, duration_s, flooder)
        after_mib = vm_rss_kib(pid) / 1024
        print(
            f"  flood: {flooded.sent:,} subscriptions over {flooded.connections:,} connections"
            f" in {flooded.flood_s:.1f} s; RSS peak {flooded.rss_peak_mib:.1f} MiB,"
            f" {after_mib:.1f} after; p99 {flooded.load.p99_us:.0f} us",
            flush=True,
        )
    return _flood_result(
        subscriptions,
        rate,
        topic_bytes,
        baseline,
        flooded,
        start_mib=start_mib,
        after_mib=after_mib,
    )


def _flood_row(name: str, phase: FloodPhase, start_mib: float) -> list[str]:
    return [
        name,
        f"{phase.sent:,}",
        f"{phase.changes:,}",
        f"{phase.topic_events:,} / {phase.all_events:,}",
        f"{phase.load.p50_us:.0f}",
        f"{phase.load.p99_us:.0f}",
        f"{phase.rss_peak_mib:.1f}",
        f"{phase.rss_peak_mib - start_mib:+.1f}",
    ]


def _flood_result(
    subscriptions: int,
    rate: float,
    topic_bytes: int,
    baseline: FloodPhase,
    flooded: FloodPhase,
    *,
    start_mib: float,
    after_mib: float,
) -> Result:
    result = Result(
        f"A subscriber flooding the events socket ({subscriptions:,} distinct subscriptions"
        f" of {topic_bytes} bytes, {rate:,.0f}/s)",
        [
            "phase",
            "subscriptions sent",
            "changes made",
            "events read (topic / everything)",
            "find_server p50 (us)",
            "find_server p99 (us)",
            "serve RSS peak (MiB)",
            "RSS growth (MiB)",
        ],
        [_flood_row("no flood", baseline, start_mib), _flood_row("flood", flooded, start_mib)],
    )
    growth = flooded.rss_peak_mib - start_mib
    result.check(
        f"RSS growth under {flooded.sent:,} subscriptions {growth:.1f} MiB",
        f"< {FLOOD_GROWTH_TARGET_MIB:g} MiB",
        growth < FLOOD_GROWTH_TARGET_MIB and flooded.sent == subscriptions,
    )
    # Refreshes too reach the readers, so a ratio near 1 or above is every change.
    for name, events in (("event-topic", flooded.topic_events), ('""', flooded.all_events)):
        ratio = events / max(1, flooded.changes)
        result.check(
            f"{name} subscriber read {events:,} events for {flooded.changes:,} changes"
            f" ({ratio:.2f})",
            f">= {FLOOD_EVENTS_TARGET:g}",
            ratio >= FLOOD_EVENTS_TARGET,
        )
    result.report(
        f"find_server p99 {flooded.load.p99_us / 1000:.2f} ms during the flood,"
        f" {baseline.load.p99_us / 1000:.2f} ms without"
    )
    result.notes += [
        f"One `rpcproxy serve`; two windows of {subscriptions / rate:g} s, each with"
        f" {FLOOD_CHANGES_PER_S:g} changes a second (`Changer`), one REQ client sending"
        " `find_server` back to back, and two SUBs that read everything, one subscribed to"
        " `event/active_server` and one to everything (joined before the window). The"
        f" first window is the baseline; RSS after it is the start, {start_mib:.1f} MiB. In"
        f" the second, one peer sends {subscriptions:,} distinct subscriptions of"
        f" {topic_bytes} bytes (a 9-digit serial, then a filler) at {rate:,.0f} a second,"
        " speaking ZMTP by hand as a SUB would, over"
        f" {flooded.connections:,} connections (it connects again whenever the proxy closes"
        f" one). RSS is sampled every 20 ms; {after_mib:.1f} MiB once the flood was over."
        f" The flood stops early if RSS grows by {FLOOD_ABORT_MIB:g} MiB (a fail).",
    ]
    return result
