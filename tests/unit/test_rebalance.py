"""Rebalancing as plan -> ping -> reconcile (docs/protocol.md section 3)."""

from __future__ import annotations

import random

import pytest

from rpcproxy.proxy import (
    Address,
    ProxyState,
    RebalancePlan,
    add_primary,
    check_invariant,
    choose_head,
    members_of,
    plan_rebalance,
    reconcile,
    remove_server,
)

from ._helpers import addr, addrs, canon, server_names, with_backups, with_primaries


def rebalance(
    state: ProxyState, rng: random.Random, alive: frozenset[Address]
) -> tuple[ProxyState, Address | None]:
    """One whole rebalance with no concurrent change; returns the state and chosen head."""
    plan = plan_rebalance(state, rng)
    if plan is None:
        return state, None
    index = choose_head(plan.candidates, {a: a in alive for a in plan.candidates})
    if index is None:
        return state, None
    outcome = reconcile(state, plan, index)
    assert not outcome.abandoned
    return outcome.state, plan.candidates[index]


# plan_rebalance


@pytest.mark.parametrize("names", [[], ["a"]])
def test_plan_needs_two_servers(names: list[str]) -> None:
    assert plan_rebalance(with_primaries(names), random.Random(1)) is None


def test_plan_counts_primaries_and_backups_together() -> None:
    assert plan_rebalance(with_backups(["x"]), random.Random(1)) is None
    assert plan_rebalance(with_backups(["a"], with_primaries(["a"])), random.Random(1)) is None
    plan = plan_rebalance(with_backups(["x"], with_primaries(["a"])), random.Random(1))
    assert plan is not None
    assert plan.candidates == addrs("a", "x")


def test_plan_primaries_first_then_backups_not_primaries() -> None:
    state = with_backups(["x", "y", "b", "z"], with_primaries(["a", "b", "c"]))
    seen_primary_orders = set()
    seen_backup_orders = set()
    for seed in range(60):
        plan = plan_rebalance(state, random.Random(seed))
        assert plan is not None
        assert len(plan.candidates) == 6
        assert set(plan.candidates[:3]) == set(addrs("a", "b", "c"))
        assert set(plan.candidates[3:]) == set(addrs("x", "y", "z"))
        seen_primary_orders.add(plan.candidates[:3])
        seen_backup_orders.add(plan.candidates[3:])
    # Both groups are shuffled (6 permutations each).
    assert len(seen_primary_orders) == 6
    assert len(seen_backup_orders) == 6


def test_plan_is_deterministic_for_a_seed_and_does_not_change_state() -> None:
    state = with_primaries(server_names(10))
    before = state.active
    first = plan_rebalance(state, random.Random(42))
    second = plan_rebalance(state, random.Random(42))
    assert first == second
    assert state.active == before


# choose_head


def test_choose_head() -> None:
    a, b, c = addrs("a", "b", "c")
    assert choose_head([a, b, c], {a: True, b: True, c: True}) == 0
    assert choose_head([a, b, c], {a: False, b: True, c: True}) == 1
    assert choose_head([a, b, c], {a: False, b: False, c: True}) == 2
    assert choose_head([a, b, c], {a: False, b: False, c: False}) is None
    assert choose_head([a, b, c], {}) is None
    # A candidate without an answer counts as failed.
    assert choose_head([a, b, c], {c: True}) == 2
    assert choose_head([], {a: True}) is None


def test_defect_rebalance_loop_tries_each_candidate_not_the_first_again() -> None:
    candidates = addrs(*server_names(20))
    for k in range(20):
        answered = {c: i >= k for i, c in enumerate(candidates)}
        assert choose_head(candidates, answered) == k
    # Only the last one answers: still found.
    assert choose_head(candidates, {candidates[-1]: True}) == 19


# reconcile


def test_reconcile_rotates_failed_candidates_to_the_end_in_order() -> None:
    state = with_primaries(["a", "b", "c", "d"])
    plan = RebalancePlan(addrs("c", "a", "d", "b"))
    out = reconcile(state, plan, 2)
    assert not out.abandoned
    assert canon(out.state) == ["d:4647", "b:4647", "c:4647", "a:4647"]
    assert out.state.primaries == state.primaries
    check_invariant(out.state)


