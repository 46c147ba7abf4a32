"""The asyncio watcher: :mod:`rpcproxy.bus.client._watch` for an event loop.

An :class:`AsyncWatcher` is one task of the client's event loop that owns a
``zmq.asyncio`` SUB socket on the proxy's events endpoint and re-syncs over
a transport of its own, with the same rules (a
:class:`~rpcproxy.bus.client._view.Follower`) and the same duties as the
threaded :class:`~rpcproxy.bus.client._watch.Watcher`: an epoch gap, a new
``instance`` or silence for ``3 x refresh_s`` (which also replaces the SUB
socket) cost one ``find_server``, and until it is answered the view is not
fresh.

The task waits with ``poll`` and reads only what has arrived (``NOBLOCK``),
so the only awaits a cancellation (at close) can land on are a poll and the
transport's wait for its reply: no pending ``recv`` is ever cancelled
(pyzmq#1925: a cancelled recv can drop a message).

Everything runs on the loop's thread, so the follower needs no lock; the
view is still replaced, never mutated.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from rpcproxy.bus.client._lazy import LazyModule
from rpcproxy.bus.client._transport import AsyncTransport
from rpcproxy.bus.client._view import Follower, Observation, View
from rpcproxy.bus.client._watch import (
    DRAIN_BATCH,
    RESYNC_ID_START,
    WatchStats,
    decode_event,
    has_queued_events,
    resync_request,
    subscribe_to_events,
)
from rpcproxy.bus.net.keys import CurveClient
from rpcproxy.bus.wire import Server

if TYPE_CHECKING:
    import asyncio

    import zmq.asyncio
    import zmq.asyncio as zmq_asyncio
else:
    # Loaded on first use: see bus/client/_lazy.py (serve runs no event loop).
    asyncio = LazyModule("asyncio")
    zmq_asyncio = LazyModule("zmq.asyncio")

log = logging.getLogger(__name__)


class AsyncWatcher:
    """A task of one event loop keeping a :class:`View` of the active server fresh.

    Args: as :class:`~rpcproxy.bus.client._watch.Watcher`, with an
    :class:`~rpcproxy.bus.client._transport.AsyncTransport` (closed by the
    watcher when it stops). :meth:`start` must be called in the running loop
    the client uses.
    """

    def __init__(
        self,
        events: str,
        *,
        refresh_s: float,
        transport: AsyncTransport,
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
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # Set whenever the view changes, for call()'s wait for a server.
        self._changed = asyncio.Event()
        self._stopping = False
        self._events_read = 0
        self._malformed = 0
        self._resyncs = 0

    # -- what callers use ----------------------------------------------------

    def start(self) -> None:
        """Start the task in the running loop (once; later calls do nothing)."""
        if self._task is None and not self._stopping:
            # Silence is counted from the subscription's start, not the constructor's.
            self._follower = Follower(self._follower.refresh_s, self._clock())
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"rpcproxy watcher {self.events}"
            )

    def fresh(self) -> View[Server] | None:
        """The view when it is fresh, else None (ask the proxy).

        :meth:`Follower.fresh` written out, as in the threaded watcher: every
        lookup runs it.
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
        """A reply a caller got: adopt it if newer (read-your-writes); see the threaded one."""
        if self._stopping:
            return
        self._follower.on_reply(observation, self._clock())
        self._changed.set()
        if self._follower.resync_wanted:
            self._wake.set()

    async def wait_for_server(self, timeout_s: float) -> bool:
        """Wait until the view names a server, at most ``timeout_s``; whether it does.

        Woken by the event (or re-sync) that brings one, as Nomad's retry
        watcher is, rather than after a fixed pause.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self._names_a_server():
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return self._names_a_server()
        return True

    def _names_a_server(self) -> bool:
        return self._stopping or self._follower.names_a_server()

    def stats(self) -> WatchStats:
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
        """Stop the task (it closes its sockets when it next runs). Idempotent.

        The task is waiting on a poll or on the transport's future, never on
        a ``recv``, so cancelling it loses nothing.
        """
        self._stopping = True
        self._follower.view = None
        self._changed.set()
        if self._task is not None:
            self._task.cancel()
        else:
            self._transport.close()

    async def aclose(self) -> None:
        """:meth:`close`, then wait until the task has closed its sockets."""
        self.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- the task ------------------------------------------------------------

    async def _run(self) -> None:
        sub = self._open_sub()
        try:
            while not self._stopping:
                now = self._clock()
                follower = self._follower
                if follower.resync_due(now):
                    await self._resync()
                    continue
                if follower.silent(now) and not has_queued_events(sub):
                    follower.on_silence(now)
                    log.info("no event from %s for %g s: reconnecting", self.events, self._limit_s)
                    sub.close(linger=0)
                    sub = self._open_sub()
                    continue
                wait_s = max(0.001, follower.next_deadline() - now)
                if await self._wait(sub, wait_s):
                    await self._read_events(sub)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the rpcproxy watcher stopped; lookups ask the proxy from now on")
        finally:
            self._stopping = True
            self._follower.view = None
            sub.close(linger=0)
            self._transport.close()

    async def _wait(self, sub: zmq.asyncio.Socket, wait_s: float) -> bool:
        """Wait until an event is queued (True), a wake, or ``wait_s`` passes (False)."""
        self._wake.clear()
        poll = asyncio.ensure_future(sub.poll(math.ceil(wait_s * 1000)))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            done, _ = await asyncio.wait({poll, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Cancelling a poll, or a wait on an Event, consumes nothing.
            for future in (poll, woken):
                if not future.done():
                    future.cancel()
        return poll in done and not poll.cancelled() and bool(poll.result())

    def _open_sub(self) -> zmq.asyncio.Socket:
        sub = zmq_asyncio.Socket(self._context, zmq.SUB)
        subscribe_to_events(sub, self.events, self._curve)
        return sub

    async def _read_events(self, sub: zmq.asyncio.Socket) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                # NOBLOCK on a zmq.asyncio socket: a future that is already
                # done (or raises Again at once), so this await never waits
                # and no cancellation can land on it.
                frames = await sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event = decode_event(frames)
            if event is None:
                self._malformed += 1
                continue
            self._events_read += 1
            now = self._clock()
            self._follower.on_event(event, now)
            self._changed.set()
            if self._follower.resync_due(now):
                return

    async def _resync(self) -> None:
        frame, read = resync_request(next(self._resync_ids))
        try:
            observation = read(await self._transport.exchange(frame, self._resync_timeout_s))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure: retry later, lookups ask meanwhile
            log.debug("re-sync with %s failed: %s", self._transport, exc)
            self._follower.on_resync_failed(self._clock())
            return
        now = self._clock()
        self._resyncs += 1
        self._follower.on_reply(observation, now)
        self._changed.set()
        if self._follower.resync_wanted:
            self._follower.on_resync_failed(now)
