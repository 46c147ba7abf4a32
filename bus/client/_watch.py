"""The threaded watcher: follows the proxy's events so lookups need no round trip.

A :class:`Watcher` runs one daemon thread that owns a SUB socket on the
proxy's events endpoint (docs/protocol.md section 5) and a transport of its
own for the re-sync request (ZeroMQ sockets are not thread-safe, so it never
touches the client's). It feeds every message to a
:class:`~rpcproxy.bus.client._view.Follower` and publishes the resulting
:class:`~rpcproxy.bus.client._view.View` with one reference assignment, so
:meth:`Watcher.fresh` is a lock-free read of an immutable value from any
thread.

What it notices, and how:

- an epoch gap, including messages dropped past a high-water mark (the SUB
  side queues at most ``rcvhwm`` of them; the proxy drops what does not fit
  behind them): the next event's epoch jumps;
- a proxy restart: the next event (or reply) names another ``instance``;
- silence for ``3 x refresh_s``: the SUB socket is closed and a new one
  connected, since a peer that vanished without a TCP reset may never be
  noticed by the old connection, and the view re-synced.

Each case costs one ``find_server`` on the watcher's transport; until it
succeeds the view is not fresh and the client asks the proxy itself.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import zmq

from rpcproxy.bus.client import _results as results
from rpcproxy.bus.client._results import ProtocolError
from rpcproxy.bus.client._transport import Transport
from rpcproxy.bus.client._view import Follower, Observation, View
from rpcproxy.bus.net.keys import CurveClient
from rpcproxy.bus.wire import EVENT_TOPIC, Event, Server

log = logging.getLogger(__name__)

# The events socket's buffers, read each time one is made. Module settings
# rather than arguments: the defaults suit every user, and tests shrink them
# to provoke losses past the high-water mark with a short burst.
SUB_RCVHWM = 1000
"""Events the SUB socket queues before the proxy's side holds or drops them (ZeroMQ's default)."""
SUB_RCVBUF = -1
"""The SUB connection's kernel receive buffer in bytes (``RCVBUF``); -1 leaves it to the OS."""

EVENT_MAX_BYTES: Final = 1 << 16
"""The largest event accepted (``MAXMSGSIZE``): one server object, an epoch and an id."""

DRAIN_BATCH: Final = 256
"""Events read in one go before the watcher looks at its other duties again."""

RESYNC_ID_START: Final = 1 << 40
"""Request ids of re-syncs (any will do: the transport is the watcher's own)."""


_event_decoder: Final = msgspec.msgpack.Decoder(Event)
"""The wire's event; its ``reason`` and unknown keys are not looked at."""


def subscribe_to_events(sub: zmq.Socket[Any], endpoint: str, curve: CurveClient | None) -> None:
    """Set up a new SUB socket (threaded or asyncio) for the events and connect it.

    The buffer sizes are read at each call, so a test that shrinks them
    affects the next socket either watcher opens.
    """
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, SUB_RCVHWM)
    sub.setsockopt(zmq.RCVBUF, SUB_RCVBUF)
    sub.setsockopt(zmq.MAXMSGSIZE, EVENT_MAX_BYTES)
    if curve is not None:
        curve.secure(sub)
    sub.setsockopt(zmq.SUBSCRIBE, EVENT_TOPIC)
    sub.connect(endpoint)


def has_queued_events(sub: zmq.Socket[Any]) -> bool:
    """Whether events wait on ``sub``, unread (a cheap check, no poll).

    Asked before a watcher calls the proxy silent: a watcher that was busy
    (a stalled process, a blocked event loop) past the silence limit has
    the events that arrived meanwhile queued, and reading them tells it
    more (a gap, the current server) than replacing the socket would, which
    throws them away.
    """
    events = sub.getsockopt(zmq.EVENTS)
    assert isinstance(events, int)  # an int option (pyzmq types every option int | bytes)
    return bool(events & zmq.POLLIN)


def decode_event(frames: list[bytes]) -> Observation[Server] | None:
    """An event's observation; None for another topic or a payload that does not parse."""
    if len(frames) != 2 or frames[0] != EVENT_TOPIC:
        return None
    try:
        event = _event_decoder.decode(frames[1])
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    return Observation(event.server, event.epoch, event.instance)


def observation_of(observed: results.Observing | None) -> Observation[Server] | None:
    """What a reply says about the view; None from a proxy without ``epoch``/``instance``."""
    if observed is None or observed.epoch is None or observed.instance is None:
        return None
    return Observation(observed.server, observed.epoch, observed.instance)


