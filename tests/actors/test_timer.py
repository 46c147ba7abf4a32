"""TimerActor: one resettable tick, told to its target."""

from __future__ import annotations

import logging
import math
import threading
import time

import pykka
import pytest

from actors import TimerActor
from actors.messages import RebalanceTick, ScheduleTick

from ._fakes import TIMEOUT, FakeClock, Inbox, Recorder, received, start_recorder

QUIET = 0.2
"""How long a test listens for a tick that must not come (an Event wait, not a sleep)."""


def start_timer(
    clock: FakeClock | None = None,
) -> tuple[pykka.ActorRef[TimerActor], pykka.ActorRef[Recorder], Inbox]:
    target, inbox = start_recorder()
    timer = TimerActor.start(target, clock) if clock else TimerActor.start(target)
    return timer, target, inbox


def listen_quietly(seconds: float) -> None:
    """Let real time pass for timers that must not fire."""
    threading.Event().wait(seconds)


def test_a_scheduled_tick_fires_once() -> None:
    timer, target, inbox = start_timer()

    timer.tell(ScheduleTick(0.02))

    assert inbox.wait_count(1, TIMEOUT)
    listen_quietly(QUIET)
    assert received(target, inbox) == [RebalanceTick()]


def test_rescheduling_replaces_the_pending_tick() -> None:
    timer, target, inbox = start_timer()

    timer.tell(ScheduleTick(0.02))
    timer.tell(ScheduleTick(0.1))

    assert inbox.wait_count(1, TIMEOUT)
    listen_quietly(QUIET)
    assert received(target, inbox) == [RebalanceTick()]


def test_rescheduling_a_long_timer_short_fires_early() -> None:
    timer, _, inbox = start_timer()

    timer.tell(ScheduleTick(3600.0))
    timer.tell(ScheduleTick(0.01))

    assert inbox.wait_count(1, TIMEOUT)


def test_rescheduling_a_short_timer_long_does_not_fire() -> None:
    timer, target, inbox = start_timer()

    timer.tell(ScheduleTick(0.05))
    timer.tell(ScheduleTick(3600.0))

    listen_quietly(QUIET)
    assert received(target, inbox) == []


def test_time_left_follows_the_clock() -> None:
    clock = FakeClock(100.0)
    timer, _, _ = start_timer(clock)
    proxy = timer.proxy()

    assert proxy.time_left().get(timeout=TIMEOUT) == math.inf
    timer.tell(ScheduleTick(3600.0))
    assert proxy.time_left().get(timeout=TIMEOUT) == 3600.0
    clock.advance(600.0)
    assert proxy.time_left().get(timeout=TIMEOUT) == 3000.0
    clock.advance(5000.0)
    assert proxy.time_left().get(timeout=TIMEOUT) == 0.0


def test_time_left_is_infinite_after_the_tick() -> None:
    timer, _, inbox = start_timer()

    timer.tell(ScheduleTick(0.01))
    assert inbox.wait_count(1, TIMEOUT)

    assert timer.proxy().time_left().get(timeout=TIMEOUT) == math.inf


def test_stopping_cancels_the_pending_tick() -> None:
    timer, target, inbox = start_timer()

    timer.tell(ScheduleTick(0.05))
    assert timer.stop(timeout=TIMEOUT) is True

    listen_quietly(QUIET)
    assert received(target, inbox) == []


def test_a_tick_for_a_stopped_target_is_dropped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timer, target, _ = start_timer()
    assert target.stop(timeout=TIMEOUT) is True

    timer.tell(ScheduleTick(0.01))
    # Fired once its deadline is cleared; poll on an Event, never a sleep.
    deadline = time.monotonic() + TIMEOUT
    while timer.proxy().time_left().get(timeout=TIMEOUT) != math.inf:
        assert time.monotonic() < deadline
        threading.Event().wait(0.005)

    assert timer.is_alive()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
