"""AsyncProxyClient: :class:`~rpcproxy.ProxyClient` for asyncio programs.

Every op is a coroutine with the same arguments, results and exceptions as
the blocking client's (both read replies with :mod:`rpcproxy.bus.client._results`).
One client serves any number of coroutines of one event loop at once: they
share one DEALER socket and their requests are in flight together, each
matched to its reply by id (:class:`~rpcproxy.bus.client._transport.AsyncZmqTransport`).

Timeouts and retries never cancel a pending ``recv`` (pyzmq#1925: a cancelled
recv can drop a message): the transport polls and reads only what has
arrived, and a try that times out only stops waiting for its reply.

Example::

    async with AsyncProxyClient("tcp://127.0.0.1:4650") as proxy:
        server = await proxy.find_server()
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, assert_never

import zmq

from rpcproxy.bus.client import _results
from rpcproxy.bus.client._awatch import AsyncWatcher
from rpcproxy.bus.client._client import DEFAULT_ENDPOINT, check_options, timed_out
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
from rpcproxy.bus.client._lazy import LazyModule
from rpcproxy.bus.client._results import (
    Call,
    Ops,
    ProxyError,
    ProxyTimeoutError,
    encode_request,
    parse_reply,
)
from rpcproxy.bus.client._transport import AsyncTransport, AsyncZmqTransport
from rpcproxy.bus.client._view import Observation
from rpcproxy.bus.client._watch import WatchStats
from rpcproxy.bus.net.keys import CurveClient
from rpcproxy.bus.wire import Server

if TYPE_CHECKING:
    import asyncio
else:
    # Loaded on first use: see bus/client/_lazy.py (serve runs no event loop).
    asyncio = LazyModule("asyncio")

log = logging.getLogger(__name__)

_S = TypeVar("_S")
_T = TypeVar("_T")


class AsyncProxyClient(Ops):
    """An asyncio client of the proxy's query socket; share one per event loop.

    Args: as :class:`~rpcproxy.ProxyClient`; ``transport`` is an
    :class:`~rpcproxy.bus.client._transport.AsyncTransport` (e.g.
    :class:`rpcproxy.testing.AsyncMockTransport`). The socket is made on the
    first call, in the running loop: use the client from that loop only.

    Raises:
        ValueError: ``timeout_s`` is not positive or ``retries`` is below 1.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout_s: float = 2.0,
        retries: int = 3,
        context: zmq.Context[Any] | None = None,
        max_message_bytes: int = 1 << 20,
        curve: CurveClient | None = None,
        transport: AsyncTransport | None = None,
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
        # Started by the first call, in the running loop the client is bound to.
        self._watcher: AsyncWatcher | None = None
        if watch and events:
            self._watcher = AsyncWatcher(
                events,
                refresh_s=events_refresh_s,
                transport=self._new_transport(),
                context=self._context,
                curve=curve,
                resync_timeout_s=timeout_s,
            )

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._watcher is not None:
            self._watcher.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the watcher, close the transport at once; calls still waiting fail. Idempotent."""
        if self._watcher is not None:
            await self._watcher.aclose()
        self.close()

    def close(self) -> None:
        """:meth:`aclose` for code that cannot await (a ``finally`` outside the loop)."""
        self._closed = True
        if self._watcher is not None:
            self._watcher.close()
        self._transport.close()

    # -- ops -----------------------------------------------------------------
    # The other ops are Ops's methods (bus/client/_results.py), shared by both clients.

    async def find_server(self) -> Server | None:
        """The active server, or None when the proxy knows no server.

        A watching client answers from its local view while it is fresh (no
        round trip), else asks the proxy.
        """
        if self._watcher is not None:
            self._watcher.start()
            view = self._watcher.fresh()
            if view is not None:
                return view.server
        return await self._run(_results.find_server())

    def watch_stats(self) -> WatchStats | None:
        """What a watching client's watcher has seen (gaps, restarts, re-syncs...); else None."""
        return self._watcher.stats() if self._watcher is not None else None

    async def call(
        self,
        afn: Callable[[Server], Awaitable[_T]],
        /,
        *,
        hold_s: float = DEFAULT_HOLD_S,
        retry_on: RetryOn = (OSError,),
    ) -> _T:
        """``await afn(server)`` on the active server, failing over (see :meth:`ProxyClient.call`).

        Safe from many coroutines at once. Cancelling it cancels the pending
        pause or ``afn``, and reports nothing it did not see fail.
        """
        first = None
        watcher = self._watcher
        if watcher is not None:
            watcher.start()
            # The happy path, written out: one local read and the call.
            # One clock read, for freshness and for the hold's start alike.
            started = watcher.clock()
            view = watcher.fresh_at(started)
            server = view.server if view is not None else None
            if server is not None:
                try:
                    return await afn(server)
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
                    answer = await self.find_server()
                case Invoke(server):
                    try:
                        answer = await afn(server)
                    except Exception as exc:
                        answer = Failed(exc)
                case Report(server):
                    await self._report_failed(server)
                case Pause(seconds):
                    await asyncio.sleep(seconds)
                case AwaitServer(seconds):
                    if self._watcher is not None:
                        await self._watcher.wait_for_server(seconds)
                    else:
                        await asyncio.sleep(seconds)
                case _:
                    assert_never(step)

    async def request(
        self, op: str, /, *, timeout_s: float | None = None, **keys: Any
    ) -> dict[str, Any]:
        """Send any op with ``keys``; the whole success reply (see :meth:`ProxyClient.request`)."""
        return await self._request(op, keys, timeout_s)

    async def _report_failed(self, server: Server) -> None:
        """``call``'s report of a failed server: best effort, never the caller's failure."""
        try:
            await self.notify_failed_server(server.addr)
        except ProxyError as exc:
            log.debug("reporting %s as failed: %s", server.addr, exc)

    # -- plumbing ------------------------------------------------------------

    def _new_transport(self) -> AsyncTransport:
        """A transport of its own (a given one is returned itself)."""
        if self._given_transport is not None:
            return self._given_transport
        return AsyncZmqTransport(
            self.endpoint,
            context=self._context,
            max_message_bytes=self.max_message_bytes,
            curve=self._curve,
        )

    def _observed(self, server: Server | None, epoch: int | None, instance: str | None) -> None:
        """Every ``find_server`` and ``notify_failed_server`` reply's view (see ProxyClient)."""
        if self._watcher is not None and epoch is not None and instance is not None:
            self._watcher.start()
            self._watcher.observe(Observation(server, epoch, instance))

    async def _run(self, call: Call[_S, _T], transport: AsyncTransport | None = None) -> _T:
        reply = await self._request(call.op, call.keys, call.timeout_s, transport)
        result, observed = call.read(reply)
        if observed is not None:
            self._observed(observed.server, observed.epoch, observed.instance)
        return result

    async def _request(
        self,
        op: str,
        keys: Mapping[str, Any],
        timeout_s: float | None,
        transport: AsyncTransport | None = None,
    ) -> dict[str, Any]:
        if self._closed:
            raise RuntimeError("AsyncProxyClient is closed")
        request_id = next(self._ids)
        frame = encode_request(op, keys, request_id)
        wait_s = timeout_s if timeout_s is not None else self.timeout_s
        carrier = transport if transport is not None else self._transport
        for _ in range(self.retries):
            try:
                raw = await carrier.exchange(frame, wait_s)
            except ProxyTimeoutError:
                continue
            return parse_reply(raw, request_id)
        raise timed_out(self.endpoint, self.retries, wait_s)
