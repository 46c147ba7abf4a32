"""Property tests: the active-list invariant after any sequence of operations.

Operations are drawn as plain tuples and interpreted against ``proxy``; a
rebalance draws its ping outcomes and a burst of concurrent changes applied
between plan and reconcile, as the proxy's actor would see them.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rpcproxy.proxy import (
    Address,
    Heartbeat,
    HeartbeatServer,
    ProxyState,
    add_primary,
    apply_heartbeat,
    check_invariant,
    choose_head,
    members_of,
    notify_failed,
    parse_address,
    plan_rebalance,
    reconcile,
    remove_server,
    set_backups,
)
from rpcproxy.proxy.heartbeat import is_stale

from ._helpers import LOCAL, POOL, SPELLINGS

# Addresses that do not parse, beside the valid SPELLINGS.
INVALID = ["bad:0", "300.1.1.1", "[::1"]

Op = tuple[Any, ...]

pool_addr = st.sampled_from(POOL)

heartbeat_server = st.builds(
    HeartbeatServer,
    rpc_advertise_addr=st.sampled_from(SPELLINGS + INVALID),
    rpc_major_version=st.sampled_from([0, 1, 1, 1, 2]),
    rpc_minor_version=st.sampled_from([0, 1, 1, 2]),
    datacenter=st.sampled_from(["dc1", "dc1", "dc2", "dc3"]),
)

heartbeats = st.builds(
    Heartbeat,
    servers=st.lists(heartbeat_server, max_size=7).map(tuple),
    num_nodes=st.integers(min_value=0, max_value=2_000_000),
    leader_rpc_addr=st.sampled_from(["", "10.0.0.1:4647", "b.nomad:4647"]),
    publisher=st.sampled_from([None, "p", "q"]),
    seq=st.one_of(st.none(), st.integers(min_value=0, max_value=6)),
)

simple_ops: st.SearchStrategy[Op] = st.one_of(
    st.tuples(st.just("add"), pool_addr),
    st.tuples(st.just("backups"), st.lists(pool_addr, max_size=5)),
    st.tuples(st.just("remove"), pool_addr),
    st.tuples(st.just("failed"), pool_addr),
    st.tuples(st.just("failed_head")),
    st.tuples(st.just("heartbeat"), heartbeats),
)

# Per pool address: answered (True), failed (False) or no answer recorded (None).
ping_outcomes = st.lists(
    st.sampled_from([True, False, None]), min_size=len(POOL), max_size=len(POOL)
)

rebalance_ops: st.SearchStrategy[Op] = st.tuples(
    st.just("rebalance"),
    st.integers(min_value=0, max_value=2**32),
    ping_outcomes,
    st.lists(simple_ops, max_size=4),
)

any_ops = st.lists(st.one_of(simple_ops, rebalance_ops), max_size=25)


def kept_prefix(old: ProxyState, new: ProxyState) -> None:
    """Survivors keep their order at the front; newcomers only at the end."""
    members = members_of(new)
    survivors = tuple(a for a in old.active if a in members)
    assert new.active[: len(survivors)] == survivors


def run_simple(state: ProxyState, op: Op) -> ProxyState:
    kind = op[0]
    if kind == "add":
        new, added = add_primary(state, op[1])
        assert added == (op[1] not in state.primaries)
        assert op[1] in new.primaries
        assert new.backups == state.backups
        kept_prefix(state, new)
    elif kind == "backups":
        new = set_backups(state, op[1])
        assert new.backups == tuple(dict.fromkeys(op[1]))
        assert new.primaries == state.primaries
        kept_prefix(state, new)
    elif kind == "remove":
        new, removed = remove_server(state, op[1])
        assert removed == (op[1] in members_of(state))
        assert op[1] not in new.active
        assert op[1] not in new.primaries and op[1] not in new.backups
        kept_prefix(state, new)
    elif kind in ("failed", "failed_head"):
        target = op[1] if kind == "failed" else state.head
        if target is None:
            return state
        new, rotated = notify_failed(state, target)
        assert rotated == (len(state.active) >= 2 and state.active[0] == target)
        expected = (*state.active[1:], target) if rotated else state.active
        assert new.active == expected
        assert members_of(new) == members_of(state)
    else:
        new = run_heartbeat(state, op[1])
    check_invariant(new)
    return new


def run_heartbeat(state: ProxyState, beat: Heartbeat) -> ProxyState:
    out = apply_heartbeat(state, beat, LOCAL)
    check_invariant(out.state)
    if out.stale:
        assert is_stale(state, beat)
        assert out.state is state
        assert not out.changed
        return state
    new = out.state
    assert new.num_nodes == beat.num_nodes
    assert new.leader_addr == beat.leader_rpc_addr
    assert out.changed == (
        set(new.primaries) != set(state.primaries) or set(new.backups) != set(state.backups)
    )
    kept_prefix(state, new)
    accepted = [s for s in beat.servers if (s.rpc_major_version, s.rpc_minor_version) <= (1, 1)]
    assert len(out.newer_api) == len(beat.servers) - len(accepted)
    valid = [s for s in accepted if s.rpc_advertise_addr not in INVALID]
    assert [bad for bad, _ in out.invalid] == [
        s.rpc_advertise_addr for s in accepted if s.rpc_advertise_addr in INVALID
    ]
    ours = {parse_address(s.rpc_advertise_addr) for s in valid if s.datacenter == "dc1"}
    theirs = {parse_address(s.rpc_advertise_addr) for s in valid if s.datacenter != "dc1"}
    assert set(new.primaries) == ours
    assert set(new.backups) == (theirs if beat.servers else set(state.backups))

    # Applying it again changes nothing.
    again = apply_heartbeat(new, beat, LOCAL)
    assert again.state == new
    assert not again.changed
    assert again.stale == (beat.publisher is not None and beat.seq is not None)
    return new


def run_rebalance(state: ProxyState, op: Op) -> ProxyState:
    _, seed, outcomes, concurrent = op
    plan = plan_rebalance(state, random.Random(seed))
    if plan is None:
        assert len(members_of(state)) < 2
        return state
    assert sorted(plan.candidates) == sorted(state.active)
    primaries = set(state.primaries)
    in_primaries = [c in primaries for c in plan.candidates]
    assert in_primaries == sorted(in_primaries, reverse=True)  # primaries first

    answered: Mapping[Address, bool] = {
        a: outcome
        for a, outcome in zip(POOL, outcomes, strict=True)
        if outcome is not None and a in plan.candidates
    }
    current = state
    for change in concurrent:
        current = run_simple(current, change)

    index = choose_head(plan.candidates, answered)
    if index is None:
        assert not any(answered.get(c, False) for c in plan.candidates)
        return current
    head = plan.candidates[index]
    assert answered[head] is True
    assert not any(answered.get(c, False) for c in plan.candidates[:index])

    out = reconcile(current, plan, index)
    check_invariant(out.state)
    members = members_of(current)
    if head not in members:
        assert out.abandoned
        assert out.state is current
        return current
    assert not out.abandoned
    assert out.state.head == head
    assert answered.get(out.state.head) is True  # never a server that failed its ping
    rotated = plan.candidates[index:] + plan.candidates[:index]
    planned = set(rotated)
    expected = [a for a in rotated if a in members]
    expected += [a for a in current.active if a not in planned]
    assert list(out.state.active) == expected
    assert out.state.primaries == current.primaries
    assert out.state.backups == current.backups
    return out.state


def run(state: ProxyState, ops: list[Op]) -> ProxyState:
    for op in ops:
        state = run_rebalance(state, op) if op[0] == "rebalance" else run_simple(state, op)
        check_invariant(state)
    return state


@settings(max_examples=200, deadline=None)
@given(any_ops)
def test_invariant_after_any_sequence_of_operations(ops: list[Op]) -> None:
    run(ProxyState(), ops)


@settings(max_examples=100, deadline=None)
@given(st.lists(simple_ops, max_size=12), heartbeats)
def test_heartbeat_twice_changes_nothing_second_time(ops: list[Op], beat: Heartbeat) -> None:
    state = run(ProxyState(), ops)
    first = apply_heartbeat(state, beat, LOCAL)
    second = apply_heartbeat(first.state, beat, LOCAL)
    assert second.state == first.state
    assert not second.changed
    # Without publisher/seq the second one is applied (not stale) and still a no-op.
    anonymous = Heartbeat(beat.servers, beat.num_nodes, beat.leader_rpc_addr)
    one = apply_heartbeat(state, anonymous, LOCAL)
    two = apply_heartbeat(one.state, anonymous, LOCAL)
    assert not two.stale
    assert two.state == one.state
    assert not two.changed


@settings(max_examples=100, deadline=None)
@given(
    st.lists(simple_ops, max_size=12),
    st.integers(min_value=0, max_value=2**32),
    ping_outcomes,
)
def test_rebalance_never_puts_first_a_server_that_failed(
    ops: list[Op], seed: int, outcomes: list[bool | None]
) -> None:
    state = run(ProxyState(), ops)
    alive = {a for a, ok in zip(POOL, outcomes, strict=True) if ok}
    plan = plan_rebalance(state, random.Random(seed))
    if plan is None:
        return
    index = choose_head(plan.candidates, {a: a in alive for a in plan.candidates})
    if index is None:
        assert not alive & set(plan.candidates)
        return
    new = reconcile(state, plan, index).state
    assert new.head in alive
    assert new.head == next(c for c in plan.candidates if c in alive)
