"""TimerActor: one resettable tick, told to its target.

Driven by a :class:`ManualScheduler` that only moves when the test advances
it, so no test here waits on real time; one test checks the real scheduler.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

import pykka
import pytest

from rpcproxy.actors import TimerActor
from rpcproxy.actors.messages import RebalanceTick, ScheduleTick
from rpcproxy.actors.timer import ThreadingScheduler

from ._fakes import TIMEOUT, Inbox, ManualScheduler, Recorder, received, start_recorder


@dataclass
class Timed:
    timer: pykka.ActorRef[TimerActor]
    target: pykka.ActorRef[Recorder]
    inbox: Inbox
    scheduler: ManualScheduler

    def schedule(self, delay_s: float) -> None:
        """Tell a ScheduleTick and wait until the timer has handled it."""
        self.timer.tell(ScheduleTick(delay_s))
        self.time_left()

    def time_left(self) -> float:
        """Also a barrier: every earlier message to the timer has been handled."""
        left: float = self.timer.proxy().time_left().get(timeout=TIMEOUT)
        return left

    def advance(self, seconds: float) -> list[object]:
        """Move time on; return every tick the target got so far."""
        self.scheduler.advance(seconds)
        self.time_left()  # the fired call's _Fire is handled before this answers
        return received(self.target, self.inbox)


@pytest.fixture
def timed() -> Timed:
    scheduler = ManualScheduler()
    target, inbox = start_recorder()
    timer = TimerActor.start(target, scheduler, scheduler)
    return Timed(timer, target, inbox, scheduler)


def test_a_scheduled_tick_fires_once_at_its_time(timed: Timed) -> None:
    timed.schedule(5.0)

    assert timed.advance(4.999) == []
    assert timed.advance(0.001) == [RebalanceTick()]
    assert timed.advance(3600.0) == [RebalanceTick()]


def test_rescheduling_replaces_the_pending_tick(timed: Timed) -> None:
    timed.schedule(0.02)
    timed.schedule(0.1)

    assert timed.advance(0.05) == []
    assert timed.advance(3600.0) == [RebalanceTick()]
    assert len(timed.scheduler.pending) == 0


def test_rescheduling_a_long_timer_short_fires_early(timed: Timed) -> None:
    timed.schedule(3600.0)
    timed.schedule(0.01)

    assert timed.advance(0.01) == [RebalanceTick()]
    assert timed.advance(7200.0) == [RebalanceTick()]


def test_rescheduling_a_short_timer_long_does_not_fire(timed: Timed) -> None:
    timed.schedule(0.05)
    timed.schedule(3600.0)

    assert timed.advance(3599.0) == []
    assert timed.advance(1.0) == [RebalanceTick()]


def test_a_replaced_tick_already_on_its_way_is_dropped(timed: Timed) -> None:
    """cancel() cannot stop a call that started: the generation drops its tick."""
    timed.schedule(1.0)
    (first,) = timed.scheduler.pending
    timed.schedule(10.0)
    assert first.cancelled

    first.fn()  # it raced the cancel and ran anyway
    assert timed.advance(0.0) == []
    assert timed.advance(10.0) == [RebalanceTick()]


def test_time_left_follows_the_clock(timed: Timed) -> None:
    assert timed.time_left() == math.inf
    timed.schedule(3600.0)
    assert timed.time_left() == 3600.0
    timed.scheduler.now += 600.0
    assert timed.time_left() == 3000.0
    timed.scheduler.now += 5000.0
    assert timed.time_left() == 0.0


def test_time_left_is_infinite_after_the_tick(timed: Timed) -> None:
    timed.schedule(0.01)
    assert timed.advance(0.01) == [RebalanceTick()]

    assert timed.time_left() == math.inf


def test_stopping_cancels_the_pending_tick(timed: Timed) -> None:
    timed.schedule(0.05)
    (pending,) = timed.scheduler.pending

    assert timed.timer.stop(timeout=TIMEOUT) is True

    assert pending.cancelled
    pending.fn()  # even a call that ran anyway finds a stopped actor, quietly
    timed.scheduler.advance(3600.0)
    assert received(timed.target, timed.inbox) == []


def test_a_tick_for_a_stopped_target_is_dropped_quietly(
    timed: Timed, caplog: pytest.LogCaptureFixture
) -> None:
    assert timed.target.stop(timeout=TIMEOUT) is True

    timed.schedule(0.01)
    timed.scheduler.advance(0.01)

    assert timed.time_left() == math.inf  # the tick fired, into nobody
    assert timed.timer.is_alive()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_the_real_scheduler_calls_back_on_another_thread() -> None:
    called = threading.Event()
    threads: list[threading.Thread] = []

    def fn() -> None:
        threads.append(threading.current_thread())
        called.set()

    ThreadingScheduler().call_later(0.0, fn)

    assert called.wait(TIMEOUT)
    assert threads[0] is not threading.current_thread()
    assert threads[0].daemon


def test_the_real_scheduler_survives_a_delay_of_centuries() -> None:
    """threading.Timer overflows beyond TIMEOUT_MAX; the delay is clamped."""
    called = threading.Event()
    handle = ThreadingScheduler().call_later(1e300, called.set)
    try:
        assert isinstance(handle, threading.Timer)
        assert handle.is_alive()
    finally:
        handle.cancel()
    handle.join(TIMEOUT)
    assert not handle.is_alive()
    assert not called.is_set()
