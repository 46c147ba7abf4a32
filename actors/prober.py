"""ProberActor: runs the blocking, parallel ping of a rebalance off ProxyActor's thread."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeAlias, runtime_checkable

import pykka

from rpcproxy.actors.counters import NO_COUNTERS, ActorCounters
from rpcproxy.actors.lifecycle import ReleasingActor
from rpcproxy.actors.messages import ProbeCandidates, ProbeResults
from rpcproxy.proxy import Address

log = logging.getLogger(__name__)

Prober: TypeAlias = Callable[[Sequence[Address]], Mapping[Address, bool]]
"""Pings candidates in parallel, returning within about one ping timeout.

The result holds, in candidate order, every candidate up to and including the
first one that answered (all of them, failed, when none did; see
``proxy.choose_head``). A candidate missing from the result counts as failed.
This is the one definition of the contract: the transport's probers
(:mod:`rpcproxy.bus.probes.engine`) implement it; tests pass in-memory ones.
"""


@runtime_checkable
class ProbesEvery(Protocol):
    """A prober that can also wait for every candidate's answer (the transport's can).

    ``every(candidates)`` returns an answer for each candidate, all probed in
    parallel within about one timeout, for ``set_servers``, which keeps the
    servers that answer. A prober without it is asked one candidate at a time.
    """

    def every(self, candidates: Sequence[Address]) -> Mapping[Address, bool]: ...


@runtime_checkable
class Closable(Protocol):
    """A prober that holds resources (the transport's do): ``close()`` ends a
    ping in flight, fails later ones at once, and frees them; idempotent."""

    def close(self) -> None: ...


class ProberActor(ReleasingActor):
    """Pings what it is asked to and tells the answers back; it keeps no proxy state.

    Its own mailbox is the only thing a ping blocks. ProxyActor runs at most
    one rebalance at a time, so requests never pile up here. A ping in flight
    holds up this actor's stop message, so whoever stops the service calls
    the prober's ``close()`` first (from its own thread); the actor closes it
    too when it stops or fails, so the prober's resources go with the actor
    on every path.
    """

    def __init__(
        self,
        prober: Prober,
        target: pykka.ActorRef[Any],
        counters: ActorCounters = NO_COUNTERS,
    ) -> None:
        super().__init__()
        self._prober = prober
        self._target = target
        self._counters = counters

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, ProbeCandidates):
            return super().on_receive(message)  # pykka's warning
        started = time.perf_counter()
        try:
            answered = self._answers(message)
        except Exception:
            # A broken transport must not leave a rebalance waiting forever:
            # report "nobody answered", which keeps the list as it is.
            log.exception("pinging %d servers failed", len(message.candidates))
            answered = {}
        self._counters.probed(time.perf_counter() - started)
        try:
            self._target.tell(ProbeResults(message.token, answered))
        except pykka.ActorDeadError:
            # ProxyActor stopped while we probed (shutdown): nobody is waiting.
            log.debug("ping results %d dropped: the proxy has stopped", message.token)
        return None

    def _answers(self, message: ProbeCandidates) -> dict[Address, bool]:
        if not message.every:
            return dict(self._prober(message.candidates))
        if isinstance(self._prober, ProbesEvery):
            return dict(self._prober.every(message.candidates))
        # In-memory probers of tests: one candidate at a time.
        return {addr: self._prober((addr,)).get(addr, False) for addr in message.candidates}

    def release(self) -> None:
        if isinstance(self._prober, Closable):
            try:
                self._prober.close()
            except Exception:
                log.exception("closing the prober failed")
