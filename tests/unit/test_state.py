"""The server lists and the operations that change them (proxy/state.py).

Includes the scenarios of the reference's own tests for AddPrimaryServer,
FindServer, NotifyFailedServer, NumServers, RemoveServer and cycleServer.
"""

from __future__ import annotations

import pytest

from proxy import (
    ProxyState,
    add_primary,
    check_invariant,
    members_of,
    notify_failed,
    remove_server,
    set_backups,
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
