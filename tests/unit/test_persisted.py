"""The saved form of a ProxyState (proxy/persisted.py): round trip and refusal.

A restarted proxy must name the same active server as before, so the round
trip keeps every list in order. Whatever else is in the file (truncated,
hand-edited, another version's) is refused whole with ValueError, or, when
only the lists disagree with each other, still yields a state that keeps the
active-list invariant.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpcproxy.proxy import (
    Heartbeat,
    HeartbeatServer,
    ProxyState,
    TooManyServersError,
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
from rpcproxy.proxy.persisted import (
    FORMAT_VERSION,
    from_document,
    to_document,
    within_max_servers,
)

from ._helpers import LOCAL, POOL, SPELLINGS

pool_addr = st.sampled_from(POOL)

heartbeats = st.builds(
    Heartbeat,
    servers=st.lists(
        st.builds(
            HeartbeatServer,
            rpc_advertise_addr=st.sampled_from(SPELLINGS),
            rpc_major_version=st.just(1),
            rpc_minor_version=st.sampled_from([0, 1]),
            datacenter=st.sampled_from(["dc1", "dc1", "dc2"]),
        ),
        max_size=6,
    ).map(tuple),
    num_nodes=st.integers(min_value=0, max_value=10**9),
    leader_rpc_addr=st.sampled_from(["", "10.0.0.1:4647", "a.nomad:4647", "ünïcode:1"]),
)

Op = tuple[Any, ...]
ops: st.SearchStrategy[Op] = st.one_of(
    st.tuples(st.just("add"), pool_addr),
    st.tuples(st.just("backups"), st.lists(pool_addr, max_size=5)),
    st.tuples(st.just("remove"), pool_addr),
    st.tuples(st.just("failed"), pool_addr),
    st.tuples(st.just("heartbeat"), heartbeats),
    st.tuples(st.just("rebalance"), st.integers(0, 2**32), st.integers(0, 9)),
)


def run(operations: list[Op]) -> ProxyState:
    """Apply ``operations`` with the proxy's own operations, as the actor would."""
    state = ProxyState()
    for op in operations:
        match op:
            case ("add", a):
                state, _ = add_primary(state, a)
            case ("backups", addrs):
                state = set_backups(state, addrs)
            case ("remove", a):
                state, _ = remove_server(state, a)
            case ("failed", a):
                state, _ = notify_failed(state, a)
            case ("heartbeat", heartbeat):
                state = apply_heartbeat(state, heartbeat, LOCAL).state
            case ("rebalance", seed, alive):
                plan = plan_rebalance(state, random.Random(seed))
                if plan is not None:
                    answered = {c: (i + alive) % 3 == 0 for i, c in enumerate(plan.candidates)}
                    head = choose_head(plan.candidates, answered)
                    if head is not None:
                        state = reconcile(state, plan, head).state
    return state


def saved(state: ProxyState) -> tuple[Any, ...]:
    """What the file must keep of a state."""
    return (state.active, state.primaries, state.backups, state.leader_addr, state.num_nodes)


def valid_document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "active": ["b.nomad:4647", "a.nomad:4647"],
        "primaries": ["a.nomad:4647", "b.nomad:4647"],
        "backups": [],
        "leader_addr": "a.nomad:4647",
        "num_nodes": 12,
    }
    document.update(changes)
    return document


# --------------------------------------------------------------------------
# Round trip.


@settings(max_examples=150, deadline=None)
@given(st.lists(ops, max_size=25))
def test_round_trip_keeps_every_list_in_order(operations: list[Op]) -> None:
    state = run(operations)
    document = to_document(state)
    # Through JSON text, as the file stores it.
    restored = from_document(json.loads(json.dumps(document)))
    assert saved(restored) == saved(state)
    assert restored.head == state.head
    check_invariant(restored)
    # Saving the restored state writes the same document: nothing drifts.
    assert to_document(restored) == document


def test_round_trip_of_the_empty_state() -> None:
    document = to_document(ProxyState())
    assert document == {
        "format": FORMAT_VERSION,
        "active": [],
        "primaries": [],
        "backups": [],
        "leader_addr": "",
        "num_nodes": 0,
    }
    assert saved(from_document(document)) == saved(ProxyState())


def test_document_holds_canonical_addresses() -> None:
    state, _ = add_primary(ProxyState(), parse_address("10.0.0.1"))
    state = set_backups(state, [parse_address("[::1]"), parse_address("B.nomad")])
    document = to_document(state)
    assert document["primaries"] == ["10.0.0.1:4647"]
    assert document["backups"] == ["[::1]:4647", "b.nomad:4647"]
    assert document["active"] == ["10.0.0.1:4647", "[::1]:4647", "b.nomad:4647"]


