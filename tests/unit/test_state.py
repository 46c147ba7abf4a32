"""The server lists and the operations that change them (proxy/state.py).

Includes the scenarios of the reference's own tests for AddPrimaryServer,
FindServer, NotifyFailedServer, NumServers, RemoveServer and cycleServer.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from rpcproxy.proxy import (
    Address,
    ProxyState,
    TooManyServersError,
    add_primary,
    check_invariant,
    list_changes,
    members_of,
    notify_failed,
    remove_server,
    set_backups,
    set_primaries,
)

from ._helpers import addr, addrs, canon, server_names, with_backups, with_primaries


def test_empty_state() -> None:
    state = ProxyState()
    assert state.active == ()
    assert state.head is None
    assert members_of(state) == frozenset()
    assert state.num_nodes == 0
    assert state.leader_addr == ""
    assert dict(state.publisher_seqs) == {}
    check_invariant(state)


def test_add_primary_dedupes() -> None:
    state, added = add_primary(ProxyState(), addr("s1"))
    assert added is True
    assert canon(state) == ["s1:4647"]
    state2, added = add_primary(state, addr("s1"))
    assert added is False
    assert state2 is state
    state3, added = add_primary(state2, addr("s1:4647"))
    assert added is False
    assert canon(state3) == ["s1:4647"]
    state4, added = add_primary(state3, addr("s2"))
    assert added is True
    assert canon(state4) == ["s1:4647", "s2:4647"]
    assert state4.primaries == addrs("s1", "s2")
    check_invariant(state4)


def test_add_primary_appends_to_end_of_active_list() -> None:
    state = with_primaries(["a", "b", "c"])
    state, _ = notify_failed(state, addr("a"))  # b c a
    state, added = add_primary(state, addr("d"))
    assert added
    assert canon(state) == ["b:4647", "c:4647", "a:4647", "d:4647"]


def test_add_primary_of_a_backup_keeps_its_place() -> None:
    state = with_backups(["x", "y"], with_primaries(["a"]))
    assert canon(state) == ["a:4647", "x:4647", "y:4647"]
    state, added = add_primary(state, addr("x"))
    assert added is True
    assert state.primaries == addrs("a", "x")
    assert canon(state) == ["a:4647", "x:4647", "y:4647"]
    check_invariant(state)


def test_a_new_primary_stands_before_the_first_backup_only_server() -> None:
    # docs/protocol.md, Words (version 2): local servers before remote ones.
    state = with_backups(["x", "y"], with_primaries(["a"]))
    state, added = add_primary(state, addr("b"))
    assert added
    assert canon(state) == ["a:4647", "b:4647", "x:4647", "y:4647"]
    check_invariant(state)


def test_a_new_primary_goes_before_a_backup_at_the_head() -> None:
    # Every primary failed (rotated behind the backups): a newly found local
    # server is a better pick than the remote one at the head.
    state = with_backups(["x"], with_primaries(["a"]))
    state, _ = notify_failed(state, addr("a"))  # x a
    state, _ = add_primary(state, addr("b"))
    assert canon(state) == ["b:4647", "x:4647", "a:4647"]


def test_a_backup_behind_another_backup_moves_up_when_it_becomes_a_primary() -> None:
    state = with_backups(["x", "y"], with_primaries(["a"]))
    state, _ = add_primary(state, addr("y"))
    assert canon(state) == ["a:4647", "y:4647", "x:4647"]
    check_invariant(state)


def test_a_server_on_both_lists_is_not_backup_only() -> None:
    state = with_backups(["a", "x"], with_primaries(["a"]))
    state, _ = add_primary(state, addr("b"))
    assert canon(state) == ["a:4647", "b:4647", "x:4647"]


def test_new_backups_join_at_the_end() -> None:
    state = with_backups(["x"], with_primaries(["a", "b"]))
    state, _ = notify_failed(state, addr("a"))  # b x a
    state = set_backups(state, addrs("x", "y"))
    assert canon(state) == ["b:4647", "x:4647", "a:4647", "y:4647"]


def test_find_server_and_notify_failed_sequence() -> None:
    s1, s2 = addr("s1"), addr("s2")
    state = ProxyState()
    assert state.head is None
    state, rotated = notify_failed(state, s1)
    assert not rotated
    assert state.head is None

    state, _ = add_primary(state, s1)
    assert state.head == s1
    # A single server stays put even when reported failed.
    state, rotated = notify_failed(state, s1)
    assert not rotated
    assert state.head == s1

    state, _ = add_primary(state, s2)
    assert state.head == s1  # adding never changes the head
    state, rotated = notify_failed(state, s1)
    assert rotated
    assert state.head == s2
    # A stale report about a server that is no longer the head changes nothing.
    before = state
    state, rotated = notify_failed(state, s1)
    assert not rotated
    assert state is before
    assert state.head == s2
    state, rotated = notify_failed(state, s2)
    assert rotated
    assert state.head == s1
    # Unknown servers are ignored too.
    state, rotated = notify_failed(state, addr("s3"))
    assert not rotated
    assert state.active == (s1, s2)


def test_notify_failed_uses_canonical_identity() -> None:
    state = with_primaries(["10.0.0.1", "10.0.0.2"])
    state, rotated = notify_failed(state, addr("10.0.0.1:4647"))
    assert rotated
    assert canon(state) == ["10.0.0.2:4647", "10.0.0.1:4647"]


def test_num_servers_up_to_100_and_back() -> None:
    names = server_names(100)
    state = ProxyState()
    for count, name in enumerate(names, start=1):
        state, added = add_primary(state, addr(name))
        assert added
        assert len(state.active) == count
        check_invariant(state)
    assert canon(state) == names
    for count, name in zip(range(99, -1, -1), names, strict=True):
        state, removed = remove_server(state, addr(name))
        assert removed
        assert len(state.active) == count
        check_invariant(state)
    assert state.active == () and state.primaries == () and state.head is None


@pytest.mark.parametrize("where", ["front", "tail", "middle"])
def test_remove_server_drains_19(where: str) -> None:
    names = server_names(19)
    state = with_primaries(names)
    expected = list(names)
    while expected:
        if where == "front":
            victim = expected[0]
        elif where == "tail":
            victim = expected[-1]
        else:
            victim = expected[len(expected) // 2]
        state, removed = remove_server(state, addr(victim))
        assert removed
        expected.remove(victim)
        assert canon(state) == expected
        assert addr(victim) not in state.primaries
        check_invariant(state)
        # A second removal of the same server is a no-op.
        again, removed = remove_server(state, addr(victim))
        assert not removed
        assert again is state
    assert state.head is None


def test_remove_server_drops_from_every_list() -> None:
    state = with_primaries(["a", "b"])
    state = with_backups(["b", "c"], state)
    assert canon(state) == ["a:4647", "b:4647", "c:4647"]
    state, removed = remove_server(state, addr("b:4647"))
    assert removed
    assert state.primaries == addrs("a")
    assert state.backups == addrs("c")
    assert canon(state) == ["a:4647", "c:4647"]
    state, removed = remove_server(state, addr("c"))
    assert removed
    assert state.backups == ()
    assert canon(state) == ["a:4647"]


def test_remove_unknown_server() -> None:
    state = with_primaries(["a"])
    after, removed = remove_server(state, addr("b"))
    assert not removed
    assert after is state


@pytest.mark.parametrize("count", [0, 1, 2, 3, 5, 10])
def test_cycle_server_rotations(count: int) -> None:
    """notify_failed on the head is the reference's cycleServer."""
    names = server_names(count)
    state = with_primaries(names)
    order = list(names)
    for _ in range(2 * count + 1):
        head = state.head
        state, rotated = notify_failed(state, head) if head else (state, False)
        if count >= 2:
            assert rotated
            order = [*order[1:], order[0]]
        else:
            assert not rotated
        assert canon(state) == order
    # 2n+1 rotations of n >= 2 servers is one rotation; fewer never move.
    expected = [*names[1:], names[0]] if count >= 2 else names
    assert canon(state) == expected


