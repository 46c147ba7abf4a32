"""The heartbeat SUB socket (PROTOCOL.md section 2).

Validation happens here, on the socket's thread: only a typed, valid
:class:`proxy.Heartbeat` reaches ProxyActor. Anything else is dropped whole,
counted by reason and logged, and changes nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pykka
import zmq

from actors import ApplyHeartbeats
from actors.metrics import Metrics
from bus.codec import HeartbeatError, decode_heartbeat
from bus.curve import HEARTBEAT_DOMAIN, CurveServer
from bus.loop import SocketThread, needs_ipv6
from proxy import Heartbeat

log = logging.getLogger(__name__)

_MAX_BATCH = 1024
"""Heartbeats read per wake-up and handed to the proxy as one message."""


def heartbeat_topic(region: str) -> bytes:
    """The topic publishers send a region's heartbeats on."""
    return f"heartbeat/{region}".encode()


class HeartbeatListener(SocketThread):
    """Binds and connects one SUB socket and feeds valid heartbeats to ProxyActor.

    Attributes:
        received: heartbeats passed on to the proxy.
        dropped: dropped messages by reason (``frames``, ``topic``, ``payload``).
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
        rcvhwm: int = 10_000,
        curve: CurveServer | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(context)
        self._curve = curve
        self._rejected = (metrics or Metrics()).heartbeats_rejected
        self._proxy = proxy
        self._topic = heartbeat_topic(region)
        self._bind = tuple(bind)
        self._connect = tuple(connect)
        self._max_message_bytes = max_message_bytes
        self._rcvhwm = rcvhwm
        self._sub: zmq.Socket[bytes] | None = None
        self.bound_endpoints: list[str] = []
        self.received = 0
        self.dropped: Counter[str] = Counter()

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
        # "heartbeat/global2" through; on_readable checks the exact topic.
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

    def on_readable(self, sock: Any) -> None:
        assert self._sub is not None
        batch: list[Heartbeat] = []
        for _ in range(_MAX_BATCH):
            try:
                frames = self._sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            heartbeat = self._decode(frames)
            if heartbeat is not None:
                batch.append(heartbeat)
        if not batch:
            return
        self.received += len(batch)
        try:
            self._proxy.tell(ApplyHeartbeats(tuple(batch)))
        except pykka.ActorDeadError:
            log.debug("%d heartbeats dropped: the proxy is stopping", len(batch))

    def _decode(self, frames: list[bytes]) -> Heartbeat | None:
        if len(frames) != 2:
            self._drop("frames", f"expected 2 frames (topic, payload), got {len(frames)}")
            return None
        topic, payload = frames
        if topic != self._topic:
            # Another region sharing our prefix: not an error, but counted.
            self.dropped["topic"] += 1
            self._rejected.labels("topic").inc()
            return None
        try:
            return decode_heartbeat(payload)
        except HeartbeatError as exc:
            self._drop("payload", str(exc))
            return None

    def _drop(self, reason: str, detail: str) -> None:
        self.dropped[reason] += 1
        self._rejected.labels(reason).inc()
        log.warning("dropped a heartbeat: %s", detail)

    def teardown(self) -> None:
        if self._sub is not None:
            self._sub.close()
