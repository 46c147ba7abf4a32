"""The seam between a client and the wire: send one request frame, get its reply frame.

A client encodes requests and reads replies; a transport only carries frames
(the shape of ``httpx``'s transports). :class:`ZmqTransport` and
:class:`AsyncZmqTransport` carry them to a proxy's query socket over ZeroMQ;
:mod:`rpcproxy.testing` has in-memory ones for a user's tests.

Both ZeroMQ transports use a DEALER (docs/protocol.md section 1: an empty
delimiter frame, then the body) and match a reply to its request by the
request's ``id``. A reply with another id is a late answer to a request whose
wait is over, and is dropped. So a silent try leaves the socket as usable as
before, unlike a REQ socket, which is stuck until it gets the reply it missed
(why the guide's Lazy Pirate throws a REQ away after every silent try).

They keep one socket for their whole life, even after silence:

- a slow proxy's reply to an earlier try of the same call (same id) still
  counts, where a fresh socket per try would lose it and fail every try of a
  proxy slower than ``timeout_s``;
- a dead peer is noticed without reconnecting by hand: ZMTP heartbeats
  (``HEARTBEAT_IVL``/``HEARTBEAT_TIMEOUT``, which the proxy's libzmq answers by
  itself) close a connection whose peer vanished without a TCP reset, and
  libzmq then reconnects, as it does at once after a reset;
- with ``IMMEDIATE`` a request is queued only on a connection that is up, so
  requests made while no proxy listens are not delivered in a burst later.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Final, Protocol, cast, runtime_checkable

import msgspec
import zmq

from rpcproxy.bus.client._lazy import LazyModule
from rpcproxy.bus.client._results import ProxyTimeoutError
from rpcproxy.bus.net.keys import CurveClient

if TYPE_CHECKING:
    import asyncio
else:
    # Loaded on first use: see bus/client/_lazy.py (serve runs no event loop).
    asyncio = LazyModule("asyncio")

HEARTBEAT_IVL_MS: Final = 1000
"""How often an idle connection to the proxy is checked (a ZMTP PING)."""

_NOBLOCK: Final = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK: Final = int(zmq.SNDMORE | zmq.NOBLOCK)

HEARTBEAT_TIMEOUT_MS: Final = 3000
"""A connection whose peer sent nothing for this long after a PING is closed and redialled."""


@runtime_checkable
class Transport(Protocol):
    """Carries request frames to a proxy and their replies back (blocking).

    ``exchange`` sends ``frame`` (one MessagePack request map) and returns the
    reply frame to it. On silence for ``timeout_s`` it raises
    :class:`~rpcproxy.ProxyTimeoutError`; the client counts that as one try.
    Calling it again with the same frame is a retry.
    """

    def exchange(self, frame: bytes, timeout_s: float) -> bytes: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncTransport(Protocol):
    """:class:`Transport` for asyncio: ``exchange`` is a coroutine.

    Many coroutines may await ``exchange`` at once on one transport.
    """

    async def exchange(self, frame: bytes, timeout_s: float) -> bytes: ...

    def close(self) -> None: ...


class _Envelope(msgspec.Struct):
    id: Any = msgspec.UNSET


_envelope: Final = msgspec.msgpack.Decoder(_Envelope)


def frame_id(frame: bytes) -> Any:
    """The ``id`` of a request or reply frame; ``msgspec.UNSET`` when it has none or is unreadable.

    Only the id is decoded (msgspec skips the other keys), so matching a reply
    costs far less than reading it.
    """
    try:
        return _envelope.decode(frame).id
    except (msgspec.DecodeError, RecursionError):
        return msgspec.UNSET


def _same_id(a: Any, b: Any) -> bool:
    # type() first: True == 1 in Python, but a reply id true does not answer request 1.
    return type(a) is type(b) and bool(a == b)


def _answers(request_id: Any, reply_id: Any) -> bool:
    """Whether a reply may be the answer to a request.

    A reply without a readable id is taken (an older proxy, or garbage the
    client must report as a :class:`~rpcproxy.ProtocolError`); so is any
    reply to a request that carries no id.
    """
    return (
        request_id is msgspec.UNSET or reply_id is msgspec.UNSET or _same_id(request_id, reply_id)
    )


def _body(frames: list[bytes]) -> bytes | None:
    """The reply body of a DEALER's message: ``[b"", body]``; None for anything else."""
    if len(frames) == 2 and frames[0] == b"":
        return frames[1]
    return None


def _wait_ms(seconds: float) -> int:
    # Rounded up: libzmq's poll returning a fraction early would otherwise
    # spin through zero-millisecond polls until the deadline.
    return max(1, math.ceil(seconds * 1000))