def test_set_backups_replaces_and_collapses_duplicates() -> None:
    state = with_primaries(["a"])
    state = set_backups(state, addrs("x", "y", "x:4647", "a"))
    assert state.backups == addrs("x", "y", "a")
    assert canon(state) == ["a:4647", "x:4647", "y:4647"]
    check_invariant(state)
    state = set_backups(state, addrs("z", "y"))
    assert state.backups == addrs("z", "y")
    # x leaves at once; z joins at the end; y keeps its place.
    assert canon(state) == ["a:4647", "y:4647", "z:4647"]
    state = set_backups(state, ())
    assert canon(state) == ["a:4647"]
    check_invariant(state)


def test_set_backups_never_removes_a_primary() -> None:
    state = with_primaries(["a", "b"])
    state = set_backups(state, addrs("a"))
    state = set_backups(state, ())
    assert canon(state) == ["a:4647", "b:4647"]
    assert state.primaries == addrs("a", "b")


def test_set_primaries_replaces_them_at_once() -> None:
    """An operator's set_servers: kept primaries keep their places, the rest leave or join."""
    state = set_backups(with_primaries(["a", "b", "c"]), addrs("x", "b"))
    state = notify_failed(state, addr("a"))[0]  # b, c, x, a
    assert canon(state) == ["b:4647", "c:4647", "x:4647", "a:4647"]
    state = set_primaries(state, addrs("c", "d", "a", "d"))
    assert state.primaries == addrs("c", "d", "a")
    assert state.backups == addrs("x", "b")
    # b, now backup-only, stays where it was; c and a stay primaries and keep
    # their places; d is new and stands before the first backup-only server,
    # here b at the head (Words: backups behind every primary that joins).
    assert canon(state) == ["d:4647", "b:4647", "c:4647", "x:4647", "a:4647"]
    check_invariant(state)
    # A server that was only a primary leaves at once.
    state = set_primaries(state, addrs("d"))
    assert canon(state) == ["d:4647", "b:4647", "x:4647"]
    check_invariant(state)


