"""The events PUB socket (docs/protocol.md section 5), owned by an actor of its own.

ProxyActor tells this actor :class:`ActiveServerChanged`; the actor's thread
creates, uses and closes the PUB socket, so no other thread ever touches it.
"""

from __future__ import annotations

import logging
from typing import Any

import pykka
import zmq

from rpcproxy.actors import ActiveServerChanged, ChangeReason
from rpcproxy.bus import wire
from rpcproxy.bus.service.codec import encode_event
from rpcproxy.bus.service.curve import EVENTS_DOMAIN, CurveServer
from rpcproxy.bus.service.loop import needs_ipv6
from rpcproxy.bus.wire import EVENT_TOPIC

log = logging.getLogger(__name__)


def _wire_reason(reason: ChangeReason) -> wire.ChangeReason:
    """An actor's reason for a change, as the wire spells it: the same string.

    The two Literals are defined apart (actors import no transport, and the
    client library no actors); this is where the type checker holds every
    reason a state change can have to one the wire knows (``refresh`` is the
    wire's own, sent without a state change).
    """
    return reason


class EventPublisher(pykka.ThreadingActor):
    """Publishes every change of the active server on ``endpoint``."""

    def __init__(
        self,
        context: zmq.Context[Any],
        endpoint: str,
        sndhwm: int = 10_000,
        curve: CurveServer | None = None,
    ) -> None:
        super().__init__()
        self._curve = curve
        self._context = context
        self._endpoint = endpoint
        self._sndhwm = sndhwm
        self._pub: zmq.Socket[bytes] | None = None
        self.bound_endpoint = ""

    def on_start(self) -> None:
        pub: zmq.Socket[bytes] = self._context.socket(zmq.PUB)
        pub.linger = 0
        pub.ipv6 = needs_ipv6(self._endpoint)
        pub.sndhwm = self._sndhwm
        if self._curve is not None:
            self._curve.secure(pub, EVENTS_DOMAIN)
        try:
            pub.bind(self._endpoint)
        except zmq.ZMQError as exc:
            pub.close()
            raise OSError(f"cannot bind events socket {self._endpoint}: {exc}") from exc
        self.bound_endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._pub = pub

    def endpoint(self) -> str:
        """The bound endpoint (ask it to learn a wildcard port)."""
        return self.bound_endpoint

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, ActiveServerChanged):
            return super().on_receive(message)  # pykka's warning
        if self._pub is not None:
            payload = encode_event(message.server, _wire_reason(message.reason))
            # PUB never blocks: with no subscriber or a full queue it drops.
            self._pub.send_multipart([EVENT_TOPIC, payload])
        return None

    def on_stop(self) -> None:
        if self._pub is not None:
            self._pub.close()
            self._pub = None
