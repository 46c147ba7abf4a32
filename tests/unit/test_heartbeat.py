"""Heartbeat merge, rules 2-7 of docs/protocol.md section 2 and publisher/seq staleness."""

from __future__ import annotations

import pytest

from rpcproxy.proxy import (
    Heartbeat,
    HeartbeatServer,
    LocalIdentity,
    ProxyState,
    add_primary,
    apply_heartbeat,
    check_invariant,
    notify_failed,
)
from rpcproxy.proxy.heartbeat import MAX_PUBLISHERS

from ._helpers import LOCAL, addr, addrs, canon, with_backups, with_primaries


def srv(address: str, dc: str = "dc1", major: int = 1, minor: int = 1) -> HeartbeatServer:
    return HeartbeatServer(address, major, minor, dc)


def hb(
    *servers: HeartbeatServer,
    num_nodes: int = 10,
    leader: str = "",
    publisher: str | None = None,
    seq: int | None = None,
) -> Heartbeat:
    return Heartbeat(tuple(servers), num_nodes, leader, publisher, seq)


def test_first_heartbeat_fills_primaries_in_order() -> None:
    out = apply_heartbeat(ProxyState(), hb(srv("c"), srv("a"), srv("b")), LOCAL)
    assert out.changed
    assert not out.stale
    assert canon(out.state) == ["c:4647", "a:4647", "b:4647"]
    assert out.state.primaries == addrs("c", "a", "b")
    assert out.state.backups == ()
    check_invariant(out.state)


# Rule 2: newer API ignored and reported; older accepted.


@pytest.mark.parametrize(
    ("major", "minor", "accepted"),
    [
        (1, 1, True),
        (1, 0, True),
        (0, 9, True),
        (0, 0, True),
        (1, 2, False),
        (2, 0, False),
        (2, 5, False),
    ],
)
def test_rule2_api_version(major: int, minor: int, accepted: bool) -> None:
    server = srv("s", major=major, minor=minor)
    out = apply_heartbeat(ProxyState(), hb(server, srv("t")), LOCAL)
    if accepted:
        assert canon(out.state) == ["s:4647", "t:4647"]
        assert out.newer_api == ()
    else:
        assert canon(out.state) == ["t:4647"]
        assert out.newer_api == (server,)
    check_invariant(out.state)


def test_rule2_newer_api_compares_major_before_minor() -> None:
    local = LocalIdentity("dc1", rpc_major_version=2, rpc_minor_version=0)
    out = apply_heartbeat(
        ProxyState(), hb(srv("old", major=1, minor=9), srv("new", major=2, minor=1)), local
    )
    assert canon(out.state) == ["old:4647"]
    assert [s.rpc_advertise_addr for s in out.newer_api] == ["new"]


def test_rule2_known_primary_that_upgrades_is_dropped() -> None:
    state = apply_heartbeat(ProxyState(), hb(srv("a"), srv("b")), LOCAL).state
    out = apply_heartbeat(state, hb(srv("a"), srv("b", minor=2)), LOCAL)
    assert out.changed
    assert canon(out.state) == ["a:4647"]


# Rule 3: invalid entries skipped and reported; the rest apply.


def test_rule3_invalid_entries_skipped_rest_apply() -> None:
    out = apply_heartbeat(
        ProxyState(),
        hb(srv("a"), srv("300.1.1.1"), srv("b:0"), srv("x", dc="dc2"), srv("[::1")),
        LOCAL,
    )
    assert canon(out.state) == ["a:4647", "x:4647"]
    assert out.state.backups == addrs("x")
    assert [bad for bad, _ in out.invalid] == ["300.1.1.1", "b:0", "[::1"]
    assert all(reason for _, reason in out.invalid)
    assert out.changed
    check_invariant(out.state)


# Rule 4: backups.


def test_rule4_heartbeat_replaces_backups_with_other_dc_servers() -> None:
    state = with_backups(["consul1", "consul2"], with_primaries(["a"]))
    out = apply_heartbeat(state, hb(srv("a"), srv("x", dc="dc2"), srv("y", dc="dc3")), LOCAL)
    assert out.state.backups == addrs("x", "y")
    assert canon(out.state) == ["a:4647", "x:4647", "y:4647"]
    assert out.changed
    check_invariant(out.state)


def test_rule4_heartbeat_with_only_local_servers_drops_set_backups() -> None:
    state = with_backups(["consul1"], with_primaries(["a"]))
    out = apply_heartbeat(state, hb(srv("a")), LOCAL)
    assert out.state.backups == ()
    assert canon(out.state) == ["a:4647"]
    assert out.changed