def test_set_primaries_beyond_max_servers_is_refused() -> None:
    state = set_backups(with_primaries(["a"]), addrs("x"))
    with pytest.raises(TooManyServersError, match=r"3 servers, more than max_servers \(2\)"):
        set_primaries(state, addrs("b", "c"), max_servers=2)
    # A backup named as a primary counts once.
    assert canon(set_primaries(state, addrs("x", "b"), max_servers=2)) == ["x:4647", "b:4647"]


def test_state_is_immutable() -> None:
    state = with_primaries(["a"])
    with pytest.raises(AttributeError):
        state.active = ()  # type: ignore[misc]
    new, _ = add_primary(state, addr("b"))
    assert canon(state) == ["a:4647"]
    assert canon(new) == ["a:4647", "b:4647"]


@pytest.mark.parametrize(
    "bad",
    [
        ProxyState(active=addrs("a", "a"), primaries=addrs("a")),
        ProxyState(active=addrs("a"), primaries=addrs("a", "b")),
        ProxyState(active=addrs("a", "b"), primaries=addrs("a")),
        ProxyState(active=(), backups=addrs("x")),
    ],
)
def test_check_invariant_detects_violations(bad: ProxyState) -> None:
    with pytest.raises(AssertionError):
        check_invariant(bad)


# --- max_servers (docs/protocol.md section 8) ----------------------------------------


