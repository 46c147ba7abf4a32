"""A small HTTP server that idle or slow peers cannot lock out: one I/O thread, a few workers.

A thread per connection (``ThreadingHTTPServer``) either grows without end or,
capped, lets a few hundred idle TCP connections take every slot, so
Prometheus's scrape is refused. Here one thread owns every socket, non-blocking
behind a selector: it accepts, reads request heads, and writes responses. A
connection costs a descriptor and a few kilobytes until its head is complete;
only then does it reach one of a fixed number of worker threads, which run its
route and hand the bytes back to the loop to write.

The bounds, all the peer's doing and none able to shut the door:

* ``max_connections`` open at once (descriptors). At the cap a new connection
  evicts the oldest one still reading its head, so whoever holds connections
  open only pushes out its own older ones. A scrape sends its head with its
  connect: the kernel hands the connection over once those bytes are in
  (Linux's TCP_DEFER_ACCEPT) and the loop reads it as it accepts it, so the
  scrape has a request before anything newer can evict it; a peer that says
  nothing reaches the loop only a second later. Only when every open
  connection has a complete request (served in order) does the loop stop
  accepting, until one closes; the rest wait in the kernel's backlog.
* ``idle_timeout_s`` without a byte while reading the head, and
  ``request_deadline_s`` for the whole connection (head, work, write), so a
  peer trickling a byte a second (slowloris) or never reading the response is
  closed too.
* :data:`~rpcproxy.bus.service.http_wire.MAX_HEAD_BYTES` of head (431 past it).
* One request per connection; every response closes it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import selectors
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from rpcproxy.bus.service.http_wire import (
    MAX_HEAD_BYTES,
    HttpError,
    Request,
    Route,
    head_end,
    parse_head,
    render,
    route_of,
)
from rpcproxy.log_gate import PeerLog

__all__ = ["HttpFront"]

log = logging.getLogger(__name__)

_BACKLOG = 512
"""Connects waiting for the loop: a burst must not overflow into SYN retries
(a scrape caught in one would wait a second or more for its retransmission)."""

_ACCEPT_BATCH = 8
"""Accepts per turn of the loop, so reads of connections already open (a
scrape's head) come between bursts of connects that would evict them."""

_RECV_BYTES = 4096

_DEFER_ACCEPT_S = 1
"""Linux's TCP_DEFER_ACCEPT: the kernel hands over a connection once its first
bytes are in (or after this long), so a scrape arrives with its head, is read
at once and never waits in the table a flood of connects evicts from; a peer
that connects and says nothing costs no descriptor for that second."""

_ACCEPT_PAUSE_S = 0.1
"""How long accepting rests when the process is out of descriptors (the
listener would otherwise be readable, and the loop spin, until one frees)."""

_LISTENER = "listener"
_WAKE = "wake"


def listen_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    """The family and socket address to listen on; an IPv6 literal may be in brackets."""
    infos = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


@dataclass(eq=False)
class _Conn:
    """One accepted connection; only the loop's thread touches it (workers carry it back)."""

    sock: socket.socket
    ends_at: float
    quiet_until: float
    head: bytearray = field(default_factory=bytearray)
    scanned: int = 0
    out: memoryview | None = None
    watching: int = 0
    closed: bool = False


class HttpFront:
    """Serves a route table over HTTP/1.x on ``host:port``, bounded as the module says.

    The listener is bound here, so a port in use fails at construction;
    :meth:`start` starts the loop and the workers.

    Args:
        host: address to listen on; an IPv6 literal may be in brackets.
        port: port to listen on; 0 picks a free one (see :attr:`port`).
        routes: path to route; other paths are 404, methods other than GET
            and HEAD 405.
        max_connections: connections open at once.
        idle_timeout_s: how long a connection may stay silent before its
            head is complete.
        request_deadline_s: how long one connection may last in all.
        workers: threads running routes.
        name: the loop thread's name (workers add ``-worker-N``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        routes: Mapping[str, Route],
        *,
        max_connections: int = 64,
        idle_timeout_s: float = 3.0,
        request_deadline_s: float = 10.0,
        workers: int = 2,
        name: str = "rpcproxy-http",
    ) -> None:
        if max_connections < 1 or workers < 1:
            raise ValueError("max_connections and workers must be >= 1")
        family, sockaddr = listen_address(host, port)
        # Not socket.create_server: it makes an IPv6 listener v6-only, and
        # "[::]" has always taken IPv4 too (the host's default).
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "TCP_DEFER_ACCEPT"):
                self._listener.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, _DEFER_ACCEPT_S
                )
            self._listener.bind(sockaddr)
            self._listener.listen(_BACKLOG)
            self._listener.setblocking(False)
        except OSError:
            self._listener.close()
            raise
        self._routes = dict(routes)
        self._max = max_connections
        self._idle_s = idle_timeout_s
        self._deadline_s = request_deadline_s
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._jobs: queue.SimpleQueue[tuple[_Conn, Request, Route] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[_Conn, bytes]] = queue.SimpleQueue()
        # Accept order: the first is the oldest, the one a new connection evicts.
        self._reading: dict[_Conn, None] = {}
        self._serving: set[_Conn] = set()  # with a worker, or writing its response
        self._listening = False
        self._paused_until = 0.0
        self._next_due = math.inf
        self._stopping = threading.Event()
        self._peer_log = PeerLog(log)
        self.evicted = 0
        """Connections closed to make room for a newer one."""
        self.timed_out = 0
        """Connections closed at the idle timeout or the request deadline."""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._workers = [
            threading.Thread(target=self._work, name=f"{name}-worker-{i}", daemon=True)
            for i in range(workers)
        ]

    @property
    def port(self) -> int:
        port: int = self._listener.getsockname()[1]
        return port

    def start(self) -> None:
        for worker in self._workers:
            worker.start()
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Close the listener and every connection; a route still running is left to end."""
        deadline = time.monotonic() + timeout_s
        self._stopping.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        for _ in self._workers:
            self._jobs.put(None)
        for worker in self._workers:
            if worker.is_alive():
                worker.join(max(0.0, deadline - time.monotonic()))
        self._listener.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- the workers ---------------------------------------------------------------

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            conn, request, route = job
            try:
                response = route(request)
            except Exception:
                log.exception("HTTP %s %s failed", request.method, request.path)
                response = HttpError(HTTPStatus.INTERNAL_SERVER_ERROR).response
            self._done.put((conn, render(response, head_only=request.method == "HEAD")))
            self._wake()

    def _wake(self) -> None:
        # Full: the loop has wake-ups to read already. Closed: stopped.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # -- the loop ------------------------------------------------------------------

    def _run(self) -> None:
        self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._update_listener(time.monotonic())
        try:
            while not self._stopping.is_set():
                timeout = None
                if self._next_due < math.inf:
                    timeout = max(0.0, self._next_due - time.monotonic())
                for key, _ in self._selector.select(timeout):
                    if key.data is _LISTENER:
                        self._accept()
                    elif key.data is _WAKE:
                        self._finish_served()
                    elif not key.data.closed:  # not evicted earlier in this batch
                        self._on_ready(key.data)
                now = time.monotonic()
                if now >= self._next_due:
                    self._sweep(now)
        finally:
            for conn in [*self._reading, *self._serving]:
                self._close(conn)

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            if not self._reading and len(self._serving) >= self._max:
                # Every slot has a request: leave the rest in the backlog.
                self._update_listener(time.monotonic())
                return
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: out of descriptors or memory
                self._peer_log.warning("accept", "HTTP endpoint cannot accept: %s", exc)
                self._paused_until = time.monotonic() + _ACCEPT_PAUSE_S
                self._next_due = min(self._next_due, self._paused_until)
                self._update_listener(time.monotonic())
                return
            sock.setblocking(False)
            now = time.monotonic()
            conn = _Conn(sock, ends_at=now + self._deadline_s, quiet_until=now + self._idle_s)
            self._reading[conn] = None
            self._watch(conn, selectors.EVENT_READ)
            self._next_due = min(self._next_due, conn.quiet_until, conn.ends_at)
            if len(self._reading) + len(self._serving) > self._max:
                self._evict_oldest()
            # Read at once: a connection that waited in the backlog (under a
            # flood of connects, when it matters) has its head in already and
            # is served before anything newer can evict it.
            self._read(conn)

    def _evict_oldest(self) -> None:
        self.evicted += 1  # counted first: a peer that sees the close sees the count
        self._close(next(iter(self._reading)))
        self._peer_log.warning(
            "evict",
            "HTTP endpoint holds %d connections, its most: closing the oldest without a request",
            self._max,
        )

    def _on_ready(self, conn: _Conn) -> None:
        if conn.out is not None:
            self._flush(conn)
        else:
            self._read(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            chunk = conn.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(conn)
            return
        conn.head += chunk
        conn.quiet_until = time.monotonic() + self._idle_s
        end = head_end(conn.head, conn.scanned)
        conn.scanned = len(conn.head)
        if end < 0 and len(conn.head) <= MAX_HEAD_BYTES:
            return
        request: Request | None = None
        try:
            if end < 0 or end > MAX_HEAD_BYTES:
                raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            request = parse_head(bytes(conn.head[:end]))
            route = route_of(self._routes, request)
        except HttpError as exc:
            # Answered here: an error costs no worker.
            head_only = request is not None and request.method == "HEAD"
            self._respond(conn, render(exc.response, head_only=head_only))
            return
        del self._reading[conn]
        self._watch(conn, 0)  # nothing more to read; the worker's bytes come back by _WAKE
        conn.head = bytearray()
        self._serving.add(conn)
        self._jobs.put((conn, request, route))

    def _finish_served(self) -> None:
        try:
            while self._wake_r.recv(_RECV_BYTES):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while True:
            try:
                conn, data = self._done.get_nowait()
            except queue.Empty:
                return
            if not conn.closed:  # else closed at its deadline while the route ran
                self._respond(conn, data)

    def _respond(self, conn: _Conn, data: bytes) -> None:
        self._reading.pop(conn, None)
        self._serving.add(conn)
        conn.out = memoryview(data)
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        assert conn.out is not None
        try:
            while conn.out:
                conn.out = conn.out[conn.sock.send(conn.out) :]
        except (BlockingIOError, InterruptedError):
            self._watch(conn, selectors.EVENT_WRITE)  # the rest when the peer reads
            return
        except OSError:
            pass  # the peer went away: its problem
        self._close(conn)

    def _watch(self, conn: _Conn, events: int) -> None:
        if events == conn.watching:
            return
        if not conn.watching:
            self._selector.register(conn.sock, events, conn)
        elif not events:
            self._selector.unregister(conn.sock)
        else:
            self._selector.modify(conn.sock, events, conn)
        conn.watching = events

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        self._watch(conn, 0)
        conn.closed = True
        self._reading.pop(conn, None)
        self._serving.discard(conn)
        conn.sock.close()
        if not self._listening:
            self._update_listener(time.monotonic())

    def _sweep(self, now: float) -> None:
        """Close what is past its time; find when the next one is due."""
        due = self._paused_until if self._paused_until > now else math.inf
        for conn in list(self._reading):
            at = min(conn.quiet_until, conn.ends_at)
            if at <= now:
                self.timed_out += 1
                self._close(conn)
            else:
                due = min(due, at)
        for conn in list(self._serving):
            if conn.ends_at <= now:
                self.timed_out += 1
                self._close(conn)
            else:
                due = min(due, conn.ends_at)
        self._next_due = due
        self._update_listener(now)

    def _update_listener(self, now: float) -> None:
        room = bool(self._reading) or len(self._serving) < self._max
        want = room and now >= self._paused_until and not self._stopping.is_set()
        if want == self._listening:
            return
        if want:
            self._selector.register(self._listener, selectors.EVENT_READ, _LISTENER)
        else:
            self._selector.unregister(self._listener)
        self._listening = want
