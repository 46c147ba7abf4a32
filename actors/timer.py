"""TimerActor: turns "rebalance in N seconds" into one RebalanceTick later.

The waiting itself is done by a :class:`Scheduler`, so tests can drive the
timer with a scheduler they advance by hand instead of waiting on real time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pykka

from rpcproxy.actors.lifecycle import ReleasingActor
from rpcproxy.actors.messages import RebalanceTick, ScheduleTick

log = logging.getLogger(__name__)


class Handle(Protocol):
    """A call scheduled by :meth:`Scheduler.call_later`."""

    def cancel(self) -> None:
        """Keep the call from happening, if it has not started yet."""


class Scheduler(Protocol):
    """Calls a function once, later, on some thread other than the caller's."""

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Handle:
        """Call ``fn()`` after ``delay_s`` seconds; the handle cancels it."""


class ThreadingScheduler:
    """The real scheduler: one daemon :class:`threading.Timer` per call.

    A daemon, because a pending rebalance tick must never keep the process
    alive on its way out.

    Args:
        name: the timer threads' name, as thread listings show it.
    """

    def __init__(self, name: str = "rpcproxy-rebalance-timer") -> None:
        self._name = name

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Handle:
        # A peer's num_nodes or an operator's min_reuse_s can ask for centuries;
        # threading.Timer's thread dies of OverflowError beyond TIMEOUT_MAX.
        timer = threading.Timer(min(max(0.0, delay_s), threading.TIMEOUT_MAX), fn)
        timer.name = self._name
        timer.daemon = True
        timer.start()
        return timer


@dataclass(frozen=True, slots=True)
class _Fire:
    generation: int


class TimerActor(ReleasingActor):
    """A resettable one-shot timer that tells ``target`` a RebalanceTick.

    Each :class:`ScheduleTick` replaces the pending tick. The generation
    counter makes a tick that was already on its way when it was replaced
    harmless: the actor's own mailbox orders it after the replacement, and
    its stale generation drops it.

    Args:
        target: the actor told :class:`RebalanceTick`.
        clock: monotonic seconds, for :meth:`time_left`.
        scheduler: what waits for the delay (real timers when not given).
    """

    def __init__(
        self,
        target: pykka.ActorRef[Any],
        clock: Callable[[], float] = time.monotonic,
        scheduler: Scheduler | None = None,
    ) -> None:
        super().__init__()
        self._target = target
        self._clock = clock
        self._scheduler: Scheduler = scheduler or ThreadingScheduler()
        self._generation = 0
        self._pending: Handle | None = None
        self._deadline = float("inf")

    def on_receive(self, message: Any) -> Any:
        match message:
            case ScheduleTick(delay_s):
                self._schedule(delay_s)
            case _Fire(generation) if generation == self._generation:
                self._pending = None
                self._deadline = float("inf")
                try:
                    self._target.tell(RebalanceTick())
                except pykka.ActorDeadError:
                    # The target is stopping and will stop us next.
                    log.debug("rebalance tick dropped: the target has stopped")
            case _Fire():
                pass  # Replaced before it fired (see the class docstring).
            case _:
                return super().on_receive(message)  # pykka's warning
        return None

    def time_left(self) -> float:
        """Seconds until the pending tick; infinity when none is pending."""
        return max(0.0, self._deadline - self._clock())

    def release(self) -> None:
        self._cancel()

    def _schedule(self, delay_s: float) -> None:
        self._cancel()
        self._generation += 1
        self._deadline = self._clock() + delay_s
        fire = _Fire(self._generation)
        self._pending = self._scheduler.call_later(delay_s, lambda: self._fire(fire))

    def _fire(self, fire: _Fire) -> None:
        """Runs on the scheduler's thread: hand the tick to the actor's own mailbox.

        cancel() cannot stop a call that has already started, so the actor
        may have stopped in between; that is not an error.
        """
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(fire)

    def _cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
