"""ProxyClient: the library other Python services use to talk to rpcproxy.

It speaks docs/protocol.md section 1 through a :class:`~rpcproxy.bus.client._transport.Transport`:
by default a ZeroMQ DEALER to the proxy (:class:`~rpcproxy.bus.client._transport.ZmqTransport`),
or any transport given, such as :class:`rpcproxy.testing.MockTransport` in a
user's tests. A call makes up to ``retries`` tries of ``timeout_s`` each (the
ZeroMQ guide's *Lazy Pirate* count), resending the same request, and gives
up with :class:`ProxyTimeoutError`. A reply that comes after its call gave up
is dropped by its id, never taken for the next call's.

Resending is safe because every op is safe to apply twice:

- ``ping``, ``find_server``, ``servers`` and ``status`` only read;
- ``add_primary_server``, ``set_backup_servers`` and ``remove_server`` set a
  membership, so applying one again finds it already set;
- ``notify_failed_server`` only rotates when ``addr`` is *still* the active
  server, so a duplicate after a successful rotation does nothing (unless the
  server became active again in between, which is a fresh failure anyway);
- ``heartbeat`` is a merge that is idempotent, and with ``publisher``/``seq``
  a duplicate is recognised as stale;
- ``rebalance`` and ``reset_rebalance_timer`` at worst run twice, which is
  what a slightly earlier timer would have done.

A duplicate may make a write's reply say "nothing changed" (``added`` false,
``rotated`` false...) although the first copy did change it.

A client may be shared by threads. Its calls to the proxy take turns on its
one socket (a lock: pyzmq sockets are not thread-safe), so threads that make
many calls each want a client of their own. A *watching* client
(``watch=True``, :mod:`rpcproxy.bus.client._watch`) answers ``find_server``
from a local view that a background thread keeps current from the proxy's
events; that read takes no lock and makes no round trip, so one watching
client serves a whole thread pool's lookups. For asyncio, use
:class:`~rpcproxy.bus.client._aio.AsyncProxyClient`.

The errors and result types live in :mod:`rpcproxy.bus.client._results`
(shared with the asyncio client) and are re-exported here.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final, Self, TypeVar, assert_never

import zmq

from rpcproxy.bus.client import _results
from rpcproxy.bus.client._failover import (
    DEFAULT_HOLD_S,
    AwaitServer,
    Failed,
    Find,
    Invoke,
    Pause,
    Report,
    RetryOn,
    failover,
)
from rpcproxy.bus.client._results import (
    Call,
    Ops,
    ProxyError,
    ProxyTimeoutError,
    encode_request,
    parse_reply,
)
from rpcproxy.bus.client._transport import Transport, ZmqTransport
from rpcproxy.bus.client._view import Observation
from rpcproxy.bus.client._watch import Watcher, WatchStats
from rpcproxy.bus.net.keys import CurveClient
from rpcproxy.bus.wire import DEFAULT_QUERY_ENDPOINT, Server

DEFAULT_ENDPOINT: Final = DEFAULT_QUERY_ENDPOINT

log = logging.getLogger(__name__)

_S = TypeVar("_S")
_T = TypeVar("_T")


def check_options(timeout_s: float, retries: int) -> None:
    """Refuse settings no call could work with (both clients)."""
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    if retries < 1:
        raise ValueError(f"retries must be at least 1, got {retries!r}")


def timed_out(endpoint: str, retries: int, timeout_s: float) -> ProxyTimeoutError:
    return ProxyTimeoutError(f"no reply from {endpoint} after {retries} tries of {timeout_s:g} s")


class ProxyClient(Ops):
    """A blocking client of the proxy's query socket, with retries.

    Thread-safe: calls take turns on the client's one socket; a watching
    client's ``find_server`` reads its local view with no lock at all.

    Args:
        endpoint: the proxy's query endpoint.
        timeout_s: how long each try waits for the reply.
        retries: how many tries a call makes before :class:`ProxyTimeoutError`.
        context: the ZeroMQ context; the process-wide one by default. The
            client never terminates a context.
        max_message_bytes: the largest reply accepted (ZeroMQ ``MAXMSGSIZE``);
            a bigger one drops the connection and shows up as a timeout.
        curve: the proxy's public key and this client's key pair, for a proxy
            that runs with CURVE (see :mod:`rpcproxy.bus.net.keys`).
        transport: carries the frames instead of ZeroMQ (``context``,
            ``max_message_bytes`` and ``curve`` are then unused), e.g.
            :class:`rpcproxy.testing.MockTransport`. The client closes it.
        events: the proxy's events endpoint, for ``watch``.
        watch: follow the events (docs/protocol.md section 5) on a daemon
            thread and answer ``find_server`` from the local view while it is
            fresh; ask the proxy otherwise. ``notify_failed_server``'s reply
            updates the view at once (a caller reads its own writes).
        events_refresh_s: the proxy's ``events_refresh_s``, for ``watch``
            (must match it: silence for three of them means a lost stream).

    Raises:
        ValueError: ``timeout_s`` is not positive, ``retries`` is below 1, or
            ``watch`` without ``events`` or without a positive ``events_refresh_s``.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout_s: float = 2.0,
        retries: int = 3,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        max_message_bytes: int = 1 << 20,
        curve: CurveClient | None = None,
        transport: Transport | None = None,
        events: str | None = None,
        watch: bool = False,
        events_refresh_s: float = 1.0,
    ) -> None:
        check_options(timeout_s, retries)
        if watch and not events:
            raise ValueError("watch=True needs the proxy's events endpoint (events=...)")
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_message_bytes = max_message_bytes
        self.events = events
        self.watch = watch
        self.events_refresh_s = events_refresh_s
        self._curve = curve
        self._context = context
        self._given_transport = transport
        self._transport = transport if transport is not None else self._new_transport()
        self._ids = itertools.count(1)
        # call()'s pauses: each client its own, so no two share a sequence.
        self._random = random.Random()
        self._closed = False
        self._lock = threading.Lock()
        """Held around every exchange on ``_transport`` (one socket, many threads)."""
        self._watcher: Watcher | None = None
        if watch and events:
            self._watcher = Watcher(
                events,
                refresh_s=events_refresh_s,
                transport=self._new_transport(),
                context=self._context,
                curve=curve,
                resync_timeout_s=timeout_s,
            )
            self._watcher.start()

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the watcher; close the transport at once (unsent requests dropped). Idempotent."""
        self._closed = True
        if self._watcher is not None:
            self._watcher.close()
        with self._lock:
            self._transport.close()

    # -- ops -----------------------------------------------------------------
    # The other ops are Ops's methods (bus/client/_results.py), shared by both clients.

    def find_server(self) -> Server | None:
        """The active server, or None when the proxy knows no server.

        A watching client answers from its local view while it is fresh (no
        round trip, no lock), else asks the proxy.
        """
        if self._watcher is not None:
            view = self._watcher.fresh()
            if view is not None:
                return view.server
        return self._run(_results.find_server())

    def watch_stats(self) -> WatchStats | None:
        """What a watching client's watcher has seen (gaps, restarts, re-syncs...); else None."""
        return self._watcher.stats() if self._watcher is not None else None

    def call(
        self,
        fn: Callable[[Server], _T],
        /,
        *,
        hold_s: float = DEFAULT_HOLD_S,
        retry_on: RetryOn = (OSError,),
    ) -> _T:
        """``fn(server)`` on the active server, failing over as Nomad's client does.

        A failure that is an instance of ``retry_on`` (exception types, or a
        predicate on the exception) reports that server with
        :meth:`notify_failed_server`, waits a random pause below
        ``hold_s / 16`` and tries the server now at the head, until
        ``hold_s`` has passed since the first try; then the last failure is
        raised, its ``servers_tried`` attribute and a note naming the servers
        tried. Any other exception propagates at once and nothing is
        reported. With no server known it waits for one within the hold (a
        watching client wakes when an event brings one), then raises
        :class:`NoServerError`. With ``watch=True``, a call that succeeds
        first time makes no round trip to the proxy.

        Safe from many threads at once: each call keeps its own state.

        Args:
            fn: what to do with a server (its own timeout is its business:
                the hold bounds the waits between tries, not ``fn``).
            hold_s: how long, from the first try, failures are retried.
            retry_on: which failures are safe to retry on another server;
                ``(OSError,)`` covers refused, reset and timed-out
                connections. A write that must not run twice passes ``()``.
        """
        first = None
        watcher = self._watcher
        if watcher is not None:
            # The happy path, written out: one local read and the call.
            # One clock read, for freshness and for the hold's start alike.
            started = watcher.clock()
            view = watcher.fresh_at(started)
            server = view.server if view is not None else None
            if server is not None:
                try:
                    return fn(server)
                except Exception as exc:
                    first = (started, server, Failed(exc))
        clock = watcher.clock if watcher is not None else time.monotonic
        steps = failover(hold_s, retry_on, clock, self._random.random, first=first)
        answer: object = None
        while True:
            try:
                step = steps.send(answer)
            except StopIteration as done:
                result: _T = done.value
                return result
            answer = None
            match step:
                case Find():
                    answer = self.find_server()
                case Invoke(server):
                    try:
                        answer = fn(server)
                    except Exception as exc:
                        answer = Failed(exc)
                case Report(server):
                    self._report_failed(server)
                case Pause(seconds):
                    time.sleep(seconds)
                case AwaitServer(seconds):
                    if self._watcher is not None:
                        self._watcher.wait_for_server(seconds)
                    else:
                        time.sleep(seconds)
                case _:
                    assert_never(step)

    def request(self, op: str, /, *, timeout_s: float | None = None, **keys: Any) -> dict[str, Any]:
        """Send any op with ``keys`` and return the whole success reply.

        The escape hatch for ops this client does not wrap yet (``call``
        until 0.2). ``timeout_s`` overrides the per-try wait (so an op key
        cannot be named ``timeout_s``).

        Raises:
            ProxyError: a subclass per error code, :class:`ProxyTimeoutError`
                or :class:`ProtocolError`.
        """
        return self._request(op, keys, timeout_s)

    def _report_failed(self, server: Server) -> None:
        """``call``'s report of a failed server: best effort, never the caller's failure."""
        try:
            self.notify_failed_server(server.addr)
        except ProxyError as exc:
            # The proxy is unreachable too: the next try asks it again.
            log.debug("reporting %s as failed: %s", server.addr, exc)

    # -- plumbing ------------------------------------------------------------

    def _new_transport(self) -> Transport:
        """A transport of its own for another thread (a ZeroMQ socket is not thread-safe).

        A transport given to the constructor is returned itself: it must then
        be safe to use from several threads (the mock transports are).
        """
        if self._given_transport is not None:
            return self._given_transport
        return ZmqTransport(
            self.endpoint,
            context=self._context,
            max_message_bytes=self.max_message_bytes,
            curve=self._curve,
        )

    def _observed(self, server: Server | None, epoch: int | None, instance: str | None) -> None:
        """Every ``find_server`` and ``notify_failed_server`` reply's view of the active server.

        ``epoch`` and ``instance`` are None from proxies older than version 2.
        A watching client adopts it into its view when it is newer.
        """
        if self._watcher is not None and epoch is not None and instance is not None:
            self._watcher.observe(Observation(server, epoch, instance))

    def _run(self, call: Call[_S, _T], transport: Transport | None = None) -> _T:
        result, observed = call.read(self._request(call.op, call.keys, call.timeout_s, transport))
        if observed is not None:
            self._observed(observed.server, observed.epoch, observed.instance)
        return result

    def _request(
        self,
        op: str,
        keys: Mapping[str, Any],
        timeout_s: float | None,
        transport: Transport | None = None,
    ) -> dict[str, Any]:
        """One request and its checked reply, on ``transport`` (the client's own by default)."""
        if self._closed:
            raise RuntimeError("ProxyClient is closed")
        request_id = next(self._ids)
        frame = encode_request(op, keys, request_id)
        wait_s = timeout_s if timeout_s is not None else self.timeout_s
        carrier = transport if transport is not None else self._transport
        for _ in range(self.retries):
            try:
                if carrier is self._transport:
                    with self._lock:
                        raw = carrier.exchange(frame, wait_s)
                else:
                    raw = carrier.exchange(frame, wait_s)
            except ProxyTimeoutError:
                continue
            return parse_reply(raw, request_id)
        raise timed_out(self.endpoint, self.retries, wait_s)
