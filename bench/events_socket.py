"""What the benchmarks of the events socket share: a serve to measure, changes, figures.

bench/idle_subscribers.py (subscribers that never read) and
bench/subscription_flood.py (a peer that floods it with subscriptions) each
run one ``rpcproxy serve`` with its events socket on a port of their own,
make events by changing the active server from a :class:`Changer`, measure
a baseline window first, and report lookups and memory per window.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import zmq
from common import CTX, Background, Serve, free_port, pack, running_serve, tcp, unpack
from lookup import LoadRun

from tests.procfs import vm_rss_mib

EVENT_TOPIC = b"event/active_server"
CONNECT_TIMEOUT_S = 60.0
"""How long subscribers may take to connect, or to hear their first event."""
WINDOW = 64
"""Change requests in flight (the proxy admits at most 128 waiting writes)."""
SERVER = "10.0.0.1:4647"


@contextlib.contextmanager
def serving_events() -> Iterator[tuple[Serve, int]]:
    """``rpcproxy serve`` with its events socket on a fresh loopback port: (serve, that port)."""
    port = free_port()
    with running_serve("--events", tcp(port)) as serve:
        yield serve, port


def start_rss_mib(pid: int, baseline: LoadRun) -> float:
    """RSS after the baseline window: the start every growth is measured from (printed)."""
    start_mib = vm_rss_mib(pid)
    print(f"  baseline: RSS {start_mib:.1f} MiB, p99 {baseline.p99_us:.0f} us", flush=True)
    return start_mib


WINDOW_HEADERS = [
    "find_server p50 (us)",
    "find_server p99 (us)",
    "serve RSS peak (MiB)",
    "RSS growth (MiB)",
]
"""The columns of :meth:`Window.cells`, in its order."""


@dataclass(frozen=True)
class Window:
    """What every window measures: ``find_server``'s latency and serve's peak RSS."""

    load: LoadRun
    rss_peak_mib: float

    def cells(self, start_mib: float, growth_format: str = ".1f") -> list[str]:
        """The :data:`WINDOW_HEADERS` columns: growth from ``start_mib``, as ``growth_format``."""
        return [
            f"{self.load.p50_us:.0f}",
            f"{self.load.p99_us:.0f}",
            f"{self.rss_peak_mib:.1f}",
            f"{self.rss_peak_mib - start_mib:{growth_format}}",
        ]


class Changer(Background):
    """Changes the active server ``rate`` times a second from a thread.

    ``add_primary_server`` and ``remove_server`` of one address, pipelined on
    a DEALER: from an empty list each one changes the active server (to the
    address, then to none), and a write the proxy refuses (``unavailable``)
    does not put the next ones out of step, as alternating
    ``notify_failed_server`` between two servers would.
    """

    def __init__(self, endpoint: str, rate: float) -> None:
        super().__init__("the changer")
        self._endpoint = endpoint
        self._rate = rate
        self.sent = 0
        self.refused = 0
        self.first_epoch: int | None = None
        self.last_epoch = 0
        self.elapsed_s = 0.0

    @property
    def changes_per_s(self) -> float:
        if self.first_epoch is None or self.elapsed_s <= 0:
            return 0.0
        return (self.last_epoch - self.first_epoch) / self.elapsed_s

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
