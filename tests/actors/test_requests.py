"""Each request to ProxyActor: its result, and read-your-writes through the SnapshotBox."""

from __future__ import annotations

import math
from functools import partial

import pytest

from rpcproxy.actors import (
    AddOutcome,
    AddPrimary,
    ApplyHeartbeat,
    HeartbeatResult,
    NotifyFailed,
    NotifyOutcome,
    RemoveServer,
    ResetRebalanceTimer,
    SetBackups,
)
from rpcproxy.proxy import Address

from ._fakes import A, B, C, D, E, FakeClock, FixedRandom, hb
from .conftest import StartProxy


def test_initial_servers_are_in_the_first_snapshot(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B), backups=(C, B))

    first = h.box.published[0]
    assert first.state.primaries == (A, B)
    assert first.state.backups == (C, B)
    assert first.state.active == (A, B, C)
    assert math.isfinite(first.rebalance_deadline)
    assert h.box.current.state.active == (A, B, C)


def test_with_no_initial_servers_the_first_snapshot_is_empty(start_proxy: StartProxy) -> None:
    h = start_proxy()

    assert h.box.published[0].state.active == ()
    assert math.isfinite(h.box.published[0].rebalance_deadline)


@pytest.mark.parametrize("u", [0.0, 0.25, 0.5, 0.999999, 1 - 2**-53])
def test_first_rebalance_is_jittered_within_min_reuse_and_one_and_a_half(
    start_proxy: StartProxy, u: float
) -> None:
    clock = FakeClock(5000.0)
    h = start_proxy(primaries=(A, B), clock=clock, rng=FixedRandom(u), min_reuse_s=600.0)

    # Closed at the top: the absolute deadline minus the start may round onto 900.
    delay = h.box.current.rebalance_deadline - 5000.0
    assert 600.0 <= delay <= 900.0
    assert delay == pytest.approx(600.0 + u * 300.0)


def test_first_rebalance_differs_between_proxies_started_together(
    start_proxy: StartProxy,
) -> None:
    clock = FakeClock(0.0)
    deadlines = {
        start_proxy(clock=clock, default_rng=True).box.current.rebalance_deadline for _ in range(5)
    }

    assert len(deadlines) > 1
    assert all(600.0 <= d <= 900.0 for d in deadlines)


def test_snapshot_version_increases_with_every_change(start_proxy: StartProxy) -> None:
    h = start_proxy()
    versions = [h.box.current.version]

    for make in (
        lambda r: AddPrimary(A, r),
        lambda r: AddPrimary(B, r),
        lambda r: NotifyFailed(A, r),
        lambda r: SetBackups((C,), r),
        lambda r: RemoveServer(C, r),
        lambda r: ApplyHeartbeat(hb((D, "dc1")), r),
        ResetRebalanceTimer,
    ):
        _, seen = h.request_seen(make)
        versions.append(seen.version)

    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)
    published = [s.version for s in h.box.published]
    assert published == sorted(published)
    assert len(set(published)) == len(published)


def test_add_primary_is_visible_when_the_reply_is_called(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A,))

    result, seen = h.request_seen(lambda r: AddPrimary(B, r))

    assert result == AddOutcome(B, True)
    assert seen.state.primaries == (A, B)
    assert seen.state.active == (A, B)


def test_add_primary_of_a_known_server_is_a_no_op(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B))

    result, seen = h.request_seen(lambda r: AddPrimary(A, r))

    assert result == AddOutcome(A, False)
    assert seen.state.active == (A, B)


def test_add_primary_of_a_backup_keeps_its_place(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A,), backups=(B,))

    result, seen = h.request_seen(lambda r: AddPrimary(B, r))

    assert result == AddOutcome(B, True)
    assert seen.state.primaries == (A, B)
    assert seen.state.active == (A, B)


def test_notify_failed_rotates_the_head_to_the_end(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B, C))

    outcome, seen = h.request_seen(lambda r: NotifyFailed(A, r))

    assert outcome == NotifyOutcome(True, B)
    assert seen.state.active == (B, C, A)