def test_rule4_empty_heartbeat_keeps_backups() -> None:
    state = with_backups(["consul1", "consul2"], with_primaries(["a"]))
    out = apply_heartbeat(state, hb(num_nodes=5, leader="l:4647"), LOCAL)
    assert out.state.backups == addrs("consul1", "consul2")
    # Rule 5: every primary is missing from an empty heartbeat.
    assert out.state.primaries == ()
    assert canon(out.state) == ["consul1:4647", "consul2:4647"]
    assert out.changed
    assert out.state.num_nodes == 5
    check_invariant(out.state)


def test_rule4_server_in_both_lists_listed_once() -> None:
    state = with_primaries(["a"])
    out = apply_heartbeat(state, hb(srv("a"), srv("a", dc="dc2")), LOCAL)
    assert out.state.primaries == addrs("a")
    assert out.state.backups == addrs("a")
    assert canon(out.state) == ["a:4647"]
    check_invariant(out.state)


# Rule 5: primaries.


def test_rule5_new_appended_missing_removed_known_order_kept() -> None:
    state = apply_heartbeat(ProxyState(), hb(srv("a"), srv("b"), srv("c")), LOCAL).state
    state, _ = notify_failed(state, addr("a"))  # b c a
    out = apply_heartbeat(state, hb(srv("e"), srv("c"), srv("d"), srv("a")), LOCAL)
    assert out.changed
    assert out.state.primaries == addrs("a", "c", "e", "d")  # primary order, not active order
    assert canon(out.state) == ["c:4647", "a:4647", "e:4647", "d:4647"]
    check_invariant(out.state)


def test_rule5_removes_add_primary_servers_missing_from_heartbeat() -> None:
    state, _ = add_primary(ProxyState(), addr("manual"))
    out = apply_heartbeat(state, hb(srv("a")), LOCAL)
    assert canon(out.state) == ["a:4647"]


def test_rule5_duplicate_entries_collapse() -> None:
    out = apply_heartbeat(ProxyState(), hb(srv("a"), srv("b"), srv("a:4647")), LOCAL)
    assert out.state.primaries == addrs("a", "b")
    assert canon(out.state) == ["a:4647", "b:4647"]


def test_rule5_primary_moving_to_other_dc_becomes_backup_in_place() -> None:
    state = apply_heartbeat(ProxyState(), hb(srv("a"), srv("b")), LOCAL).state
    out = apply_heartbeat(state, hb(srv("a", dc="dc2"), srv("b")), LOCAL)
    assert out.state.primaries == addrs("b")
    assert out.state.backups == addrs("a")
    assert canon(out.state) == ["a:4647", "b:4647"]
    assert out.changed


def test_rule5_canonical_identity_across_heartbeats() -> None:
    state = with_primaries(["10.0.0.1", "[::1]"])
    out = apply_heartbeat(state, hb(srv("10.0.0.1:4647"), srv("[0:0::1]:4647")), LOCAL)
    assert not out.changed
    assert out.state.active == state.active


# Rule 6: num_nodes and leader on every valid heartbeat.


def test_defect_num_nodes_and_leader_stored_even_when_membership_unchanged() -> None:
    first = apply_heartbeat(ProxyState(), hb(srv("a"), num_nodes=3, leader="a:4647"), LOCAL)
    assert (first.state.num_nodes, first.state.leader_addr) == (3, "a:4647")
    second = apply_heartbeat(first.state, hb(srv("a"), num_nodes=700, leader="b:4647"), LOCAL)
    assert not second.changed
    assert second.state.num_nodes == 700
    assert second.state.leader_addr == "b:4647"
    third = apply_heartbeat(second.state, hb(srv("a"), num_nodes=0, leader=""), LOCAL)
    assert (third.state.num_nodes, third.state.leader_addr) == (0, "")


# Rule 7: never reorders; `changed`.


def test_rule7_never_reorders_or_rebalances() -> None:
    state = with_primaries(["a", "b", "c", "d"])
    state, _ = notify_failed(state, addr("a"))
    before = state.active
    out = apply_heartbeat(state, hb(srv("d"), srv("c"), srv("b"), srv("a")), LOCAL)
    assert out.state.active == before
    assert not out.changed


def test_rule7_changed_semantics() -> None:
    state = apply_heartbeat(ProxyState(), hb(srv("a"), srv("x", dc="dc2")), LOCAL).state
    same = apply_heartbeat(state, hb(srv("x", dc="dc2"), srv("a"), num_nodes=99), LOCAL)
    assert not same.changed
    assert apply_heartbeat(state, hb(srv("a")), LOCAL).changed  # backup gone
    assert apply_heartbeat(state, hb(srv("a"), srv("x", dc="dc2"), srv("b")), LOCAL).changed
    assert apply_heartbeat(state, hb(srv("a", dc="dc2"), srv("x", dc="dc2")), LOCAL).changed


# Defect: other-DC servers reach the active list.


