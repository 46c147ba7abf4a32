"""The heartbeat SUB socket (docs/protocol.md section 2).

Validation happens here, on the socket's thread: only a typed, valid
:class:`proxy.Heartbeat` reaches ProxyActor. Anything else is dropped whole,
counted by reason and logged (rate-limited: a peer chooses how often), and
changes nothing.

Heartbeats are state, not events, so a flood is conflated here rather than
queued: every payload is read at once, but only its ``publisher`` and ``seq``
are looked at (:func:`~rpcproxy.bus.service.codec.peek_heartbeat`, a small fraction of a full
decode), and it supersedes the pending payload of its publisher in a bounded
table (:class:`~rpcproxy.bus.service.conflate.Conflator`). At most one
:class:`actors.ApplyHeartbeats` is in ProxyActor's mailbox at a time: when
the actor has applied it, it calls back, and the listener then decodes the
pending payloads, the latest of each publisher, into the next batch. So the
mailbox holds one message whatever the rate, the actor always applies the
freshest state, and the work of decoding follows the actor's pace, not the
peer's.

The next batch also waits ``rest_factor`` times as long as the last one kept
the actor busy: a flood of heavy heartbeats gets at most a quarter of the
actor (and of the GIL, which the query thread needs to answer), and a light
one is not slowed, since its batches take microseconds.

A consequence worth knowing: a payload superseded before it was decoded is
counted as ``superseded``, not validated; if the latest payload of a
publisher breaks the table, it is dropped (and counted as such) and that
publisher's earlier pending ones went with it. A publisher that sends
garbage under its own name loses its own heartbeats, and nothing else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pykka
import zmq

from rpcproxy.actors import ApplyHeartbeats
from rpcproxy.bus.net.loop import SocketThread, Waker, needs_ipv6, recv_frames
from rpcproxy.bus.service.codec import Decoder, HeartbeatError, peek_heartbeat
from rpcproxy.bus.service.conflate import Conflator
from rpcproxy.bus.service.counts import NO_COUNTS, HeartbeatRejection, ServiceCounts
from rpcproxy.bus.service.curve import HEARTBEAT_DOMAIN, CurveServer
from rpcproxy.bus.wire import heartbeat_topic
from rpcproxy.log_gate import PeerLog
from rpcproxy.proxy import Heartbeat

log = logging.getLogger(__name__)

DEFAULT_RCVHWM = 32
"""Messages libzmq queues for us per connected publisher.

