"""The server lists and the operations that change them.

A :class:`ProxyState` is an immutable value; every operation returns a new
one. The active list always holds exactly the servers that are primaries or
backups (or both), each once: :func:`with_members` is the single place that
restores that invariant after the membership changes, so no operation can
forget it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from proxy.address import Address

_EMPTY_SEQS: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ProxyState:
    """Everything the proxy knows, as one immutable value.

    Attributes:
        active: the ordered list queries see; its first entry is the active server.
        primaries: servers of our datacenter (heartbeats, ``add_primary_server``).
        backups: ``set_backup_servers`` or other datacenters' heartbeat servers.
        num_nodes: the cluster size from the last heartbeat; scales the
            rebalance interval.
        leader_addr: the leader's RPC address from the last heartbeat, may be empty.
        publisher_seqs: last ``seq`` applied per heartbeat ``publisher``.
    """

    active: tuple[Address, ...] = ()
    primaries: tuple[Address, ...] = ()
    backups: tuple[Address, ...] = ()
    num_nodes: int = 0
    leader_addr: str = ""
    publisher_seqs: Mapping[str, int] = field(default_factory=lambda: _EMPTY_SEQS)

    @property
    def head(self) -> Address | None:
        """The active server, or None when no server is known."""
        return self.active[0] if self.active else None


def members_of(state: ProxyState) -> frozenset[Address]:
    """The servers that must be on the active list."""
    return frozenset(state.primaries) | frozenset(state.backups)


def dedupe(addrs: Iterable[Address]) -> tuple[Address, ...]:
    """The addresses in first-seen order, each once."""
    return tuple(dict.fromkeys(addrs))


def with_members(
    state: ProxyState,
    primaries: Sequence[Address],
    backups: Sequence[Address],
    arrivals: Iterable[Address] = (),
) -> ProxyState:
    """Replace the primary and backup lists and bring the active list in line.

    Servers that stopped being members leave the active list at once; new
    members join at its end, in the order of ``arrivals`` first and then of
    the primaries and backups. The order of servers already active is kept.
    """
    primaries = dedupe(primaries)
    backups = dedupe(backups)
    members = frozenset(primaries) | frozenset(backups)
    kept = [addr for addr in state.active if addr in members]
    seen = set(kept)
    for addr in (*arrivals, *primaries, *backups):
        if addr in members and addr not in seen:
            kept.append(addr)
            seen.add(addr)
    return replace(state, active=tuple(kept), primaries=primaries, backups=backups)


def notify_failed(state: ProxyState, addr: Address) -> tuple[ProxyState, bool]:
    """Move ``addr`` to the end if it is the active server and others exist.

    Returns the new state and whether the list rotated. A server that is not
    the head is left alone: its failure report is stale, someone already
    moved it.
    """
    if len(state.active) < 2 or state.active[0] != addr:
        return state, False
    return replace(state, active=(*state.active[1:], addr)), True


def add_primary(state: ProxyState, addr: Address) -> tuple[ProxyState, bool]:
    """Add ``addr`` to the primaries; returns whether it was new there."""
    if addr in state.primaries:
        return state, False
    return with_members(state, (*state.primaries, addr), state.backups), True


def set_backups(state: ProxyState, addrs: Sequence[Address]) -> ProxyState:
    """Replace the backup list (duplicates collapse to their first place)."""
    return with_members(state, state.primaries, addrs)


def remove_server(state: ProxyState, addr: Address) -> tuple[ProxyState, bool]:
    """Drop ``addr`` from every list; returns whether it was known."""
    if addr not in state.primaries and addr not in state.backups:
        return state, False
    return (
        with_members(
            state,
            [a for a in state.primaries if a != addr],
            [a for a in state.backups if a != addr],
        ),
        True,
    )


def check_invariant(state: ProxyState) -> None:
    """Raise AssertionError when the active list is not exactly the members, once each."""
    if len(set(state.active)) != len(state.active):
        raise AssertionError(f"duplicate in active list {state.active}")
    if set(state.active) != members_of(state):
        raise AssertionError(
            f"active {state.active} != primaries {state.primaries} + backups {state.backups}"
        )