def test_add_primary_beyond_max_servers_is_refused() -> None:
    state = with_primaries(["a", "b"])
    state = with_backups(["x"], state)
    with pytest.raises(TooManyServersError, match=r"max_servers \(3\)") as info:
        add_primary(state, addr("c"), max_servers=3)
    assert "c:4647" in str(info.value)
    assert canon(state) == ["a:4647", "b:4647", "x:4647"]
    # Already a primary: a no-op, not a refusal.
    assert add_primary(state, addr("a"), max_servers=3) == (state, False)
    # A backup becoming a primary adds no server, so it fits.
    promoted, added = add_primary(state, addr("x"), max_servers=3)
    assert added and promoted.primaries == addrs("a", "b", "x")
    assert canon(promoted) == ["a:4647", "b:4647", "x:4647"]
    # Below the bound, and without one, it is an ordinary add.
    assert add_primary(state, addr("c"), max_servers=4)[1]
    assert add_primary(state, addr("c"))[1]


def test_set_backups_beyond_max_servers_is_refused() -> None:
    state = with_primaries(["a", "b"])
    with pytest.raises(TooManyServersError, match=r"3 servers, more than max_servers \(2\)"):
        set_backups(state, addrs("x"), max_servers=2)
    # Primaries named again as backups count once; duplicates collapse first.
    both = set_backups(state, addrs("a", "b", "a"), max_servers=2)
    assert both.backups == addrs("a", "b")
    assert canon(both) == ["a:4647", "b:4647"]
    assert canon(set_backups(state, addrs("x", "x"), max_servers=3)) == [
        "a:4647",
        "b:4647",
        "x:4647",
    ]


def test_num_members_counts_servers_on_both_lists_once() -> None:
    state = with_backups(["a", "x"], with_primaries(["a", "b"]))
    assert state.num_members == 3 == len(members_of(state))
    assert remove_server(state, addr("a"))[0].num_members == 2


def test_a_state_whose_lists_were_replaced_elsewhere_never_reads_a_stale_index() -> None:
    state = with_primaries(["a", "b"])
    # replace() keeps the index of the old lists; the state must not trust it.
    other = replace(state, active=addrs("c"), primaries=addrs("c"))
    assert members_of(other) == frozenset(addrs("c"))
    assert add_primary(other, addr("a"))[1] is True
    assert add_primary(other, addr("c"))[1] is False
    check_invariant(other)
    # replace() of anything else keeps a valid index.
    moved = replace(state, num_nodes=5, active=addrs("b", "a"))
    assert add_primary(moved, addr("b")) == (moved, False)
    check_invariant(moved)


class _CountedAddress(Address):
    """An Address that counts its hashes and comparisons: a measure of work, not time."""

    __slots__ = ()
    calls = 0

    def __hash__(self) -> int:
        _CountedAddress.calls += 1
        return Address.__hash__(self)

    def __eq__(self, other: object) -> bool:
        _CountedAddress.calls += 1
        return Address.__eq__(self, other)


def test_filling_one_add_at_a_time_costs_o1_python_steps_per_add() -> None:
    # Issue 9 row 13: each add rebuilt every list and set, hashing and
    # comparing every known server in Python; 50,000 adds took minutes.
    count = 1000
    servers = [_CountedAddress(f"10.0.{i // 256}.{i % 256}", 4647) for i in range(count)]
    state = ProxyState()
    _CountedAddress.calls = 0
    for server in servers:
        state, added = add_primary(state, server, max_servers=count)
        assert added
    assert _CountedAddress.calls <= 4 * count
    assert state.active == state.primaries == tuple(servers)
    check_invariant(state)
    with pytest.raises(TooManyServersError):
        add_primary(state, _CountedAddress("10.9.9.9", 4647), max_servers=count)


def test_list_changes() -> None:
    a, b, c = addrs("a", "b", "c")
    assert list_changes((a, b), (a, b)) == ((), ())
    assert list_changes((a,), (a, b, c)) == ((b, c), ())
    assert list_changes((a, b, c), (c, a)) == ((), (b,))
    assert list_changes((a, b), (c, b)) == ((c,), (a,))
    # An append is found without hashing the list.
    servers = tuple(_CountedAddress(f"s{i}.nomad", 4647) for i in range(100))
    _CountedAddress.calls = 0
    assert list_changes(servers[:99], servers) == (servers[99:], ())
    assert _CountedAddress.calls == 0