def test_publisher_seqs_are_not_saved() -> None:
    """A restarted proxy accepts any seq again; only the lists are kept."""
    heartbeat = Heartbeat(
        servers=(HeartbeatServer("a.nomad", 1, 1, "dc1"),),
        num_nodes=3,
        leader_rpc_addr="",
        publisher="p",
        seq=9,
    )
    state = apply_heartbeat(ProxyState(), heartbeat, LOCAL).state
    assert dict(state.publisher_seqs) == {"p": 9}
    restored = from_document(to_document(state))
    assert dict(restored.publisher_seqs) == {}
    assert saved(restored) == saved(state)


# --------------------------------------------------------------------------
# Documents whose lists disagree still give a valid state.


@settings(max_examples=150, deadline=None)
@given(
    active=st.lists(st.sampled_from(SPELLINGS), max_size=8),
    primaries=st.lists(st.sampled_from(SPELLINGS), max_size=6),
    backups=st.lists(st.sampled_from(SPELLINGS), max_size=6),
)
def test_inconsistent_lists_still_give_a_valid_state(
    active: list[str], primaries: list[str], backups: list[str]
) -> None:
    document = valid_document(active=active, primaries=primaries, backups=backups)
    state = from_document(document)
    check_invariant(state)
    members = members_of(state)
    assert members == {parse_address(a) for a in primaries + backups}
    # Saved active entries that are still members keep their order at the head.
    kept = list(dict.fromkeys(a for a in map(parse_address, active) if a in members))
    assert list(state.active[: len(kept)]) == kept
    assert state.primaries == tuple(dict.fromkeys(map(parse_address, primaries)))
    assert state.backups == tuple(dict.fromkeys(map(parse_address, backups)))


def test_active_entry_that_is_no_member_is_dropped_and_missing_member_appended() -> None:
    document = valid_document(
        active=["x.nomad", "b.nomad", "b.nomad:4647"],
        primaries=["a.nomad", "b.nomad"],
        backups=["c.nomad"],
    )
    state = from_document(document)
    assert [a.canonical for a in state.active] == ["b.nomad:4647", "a.nomad:4647", "c.nomad:4647"]
    check_invariant(state)


def test_unknown_extra_keys_are_ignored() -> None:
    state = from_document(valid_document(comment="hand-edited", future_key=[1, 2]))
    assert state.head == parse_address("b.nomad")


# --------------------------------------------------------------------------
# Corruption is refused whole.


def _without(key: str) -> dict[str, Any]:
    document = valid_document()
    del document[key]
    return document


CORRUPT: dict[str, object] = {
    "a list": [valid_document()],
    "a string": "format",
    "a number": 1,
    "null": None,
    "empty object": {},
    "format missing": _without("format"),
    "format 2": valid_document(format=2),
    "format 0": valid_document(format=0),
    "format as a string": valid_document(format="1"),
    "format 1.5": valid_document(format=1.5),
    "active missing": _without("active"),
    "primaries missing": _without("primaries"),
    "backups missing": _without("backups"),
    "leader missing": _without("leader_addr"),
    "num_nodes missing": _without("num_nodes"),
    "active not a list": valid_document(active="a.nomad"),
    "primaries an object": valid_document(primaries={"a.nomad": 1}),
    "backups null": valid_document(backups=None),
    "bad address": valid_document(primaries=["a.nomad", "bad:0"]),
    "bad address in active": valid_document(active=["[::1"]),
    "bad address in backups": valid_document(backups=["300.1.1.1:4647x"]),
    "empty address": valid_document(backups=[""]),
    "unbracketed ipv6": valid_document(primaries=["::1:4647"]),
    "address not a string": valid_document(primaries=[4647]),
    "address null": valid_document(active=[None]),
    "address a list": valid_document(backups=[["a.nomad"]]),
    "leader a number": valid_document(leader_addr=1),
    "leader null": valid_document(leader_addr=None),
    "num_nodes a string": valid_document(num_nodes="12"),
    "num_nodes a float": valid_document(num_nodes=12.0),
    "num_nodes negative": valid_document(num_nodes=-1),
    "num_nodes true": valid_document(num_nodes=True),
    "num_nodes false": valid_document(num_nodes=False),
    "num_nodes null": valid_document(num_nodes=None),
}


@pytest.mark.parametrize("document", CORRUPT.values(), ids=list(CORRUPT))
def test_corrupt_document_raises_value_error(document: object) -> None:
    with pytest.raises(ValueError):
        from_document(document)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(SPELLINGS),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "format": st.sampled_from([1, 1, 1, 2, "1", True, None]),
            "active": st.lists(st.sampled_from(SPELLINGS), max_size=4) | json_values,
            "primaries": st.lists(st.sampled_from(SPELLINGS), max_size=4) | json_values,
            "backups": st.lists(st.sampled_from(SPELLINGS), max_size=4) | json_values,
            "leader_addr": st.sampled_from(["", "a.nomad"]) | json_values,
            "num_nodes": st.integers(min_value=0, max_value=99) | json_values,
        },
    )
    | json_values
)
def test_any_json_document_gives_a_valid_state_or_value_error(document: object) -> None:
    try:
        state = from_document(document)
    except ValueError:
        return
    check_invariant(state)
    assert isinstance(state.num_nodes, int) and not isinstance(state.num_nodes, bool)
    assert state.num_nodes >= 0
    assert isinstance(state.leader_addr, str)


