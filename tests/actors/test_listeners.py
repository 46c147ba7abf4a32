"""Listeners hear ActiveServerChanged exactly when the head changes, with the reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rpcproxy.actors import (
    ActiveServerChanged,
    AddPrimary,
    ApplyHeartbeat,
    NotifyFailed,
    Rebalance,
    RebalanceOutcome,
    RemoveServer,
    ResetRebalanceTimer,
    SetBackups,
)
from rpcproxy.actors.messages import Reply

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

    check(h, lambda r: AddPrimary(A, r), [ActiveServerChanged(A, "added")])
    check(h, lambda r: AddPrimary(B, r), [])
    check(h, lambda r: AddPrimary(A, r), [])
    check(h, lambda r: NotifyFailed(B, r), [])
    check(h, lambda r: NotifyFailed(A, r), [ActiveServerChanged(B, "failed")])
    check(h, lambda r: RemoveServer(A, r), [])
    check(h, lambda r: RemoveServer(B, r), [ActiveServerChanged(None, "removed")])
    check(h, lambda r: RemoveServer(B, r), [])
    check(h, lambda r: SetBackups((C, D), r), [ActiveServerChanged(C, "backup")])
    check(h, lambda r: SetBackups((C,), r), [])
    check(h, ResetRebalanceTimer, [])
    # The heartbeat lists servers, so it supersedes the backups: C leaves, E leads.
    check(h, lambda r: ApplyHeartbeat(hb((E, "dc1")), r), [ActiveServerChanged(E, "heartbeat")])
    check(h, lambda r: ApplyHeartbeat(hb((E, "dc1"), num_nodes=3), r), [])
    check(h, lambda r: AddPrimary(F, r), [])


def test_a_rebalance_that_moves_the_head_is_announced(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B), live=(B,), listen=True)
    assert h.events() == [ActiveServerChanged(A, "added")]

    assert h.request(Rebalance) == RebalanceOutcome(B, True)
    assert h.events()[1:] == [ActiveServerChanged(B, "rebalance")]


def test_a_rebalance_that_keeps_the_head_is_silent(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B, C), live=(A,), listen=True)

    assert h.request(Rebalance) == RebalanceOutcome(A, True)
    assert h.request(Rebalance) == RebalanceOutcome(A, True)

    assert h.events() == [ActiveServerChanged(A, "added")]


def test_failed_and_fewer_than_two_rebalances_are_silent(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B), live=(), listen=True)
    h.request(Rebalance)
    h.request(lambda r: RemoveServer(B, r))
    h.request(Rebalance)

    assert h.events() == [ActiveServerChanged(A, "added")]


def test_a_heartbeat_that_drops_the_head_is_announced(start_proxy: StartProxy) -> None:
    h = start_proxy(listen=True)
    h.request(lambda r: ApplyHeartbeat(hb((A, "dc1"), (B, "dc1")), r))

    check(h, lambda r: ApplyHeartbeat(hb((B, "dc1")), r), [ActiveServerChanged(B, "heartbeat")])
