"""The events PUB socket (docs/protocol.md section 5), owned by an actor of its own.

ProxyActor tells this actor :class:`ActiveServerChanged`; the actor's thread
creates, uses and closes the PUB socket, so no other thread ever touches it.
Every ``refresh_s`` it also republishes the last active server it announced,
with the same epoch and reason ``refresh``: a late subscriber learns the
state without asking, and a subscriber that hears nothing for a few periods
knows the proxy (or the path to it) is gone (the ZeroMQ guide's Clone
pattern, in small).

Events are state, so a subscriber never needs a long queue: one that falls
behind sees an epoch gap and re-syncs (docs/protocol.md section 5). What a
subscriber that never reads can make the proxy hold is therefore kept small
(docs/protocol.md section 8): a few tens of events in libzmq's queue and a
small kernel send buffer per connection, and the heap libzmq freed when such
subscribers leave is handed back to the OS
(:class:`~rpcproxy.bus.service.heap_trim.HeapTrimmer`).

The socket is an XPUB rather than a PUB, so that what a peer can make the
proxy hold by subscribing is bounded too (docs/protocol.md section 8): after
each send the actor reads the subscriptions libzmq hands over and shuts a
connection that spends too much on topics no event has
(:mod:`rpcproxy.bus.service.subscriptions`). To a SUB it is the same socket.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pykka
import zmq

from rpcproxy.actors import ActiveServerChanged, ChangeReason, SimpleInboxActor
from rpcproxy.actors.timer import Handle, Scheduler, ThreadingScheduler
from rpcproxy.bus import wire
from rpcproxy.bus.net.loop import needs_ipv6
from rpcproxy.bus.service.codec import encode_event, new_instance_id
from rpcproxy.bus.service.curve import EVENTS_DOMAIN, CurveServer
from rpcproxy.bus.service.heap_trim import HeapTrimmer
from rpcproxy.bus.service.subscriptions import SubscriptionGuard, local_match, prepare
from rpcproxy.bus.wire import EVENT_TOPIC
from rpcproxy.proxy import Address

DEFAULT_REFRESH_S = 1.0
"""``events_refresh_s``'s default (docs/protocol.md section 6)."""

DEFAULT_SNDHWM = 32
"""Events libzmq queues per subscriber before PUB drops for it.

Events are state: a subscriber that misses some re-syncs on the epoch gap,
and the refresh brings a late one the current state, so a long queue only
delays the moment it learns the truth. It was 10,000, and 500 subscribers
that never read took the proxy to 504 MB (issue 16); 32 two-frame events fit
in one chunk of libzmq's pipe. A subscriber that reads is not affected: its
kernel buffers and its own receive queue (``SUB_RCVHWM``, 1,000) take a
burst before this queue holds anything.
"""

DEFAULT_SNDBUF = 16 * 1024
"""The kernel send buffer of each subscriber's connection, in bytes (``ZMQ_SNDBUF``).

Left to the OS it grows to ``tcp_wmem``'s maximum (4 MiB on Linux) for a
subscriber that does not read: kernel memory charged to the proxy's cgroup,
1 GB for 1,000 such subscribers in bench/idle_subscribers.py, and the I/O
thread kept busy feeding it (``find_server`` p99 36 ms instead of 5 ms
there). The kernel doubles it for its bookkeeping, so about 300 events of
100 bytes fit: plenty for events sent a few at a time, and a subscriber too
far away to keep up sees a gap and re-syncs.
"""


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


class EventPublisher(SimpleInboxActor):
    """Publishes every change of the active server on ``endpoint``, and a refresh.

    Args:
        context: the process's ZeroMQ context.
        endpoint: where to bind the PUB socket.
        sndhwm: events queued per subscriber before PUB drops for it
            (:data:`DEFAULT_SNDHWM`).
        curve: when set, the socket is a CURVE server.
        instance: this run's id; the query socket must send the same one.
        refresh_s: seconds between refresh events; 0 turns them off.
        scheduler: what waits between refreshes (real timers when not given).
        sndbuf: each subscriber connection's kernel send buffer in bytes
            (:data:`DEFAULT_SNDBUF`); -1 leaves it to the OS.
        trimmer: runs at each refresh, handing the heap departed subscribers
            freed back to the OS (glibc's when not given). With refreshes off
            it never runs.

    After each send (a change's or a refresh's) the actor reads what
    subscribers sent (:class:`SubscriptionGuard`): libzmq takes their
    subscriptions in only while its owner uses the socket, so that is when
    there is something to read.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        endpoint: str,
        sndhwm: int = DEFAULT_SNDHWM,
        curve: CurveServer | None = None,
        *,
        instance: str | None = None,
        refresh_s: float = DEFAULT_REFRESH_S,
        scheduler: Scheduler | None = None,
        sndbuf: int = DEFAULT_SNDBUF,
        trimmer: HeapTrimmer | None = None,
    ) -> None:
        super().__init__()
        self._curve = curve
        self._context = context
        self._endpoint = endpoint
        self._sndhwm = sndhwm
        self._sndbuf = sndbuf
        self._trimmer = trimmer if trimmer is not None else HeapTrimmer.for_this_process()
        self._pub: zmq.Socket[bytes] | None = None
        self._guard: SubscriptionGuard | None = None
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
        pub: zmq.Socket[bytes] = self._context.socket(zmq.XPUB)
        pub.linger = 0
        pub.ipv6 = needs_ipv6(self._endpoint)
        pub.sndhwm = self._sndhwm
        # Set before bind: libzmq applies them to each connection it accepts.
        pub.sndbuf = self._sndbuf
        prepare(pub)
        if self._curve is not None:
            self._curve.secure(pub, EVENTS_DOMAIN)
        try:
            pub.bind(self._endpoint)
        except zmq.ZMQError as exc:
            pub.close()
            raise OSError(f"cannot bind events socket {self._endpoint}: {exc}") from exc
        self.bound_endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._pub = pub
        self._guard = SubscriptionGuard(pub, EVENT_TOPIC, local_match(self.bound_endpoint))
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
                # Once a period is often enough to notice subscribers that left.
                self._trimmer.check()
                self._schedule_refresh()
            case _:
                return super().on_receive(message)  # pykka's warning
        return None

    def on_stop(self) -> None:
        self._cancel_refresh()
        self._guard = None
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
        # XPUB never blocks: with no subscriber or a full queue it drops.
        self._pub.send_multipart([EVENT_TOPIC, payload])
        if self._guard is not None:
            # The send ran libzmq's pending commands: subscriptions that
            # arrived since the last turn are in, and handed over to be read.
            self._guard.read()

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