def test_reconcile_drops_removed_and_appends_added() -> None:
    state = with_primaries(["a", "b", "c", "d"])
    plan = RebalancePlan(addrs("c", "a", "d", "b"))
    state, _ = remove_server(state, addr("a"))
    state, _ = add_primary(state, addr("e"))
    state, _ = add_primary(state, addr("f"))
    out = reconcile(state, plan, 0)
    assert not out.abandoned
    assert canon(out.state) == ["c:4647", "d:4647", "b:4647", "e:4647", "f:4647"]
    check_invariant(out.state)


def test_reconcile_abandoned_when_head_removed() -> None:
    state = with_primaries(["a", "b", "c"])
    plan = RebalancePlan(addrs("b", "c", "a"))
    state, _ = remove_server(state, addr("c"))
    out = reconcile(state, plan, 1)
    assert out.abandoned
    assert out.state is state


def test_reconcile_head_removed_and_readded_is_kept() -> None:
    state = with_primaries(["a", "b", "c"])
    plan = RebalancePlan(addrs("b", "c", "a"))
    state, _ = remove_server(state, addr("b"))
    state, _ = add_primary(state, addr("b"))
    out = reconcile(state, plan, 0)
    assert not out.abandoned
    assert canon(out.state) == ["b:4647", "c:4647", "a:4647"]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 10, 100])
def test_reconcile_with_concurrent_changes(n: int) -> None:
    rng = random.Random(n)
    start = with_primaries(server_names(n))
    for trial in range(30):
        plan = plan_rebalance(start, rng)
        if n < 2:
            assert plan is None
            if n == 1:
                # A hand-made one-candidate plan still reconciles sanely.
                out = reconcile(start, RebalancePlan(start.active), 0)
                assert out.state.active == start.active
            continue
        assert plan is not None
        assert sorted(plan.candidates) == sorted(start.active)
        head_index = rng.randrange(n)

        current = start
        removed = {a for a in start.active if rng.random() < 0.3}
        for victim in removed:
            current, ok = remove_server(current, victim)
            assert ok
        added = [addr(f"new{trial}-{i}.nomad") for i in range(rng.randrange(4))]
        for newcomer in added:
            current, _ = add_primary(current, newcomer)

        out = reconcile(current, plan, head_index)
        check_invariant(out.state)
        head = plan.candidates[head_index]
        if head in removed:
            assert out.abandoned
            assert out.state is current
            continue
        assert not out.abandoned
        assert out.state.head == head
        assert not removed & set(out.state.active)
        rotated = plan.candidates[head_index:] + plan.candidates[:head_index]
        survivors = [a for a in rotated if a not in removed]
        assert list(out.state.active) == survivors + added


# Reference scenario: RebalanceServers with 100 servers, half failing.


def test_rebalance_100_servers_half_failing_spreads_orders() -> None:
    names = server_names(100)
    base = with_primaries(names)
    failing = frozenset(addr(n) for n in names[::2])
    alive = frozenset(base.active) - failing
    orders: set[tuple[Address, ...]] = set()
    heads: set[Address] = set()
    for seed in range(100):
        state, head = rebalance(base, random.Random(seed), alive)
        assert head is not None
        assert state.head == head
        assert head not in failing
        check_invariant(state)
        orders.add(state.active)
        heads.add(head)
    assert len(orders) >= 50
    assert len(heads) >= 20


def test_rebalance_none_answering_keeps_list() -> None:
    state = with_primaries(server_names(5))
    after, head = rebalance(state, random.Random(3), frozenset())
    assert head is None
    assert after is state


def test_rebalance_prefers_a_live_primary_over_backups() -> None:
    state = with_backups(["x", "y"], with_primaries(["a", "b", "c"]))
    for seed in range(20):
        after, head = rebalance(state, random.Random(seed), frozenset(addrs("b", "x", "y")))
        assert head == addr("b")
        assert set(after.active[-2:]) <= set(addrs("x", "y", "a", "c"))
    after, head = rebalance(state, random.Random(0), frozenset(addrs("y")))
    assert head == addr("y")
    check_invariant(after)


def test_rebalance_does_not_touch_membership() -> None:
    state = with_backups(["x"], with_primaries(server_names(6)))
    after, _ = rebalance(state, random.Random(9), frozenset(state.active))
    assert members_of(after) == members_of(state)
    assert after.primaries == state.primaries
    assert after.backups == state.backups