def resync_request(request_id: int) -> tuple[bytes, Callable[[bytes], Observation[Server]]]:
    """A ``find_server`` frame and how to read its reply into an observation.

    Raises (the reader): :class:`~rpcproxy.ProxyError` for an error reply,
    :class:`~rpcproxy.ProtocolError` for a reply without ``epoch``/``instance``
    (a proxy older than docs/protocol.md version 2 cannot be watched).
    """
    call = results.find_server()
    frame = results.encode_request(call.op, call.keys, request_id)

    def read(raw: bytes) -> Observation[Server]:
        _, observed = call.read(results.parse_reply(raw, request_id))
        observation = observation_of(observed)
        if observation is None:
            raise ProtocolError("find_server's reply has no epoch/instance: the proxy is too old")
        return observation

    return frame, read


@dataclass(frozen=True, slots=True)
class WatchStats:
    """What a watcher has seen since it started (counts only grow)."""

    events: int
    """Events read (well-formed ones)."""
    malformed: int
    """Messages on the events socket that were not an event; ignored."""
    resyncs: int
    """Re-sync requests answered."""
    failed_resyncs: int
    """Re-sync requests that failed (no answer, an error): retried."""
    gaps: int
    """Epoch jumps: events missed (lost past a high-water mark, or while reconnecting)."""
    restarts: int
    """A new ``instance``: the proxy restarted."""
    silences: int
    """No message for ``3 x refresh_s``: the events socket was replaced."""


_names = itertools.count(1)