def _dealer(
    context: zmq.Context[Any],
    endpoint: str,
    max_message_bytes: int,
    curve: CurveClient | None,
) -> zmq.Socket[Any]:
    socket: zmq.Socket[Any] = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    socket.setsockopt(zmq.IMMEDIATE, 1)
    socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    if curve is not None:
        curve.secure(socket)
    socket.connect(endpoint)
    return socket


class ZmqTransport:
    """A blocking DEALER to one proxy; not thread-safe (one ZeroMQ socket).

    Args:
        endpoint: the proxy's query endpoint.
        context: the ZeroMQ context; the process-wide one by default (never terminated here).
        max_message_bytes: the largest reply accepted (ZeroMQ ``MAXMSGSIZE``);
            a bigger one drops the connection and shows up as silence.
        curve: the proxy's public key and this client's key pair, for a proxy
            that runs with CURVE.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        context: zmq.Context[Any] | None = None,
        max_message_bytes: int = 1 << 20,
        curve: CurveClient | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._context = context if context is not None else zmq.Context.instance()
        self._max_message_bytes = max_message_bytes
        self._curve = curve
        self._socket: zmq.Socket[bytes] | None = None
        self._replies: zmq.Poller | None = None
        self._closed = False

    def exchange(self, frame: bytes, timeout_s: float) -> bytes:
        """Send ``frame`` and return the reply with its id, dropping replies to other requests.

        Raises:
            ProxyTimeoutError: nothing answered within ``timeout_s``.
            RuntimeError: the transport is closed.
        """
        socket, replies = self._ensure_socket()
        deadline = time.monotonic() + timeout_s
        if not self._send(socket, frame, deadline):
            raise ProxyTimeoutError(f"could not send to {self.endpoint} within {timeout_s:g} s")
        request_id = frame_id(frame)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not replies.poll(_wait_ms(left)):
                raise ProxyTimeoutError(f"no reply from {self.endpoint} within {timeout_s:g} s")
            body = _body(socket.recv_multipart())
            if body is not None and _answers(request_id, frame_id(body)):
                return body

    def close(self) -> None:
        """Close the socket at once (LINGER 0: unsent requests are dropped). Idempotent."""
        self._closed = True
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
            self._replies = None

    @staticmethod
    def _send(socket: zmq.Socket[bytes], frame: bytes, deadline: float) -> bool:
        while True:
            try:
                # Two sends, not send_multipart (a lookup's cost is mostly such
                # calls); a message's later parts are always taken once its
                # first one is.
                socket.send(b"", _SNDMORE_NOBLOCK)
                socket.send(frame, _NOBLOCK)
            except zmq.Again:
                # No connection is up (IMMEDIATE) or the queue is full: wait for room.
                left = deadline - time.monotonic()
                if left <= 0 or not socket.poll(_wait_ms(left), zmq.POLLOUT):
                    return False
            else:
                return True

    def _ensure_socket(self) -> tuple[zmq.Socket[bytes], zmq.Poller]:
        if self._closed:
            raise RuntimeError("the transport is closed")
        if self._socket is None or self._replies is None:
            self._socket = _dealer(
                self._context, self.endpoint, self._max_message_bytes, self._curve
            )
            # One poller for the socket's life: Socket.poll builds one per call.
            self._replies = zmq.Poller()
            self._replies.register(self._socket, zmq.POLLIN)
        return self._socket, self._replies


class AsyncZmqTransport:
    """An asyncio DEALER to one proxy, shared by any number of coroutines of one event loop.

    Requests are pipelined: each coroutine sends its frame and waits on a
    future of its own; whenever the socket is readable, the event loop calls
    back and every reply that has arrived is read at once (non-blocking) and
    handed to the future of the request with its id. No ``recv`` ever waits,
    so none is ever cancelled and no reply can be lost to a cancellation
    (pyzmq#1925); a timeout only stops waiting on the caller's own future.

    The socket's file descriptor is watched with the loop's ``add_reader``
    (every Unix loop; on Windows, a selector event loop), not through
    ``zmq.asyncio``, whose poll and recv futures cost several trips around
    the loop per reply.

    A reply with no readable id (an older proxy, garbage) goes to the one
    waiting request when only one waits; with several waiting it names none
    of them and is dropped.

    The socket is made on first use, in the running loop; use the transport
    from that loop only.

    Args: as :class:`ZmqTransport`.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        context: zmq.Context[Any] | None = None,
        max_message_bytes: int = 1 << 20,
        curve: CurveClient | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._context = context if context is not None else zmq.Context.instance()
        self._max_message_bytes = max_message_bytes
        self._curve = curve
        self._socket: zmq.Socket[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[object, asyncio.Future[bytes]] = {}
        self._writable: list[asyncio.Future[None]] = []
        self._closed = False

    async def exchange(self, frame: bytes, timeout_s: float) -> bytes:
        """Send ``frame`` and wait for the reply with its id.

        Raises:
            ProxyTimeoutError: nothing answered within ``timeout_s``.
            RuntimeError: the transport is closed, or the frame's id is
                already waiting for its reply.
        """
        socket, loop = self._ensure_socket()
        deadline = loop.time() + timeout_s
        request_id = frame_id(frame)
        # A request without an id is keyed by an object of its own; only an
        # id-less reply can reach it (see the class's docstring).
        key: Any = _key(request_id)
        if key is None:
            key = object()
        if key in self._waiters:
            raise RuntimeError(f"request id {request_id!r} is already waiting for its reply")
        waiter: asyncio.Future[bytes] = loop.create_future()
        self._waiters[key] = waiter
        timer = loop.call_later(timeout_s, _expire, waiter, self.endpoint, timeout_s)
        try:
            if not await self._send(socket, frame, deadline, loop):
                raise ProxyTimeoutError(f"could not send to {self.endpoint} within {timeout_s:g} s")
            # A send can take in the socket's pending events and so use up the
            # descriptor's wake-up: read what has arrived now, as pyzmq does.
            self._on_readable()
            # Our own future: a caller's cancellation cancels only it, no recv.
            return await waiter
        finally:
            timer.cancel()
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # seen, so asyncio logs no "never retrieved"
            # Once nobody waits, a late reply with this id is dropped.
            if self._waiters.get(key) is waiter:
                del self._waiters[key]

    def close(self) -> None:
        """Stop reading and close the socket at once; waiting calls fail. Idempotent."""
        self._closed = True
        futures: list[asyncio.Future[Any]] = [*self._waiters.values(), *self._writable]
        for future in futures:
            if not future.done():
                future.set_exception(RuntimeError("the transport was closed"))
        self._waiters.clear()
        self._writable.clear()
        if self._socket is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._socket.FD)
            self._socket.close(linger=0)
            self._socket = None

    async def _send(
        self,
        socket: zmq.Socket[bytes],
        frame: bytes,
        deadline: float,
        loop: asyncio.AbstractEventLoop,
    ) -> bool:
        while True:
            try:
                socket.send(b"", _SNDMORE_NOBLOCK)
                socket.send(frame, _NOBLOCK)
            except zmq.Again:
                # No connection is up (IMMEDIATE) or the queue is full: wait
                # until the descriptor says the socket may be writable, looking
                # again at least every 50 ms in case no wake-up comes.
                left = deadline - loop.time()
                if left <= 0:
                    return False
                writable: asyncio.Future[None] = loop.create_future()
                self._writable.append(writable)
                try:
                    await asyncio.wait({writable}, timeout=min(left, 0.05))
                finally:
                    if writable in self._writable:
                        self._writable.remove(writable)
                    if writable.done() and not writable.cancelled():
                        writable.result()  # raises when the transport was closed
            else:
                return True

    def _ensure_socket(self) -> tuple[zmq.Socket[bytes], asyncio.AbstractEventLoop]:
        if self._closed:
            raise RuntimeError("the transport is closed")
        loop = asyncio.get_running_loop()
        if self._socket is None:
            self._socket = _dealer(
                self._context, self.endpoint, self._max_message_bytes, self._curve
            )
            self._loop = loop
            loop.add_reader(self._socket.FD, self._on_readable)
        elif loop is not self._loop:
            raise RuntimeError("the transport is used from another event loop than its own")
        return self._socket, loop

    def _on_readable(self) -> None:
        """Read every reply that has arrived and wake the sends waiting for room.

        ZeroMQ's descriptor is edge-triggered: it says "look at EVENTS", so
        everything is read until EVENTS shows nothing more.
        """
        socket = self._socket
        if socket is None:
            return
        while True:
            events = cast(int, socket.getsockopt(zmq.EVENTS))
            if events & zmq.POLLOUT and self._writable:
                for writable in self._writable:
                    if not writable.done():
                        writable.set_result(None)
                self._writable.clear()
            if not events & zmq.POLLIN:
                return
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            body = _body(frames)
            if body is not None:
                self._deliver(body)

    def _deliver(self, body: bytes) -> None:
        key = _key(frame_id(body))
        waiter: asyncio.Future[bytes] | None = None
        if key is not None:
            waiter = self._waiters.get(key)
        elif len(self._waiters) == 1:
            [waiter] = self._waiters.values()
        if waiter is not None and not waiter.done():
            waiter.set_result(body)


def _expire(waiter: asyncio.Future[bytes], endpoint: str, timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(ProxyTimeoutError(f"no reply from {endpoint} within {timeout_s:g} s"))


def _key(request_id: Any) -> tuple[type, Any] | None:
    """A request's id as a dict key (typed: True == 1, but they are different ids); None if none."""
    if request_id is msgspec.UNSET:
        return None
    try:
        hash(request_id)
    except TypeError:
        return None
    return (type(request_id), request_id)
