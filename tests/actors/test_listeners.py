"""Listeners hear ActiveServerChanged exactly when the head changes, with the reason.

Each event carries the change's epoch: 1 for the first change since start,
one more for each later one (docs/protocol.md section 5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rpcproxy.actors import (
    ActiveServerChanged,
    AddPrimary,
    ApplyHeartbeat,
    NotifyFailed,
    NotifyOutcome,
    Rebalance,
    RebalanceOutcome,
    RemoveServer,
    Reply,
    ResetRebalanceTimer,
    SetBackups,
)

from ._fakes import A, B, C, D, E, F, Harness, hb
from .conftest import StartProxy

Step = Callable[[Reply[Any]], Any]


def check(h: Harness, step: Step, expected: list[ActiveServerChanged]) -> None:
    """Run one request and compare the events it caused with ``expected``."""
    before = len(h.events())
    h.request(step)
    assert h.events()[before:] == expected


def test_events_follow_the_head_and_name_the_reason(start_proxy: StartProxy) -> None:
    h = start_proxy(listen=True)
    assert h.events() == []

    check(h, lambda r: AddPrimary(A, r), [ActiveServerChanged(A, "added", 1)])
    check(h, lambda r: AddPrimary(B, r), [])
    check(h, lambda r: AddPrimary(A, r), [])
    check(h, lambda r: NotifyFailed(B, r), [])
    check(h, lambda r: NotifyFailed(A, r), [ActiveServerChanged(B, "failed", 2)])
    check(h, lambda r: RemoveServer(A, r), [])
    check(h, lambda r: RemoveServer(B, r), [ActiveServerChanged(None, "removed", 3)])
    check(h, lambda r: RemoveServer(B, r), [])
    check(h, lambda r: SetBackups((C, D), r), [ActiveServerChanged(C, "backup", 4)])
    check(h, lambda r: SetBackups((C,), r), [])
    check(h, ResetRebalanceTimer, [])
    # The heartbeat lists servers, so it supersedes the backups: C leaves, E leads.
    check(h, lambda r: ApplyHeartbeat(hb((E, "dc1")), r), [ActiveServerChanged(E, "heartbeat", 5)])
    check(h, lambda r: ApplyHeartbeat(hb((E, "dc1"), num_nodes=3), r), [])
    check(h, lambda r: AddPrimary(F, r), [])


def test_a_rebalance_that_moves_the_head_is_announced(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B), live=(B,), listen=True)
    assert h.events() == [ActiveServerChanged(A, "added", 1)]

    assert h.request(Rebalance) == RebalanceOutcome(B, True)
    assert h.events()[1:] == [ActiveServerChanged(B, "rebalance", 2)]


def test_a_rebalance_that_keeps_the_head_is_silent(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B, C), live=(A,), listen=True)

    assert h.request(Rebalance) == RebalanceOutcome(A, True)
    assert h.request(Rebalance) == RebalanceOutcome(A, True)

    assert h.events() == [ActiveServerChanged(A, "added", 1)]


def test_failed_and_fewer_than_two_rebalances_are_silent(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B), live=(), listen=True)
    h.request(Rebalance)
    h.request(lambda r: RemoveServer(B, r))
    h.request(Rebalance)

    assert h.events() == [ActiveServerChanged(A, "added", 1)]


def test_a_heartbeat_that_drops_the_head_is_announced(start_proxy: StartProxy) -> None:
    h = start_proxy(listen=True)
    h.request(lambda r: ApplyHeartbeat(hb((A, "dc1"), (B, "dc1")), r))

    check(h, lambda r: ApplyHeartbeat(hb((B, "dc1")), r), [ActiveServerChanged(B, "heartbeat", 2)])


def test_the_snapshot_a_reply_sees_carries_the_epoch_of_the_event(
    start_proxy: StartProxy,
) -> None:
    # A reply is built from the snapshot published just before it, so a
    # client that adopts (server, epoch) from a reply and then hears the event
    # of that very change sees no gap and no step back.
    h = start_proxy(primaries=(A, B), listen=True)
    assert h.box.current.epoch == 1
    outcome, seen = h.request_seen(lambda r: NotifyFailed(A, r))
    assert outcome == NotifyOutcome(True, B)
    assert (seen.state.head, seen.epoch) == (B, 2)
    assert h.events()[-1] == ActiveServerChanged(B, "failed", 2)

    # No change of the head, no new epoch, even when the lists change.
    outcome, seen = h.request_seen(lambda r: NotifyFailed(A, r))
    assert outcome == NotifyOutcome(False, B)
    _, seen = h.request_seen(lambda r: AddPrimary(C, r))
    assert seen.epoch == 2
    assert len(h.events()) == 2


def test_epochs_are_consecutive_over_any_mix_of_changes(start_proxy: StartProxy) -> None:
    h = start_proxy(listen=True)
    steps: list[Step] = [
        lambda r: AddPrimary(A, r),
        lambda r: AddPrimary(B, r),
        lambda r: NotifyFailed(A, r),
        lambda r: ApplyHeartbeat(hb((C, "dc1"), (D, "dc2")), r),
        lambda r: RemoveServer(C, r),
        lambda r: SetBackups((E, F), r),
        lambda r: NotifyFailed(E, r),
        lambda r: RemoveServer(F, r),
    ]
    for step in steps:
        h.request(step)
    events = h.events()
    assert [e.epoch for e in events] == list(range(1, len(events) + 1))
    assert h.box.current.epoch == len(events)
    assert events[-1].server == h.state.head
