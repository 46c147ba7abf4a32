"""Benchmark: one peer floods the events socket with distinct subscriptions.

The other way a subscriber can try to grow the proxy (the first is never
reading, bench/idle_subscribers.py): one peer sends distinct subscriptions,
``rate`` a second, while two subscribers that read (the event topic, and
everything) count what reaches them; the same changes and lookups without
the flood, just before, are the baseline.

Run through bench/run.py; ``subscription_flood(subscriptions=1_000_000,
rate=50_000.0)`` is the full run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq
from common import CTX, Background, Result, tcp
from events_socket import (
    CONNECT_TIMEOUT_S,
    EVENT_TOPIC,
    WINDOW_HEADERS,
    Changer,
    Window,
    serving_events,
    start_rss_mib,
)
from flood import RssSampler
from lookup import drive

from tests.procfs import vm_rss_kib, vm_rss_mib
from tests.zmtp import SubscriptionFlood

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


class SubscriptionFlooder(SubscriptionFlood):
    """Sends distinct subscriptions to the events endpoint, ``rate`` a second, for a ``with`` block.

    The peer of :class:`tests.zmtp.SubscriptionFlood` (ZMTP by hand, so it
    keeps none of the subscriptions it sends and never waits on libzmq's
    queues), paced.
    """

    def __init__(self, port: int, subscriptions: int, rate: float, topic_bytes: int) -> None:
        super().__init__(port, subscriptions, self._topic_of(topic_bytes), chunk=FLOOD_CHUNK)
        self._rate = rate
        self._begin = 0.0

    @staticmethod
    def _topic_of(topic_bytes: int) -> Callable[[int], bytes]:
        def topic(index: int) -> bytes:
            # Past the digits no two share a byte: a trie stores each one's tail apart.
            head = f"{index:09d}".encode()
            return head + b"t" * (topic_bytes - len(head))

        return topic

    def due(self) -> int:
        return min(self.total, int((time.monotonic() - self._begin) * self._rate))

    def __enter__(self) -> SubscriptionFlooder:
        self._begin = time.monotonic()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventCounter(Background):
    """Two SUBs that read every event, one of the event topic and one of everything."""

    def __init__(self, endpoint: str) -> None:
        super().__init__("the event counter")
        self._endpoint = endpoint
        self._lock = threading.Lock()
        self._counts = [0, 0]

    def counts(self) -> tuple[int, int]:
        """Events read so far by the topic subscriber and by the everything subscriber."""
        with self._lock:
            return self._counts[0], self._counts[1]

    def _loop(self) -> None:
        socks: list[zmq.Socket[bytes]] = []
        poller = zmq.Poller()
        try:
            for prefix in (EVENT_TOPIC, b""):
                sub: zmq.Socket[bytes] = CTX.socket(zmq.SUB)
                sub.linger = 0
                sub.setsockopt(zmq.SUBSCRIBE, prefix)
                sub.connect(self._endpoint)
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
class FloodPhase(Window):
    """One window: lookups, memory, the changes made and the events each reader got."""

    changes: int
    topic_events: int
    all_events: int
    sent: int = 0
    connections: int = 0
    flood_s: float = 0.0

    def row(self, name: str, start_mib: float) -> list[str]:
        events = f"{self.topic_events:,} / {self.all_events:,}"
        return [name, f"{self.sent:,}", f"{self.changes:,}", events, *self.cells(start_mib, "+.1f")]


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
    with serving_events() as (serve, port):
        pid = serve.proc.pid
        baseline = _flood_window(serve.query, pid, port, duration_s, None)
        start_mib = start_rss_mib(pid, baseline.load)
        flooder = SubscriptionFlooder(port, subscriptions, rate, topic_bytes)
        flooded = _flood_window(serve.query, pid, port, duration_s, flooder)
        after_mib = vm_rss_mib(pid)
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
            *WINDOW_HEADERS,
        ],
        [baseline.row("no flood", start_mib), flooded.row("flood", start_mib)],
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
