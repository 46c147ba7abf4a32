"""Property tests: the active-list invariant after any sequence of operations.

Operations are drawn as plain tuples and interpreted against ``proxy``; a
rebalance draws its ping outcomes and a burst of concurrent changes applied
between plan and reconcile, as the proxy's actor would see them.

A :class:`Standing` follows every run and holds docs/protocol.md's Words
rule (version 2): no backup-only server precedes a primary that became a
primary after the server became backup-only and that has not failed since.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hypothesis import event, given, settings
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
probe_outcomes = st.lists(
    st.sampled_from([True, False, None]), min_size=len(POOL), max_size=len(POOL)
)

rebalance_ops: st.SearchStrategy[Op] = st.tuples(
    st.just("rebalance"),
    st.integers(min_value=0, max_value=2**32),
    probe_outcomes,
    st.lists(simple_ops, max_size=4),
)

any_ops = st.lists(st.one_of(simple_ops, rebalance_ops), max_size=25)


def backup_only(state: ProxyState) -> frozenset[Address]:
    return frozenset(state.backups) - frozenset(state.primaries)


def kept_prefix(old: ProxyState, new: ProxyState) -> None:
    """Survivors keep their order; only servers that became primaries move.

    Servers that became primaries stand before the first backup-only server
    (or keep their place when already in front of it); new backup-only
    members are at the very end.
    """
    members = members_of(new)
    promoted = frozenset(new.primaries) - frozenset(old.primaries)
    survivors = [a for a in old.active if a in members and a not in promoted]
    assert [a for a in new.active if a in set(survivors)] == survivors
    old_members = members_of(old)
    newcomers = [a for a in new.active if a not in old_members and a not in promoted]
    assert list(new.active[len(new.active) - len(newcomers) :]) == newcomers
    remote = backup_only(new)
    first_remote = next((i for i, a in enumerate(new.active) if a in remote), len(new.active))
    old_first_remote = next(
        (i for i, a in enumerate(old.active) if a in backup_only(old)), len(old.active)
    )
    ahead = set(old.active[:old_first_remote])
    for server in promoted:
        if server not in ahead:
            assert new.active.index(server) < first_remote, (server, new.active)


@dataclass
class Standing:
    """When each server last became a primary or backup-only, and who failed since.

    Updated from the states themselves, so it needs no knowledge of how an
    operation changes the lists; failures are what the operations report
    (a rotation by ``notify_failed``, a ping that did not answer).
    """

    clock: int = 0
    primary_since: dict[Address, int] = field(default_factory=dict)
    backup_only_since: dict[Address, int] = field(default_factory=dict)
    failed: set[Address] = field(default_factory=set)

    def observe(self, old: ProxyState, new: ProxyState) -> None:
        self.clock += 1
        old_primaries, new_primaries = set(old.primaries), set(new.primaries)
        old_remote, new_remote = backup_only(old), backup_only(new)
        for server in new_primaries - old_primaries:
            self.primary_since[server] = self.clock
            self.failed.discard(server)
        for server in new_remote - old_remote:
            self.backup_only_since[server] = self.clock
        for server in old_primaries - new_primaries:
            self.primary_since.pop(server, None)
            self.failed.discard(server)
        for server in old_remote - new_remote:
            self.backup_only_since.pop(server, None)

    def check(self, state: ProxyState) -> None:
        place = {a: i for i, a in enumerate(state.active)}
        for remote in backup_only(state):
            since = self.backup_only_since[remote]
            for local in state.primaries:
                if local in self.failed or self.primary_since[local] <= since:
                    continue
                assert place[local] < place[remote], (
                    f"backup-only {remote} precedes {local}, a primary since after it "
                    f"that never failed: {state.active}"
                )


def run_simple(state: ProxyState, op: Op, standing: Standing) -> ProxyState:
    new = _run_simple(state, op, standing)
    standing.observe(state, new)
    standing.check(new)
    return new


def _run_simple(state: ProxyState, op: Op, standing: Standing) -> ProxyState:
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
        if rotated and target in state.primaries:
            standing.failed.add(target)
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


def run_rebalance(state: ProxyState, op: Op, standing: Standing) -> ProxyState:
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
        current = run_simple(current, change, standing)

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
    promoted = set(current.primaries) - set(state.primaries)
    if out.state.head != head:
        # Only a primary found while pinging takes the place of a backup-only
        # head, as it would by joining right after the rebalance.
        assert head in backup_only(current)
        assert out.state.head in promoted or out.state.head not in plan.candidates
    else:
        assert answered.get(out.state.head) is True  # never a server that failed its ping
    assert out.state.head not in plan.candidates[:index]
    rotated = plan.candidates[index:] + plan.candidates[:index]
    planned = set(rotated)
    expected = [a for a in rotated if a in members and a not in promoted]
    expected += [a for a in current.active if a not in planned and a not in promoted]
    assert [a for a in out.state.active if a not in promoted] == expected
    assert out.state.primaries == current.primaries
    assert out.state.backups == current.backups
    # The primaries tried before the head did not answer: they failed. The
    # head and the primaries after it now stand before every backup.
    standing.failed.update(a for a in plan.candidates[:index] if a in current.primaries)
    standing.failed.difference_update(plan.candidates[index:])
    standing.check(out.state)
    return out.state


def run(state: ProxyState, ops: list[Op], standing: Standing | None = None) -> ProxyState:
    standing = standing if standing is not None else Standing()
    for op in ops:
        if op[0] == "rebalance":
            state = run_rebalance(state, op, standing)
        else:
            state = run_simple(state, op, standing)
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


# Any operations, then two distinct servers added: at least two members, so a
# rebalance always has a plan (with fewer it does nothing, and most random
# sequences would end there and check nothing).
ops_then_two_servers = st.tuples(
    st.lists(simple_ops, max_size=12), st.lists(pool_addr, min_size=2, max_size=2, unique=True)
).map(lambda drawn: [*drawn[0], *(("add", a) for a in drawn[1])])


@settings(max_examples=100, deadline=None)
@given(ops_then_two_servers, st.integers(min_value=0, max_value=2**32), probe_outcomes)
def test_rebalance_never_puts_first_a_server_that_failed(
    ops: list[Op], seed: int, outcomes: list[bool | None]
) -> None:
    state = run(ProxyState(), ops)
    alive = {a for a, ok in zip(POOL, outcomes, strict=True) if ok}
    plan = plan_rebalance(state, random.Random(seed))
    assert plan is not None, "two servers or more: a rebalance has a plan"
    index = choose_head(plan.candidates, {a: a in alive for a in plan.candidates})
    if index is None:
        event("no candidate answered")
        assert not alive & set(plan.candidates)
        return
    event("a candidate answered")
    new = reconcile(state, plan, index).state
    assert new.head in alive
    assert new.head == next(c for c in plan.candidates if c in alive)