def test_defect_other_dc_heartbeat_servers_join_active_list() -> None:
    out = apply_heartbeat(ProxyState(), hb(srv("x", dc="dc2"), srv("y", dc="dc3")), LOCAL)
    assert canon(out.state) == ["x:4647", "y:4647"]
    assert out.state.head == addr("x")
    assert out.state.primaries == ()
    check_invariant(out.state)


# Idempotence.


@pytest.mark.parametrize(("publisher", "seq"), [(None, None), ("pub", 7)])
def test_heartbeat_applied_twice_changes_nothing_second_time(
    publisher: str | None, seq: int | None
) -> None:
    state = with_backups(["consul"], with_primaries(["z"]))
    beat = hb(
        srv("a"),
        srv("x", dc="dc2"),
        srv("b", minor=5),
        srv("bad:0"),
        num_nodes=42,
        leader="a:4647",
        publisher=publisher,
        seq=seq,
    )
    first = apply_heartbeat(state, beat, LOCAL)
    assert first.changed
    second = apply_heartbeat(first.state, beat, LOCAL)
    assert second.state == first.state
    assert not second.changed
    assert second.stale is (publisher is not None)


# Publisher / seq.


def test_stale_seq_dropped_equal_or_lower() -> None:
    state = apply_heartbeat(
        ProxyState(), hb(srv("a"), num_nodes=1, publisher="p", seq=5), LOCAL
    ).state
    assert dict(state.publisher_seqs) == {"p": 5}
    for stale_seq in (5, 4, 0, -1):
        out = apply_heartbeat(state, hb(srv("b"), num_nodes=2, publisher="p", seq=stale_seq), LOCAL)
        assert out.stale
        assert not out.changed
        assert out.state is state
        assert out.state.num_nodes == 1
    fresh = apply_heartbeat(state, hb(srv("b"), num_nodes=2, publisher="p", seq=6), LOCAL)
    assert not fresh.stale
    assert canon(fresh.state) == ["b:4647"]
    assert fresh.state.num_nodes == 2
    assert dict(fresh.state.publisher_seqs) == {"p": 6}


def test_stale_check_is_per_publisher() -> None:
    state = apply_heartbeat(ProxyState(), hb(srv("a"), publisher="p", seq=100), LOCAL).state
    out = apply_heartbeat(state, hb(srv("b"), publisher="q", seq=1), LOCAL)
    assert not out.stale
    assert canon(out.state) == ["b:4647"]
    assert dict(out.state.publisher_seqs) == {"p": 100, "q": 1}
    back = apply_heartbeat(out.state, hb(srv("a"), publisher="p", seq=100), LOCAL)
    assert back.stale


def test_heartbeat_without_publisher_or_seq_always_applies() -> None:
    state = apply_heartbeat(ProxyState(), hb(srv("a"), publisher="p", seq=100), LOCAL).state
    for beat in (
        hb(srv("b"), num_nodes=1),
        hb(srv("c"), num_nodes=2, publisher="p"),
        hb(srv("d"), num_nodes=3, seq=1),
    ):
        out = apply_heartbeat(state, beat, LOCAL)
        assert not out.stale
        assert out.state.num_nodes == beat.num_nodes
        assert out.state.primaries == (addr(beat.servers[0].rpc_advertise_addr),)
        assert dict(out.state.publisher_seqs) == {"p": 100}
        state = out.state


def test_max_publishers_bound_forgets_least_recently_heard() -> None:
    state = ProxyState()
    for i in range(MAX_PUBLISHERS):
        state = apply_heartbeat(state, hb(srv("a"), publisher=f"p{i}", seq=10), LOCAL).state
    assert len(state.publisher_seqs) == MAX_PUBLISHERS
    # Hearing p0 again makes p1 the least recently heard.
    state = apply_heartbeat(state, hb(srv("a"), publisher="p0", seq=11), LOCAL).state
    state = apply_heartbeat(state, hb(srv("a"), publisher="new", seq=1), LOCAL).state
    assert len(state.publisher_seqs) == MAX_PUBLISHERS
    assert "p1" not in state.publisher_seqs
    assert state.publisher_seqs["p0"] == 11
    assert state.publisher_seqs["new"] == 1
    # p1 is forgotten, so its old seq applies again; p2 is still remembered.
    assert not apply_heartbeat(state, hb(srv("a"), publisher="p1", seq=10), LOCAL).stale
    assert apply_heartbeat(state, hb(srv("a"), publisher="p2", seq=10), LOCAL).stale


def test_publisher_seqs_are_read_only() -> None:
    state = apply_heartbeat(ProxyState(), hb(srv("a"), publisher="p", seq=1), LOCAL).state
    with pytest.raises(TypeError):
        state.publisher_seqs["p"] = 0  # type: ignore[index]
