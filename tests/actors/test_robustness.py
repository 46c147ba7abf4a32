"""Logging, bad input and shutdown: nothing here may kill an actor or lose a reply."""

from __future__ import annotations

import logging

import pykka
import pytest

from rpcproxy.actors import (
    AddOutcome,
    AddPrimary,
    ApplyHeartbeat,
    HeartbeatResult,
    NotifyFailed,
    ProberActor,
    ProxyActor,
    Rebalance,
    RebalanceOutcome,
    TimerActor,
)
from rpcproxy.actors.messages import ProbeResults, ScheduleTick
from rpcproxy.proxy import Heartbeat, HeartbeatServer

from ._fakes import TIMEOUT, A, B, C, FakeClock, hb, received, start_recorder
from .conftest import StartProxy


def mismatch_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "newer than our" in r.getMessage()
    ]


def newer_api_heartbeat() -> Heartbeat:
    """A (v1.1, speaks our API) and C (v1.2, newer than ours), both of dc1."""
    return Heartbeat(
        servers=(
            HeartbeatServer(A.canonical, 1, 1, "dc1"),
            HeartbeatServer(C.canonical, 1, 2, "dc1"),
        ),
        num_nodes=1,
        leader_rpc_addr="",
    )


def test_api_mismatch_warning_is_throttled(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    clock = FakeClock()
    h = start_proxy(clock=clock, api_mismatch_log_interval_s=3 * 3600.0)

    for _ in range(2):
        result = h.request(lambda r: ApplyHeartbeat(newer_api_heartbeat(), r))
        assert result.stale is False
        clock.advance(60.0)

    (warning,) = mismatch_warnings(caplog)
    assert C.canonical in warning.getMessage()
    assert h.box.current.state.active == (A,)

    # Once the interval has passed, it is said again.
    clock.advance(3 * 3600.0)
    h.request(lambda r: ApplyHeartbeat(newer_api_heartbeat(), r))
    assert len(mismatch_warnings(caplog)) == 2


def test_api_mismatch_warning_with_interval_zero_is_logged_every_time(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    h = start_proxy(clock=FakeClock(), api_mismatch_log_interval_s=0.0)

    for _ in range(2):
        h.request(lambda r: ApplyHeartbeat(newer_api_heartbeat(), r))

    assert len(mismatch_warnings(caplog)) == 2


def test_api_mismatch_is_throttled_per_address(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    h = start_proxy(clock=FakeClock())

    h.request(lambda r: ApplyHeartbeat(hb((B, "dc1"), (C, "dc1"), major=2, minor=0), r))
    h.request(lambda r: ApplyHeartbeat(hb((B, "dc1"), (C, "dc1"), major=2, minor=0), r))

    messages = sorted(w.getMessage() for w in mismatch_warnings(caplog))
    assert len(messages) == 2
    assert B.canonical in messages[0]
    assert C.canonical in messages[1]


def test_invalid_heartbeat_entries_are_skipped_with_a_warning(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    h = start_proxy()
    heartbeat = Heartbeat(
        servers=(
            HeartbeatServer("not an address!", 1, 1, "dc1"),
            HeartbeatServer(A.canonical, 1, 1, "dc1"),
        ),
        num_nodes=0,
        leader_rpc_addr="",
    )

    result = h.request(lambda r: ApplyHeartbeat(heartbeat, r))

    assert result == HeartbeatResult(changed=True, stale=False)
    assert h.box.current.state.active == (A,)
    assert any("not an address!" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("message", ["nonsense", 42, object(), ScheduleTick(1.0)])
def test_proxy_actor_logs_unexpected_messages_and_carries_on(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture, message: object
) -> None:
    caplog.set_level(logging.WARNING)
    h = start_proxy(primaries=(A,))

    h.ref.tell(message)
    assert h.ref.ask(message, timeout=TIMEOUT) is None

    assert h.request(lambda r: AddPrimary(B, r)) == AddOutcome(B, True)
    assert h.ref.is_alive()
    unexpected = [r for r in caplog.records if "Unexpected message received by" in r.getMessage()]
    assert len(unexpected) == 2


def test_ping_results_nobody_asked_for_are_ignored(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B), live=(A, B))
    version = h.box.current.version

    h.ref.tell(ProbeResults(999, {B: True}))

    assert h.request(lambda r: NotifyFailed(C, r)).rotated is False
    assert h.box.current.state.active == (A, B)
    assert h.box.current.version == version


def test_timer_actor_logs_unexpected_messages_and_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    target, inbox = start_recorder()
    timer = TimerActor.start(target)

    timer.tell("tick please")
    timer.tell(ScheduleTick(0.01))

    assert inbox.wait_count(1, TIMEOUT)
    assert timer.is_alive()
    assert any("Unexpected message received by" in r.getMessage() for r in caplog.records)


def test_a_stopped_listener_does_not_break_the_proxy(start_proxy: StartProxy) -> None:
    h = start_proxy(listen=True)
    assert h.listener is not None
    h.listener.stop(timeout=TIMEOUT)

    assert h.request(lambda r: AddPrimary(A, r)) == AddOutcome(A, True)
    assert h.request(lambda r: NotifyFailed(A, r)).rotated is False
    assert h.ref.is_alive()


def test_a_reply_that_raises_does_not_kill_the_proxy(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B), live=(B,), gated=True)

    def broken(_: object) -> None:
        raise RuntimeError("the caller went away")

    h.ref.tell(AddPrimary(C, broken))
    assert h.request(lambda r: NotifyFailed(A, r)).rotated is True

    # A broken waiter does not keep the other waiters of a rebalance from their answer.
    h.ref.tell(Rebalance(broken))
    assert h.prober.entered.wait(TIMEOUT)
    pending = h.send(Rebalance)
    h.prober.release()
    assert pending.get(timeout=TIMEOUT) == RebalanceOutcome(B, True)
    assert h.ref.is_alive()


def test_stopping_during_a_rebalance_answers_its_waiters(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    h = start_proxy(primaries=(A, B), live=(B,), gated=True)
    pending = h.send(Rebalance)
    assert h.prober.entered.wait(TIMEOUT)

    stopped = h.ref.stop(block=False)
    # Release the ping only once the proxy is dead, so its results find nobody.
    assert h.ref.actor_stopped.wait(TIMEOUT)
    h.prober.release()

    assert pending.get(timeout=TIMEOUT) == RebalanceOutcome(A, None)
    assert stopped.get(timeout=TIMEOUT) is True
    assert not pykka.ActorRegistry.get_by_class(ProxyActor)
    assert not pykka.ActorRegistry.get_by_class(ProberActor)
    assert not pykka.ActorRegistry.get_by_class(TimerActor)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def test_stopping_the_proxy_stops_its_children(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B), live=(A, B), min_reuse_s=0.01)
    assert h.prober.wait_calls(1)

    assert h.ref.stop(timeout=TIMEOUT) is True

    assert not pykka.ActorRegistry.get_by_class(ProberActor)
    assert not pykka.ActorRegistry.get_by_class(TimerActor)


def test_listener_events_arrive_in_order(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B, C), listen=True)
    for _ in range(3):
        h.request(lambda r: NotifyFailed(h.box.current.state.active[0], r))
    assert h.listener is not None
    heads = [e.server for e in received(h.listener, h.inbox)]
    assert heads == [A, B, C, A]
