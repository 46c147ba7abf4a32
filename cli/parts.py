"""The parts of ``rpcproxy serve`` behind one interface, and the order they stop in.

A part is anything serve starts and must stop: a socket thread, an actor, the
metrics HTTP front, the bridge to Nomad's API. Each has its own way to stop
and to tell whether it runs; the thin adapters here give them one,
:class:`Part`. :class:`Parts` holds the parts that started, in start order,
names the dead ones for the supervisor, and stops them all in the order the
composition root declares, against one deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pykka

from rpcproxy.actors.lifecycle import stop_within
from rpcproxy.bus.service.curve import CurveServer

MIN_STOP_WAIT_S = 0.05
"""What a part still gets once the deadline has passed: a part that would
stop at once still gets its chance."""


class Part(Protocol):
    """One running piece of serve."""

    @property
    def name(self) -> str:
        """How logs, ``dead()`` and a late stop name it."""
        ...

    def stop(self, budget_s: float) -> bool:
        """Stop, waiting at most about ``budget_s``; whether it has stopped."""
        ...

    def alive(self) -> bool:
        """Whether it still runs (the supervisor exits when a part dies)."""
        ...


class _Threaded(Protocol):
    """A SocketThread or the NomadBridge: a thread that stops when told."""

    def stop(self, timeout_s: float) -> None: ...

    @property
    def alive(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class ThreadPart:
    """A part on a thread of its own: the query or heartbeat socket, the Nomad bridge."""

    name: str
    thread: _Threaded

    def stop(self, budget_s: float) -> bool:
        self.thread.stop(budget_s)
        return not self.thread.alive

    def alive(self) -> bool:
        return self.thread.alive


@dataclass(frozen=True, slots=True)
class ActorPart:
    """An actor the root started (and so stops)."""

    name: str
    ref: pykka.ActorRef[Any]

    def stop(self, budget_s: float) -> bool:
        return not stop_within([(self.name, self.ref)], budget_s)

    def alive(self) -> bool:
        return self.ref.is_alive()


@dataclass(frozen=True, slots=True)
class ChildActorPart:
    """An actor another actor started and stops: ProxyActor's timer and prober.

    Watched like any part, but never asked to stop here: by its turn its
    parent has stopped it, or given up on it and logged so.
    """

    name: str
    ref: pykka.ActorRef[Any]

    def stop(self, budget_s: float) -> bool:
        return not self.ref.is_alive()

    def alive(self) -> bool:
        return self.ref.is_alive()


@dataclass(frozen=True, slots=True)
class CurvePart:
    """The ZAP authenticator thread of CURVE; its stop takes no timeout."""

    curve: CurveServer
    name: str = "CURVE authenticator"

    def stop(self, budget_s: float) -> bool:
        self.curve.stop()
        return not self.curve.alive

    def alive(self) -> bool:
        return self.curve.alive


class Unwatched:
    """A part that cannot say whether it runs: up until stopped, and never late.

    The metrics HTTP front (MetricsServer tells neither; its threads are
    daemons, which no exit waits for) and the probe engine (no thread:
    closing it ends a ping in flight at once).
    """

    def __init__(self, name: str, stop: Callable[[float], object]) -> None:
        self.name = name
        self._stop = stop
        self._stopped = False

    def stop(self, budget_s: float) -> bool:
        self._stop(budget_s)
        self._stopped = True
        return True

    def alive(self) -> bool:
        return not self._stopped


class Parts:
    """The parts that started, in start order, stopped in a declared order.

    Args:
        stop_order: every part's name, in the order they stop.
        logged_by_owner: parts whose late stop their owner has logged already.
        log: where a late stop is logged (the root's logger, as it always was).
        clock: monotonic seconds, for the shared deadline.
    """

    def __init__(
        self,
        stop_order: Sequence[str],
        *,
        logged_by_owner: Collection[str],
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._rank = {name: rank for rank, name in enumerate(stop_order)}
        self._logged_by_owner = frozenset(logged_by_owner)
        self._log = log
        self._started: list[Part] = []

    def add(self, part: Part) -> None:
        """Record a started part (so it will be stopped and watched)."""
        if part.name not in self._rank:
            raise ValueError(f"{part.name!r} has no place in the stop order")
        self._started.append(part)

    def dead(self) -> list[str]:
        """Names of started parts that no longer run, in start order."""
        return [part.name for part in self._started if not part.alive()]

    def stop(self, timeout_s: float) -> list[str]:
        """Stop every part in the declared order within about ``timeout_s``; forget them.

        Every wait shares one deadline, so a part that hangs costs the rest
        of the budget once, not a timeout per part; a part still running when
        its turn is over is logged in one line and left to the process's exit.

        Returns:
            The names of the parts that had not stopped in time, in stop order.
        """
        deadline = self._clock() + timeout_s

        def left() -> float:
            return max(MIN_STOP_WAIT_S, deadline - self._clock())

        late: list[str] = []
        for part in sorted(self._started, key=lambda started: self._rank[started.name]):
            if not part.stop(left()):
                late.append(part.name)
            self._started.remove(part)
        for name in late:
            if name not in self._logged_by_owner:
                self._log.warning("%s did not stop within %g s", name, timeout_s)
        return late
