"""Hostile peers of an HTTP port: idle connections and slowloris ones, held open.

Used by the metrics endpoint's hostile-peer test and its benchmark
(bench/metrics_idle.py). A thread keeps ``idle`` connections that never send a
byte and ``slow`` ones that trickle an endless header, a byte at a time, and
opens a new one for each the server closes (at most ``reopen_per_s`` a
second), as an attacker who wants the port's slots would. Waiting is on a
selector with a short timeout, never a sleep.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from types import TracebackType

_TICK_S = 0.05
_SLOW_HEAD = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: "
"""Where a slowloris connection starts; the header then grows a byte at a time."""


class HostilePeers:
    """``idle`` + ``slow`` connections to ``host:port``, reopened when the server closes them.

    Counters (read from any thread; the peers' thread alone writes them):

    Attributes:
        attempts: connects tried, the first ones included.
        failed: connects that failed (refused, or timed out in a full backlog).
        closed_by_server: connections the server closed (end of file or reset).
        slow_closed: of those, slowloris ones.
    """

    def __init__(
        self,
        port: int,
        *,
        idle: int,
        slow: int = 0,
        host: str = "127.0.0.1",
        reopen_per_s: float = 1000.0,
        trickle_every_s: float = 0.5,
    ) -> None:
        self._address = (host, port)
        self._want = {False: idle, True: slow}
        self._reopen_per_s = reopen_per_s
        self._reopened = 0
        self._began = 0.0
        self._trickle_every_s = trickle_every_s
        self._selector = selectors.DefaultSelector()
        self._open: dict[socket.socket, bool] = {}  # socket -> is slow
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hostile-peers", daemon=True)
        self.attempts = 0
        self.failed = 0
        self.closed_by_server = 0
        self.slow_closed = 0
        self.error: BaseException | None = None

    def __enter__(self) -> HostilePeers:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Open every connection (in this thread, so they are all tried on return), then hold."""
        for slow, count in self._want.items():
            for _ in range(count):
                self._connect(slow)
        self._began = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """Close every connection; raises what the peers' thread raised, if anything."""
        self._stop.set()
        self._thread.join(30.0)
        for sock in list(self._open):
            sock.close()
        self._open.clear()
        self._selector.close()
        if self.error is not None:
            raise self.error

    def _connect(self, slow: bool) -> None:
        self.attempts += 1
        try:
            sock = socket.create_connection(self._address, timeout=5.0)
        except OSError:
            self.failed += 1
            return
        sock.setblocking(False)
        if slow:
            with contextlib.suppress(OSError):  # closed already: seen as readable below
                sock.send(_SLOW_HEAD)
        self._open[sock] = slow
        self._selector.register(sock, selectors.EVENT_READ)

    def _run(self) -> None:
        try:
            next_trickle = time.monotonic() + self._trickle_every_s
            while not self._stop.is_set():
                for key, _ in self._selector.select(_TICK_S):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    self._readable(sock)
                self._reopen()
                if time.monotonic() >= next_trickle:
                    next_trickle += self._trickle_every_s
                    for sock in [s for s, slow in self._open.items() if slow]:
                        with contextlib.suppress(OSError):  # closed: seen as readable
                            sock.send(b"a")
        except BaseException as exc:
            self.error = exc

    def _readable(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            return  # an answer (none is expected: no head is ever complete)
        slow = self._open.pop(sock)
        self._selector.unregister(sock)
        sock.close()
        self.closed_by_server += 1
        self.slow_closed += slow

    def _reopen(self) -> None:
        # A budget by the clock: the loop turns as often as connections close.
        allowed = int((time.monotonic() - self._began) * self._reopen_per_s) - self._reopened
        for slow, count in self._want.items():
            missing = count - sum(1 for s in self._open.values() if s == slow)
            for _ in range(max(0, min(missing, allowed))):
                self._connect(slow)
                self._reopened += 1
                allowed -= 1
