"""The query socket: a ROUTER that answers clients (docs/protocol.md section 1).

Read-only ops are answered from the published snapshot, on this thread,
without a mailbox round trip; the commonest find_server frames are even
recognised by their bytes and answered with the snapshot's pre-encoded reply
(the fast path: :func:`~rpcproxy.bus.service.codec.find_server_id`), the
same bytes the decode-and-encode path would send. State-changing ops become
actor messages; the actor's reply comes back through a queue and a
:class:`Waker`, and is sent from this thread, the only one that touches the
socket. A write whose reply does not come within ``op_timeout_s`` is
answered ``unavailable``.

Writes are admitted only while the actor keeps up (docs/protocol.md section 8):
at most ``max_writes`` told and not yet answered by the actor, holding at
most ``max_write_entries`` servers or addresses between them. Beyond that a
write is answered ``unavailable`` at once, so a client that floods writes
meets a bound, not an ever longer mailbox. A write answered ``unavailable``
after its deadline still counts until the actor gets to it: the deadline
ends the client's wait, not the message's place in the mailbox.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, assert_never, cast

import pykka
import zmq

from rpcproxy.actors import Refused, SnapshotBox
from rpcproxy.bus.net.loop import SocketThread, Waker, needs_ipv6, recv_frames
from rpcproxy.bus.service.codec import (
    FIND_SERVER_NO_ID,
    NO_ID,
    Decoder,
    RequestError,
    encode_error,
    encode_reply,
    find_server_id,
    new_instance_id,
    split_at_id,
)
from rpcproxy.bus.service.counts import NO_COUNTS, ServiceCounts
from rpcproxy.bus.service.curve import QUERY_DOMAIN, CurveServer
from rpcproxy.bus.service.ops import (
    AnyWriteOp,
    FindServerRequest,
    ReadOp,
    Request,
    WriteOp,
    plan,
    validate,
)
from rpcproxy.bus.wire import ErrorCode, OpReply
from rpcproxy.log_gate import PeerLog
from rpcproxy.proxy import DEFAULT_MAX_SERVERS

log = logging.getLogger(__name__)

_MAX_FRAMES = 16
"""A request is a routing envelope and one body; more frames than this is abuse.

Counted as the ROUTER sees them, with the peer's routing id first: a peer
may send up to 15. More get a ``bad_request`` reply (README, "Wire").
"""

DEFAULT_MAX_WRITES = 128
"""State-changing requests told to the actor and not yet answered by it."""

DEFAULT_MAX_WRITE_ENTRIES = 4 * (1 + DEFAULT_MAX_SERVERS)
"""What those writes carry between them (see :attr:`WriteOp.weight`): four full heartbeats.

A ``heartbeat`` or ``set_backup_servers`` may carry ``max_servers`` (4096 by
default) entries, so counting requests alone would let 128 of them hold half
a million.
"""

_SEND_MORE: Final = int(zmq.SNDMORE | zmq.NOBLOCK)
_SEND_LAST: Final = int(zmq.NOBLOCK)
_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)
"""Flags as plain ints: pyzmq's are enum.Flag values, and or-ing them (as its
send_multipart does per frame) costs about half a microsecond each, a
measurable share of a find_server round trip."""

_BATCH: Final = 32
"""Requests served per wake-up of the poller at most (see _serve_requests)."""

Encoded = Callable[[], OpReply]
"""A result made ready to encode: called on this thread, never the actor's."""


@dataclass(frozen=True, slots=True)
class _Pending:
    envelope: list[bytes]
    request: Request
    started: float