class Watcher:
    """A daemon thread keeping a :class:`View` of the active server fresh.

    Args:
        events: the proxy's events endpoint.
        refresh_s: the proxy's ``events_refresh_s`` (must match it).
        transport: the watcher's own transport to the query socket, for the
            re-sync request; used only by the watcher's thread, closed by it.
        context: the ZeroMQ context (the process-wide one by default).
        curve: the proxy's public key and this client's key pair, when the
            proxy runs with CURVE (the events socket is secured like the
            query socket).
        resync_timeout_s: how long one re-sync request waits; also bounds
            how long :meth:`close` may wait for the thread.
        clock: seconds, monotonic (tests may pass their own).

    Raises:
        ValueError: ``refresh_s`` is not positive.
    """

    def __init__(
        self,
        events: str,
        *,
        refresh_s: float,
        transport: Transport,
        context: zmq.Context[Any] | None = None,
        curve: CurveClient | None = None,
        resync_timeout_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.events = events
        self._clock = clock
        self.clock = clock
        """Its clock (monotonic seconds), for :meth:`fresh_at`; an attribute, read per call."""
        self._follower: Follower[Server] = Follower(refresh_s, clock())
        self._limit_s = self._follower.limit_s
        self._transport = transport
        self._context = context if context is not None else zmq.Context.instance()
        self._curve = curve
        self._resync_timeout_s = resync_timeout_s
        self._resync_ids = itertools.count(RESYNC_ID_START)
        # Writers (this thread, and callers reporting replies) take the lock;
        # readers of the view never do.
        self._lock = threading.Lock()
        # Notified whenever the view changes, for call()'s wait for a server.
        self._changed = threading.Condition(self._lock)
        self._stopping = False
        self._events_read = 0
        self._malformed = 0
        self._resyncs = 0
        # A PAIR over inproc wakes the thread's poll at once (close, or a
        # caller's reply that asks for a re-sync); only holders of the lock send.
        number = next(_names)
        wake = f"inproc://rpcproxy-watch-{id(self):x}-{number}"
        self._wake_rx: zmq.Socket[bytes] = self._context.socket(zmq.PAIR)
        self._wake_rx.linger = 0
        self._wake_rx.bind(wake)
        self._wake_tx: zmq.Socket[bytes] = self._context.socket(zmq.PAIR)
        self._wake_tx.linger = 0
        self._wake_tx.connect(wake)
        self._thread = threading.Thread(
            target=self._run, name=f"rpcproxy-watch-{number}", daemon=True
        )
        self._started = False

    # -- what callers use ----------------------------------------------------

    def start(self) -> None:
        """Start the thread (once)."""
        if not self._started:
            self._started = True
            self._thread.start()

    def fresh(self) -> View[Server] | None:
        """The view when it is fresh, else None (ask the proxy). Lock-free, any thread.

        :meth:`Follower.fresh` written out: this runs on every lookup, and
        the two calls it saves are most of a watched lookup's cost.
        """
        view = self._follower.view
        if view is not None and self._clock() - view.heard_at <= self._limit_s:
            return view
        return None

    def fresh_at(self, now: float) -> View[Server] | None:
        """:meth:`fresh` at a time the caller read from :attr:`clock` (and uses again)."""
        view = self._follower.view
        if view is not None and now - view.heard_at <= self._limit_s:
            return view
        return None

    @property
    def view(self) -> View[Server] | None:
        """The last view, fresh or not (None before anything was heard)."""
        return self._follower.view

    def observe(self, observation: Observation[Server]) -> None:
        """A reply a caller got (``find_server``, ``notify_failed_server``): adopt it if newer.

        Read-your-writes: after a caller's ``notify_failed_server`` returns,
        :meth:`fresh` answers at least the state of its reply.
        """
        with self._lock:
            if self._stopping:
                return
            self._follower.on_reply(observation, self._clock())
            self._changed.notify_all()
            if self._follower.resync_wanted:
                self._wake()

    def wait_for_server(self, timeout_s: float) -> bool:
        """Wait until the view names a server, at most ``timeout_s``; whether it does.

        Woken by the event (or re-sync) that brings one, as Nomad's retry
        watcher is, rather than after a fixed pause.
        """
        with self._changed:
            return self._changed.wait_for(self._names_a_server, timeout_s)

    def _names_a_server(self) -> bool:
        return self._stopping or self._follower.names_a_server()

    def stats(self) -> WatchStats:
        with self._lock:
            follower = self._follower
            return WatchStats(
                events=self._events_read,
                malformed=self._malformed,
                resyncs=self._resyncs,
                failed_resyncs=follower.failed_resyncs,
                gaps=follower.gaps,
                restarts=follower.restarts,
                silences=follower.silences,
            )

    def close(self) -> None:
        """Stop the thread; wait for it at most a re-sync timeout and a second. Idempotent."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._changed.notify_all()
            self._wake()
        if self._started:
            self._thread.join(self._resync_timeout_s + 1.0)
            if self._thread.is_alive():
                log.warning("the rpcproxy watcher thread did not stop in time; it exits on its own")
        else:
            self._close_thread_side()
        with self._lock:
            self._wake_tx.close(linger=0)

    def _wake(self) -> None:
        # Under the lock. A full pipe means a wake is already pending.
        with contextlib.suppress(zmq.Again):
            self._wake_tx.send(b"", zmq.NOBLOCK)

    # -- the thread ----------------------------------------------------------

    def _run(self) -> None:
        sub = self._open_sub()
        poller = zmq.Poller()
        poller.register(self._wake_rx, zmq.POLLIN)
        poller.register(sub, zmq.POLLIN)
        try:
            while not self._stopping:
                now = self._clock()
                with self._lock:
                    resync = self._follower.resync_due(now)
                    silent = (
                        not resync and self._follower.silent(now) and not has_queued_events(sub)
                    )
                    if silent:
                        self._follower.on_silence(now)
                    deadline = self._follower.next_deadline()
                if resync:
                    self._resync()
                    continue
                if silent:
                    log.info("no event from %s for %g s: reconnecting", self.events, self._limit_s)
                    poller.unregister(sub)
                    sub.close(linger=0)
                    sub = self._open_sub()
                    poller.register(sub, zmq.POLLIN)
                    continue
                # Rounded up, so the poll does not return just before the deadline.
                wait_ms = max(1, math.ceil((deadline - now) * 1000))
                ready = dict(poller.poll(wait_ms))
                if self._wake_rx in ready:
                    self._drain_wakes()
                if sub in ready:
                    self._read_events(sub)
        except Exception:
            # A bug must not leave lookups answered from a view nobody updates.
            log.exception("the rpcproxy watcher stopped; lookups ask the proxy from now on")
        finally:
            sub.close(linger=0)
            self._close_thread_side()

    def _close_thread_side(self) -> None:
        with self._lock:
            self._stopping = True
            self._follower.view = None
            self._changed.notify_all()
        self._wake_rx.close(linger=0)
        self._transport.close()

    def _open_sub(self) -> zmq.Socket[bytes]:
        sub: zmq.Socket[bytes] = self._context.socket(zmq.SUB)
        subscribe_to_events(sub, self.events, self._curve)
        return sub

    def _drain_wakes(self) -> None:
        while True:
            try:
                self._wake_rx.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def _read_events(self, sub: zmq.Socket[bytes]) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                frames = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event = decode_event(frames)
            with self._lock:
                if event is None:
                    self._malformed += 1
                    continue
                self._events_read += 1
                now = self._clock()
                self._follower.on_event(event, now)
                self._changed.notify_all()
                if self._follower.resync_due(now):
                    # Re-sync before reading on: what is queued behind this
                    # event is then compared with the proxy's answer.
                    return

    def _resync(self) -> None:
        frame, read = resync_request(next(self._resync_ids))
        try:
            observation = read(self._transport.exchange(frame, self._resync_timeout_s))
        except Exception as exc:  # any failure: retry later, lookups ask meanwhile
            log.debug("re-sync with %s failed: %s", self._transport, exc)
            with self._lock:
                self._follower.on_resync_failed(self._clock())
            return
        with self._lock:
            now = self._clock()
            self._resyncs += 1
            self._follower.on_reply(observation, now)
            self._changed.notify_all()
            if self._follower.resync_wanted:
                # An older answer than the floor, or another instance: ask again later.
                self._follower.on_resync_failed(now)
