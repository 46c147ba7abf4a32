"""Rebalancing through the actors: plan -> ProberActor -> reconcile, and the timer."""

from __future__ import annotations

import pykka
import pytest

from rpcproxy.actors import (
    AddPrimary,
    ApplyHeartbeat,
    NotifyFailed,
    Rebalance,
    RebalanceOutcome,
    RemoveServer,
    SetBackups,
    TimerActor,
)
from rpcproxy.proxy import Address

from ._fakes import TIMEOUT, A, B, C, D, E, FakeClock, FakeProber, hb
from .conftest import StartProxy


def timer_of_proxy() -> pykka.ActorRef[TimerActor]:
    (timer,) = pykka.ActorRegistry.get_by_class(TimerActor)
    return timer


@pytest.mark.parametrize(("primaries", "backups"), [((), ()), ((A,), ()), ((), (A,)), ((A,), (A,))])
def test_fewer_than_two_servers_pings_nobody(
    start_proxy: StartProxy, primaries: tuple[Address, ...], backups: tuple[Address, ...]
) -> None:
    h = start_proxy(primaries=primaries, backups=backups, live=(A,))
    head = h.box.current.state.head

    result = h.request(Rebalance)

    assert result == RebalanceOutcome(head, None)
    assert h.prober.call_count() == 0


def test_fewer_than_two_servers_still_restarts_the_timer(start_proxy: StartProxy) -> None:
    clock = FakeClock(0.0)
    h = start_proxy(primaries=(A,), clock=clock, min_reuse_s=600.0)
    clock.advance(1000.0)

    _, seen = h.request_seen(Rebalance)

    assert 1600.0 <= seen.rebalance_deadline <= 1900.0


def test_all_dead_keeps_the_list_and_reports_unhealthy(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B, C), backups=(D,), live=())

    result, seen = h.request_seen(Rebalance)

    assert result == RebalanceOutcome(A, False)
    assert seen.state.active == (A, B, C, D)
    (candidates,) = h.prober.calls
    assert sorted(candidates[:3]) == sorted((A, B, C))
    assert candidates[3] == D


@pytest.mark.parametrize("live", [A, B, C, D])
def test_the_only_live_server_goes_first(start_proxy: StartProxy, live: Address) -> None:
    h = start_proxy(primaries=(A, B, C), backups=(D,), live=(live,))

    result, seen = h.request_seen(Rebalance)

    assert result == RebalanceOutcome(live, True)
    assert seen.state.head == live
    (candidates,) = h.prober.calls
    index = candidates.index(live)
    # The candidates before the live one go to the end, in order.
    assert seen.state.active == candidates[index:] + candidates[:index]


def test_a_live_primary_is_preferred_to_a_live_backup(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B), backups=(C,), live=(C, B))

    result = h.request(Rebalance)

    assert result == RebalanceOutcome(B, True)


def test_chosen_head_removed_while_pinging_abandons_the_rebalance(
    start_proxy: StartProxy,
) -> None:
    h = start_proxy(primaries=(A, B, C), live=(B,), gated=True)
    pending = h.send(Rebalance)
    assert h.prober.entered.wait(TIMEOUT)

    assert h.request(lambda r: RemoveServer(B, r)) is True
    h.prober.release()
    result, seen = pending.get(timeout=TIMEOUT), h.box.current

    assert result == RebalanceOutcome(A, True)
    assert seen.state.active == (A, C)


def test_changes_made_while_pinging_win(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B, C), live=(A, B, C), gated=True)
    pending = h.send(Rebalance)
    assert h.prober.entered.wait(TIMEOUT)

    (candidates,) = h.prober.calls
    dropped = candidates[1]
    assert h.request(lambda r: RemoveServer(dropped, r)) is True
    h.request(lambda r: AddPrimary(D, r))
    h.request(lambda r: SetBackups((E,), r))
    h.prober.release()
    result = pending.get(timeout=TIMEOUT)

    expected = (*(c for c in candidates if c != dropped), D, E)
    assert result == RebalanceOutcome(candidates[0], True)
    assert h.box.current.state.active == expected


def test_requests_during_a_rebalance_share_one_ping(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B, C), live=(C,), gated=True)
    first = h.send(Rebalance)
    assert h.prober.entered.wait(TIMEOUT)
    second = h.send(Rebalance)
    third = h.send(Rebalance)
    # Once a later request is answered, both have been handled: they wait on the ping.
    h.request(lambda r: NotifyFailed(D, r))
    for waiting in (first, second, third):
        with pytest.raises(pykka.Timeout):
            waiting.get(timeout=0)
    h.prober.release()

    results = [f.get(timeout=TIMEOUT) for f in (first, second, third)]

    assert results == [RebalanceOutcome(C, True)] * 3
    assert h.prober.call_count() == 1


def test_rebalance_restarts_the_timer_every_time(start_proxy: StartProxy) -> None:
    clock = FakeClock(0.0)
    h = start_proxy(primaries=(A, B), live=(A, B), clock=clock, min_reuse_s=600.0)
    timer = timer_of_proxy()
    deadlines = []

    for now in (100.0, 2000.0, 2000.5):
        clock.now = now
        _, seen = h.request_seen(Rebalance)
        assert now + 600.0 <= seen.rebalance_deadline <= now + 900.0
        # The TimerActor was told before the reply: it agrees with the snapshot.
        left = timer.proxy().time_left().get(timeout=TIMEOUT)
        assert left == pytest.approx(seen.rebalance_deadline - now)
        deadlines.append(seen.rebalance_deadline)

    assert len(set(deadlines)) == 3


def test_rebalance_interval_scales_with_the_cluster(start_proxy: StartProxy) -> None:
    clock = FakeClock(0.0)
    h = start_proxy(live=(A, B), clock=clock, min_reuse_s=1.0)
    h.request(lambda r: ApplyHeartbeat(hb((A, "dc1"), (B, "dc1"), num_nodes=64_000), r))

    _, seen = h.request_seen(Rebalance)

    # 64000 nodes / (2 servers * 64 conns/s) = 500 s, far above the jittered 1-1.5 s.
    assert seen.rebalance_deadline == pytest.approx(500.0)


def test_the_timer_drives_rebalances_by_itself(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B), live=(A, B), min_reuse_s=0.05)

    assert h.prober.wait_calls(3, timeout=5.0)
    assert h.box.current.state.head in (A, B)


def test_a_failing_prober_counts_as_nobody_answering(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    prober = FakeProber((A, B), error=RuntimeError("transport exploded"))
    h = start_proxy(primaries=(A, B), prober=prober)

    result, seen = h.request_seen(Rebalance)

    assert result == RebalanceOutcome(A, False)
    assert seen.state.active == (A, B)
    assert any("pinging 2 servers failed" in r.getMessage() for r in caplog.records)
    # ProberActor survived: the next rebalance is probed and succeeds.
    prober.error = None
    prober.set_live(B)
    assert h.request(Rebalance) == RebalanceOutcome(B, True)
    assert prober.call_count() == 2