@pytest.mark.parametrize("version", [True, 1.0], ids=["true", "1.0"])
def test_format_must_be_the_integer_1(version: object) -> None:
    with pytest.raises(ValueError):
        from_document(valid_document(format=version))


# --------------------------------------------------------------------------
# Held to max_servers (docs/protocol.md section 8): a file over the bound.


def document_of(primaries: list[str], backups: list[str] | None = None) -> dict[str, Any]:
    """A file with these lists and no active order of its own (it follows them)."""
    return valid_document(active=[], primaries=primaries, backups=backups or [])


def test_a_state_over_max_servers_keeps_its_first_servers_in_order() -> None:
    names = [f"10.0.{i // 250}.{i % 250}:4647" for i in range(150)]
    state = from_document(document_of(names))
    held, dropped = within_max_servers(state, 100)
    assert dropped == 50
    assert [a.canonical for a in held.active] == names[:100]
    assert held.primaries == held.active and held.backups == ()
    assert (held.leader_addr, held.num_nodes) == (state.leader_addr, state.num_nodes)
    check_invariant(held)


def test_the_cut_follows_the_active_list_so_the_active_server_stays() -> None:
    c, d = parse_address("c.nomad"), parse_address("d.nomad")
    state = from_document(
        valid_document(
            active=["c.nomad:4647", "d.nomad:4647", "a.nomad:4647", "b.nomad:4647"],
            primaries=["a.nomad:4647", "b.nomad:4647", "c.nomad:4647"],
            backups=["d.nomad:4647", "a.nomad:4647"],
        )
    )
    held, dropped = within_max_servers(state, 2)
    assert dropped == 2
    assert held.active == (c, d) and held.head == c
    # Each kept server keeps its roles; the dropped ones leave every list.
    assert held.primaries == (c,) and held.backups == (d,)
    check_invariant(held)


def test_backups_behind_the_primaries_are_dropped_first() -> None:
    state = from_document(document_of(["p1.nomad", "p2.nomad"], ["b1.nomad", "b2.nomad"]))
    held, dropped = within_max_servers(state, 3)
    assert dropped == 1
    assert [a.canonical for a in held.primaries] == ["p1.nomad:4647", "p2.nomad:4647"]
    assert [a.canonical for a in held.backups] == ["b1.nomad:4647"]


def test_a_state_within_max_servers_is_returned_as_it_is() -> None:
    state = from_document(document_of(["a.nomad", "b.nomad"]))
    assert within_max_servers(state, 2) == (state, 0)
    assert within_max_servers(state, 2)[0] is state
    assert within_max_servers(ProxyState(), 1) == (ProxyState(), 0)


@pytest.mark.parametrize("bound", [0, -1])
def test_max_servers_below_1_is_refused(bound: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        within_max_servers(ProxyState(), bound)


def test_a_held_state_accepts_an_add_once_one_server_leaves() -> None:
    """Held whole, a state over the bound refused every add until servers left."""
    state = from_document(document_of([f"s{i}.nomad" for i in range(10)]))
    held, _ = within_max_servers(state, 5)
    with pytest.raises(TooManyServersError):
        add_primary(held, parse_address("new.nomad"), max_servers=5)
    fewer, removed = remove_server(held, held.active[-1])
    assert removed
    grown, added = add_primary(fewer, parse_address("new.nomad"), max_servers=5)
    assert added and grown.num_members == 5


@settings(max_examples=150, deadline=None)
@given(st.lists(ops, max_size=25), st.integers(min_value=1, max_value=12))
def test_any_state_is_held_to_any_bound(operations: list[Op], bound: int) -> None:
    state = from_document(json.loads(json.dumps(to_document(run(operations)))))
    held, dropped = within_max_servers(state, bound)
    check_invariant(held)
    assert held.num_members == min(bound, state.num_members)
    assert dropped == max(0, state.num_members - bound)
    assert held.active == state.active[:bound]
    assert set(held.primaries) == set(state.primaries) & set(held.active)
    assert set(held.backups) == set(state.backups) & set(held.active)
    # Order within each list is the saved one.
    assert held.primaries == tuple(a for a in state.primaries if a in held.active)
    assert held.backups == tuple(a for a in state.backups if a in held.active)