class QueryServer(SocketThread):
    """Serves the query ROUTER on its own thread.

    Args:
        context: the process's ZeroMQ context.
        endpoint: where to bind, e.g. ``tcp://127.0.0.1:4650``.
        proxy: the ProxyActor that applies state changes.
        box: the snapshot box read-only ops read.
        max_message_bytes: larger frames disconnect the peer (ZeroMQ MAXMSGSIZE).
        op_timeout_s: how long a state-changing op may wait for the actor.
        clock: monotonic seconds, for ``next_rebalance_s`` and op deadlines.
        curve: when set, the ROUTER is a CURVE server that only allowed keys reach.
        metrics: what to count (nothing by default).
        max_writes: writes in flight to the actor beyond which new ones are
            answered ``unavailable`` at once.
        max_write_entries: the same bound on the servers and addresses they carry.
        decoder: validates requests (its ``max_servers``); the default bound when not given.
        instance: this run's id, sent with every success reply beside the
            snapshot's ``epoch`` (docs/protocol.md section 1); the events
            publisher must send the same one. A fresh random id when not given.
    """

    name = "rpcproxy-query"

    def __init__(
        self,
        context: zmq.Context[Any],
        endpoint: str,
        proxy: pykka.ActorRef[Any],
        box: SnapshotBox,
        *,
        max_message_bytes: int = 1 << 20,
        op_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        curve: CurveServer | None = None,
        metrics: ServiceCounts = NO_COUNTS,
        max_writes: int = DEFAULT_MAX_WRITES,
        max_write_entries: int = DEFAULT_MAX_WRITE_ENTRIES,
        decoder: Decoder | None = None,
        instance: str | None = None,
    ) -> None:
        super().__init__(context)
        self.instance = instance if instance is not None else new_instance_id()
        self._decoder = decoder or Decoder()
        self._curve = curve
        self._metrics = metrics
        self._endpoint = endpoint
        self._proxy = proxy
        self._box = box
        self._max_message_bytes = max_message_bytes
        self._op_timeout_s = op_timeout_s
        self._clock = clock
        self._waker = Waker()
        self._replies: queue.SimpleQueue[tuple[int, Refused | Encoded, int]] = queue.SimpleQueue()
        self._pending: dict[int, _Pending] = {}
        # Writes the actor has not answered yet (token -> weight), including
        # those already answered "unavailable" after their deadline.
        self._in_flight: dict[int, int] = {}
        self._in_flight_weight = 0
        self._max_writes = max_writes
        self._max_write_entries = max_write_entries
        self._peer_log = PeerLog(log, clock=clock)
        self._deadlines: list[tuple[float, int]] = []
        self._tokens = itertools.count(1)
        self._cache: dict[ReadOp, tuple[int, bytes]] = {}
        # The find_server fast path's reply bytes, for the snapshot of _fast_version:
        # whole for id-less frames, and split around the id for the others.
        find_server = plan(FindServerRequest(NO_ID))
        assert isinstance(find_server, ReadOp)
        self._find_server: ReadOp = find_server
        self._fast_version = -1
        self._last_peer = b""
        self._fast_no_id = b""
        self._fast_head = b""
        self._fast_tail = b""
        self.bound_endpoint = ""
        self._router: zmq.Socket[bytes] | None = None

    # SocketThread ---------------------------------------------------------------

    def setup(self) -> None:
        router: zmq.Socket[bytes] = self.context.socket(zmq.ROUTER)
        router.linger = 0
        router.ipv6 = needs_ipv6(self._endpoint)
        router.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
        if self._curve is not None:
            self._curve.secure(router, QUERY_DOMAIN)
        try:
            router.bind(self._endpoint)
        except zmq.ZMQError as exc:
            router.close()
            raise OSError(f"cannot bind query socket {self._endpoint}: {exc}") from exc
        self.bound_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._router = router
        self.poller.register(router, zmq.POLLIN)
        self.poller.register(self._waker.fileno, zmq.POLLIN)

    def on_readable(self, sock: Any) -> None:
        if sock is self._router:
            self._serve_requests()
        else:
            self._waker.drain()
            self._send_replies()

    def poll_timeout_ms(self) -> int | None:
        if not self._deadlines:
            return None
        return max(0, int((self._deadlines[0][0] - self._clock()) * 1000) + 1)

    def on_idle(self) -> None:
        if not self._deadlines:
            return  # the common case, after every request: no clock read
        now = self._clock()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, token = heapq.heappop(self._deadlines)
            pending = self._pending.pop(token, None)
            if pending is not None:
                self._peer_log.warning(
                    "timeout",
                    "%s timed out waiting for the proxy",
                    type(pending.request).__name__,
                )
                self._send_error(pending, ErrorCode.UNAVAILABLE, "the proxy did not answer in time")
                self._observe(ErrorCode.UNAVAILABLE.value, pending.started)

    def teardown(self) -> None:
        for pending in self._pending.values():
            self._send_error(pending, ErrorCode.UNAVAILABLE, "the proxy is shutting down")
        self._pending.clear()
        if self._router is not None:
            self._router.close()
        self._waker.close()

    # Requests ---------------------------------------------------------------------

    def _serve_requests(self) -> None:
        router = self._router
        assert router is not None
        # While requests come from several peers, more may be queued already:
        # checking ZMQ_EVENTS then costs less than going back to the poller
        # (and far less than a raised zmq.Again). A lone REQ client has one
        # request in flight, so for it the check would always fail: it is made
        # only when the peer changed since the last request. The batch is
        # bounded, so the actor's replies and deadlines wait at most _BATCH.
        for _ in range(_BATCH):
            peer = self._serve_one(router)
            if peer is None or peer == self._last_peer:
                return
            self._last_peer = peer
            if not cast(int, router.getsockopt(_EVENTS)) & _POLLIN:
                return

    def _serve_one(self, router: zmq.Socket[bytes]) -> bytes | None:
        """Read and answer one request; returns its routing id, None if none was read."""
        frames = recv_frames(router)
        if frames is None:
            return None
        if len(frames) > _MAX_FRAMES:
            self._refuse_envelope(frames)
            return frames[0]
        if len(frames) < 2:
            return frames[0]  # A routing id alone: nothing was asked, nobody to answer.
        body = frames[-1]
        # The fast path: a find_server frame recognised by its bytes is answered
        # from the snapshot's reply bytes, without decoding it (codec.py says
        # which frames; any other frame takes the normal path below).
        if body in FIND_SERVER_NO_ID:
            self._find_server_fast(frames[:-1], None)
        elif (request_id := find_server_id(body)) is not None:
            self._find_server_fast(frames[:-1], request_id)
        else:
            self._serve(frames[:-1], body)
        return frames[0]

    def _find_server_fast(self, envelope: list[bytes], request_id: bytes | None) -> None:
        """Answer a recognised find_server frame: the bytes :meth:`_read` would send.

        Args:
            request_id: the id's MessagePack bytes, exactly as encode_reply
                writes them; None for a frame without ``id``.
        """
        started = time.perf_counter()
        snapshot = self._box.current
        if snapshot.version != self._fast_version:
            body = self._find_server.answer(snapshot, self._clock())
            self._fast_no_id = encode_reply(NO_ID, body, snapshot.epoch, self.instance)
            self._fast_head, self._fast_tail = split_at_id(
                encode_reply(0, body, snapshot.epoch, self.instance)
            )
            self._fast_version = snapshot.version
        if request_id is None:
            self._send(envelope, self._fast_no_id)
        else:
            self._send(envelope, self._fast_head + request_id + self._fast_tail)
        self._observe("find_server", started)

    def _refuse_envelope(self, frames: list[bytes]) -> None:
        """Answer an oversized envelope ``bad_request``, to its sender only.

        The reply goes to the routing id with an empty delimiter and nothing
        of the peer's frames: a REQ, or a DEALER that sent the delimiter
        (docs/protocol.md section 1's clients), reads it as a normal reply, and
        an abuser gets no echo of what it sent.
        """
        started = time.perf_counter()
        message = (
            f"a request has at most {_MAX_FRAMES - 1} frames (an envelope and one body),"
            f" got {len(frames) - 1}"
        )
        self._send([frames[0], b""], encode_error(ErrorCode.BAD_REQUEST, message, NO_ID))
        self._observe(ErrorCode.BAD_REQUEST.value, started)

    def _serve(self, envelope: list[bytes], body: bytes) -> None:
        started = time.perf_counter()
        try:
            request = validate(self._decoder.request(body))
        except RequestError as exc:
            self._send(envelope, encode_error(exc.code, exc.message, exc.request_id))
            self._observe(exc.code.value, started)
            return
        op = plan(request)
        match op:
            case ReadOp():
                self._send(envelope, self._read(request.id, op))
            case WriteOp():
                self._dispatch_write(envelope, request, op, started)
                return
            case _:
                assert_never(op)
        self._observe(request.op, started)

    def _observe(self, op: str, started: float) -> None:
        self._metrics.answered(op, time.perf_counter() - started)

    def _read(self, request_id: Any, op: ReadOp) -> bytes:
        snapshot = self._box.current
        if request_id is not NO_ID or not op.per_snapshot:
            body = op.answer(snapshot, self._clock())
            return encode_reply(request_id, body, snapshot.epoch, self.instance)
        # The hot path (find_server): the same bytes serve every id-less
        # request of one op and one snapshot.
        version, reply = self._cache.get(op, (-1, b""))
        if version != snapshot.version:
            body = op.answer(snapshot, self._clock())
            reply = encode_reply(request_id, body, snapshot.epoch, self.instance)
            self._cache[op] = (snapshot.version, reply)
        return reply

    def _dispatch_write(
        self, envelope: list[bytes], request: Request, op: AnyWriteOp, started: float
    ) -> None:
        pending = _Pending(envelope, request, started)
        weight = op.weight
        if not self._admit(weight):
            self._send_error(
                pending,
                ErrorCode.UNAVAILABLE,
                f"the proxy is behind ({len(self._in_flight)} writes waiting for it); retry later",
            )
            self._observe(ErrorCode.UNAVAILABLE.value, started)
            return
        token = next(self._tokens)
        self._pending[token] = pending
        self._in_flight[token] = weight
        self._in_flight_weight += weight
        heapq.heappush(self._deadlines, (self._clock() + self._op_timeout_s, token))
        try:
            self._proxy.tell(op.message(functools.partial(self._deliver, token)))
        except pykka.ActorDeadError:
            del self._pending[token]
            self._settle(token)
            self._send_error(pending, ErrorCode.UNAVAILABLE, "the proxy is shutting down")

    def _admit(self, weight: int) -> bool:
        """Whether one more write of ``weight`` fits; the first always does."""
        if not self._in_flight:
            return True  # A single write heavier than the bound still gets through.
        if (
            len(self._in_flight) < self._max_writes
            and self._in_flight_weight + weight <= self._max_write_entries
        ):
            return True
        self._peer_log.warning(
            "writes refused",
            "refusing a write: %d writes (%d entries) are waiting for the proxy",
            len(self._in_flight),
            self._in_flight_weight,
        )
        return False

    @property
    def writes_waiting(self) -> int:
        """Writes told to the actor that it has not answered yet (any thread may read it)."""
        return len(self._in_flight)

    def _settle(self, token: int) -> None:
        """The actor is done with a write: it no longer counts against admission."""
        self._in_flight_weight -= self._in_flight.pop(token, 0)

    def _deliver(self, token: int, result: Refused | Encoded) -> None:
        """Runs on the actor's thread: hand the result over, never touch the socket.

        After teardown nobody reads the queue; the request was already
        answered ``unavailable``, so the late result is simply left there.

        The snapshot is read here, on the actor's thread right after the
        write was published, so the reply's epoch is the write's own, not
        that of a later change.
        """
        self._replies.put((token, result, self._box.current.epoch))
        self._waker.wake()

    def _send_replies(self) -> None:
        while True:
            try:
                token, result, epoch = self._replies.get_nowait()
            except queue.Empty:
                return
            self._settle(token)
            pending = self._pending.pop(token, None)
            if pending is None:
                continue  # Already answered "unavailable" after its deadline.
            if isinstance(result, Refused):
                # A bound (max_servers), or nothing to act on: the actor changed nothing.
                code = ErrorCode(result.kind)
                self._send_error(pending, code, result.reason)
                self._observe(code.value, pending.started)
                continue
            reply = encode_reply(pending.request.id, result(), epoch, self.instance)
            self._send(pending.envelope, reply)
            self._observe(pending.request.op, pending.started)

    def _send_error(self, pending: _Pending, code: ErrorCode, message: str) -> None:
        self._send(pending.envelope, encode_error(code, message, pending.request.id))

    def _send(self, envelope: list[bytes], body: bytes) -> None:
        router = self._router
        assert router is not None
        # send_multipart's loop, with int flags (see _SEND_MORE).
        try:
            for frame in envelope:
                router.send(frame, _SEND_MORE)
            router.send(body, _SEND_LAST)
        except zmq.Again:
            log.debug("dropping a reply: the client's queue is full")
        except zmq.ZMQError as exc:
            log.debug("dropping a reply: %s", exc)
