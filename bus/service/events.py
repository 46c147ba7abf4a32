"""The events PUB socket (docs/protocol.md section 5), owned by an actor of its own.

ProxyActor tells this actor :class:`ActiveServerChanged`; the actor's thread
creates, uses and closes the PUB socket, so no other thread ever touches it.
Every ``refresh_s`` it also republishes the last active server it announced,
with the same epoch and reason ``refresh``: a late subscriber learns the
state without asking, and a subscriber that hears nothing for a few periods
knows the proxy (or the path to it) is gone (the ZeroMQ guide's Clone
pattern, in small).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pykka
import zmq

from rpcproxy.actors import ActiveServerChanged, ChangeReason
from rpcproxy.actors.timer import Handle, Scheduler, ThreadingScheduler
from rpcproxy.bus import wire
from rpcproxy.bus.service.codec import encode_event, new_instance_id
from rpcproxy.bus.service.curve import EVENTS_DOMAIN, CurveServer
from rpcproxy.bus.service.loop import needs_ipv6
from rpcproxy.bus.wire import EVENT_TOPIC
from rpcproxy.proxy import Address

log = logging.getLogger(__name__)

DEFAULT_REFRESH_S = 1.0
"""``events_refresh_s``'s default (docs/protocol.md section 6)."""


def _wire_reason(reason: ChangeReason) -> wire.ChangeReason:
    """An actor's reason for a change, as the wire spells it: the same string.

    The two Literals are defined apart (actors import no transport, and the
    client library no actors); this is where the type checker holds every
    reason a state change can have to one the wire knows (``refresh`` is the
    wire's own, sent without a state change).
    """
    return reason


@dataclass(frozen=True, slots=True)
class _Refresh:
    """Time to republish the current active server (told by the scheduler)."""


class EventPublisher(pykka.ThreadingActor):
    """Publishes every change of the active server on ``endpoint``, and a refresh.

    Args:
        context: the process's ZeroMQ context.
        endpoint: where to bind the PUB socket.
        sndhwm: messages queued per subscriber before PUB drops for it.
        curve: when set, the socket is a CURVE server.
        instance: this run's id; the query socket must send the same one.
        refresh_s: seconds between refresh events; 0 turns them off.
        scheduler: what waits between refreshes (real timers when not given).
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        endpoint: str,
        sndhwm: int = 10_000,
        curve: CurveServer | None = None,
        *,
        instance: str | None = None,
        refresh_s: float = DEFAULT_REFRESH_S,
        scheduler: Scheduler | None = None,
    ) -> None:
        super().__init__()
        self._curve = curve
        self._context = context
        self._endpoint = endpoint
        self._sndhwm = sndhwm
        self._pub: zmq.Socket[bytes] | None = None
        self.bound_endpoint = ""
        self.instance = instance if instance is not None else new_instance_id()
        self._refresh_s = refresh_s
        self._scheduler: Scheduler = scheduler or ThreadingScheduler("rpcproxy-events-refresh")
        self._pending: Handle | None = None
        # What the last event said: a refresh repeats it (epoch 0 and no
        # server until the proxy announces its first change).
        self._server: Address | None = None
        self._epoch = 0

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
        self._schedule_refresh()

    def endpoint(self) -> str:
        """The bound endpoint (ask it to learn a wildcard port)."""
        return self.bound_endpoint

    def on_receive(self, message: Any) -> Any:
        match message:
            case ActiveServerChanged(server, reason, epoch):
                # Mailbox order is the actor's order, so epochs only grow here.
                self._server, self._epoch = server, epoch
                self._send(server, _wire_reason(reason), epoch)
            case _Refresh():
                self._pending = None
                self._send(self._server, "refresh", self._epoch)
                self._schedule_refresh()
            case _:
                return super().on_receive(message)  # pykka's warning
        return None

    def on_stop(self) -> None:
        self._cancel_refresh()
        if self._pub is not None:
            self._pub.close()
            self._pub = None

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._cancel_refresh()

    def _send(self, server: Address | None, reason: wire.ChangeReason, epoch: int) -> None:
        if self._pub is None:
            return
        payload = encode_event(server, reason, epoch, self.instance)
        # PUB never blocks: with no subscriber or a full queue it drops.
        self._pub.send_multipart([EVENT_TOPIC, payload])

    def _schedule_refresh(self) -> None:
        if self._refresh_s > 0:
            self._pending = self._scheduler.call_later(self._refresh_s, self._tell_refresh)

    def _tell_refresh(self) -> None:
        """Runs on the scheduler's thread; the actor may have stopped meanwhile."""
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(_Refresh())

    def _cancel_refresh(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
