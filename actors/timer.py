"""TimerActor: turns "rebalance in N seconds" into one RebalanceTick later."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from actors.messages import RebalanceTick, ScheduleTick

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Fire:
    generation: int


class TimerActor(pykka.ThreadingActor):
    """A resettable one-shot timer that tells ``target`` a RebalanceTick.

    Each :class:`ScheduleTick` replaces the pending tick. The generation
    counter makes a tick that was already on its way when it was replaced
    harmless: the actor's own mailbox orders it after the replacement, and
    its stale generation drops it.
    """

    def __init__(
        self, target: pykka.ActorRef[Any], clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._target = target
        self._clock = clock
        self._generation = 0
        self._timer: threading.Timer | None = None
        self._deadline = float("inf")

    def on_receive(self, message: Any) -> Any:
        match message:
            case ScheduleTick(delay_s):
                self._schedule(delay_s)
            case _Fire(generation) if generation == self._generation:
                self._deadline = float("inf")
                try:
                    self._target.tell(RebalanceTick())
                except pykka.ActorDeadError:
                    # The target is stopping and will stop us next.
                    log.debug("rebalance tick dropped: the target has stopped")
            case _Fire():
                pass
            case _:
                log.warning("TimerActor: unexpected message %r", message)
        return None

    def time_left(self) -> float:
        """Seconds until the pending tick; infinity when none is pending."""
        return max(0.0, self._deadline - self._clock())

    def on_stop(self) -> None:
        self._cancel()

    def _schedule(self, delay_s: float) -> None:
        self._cancel()
        self._generation += 1
        self._deadline = self._clock() + delay_s
        # A peer's num_nodes or an operator's min_reuse_s can ask for centuries;
        # threading.Timer's thread dies of OverflowError beyond TIMEOUT_MAX.
        delay_s = min(delay_s, threading.TIMEOUT_MAX)
        timer = threading.Timer(delay_s, self._fire, args=(_Fire(self._generation),))
        timer.name = "rpcproxy-rebalance-timer"
        timer.daemon = True
        timer.start()
        self._timer = timer

    def _fire(self, fire: _Fire) -> None:
        """Runs on the timer's thread: hand the tick to the actor's own mailbox.

        cancel() cannot stop a timer whose function has already started, so
        the actor may have stopped in between; that is not an error.
        """
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(fire)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
