"""ProxyActor: the one owner and writer of the proxy's state, on a thread of its own.

Every change goes through this actor's mailbox, one at a time, so no lock
guards the state. What each message does is :class:`ProxyCore`'s; the actor
supplies its effects: a TimerActor for the rebalance timer, a ProberActor
that probes a rebalance's candidates off this thread, and the listeners
told each new active server.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import pykka

from rpcproxy.actors.core import ProxyCore, ProxySettings
from rpcproxy.actors.counters import NO_COUNTERS, ActorCounters
from rpcproxy.actors.lifecycle import ReleasingActor, stop_within
from rpcproxy.actors.messages import (
    PROXY_MESSAGES,
    ActiveServerChanged,
    ProbeCandidates,
    ScheduleTick,
)
from rpcproxy.actors.prober import Prober, ProberActor
from rpcproxy.actors.snapshot import SnapshotBox
from rpcproxy.actors.timer import TimerActor
from rpcproxy.proxy import ProxyState

log = logging.getLogger(__name__)

CHILD_STOP_TIMEOUT_S = 3.0
"""How long stopping ProxyActor waits for its timer and prober, together."""


class ProxyActor(ReleasingActor):
    """Runs a :class:`ProxyCore`; starts and stops its TimerActor and ProberActor.

    Args:
        settings: identity, timing and initial servers.
        prober: the parallel probe function ProberActor runs.
        box: where snapshots are published for lock-free readers.
        listeners: actors told :class:`ActiveServerChanged` when the head moves.
        rng: the only source of randomness (shuffles and jitter).
        clock: monotonic seconds, for the snapshot's rebalance deadline.
        on_change: called with every new state (to save it); must not block.
        counters: what to count (failovers, rebalances, heartbeats); nothing by default.
    """

    def __init__(
        self,
        settings: ProxySettings,
        prober: Prober,
        box: SnapshotBox,
        *,
        listeners: Sequence[pykka.ActorRef[Any]] = (),
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[ProxyState], None] | None = None,
        counters: ActorCounters = NO_COUNTERS,
    ) -> None:
        super().__init__()
        self._probe_fn = prober
        self._listeners = tuple(listeners)
        self._clock = clock
        self._counters = counters
        self._timer: pykka.ActorRef[TimerActor] | None = None
        self._prober: pykka.ActorRef[ProberActor] | None = None
        self._core = ProxyCore(
            settings,
            box,
            probe=self._tell_prober,
            schedule=self._tell_timer,
            announce=self._tell_listeners,
            rng=rng,
            clock=clock,
            on_change=on_change,
            counters=counters,
        )

    # Lifecycle ----------------------------------------------------------------

    def on_start(self) -> None:
        self._timer = TimerActor.start(self.actor_ref, self._clock)
        self._prober = ProberActor.start(self._probe_fn, self.actor_ref, self._counters)
        try:
            self._core.start()
        except BaseException:
            # pykka calls neither on_stop nor on_failure when on_start raises.
            self._stop_children()
            raise

    def release(self) -> None:
        """On a stop and on a failure (a told message raised) alike.

        The children must stop after a failure too: their threads are not
        daemons, and left running they would keep the process alive after its
        only writer died. Whoever waits on a probe gets an answer instead of a timeout.
        """
        self._stop_children()
        self._core.abandon_probes()

    def _stop_children(self) -> None:
        """Stop the timer and the prober together, bounded; log one that will not."""
        for name in stop_within(self.children(), CHILD_STOP_TIMEOUT_S):
            # A prober stuck in a probe stops once the probe returns; waiting
            # longer here would hold up the whole shutdown behind it.
            log.warning(
                "%s did not stop within %g s; not waiting for it", name, CHILD_STOP_TIMEOUT_S
            )

    def children(self) -> list[tuple[str, pykka.ActorRef[Any]]]:
        """The actors this one started, by name, so a supervisor can watch them."""
        named = [("rebalance timer", self._timer), ("prober", self._prober)]
        return [(name, ref) for name, ref in named if ref is not None]

    def started(self) -> bool:
        """Answered once on_start has run; start-up waits on it (the actor's liveness check)."""
        return True

    # Messages -------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        # pykka hands over anything told; only ProxyMessage gets past this check.
        if not isinstance(message, PROXY_MESSAGES):
            return super().on_receive(message)  # pykka's warning, and the message dropped
        self._core.handle(message)
        return None

    # The core's effects -----------------------------------------------------------

    def _tell_prober(self, candidates: ProbeCandidates) -> None:
        assert self._prober is not None
        self._prober.tell(candidates)

    def _tell_timer(self, delay_s: float) -> None:
        assert self._timer is not None
        self._timer.tell(ScheduleTick(delay_s))

    def _tell_listeners(self, event: ActiveServerChanged) -> None:
        for listener in self._listeners:
            try:
                listener.tell(event)
            except pykka.ActorDeadError:
                # A listener that stopped first (shutdown, or its own
                # failure) must not take the state's only writer with it.
                log.debug("listener %s is gone; %r not delivered", listener, event)