Each may be a ``max_message_bytes`` frame (1 MiB by default), so this is what
bounds the transport's share of memory (32 MiB per publisher). It does not
need to be deep: the socket is read at the transport's pace (a payload costs
a peek, not a decode), so the queue holds the latest heartbeats, not a
backlog of old ones.
"""

DEFAULT_MAX_PUBLISHERS = 1024
"""Publishers with a heartbeat waiting at once (as many as the state remembers)."""

DEFAULT_MAX_PENDING_BYTES = 8 << 20
"""Summed payload bytes of the heartbeats waiting for the proxy (all publishers)."""

DEFAULT_REST_FACTOR = 3.0
"""After a batch kept the actor busy for t, the next waits 3 t: heartbeats get at
most a quarter of the actor under a flood (bench/flood.py: find_server's p99
during a flood of 4096-server heartbeats is about halved from a factor of 1)."""

_MAX_READ = 256
"""Messages read per wake-up, so the stop pipe is looked at between bursts."""


class HeartbeatListener(SocketThread):
    """Binds and connects one SUB socket and feeds valid heartbeats to ProxyActor.

    Args:
        context: the process's ZeroMQ context.
        proxy: the ProxyActor that applies heartbeats.
        region: only ``heartbeat/<region>`` is applied.
        bind: endpoints to bind.
        connect: endpoints to connect to.
        max_message_bytes: larger frames disconnect the peer (ZeroMQ MAXMSGSIZE).
        rcvhwm: messages libzmq queues per publisher (see :data:`DEFAULT_RCVHWM`).
        max_pending_bytes: bound on the payloads waiting for the proxy.
        max_publishers: bound on the publishers with a payload waiting.
        curve: when set, bound endpoints are CURVE servers for allowed keys only.
        metrics: what to count (nothing by default).
        clock: monotonic seconds, for pacing batches and rate-limiting warnings.
        rest_factor: after a batch kept the actor busy for t seconds, the
            next one is sent no sooner than ``rest_factor * t`` later.
        decoder: validates payloads (its ``max_servers``); the default bound when not given.

    Attributes:
        received: heartbeats passed on to the proxy.
        dropped: dropped messages by reason (``frames``, ``topic``,
            ``payload``, ``overflow``, ``superseded``).
    """

    name = "rpcproxy-heartbeats"

    def __init__(
        self,
        context: zmq.Context[Any],
        proxy: pykka.ActorRef[Any],
        *,
        region: str,
        bind: Sequence[str] = (),
        connect: Sequence[str] = (),
        max_message_bytes: int = 1 << 20,
        rcvhwm: int = DEFAULT_RCVHWM,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_publishers: int = DEFAULT_MAX_PUBLISHERS,
        curve: CurveServer | None = None,
        metrics: ServiceCounts = NO_COUNTS,
        clock: Callable[[], float] = time.monotonic,
        rest_factor: float = DEFAULT_REST_FACTOR,
        decoder: Decoder | None = None,
    ) -> None:
        super().__init__(context)
        self._decoder = decoder or Decoder()
        self._curve = curve
        self._metrics = metrics
        self._proxy = proxy
        self._topic = heartbeat_topic(region)
        self._bind = tuple(bind)
        self._connect = tuple(connect)
        self._max_message_bytes = max_message_bytes
        self._rcvhwm = rcvhwm
        self._pending: Conflator[str | None, bytes] = Conflator(max_publishers, max_pending_bytes)
        # Set while no batch is in the proxy's mailbox; cleared by this
        # thread when it tells one, set by the actor's thread when it is done.
        self._slot_free = threading.Event()
        self._slot_free.set()
        self._clock = clock
        self._rest_factor = rest_factor
        self._told_at = 0.0
        self._done_at = 0.0
        """Written by the actor's thread just before it sets ``_slot_free``."""
        self._next_at = 0.0
        self._waker = Waker()
        self._peer_log = PeerLog(log, clock=clock)
        self._sub: zmq.Socket[bytes] | None = None
        self.bound_endpoints: list[str] = []
        self.received = 0
        self.dropped: Counter[str] = Counter()

    # SocketThread ---------------------------------------------------------------

    def setup(self) -> None:
        sub: zmq.Socket[bytes] = self.context.socket(zmq.SUB)
        sub.linger = 0
        sub.ipv6 = any(map(needs_ipv6, self._bind + self._connect))
        sub.rcvhwm = self._rcvhwm
        sub.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
        if self._curve is not None:
            # Publishers connect to our bound endpoints as CURVE clients; only
            # allowed keys complete the handshake, so no stranger's heartbeat
            # ever reaches the proxy.
            self._curve.secure(sub, HEARTBEAT_DOMAIN)
        # ZeroMQ filters by prefix, so "heartbeat/global" also lets
        # "heartbeat/global2" through; _read checks the exact topic.
        sub.setsockopt(zmq.SUBSCRIBE, self._topic)
        try:
            for endpoint in self._bind:
                sub.bind(endpoint)
                self.bound_endpoints.append(sub.getsockopt_string(zmq.LAST_ENDPOINT))
            for endpoint in self._connect:
                sub.connect(endpoint)
        except zmq.ZMQError as exc:
            sub.close()
            raise OSError(f"cannot open heartbeat socket at {endpoint}: {exc}") from exc
        self._sub = sub
        self.poller.register(sub, zmq.POLLIN)
        self.poller.register(self._waker.fileno, zmq.POLLIN)

    def on_readable(self, sock: Any) -> None:
        if sock is self._sub:
            self._read()
        else:
            self._waker.drain()  # the proxy is done with the last batch
            busy = self._done_at - self._told_at
            self._next_at = self._done_at + self._rest_factor * busy

    def poll_timeout_ms(self) -> int | None:
        if not self._pending or not self._slot_free.is_set():
            return None  # new input or the proxy's callback will wake us
        return max(0, int((self._next_at - self._clock()) * 1000) + 1)

    def on_idle(self) -> None:
        self._hand_over()

    def teardown(self) -> None:
        if self._sub is not None:
            self._sub.close()
        self._waker.close()

    # Reading and handing over ------------------------------------------------------

    def _read(self) -> None:
        """Read what is queued, conflating it into the pending table."""
        sub = self._sub
        assert sub is not None
        for _ in range(_MAX_READ):
            # Copied, not zero-copy: most payloads are only peeked at and
            # superseded, and one near max_message_bytes costs one memcpy.
            frames = recv_frames(sub)
            if frames is None:
                return
            self._offer(frames)

    def _offer(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self._drop("frames", "expected 2 frames (topic, payload), got %d", len(frames))
            return
        topic, payload = frames
        if topic != self._topic:
            # Another region sharing our prefix: not an error, but counted.
            self.dropped["topic"] += 1
            self._metrics.rejected("topic")
            return
        try:
            publisher, seq = peek_heartbeat(payload)
        except HeartbeatError as exc:
            self._drop("payload", "%s", self._why(payload, exc))
            return
        offered = self._pending.offer(publisher, seq, payload, len(payload))
        if offered.superseded:
            self.dropped["superseded"] += offered.superseded
            self._metrics.heartbeats("superseded", offered.superseded)
        if offered.evicted:
            self.dropped["overflow"] += offered.evicted
            self._metrics.rejected("overflow", offered.evicted)
            self._peer_log.warning(
                "overflow",
                "dropped %d pending heartbeats: more publishers or bytes waiting than the"
                " bounds allow (%d publishers, %d bytes)",
                offered.evicted,
                len(self._pending),
                self._pending.size,
            )

    def _hand_over(self) -> None:
        """Decode the pending payloads and tell them to the proxy, if it is time."""
        if not self._pending or not self._slot_free.is_set():
            return
        now = self._clock()
        if now < self._next_at:
            return
        batch: list[Heartbeat] = []
        for payload in self._pending.drain():
            try:
                batch.append(self._decoder.heartbeat(payload))
            except HeartbeatError as exc:
                self._drop("payload", "%s", exc)
        if not batch:
            return
        self._slot_free.clear()
        self._told_at = self._clock()
        try:
            self._proxy.tell(ApplyHeartbeats(tuple(batch), self._done))
        except pykka.ActorDeadError:
            self._slot_free.set()
            log.debug("%d heartbeats dropped: the proxy is stopping", len(batch))
            return
        self.received += len(batch)

    def _done(self) -> None:
        """Runs on the actor's thread: the batch is applied, the next may follow."""
        self._done_at = self._clock()
        self._slot_free.set()
        self._waker.wake()

    def _drop(self, reason: HeartbeatRejection, msg: str, *args: object) -> None:
        self.dropped[reason] += 1
        self._metrics.rejected(reason)
        self._peer_log.warning(f"dropped {reason}", "dropped a heartbeat: " + msg, *args)

    def _why(self, payload: bytes, peeked: HeartbeatError) -> HeartbeatError:
        """The full decoder's account of a payload the peek refused (it names the rule)."""
        try:
            self._decoder.heartbeat(payload)
        except HeartbeatError as exc:
            return exc
        return peeked