@pytest.mark.parametrize(
    ("primaries", "failed"),
    [((A, B, C), B), ((A,), A), ((), A), ((A, B), D)],
    ids=["not-head", "only-server", "empty", "unknown"],
)
def test_notify_failed_does_nothing_unless_head_of_two_or_more(
    start_proxy: StartProxy, primaries: tuple[Address, ...], failed: Address
) -> None:
    h = start_proxy(primaries=primaries)
    before = h.box.current.state.active

    rotated, seen = h.request_seen(lambda r: NotifyFailed(failed, r))

    assert rotated == NotifyOutcome(False, before[0] if before else None)
    assert seen.state.active == before


def test_set_backups_replaces_the_backups(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A,), backups=(B, C))

    result, seen = h.request_seen(lambda r: SetBackups((C, D, C), r))

    assert result == (C, D)
    assert seen.state.backups == (C, D)
    assert seen.state.active == (A, C, D)


def test_set_backups_keeps_servers_that_are_also_primaries(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A,), backups=(A, B))

    result, seen = h.request_seen(lambda r: SetBackups((), r))

    assert result == ()
    assert seen.state.active == (A,)


def test_remove_server_drops_it_from_every_list(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A, B), backups=(B, C))

    removed, seen = h.request_seen(lambda r: RemoveServer(B, r))

    assert removed is True
    assert seen.state.primaries == (A,)
    assert seen.state.backups == (C,)
    assert seen.state.active == (A, C)


def test_remove_server_of_an_unknown_server(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A,))

    removed, seen = h.request_seen(lambda r: RemoveServer(B, r))

    assert removed is False
    assert seen.state.active == (A,)


def test_heartbeat_is_applied_before_the_reply(start_proxy: StartProxy) -> None:
    h = start_proxy(primaries=(A,), backups=(E,))

    result, seen = h.request_seen(
        lambda r: ApplyHeartbeat(
            hb((B, "dc1"), (A, "dc1"), (C, "dc2"), num_nodes=42, leader="b.nomad:4647"), r
        )
    )

    assert result == HeartbeatResult(changed=True, stale=False)
    assert seen.state.primaries == (A, B)
    assert seen.state.backups == (C,)
    assert seen.state.active == (A, B, C)
    assert seen.state.num_nodes == 42
    assert seen.state.leader_addr == "b.nomad:4647"


def test_heartbeat_without_membership_change_still_stores_counts(
    start_proxy: StartProxy,
) -> None:
    h = start_proxy()
    h.request(lambda r: ApplyHeartbeat(hb((A, "dc1")), r))

    result, seen = h.request_seen(lambda r: ApplyHeartbeat(hb((A, "dc1"), num_nodes=7), r))

    assert result == HeartbeatResult(changed=False, stale=False)
    assert seen.state.num_nodes == 7


def test_stale_heartbeat_is_dropped(start_proxy: StartProxy) -> None:
    h = start_proxy()
    first = h.request(lambda r: ApplyHeartbeat(hb((A, "dc1"), publisher="p", seq=5), r))
    assert first == HeartbeatResult(changed=True, stale=False)
    version = h.box.current.version

    for seq in (5, 4):
        stale = hb((B, "dc1"), num_nodes=9, publisher="p", seq=seq)
        result, seen = h.request_seen(partial(ApplyHeartbeat, stale))
        assert result == HeartbeatResult(changed=False, stale=True)
        assert seen.state.active == (A,)
        assert seen.state.num_nodes == 0
        assert seen.version == version

    newer = h.request(lambda r: ApplyHeartbeat(hb((B, "dc1"), publisher="p", seq=6), r))
    assert newer == HeartbeatResult(changed=True, stale=False)
    assert h.box.current.state.active == (B,)


def test_reset_rebalance_timer_restarts_at_min_reuse(start_proxy: StartProxy) -> None:
    clock = FakeClock(100.0)
    h = start_proxy(primaries=(A, B), clock=clock, min_reuse_s=600.0)
    clock.advance(50.0)

    delay, seen = h.request_seen(ResetRebalanceTimer)

    assert delay == 600.0
    assert seen.rebalance_deadline == 150.0 + 600.0
