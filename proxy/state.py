"""The server lists and the operations that change them.

A :class:`ProxyState` is an immutable value; every operation returns a new
one. The active list always holds exactly the servers that are primaries or
backups (or both), each once: :func:`with_members` is the single place that
restores that invariant after the membership changes, so no operation can
forget it.

Lists can hold thousands of servers (up to ``max_servers``, docs/protocol.md
section 8) and an :class:`Address` hashes and compares in Python, so a state
carries sets of its lists (see :class:`_Index`): membership tests are O(1),
and an add copies tuples and sets in C instead of rehashing every server.
Filling an empty proxy one ``add_primary_server`` at a time is then a fast
O(n) copy per add, not an O(n) walk of Python calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from rpcproxy.proxy.address import Address

_EMPTY_SEQS: Mapping[str, int] = MappingProxyType({})

DEFAULT_MAX_SERVERS = 4096
"""The default bound on the primary and backup lists together (``max_servers``)."""


class TooManyServersError(ValueError):
    """A change that would take the primary and backup lists beyond ``max_servers``.

    The operation changes nothing; the message says how many servers the
    change would have made.
    """


@dataclass(frozen=True, slots=True)
class _Index:
    """The primary and backup lists of one state as sets.

    Built for two exact tuple objects, and trusted only by a state that holds
    those very tuples (checked by identity): a state whose lists were
    replaced by any other means rebuilds it, so it can never be stale.

    Attributes:
        primaries: the tuple ``primary_set`` was built from.
        backups: the tuple ``backup_set`` was built from.
        primary_set: the primaries.
        backup_set: the backups.
        members: how many servers are primaries or backups (or both).
    """

    primaries: tuple[Address, ...]
    backups: tuple[Address, ...]
    primary_set: frozenset[Address]
    backup_set: frozenset[Address]
    members: int


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
    _index: _Index | None = field(default=None, repr=False, compare=False)
    """Derived from ``primaries`` and ``backups``; see :func:`_index_of`."""

    @property
    def head(self) -> Address | None:
        """The active server, or None when no server is known."""
        return self.active[0] if self.active else None

    @property
    def num_members(self) -> int:
        """How many servers are primaries or backups (or both)."""
        return _index_of(self).members


def _index_of(state: ProxyState) -> _Index:
    """The state's index, or a new one when it carries none for its lists."""
    index = state._index
    if index is not None and index.primaries is state.primaries and index.backups is state.backups:
        return index
    return _build_index(state.primaries, state.backups)


def _build_index(
    primaries: tuple[Address, ...],
    backups: tuple[Address, ...],
    primary_set: frozenset[Address] | None = None,
    backup_set: frozenset[Address] | None = None,
) -> _Index:
    if primary_set is None:
        primary_set = frozenset(primaries)
    if backup_set is None:
        backup_set = frozenset(backups)
    # A union of sets reuses the hashes they store: no Address is hashed again.
    return _Index(primaries, backups, primary_set, backup_set, len(primary_set | backup_set))


def members_of(state: ProxyState) -> frozenset[Address]:
    """The servers that must be on the active list."""
    index = _index_of(state)
    return index.primary_set | index.backup_set


def primary_set(state: ProxyState) -> frozenset[Address]:
    """The primaries as a set (built once per state, not per call)."""
    return _index_of(state).primary_set


def backup_set(state: ProxyState) -> frozenset[Address]:
    """The backups as a set (built once per state, not per call)."""
    return _index_of(state).backup_set


def dedupe(addrs: Iterable[Address]) -> tuple[Address, ...]:
    """The addresses in first-seen order, each once."""
    return tuple(dict.fromkeys(addrs))


def _list_and_set(
    given: Sequence[Address], current: tuple[Address, ...], current_set: frozenset[Address]
) -> tuple[tuple[Address, ...], frozenset[Address]]:
    """``given`` deduplicated, and its set; the state's own list is reused as is."""
    if given is current:
        return current, current_set
    unique = dict.fromkeys(given)
    # Built from the dict, the set takes the hashes the dict stored.
    return tuple(unique), frozenset(unique)


def place_joiners(
    order: Sequence[Address],
    joining_primaries: Sequence[Address],
    joining_backups: Sequence[Address],
    backup_only: frozenset[Address],
) -> tuple[Address, ...]:
    """``order`` with servers that became primaries or backups put in their places.

    docs/protocol.md, Words: a server that becomes a primary stands just
    before the first backup-only server of ``order`` (at the end when there
    is none), so backups stay behind every primary that has not failed; one
    already in front of that server keeps its place, and one behind it moves
    up. New backups join at the end. Everything else keeps its order.

    Args:
        order: the active list so far; may hold some of the joiners already.
        joining_primaries: servers that became primaries, in arrival order.
        joining_backups: servers that became members as backups only, in
            arrival order; none of them may be in ``order``.
        backup_only: the servers that are backups and not primaries.
    """
    if not joining_primaries:
        return (*order, *joining_backups)
    first = len(order)
    if backup_only:
        first = next((i for i, addr in enumerate(order) if addr in backup_only), first)
    ahead = frozenset(order[:first])
    moving = [addr for addr in dict.fromkeys(joining_primaries) if addr not in ahead]
    moving_set = frozenset(moving)
    behind = [addr for addr in order[first:] if addr not in moving_set]
    return (*order[:first], *moving, *behind, *joining_backups)


def with_members(
    state: ProxyState,
    primaries: Sequence[Address],
    backups: Sequence[Address],
    arrivals: Iterable[Address] = (),
) -> ProxyState:
    """Replace the primary and backup lists and bring the active list in line.

    Servers that stopped being members leave the active list at once. Servers
    that became primaries and new backups take their places as
    :func:`place_joiners` says, in the order of ``arrivals`` first and then of
    the primaries and backups. The order of the other active servers is kept.
    """
    old = _index_of(state)
    new_primaries, new_primary_set = _list_and_set(primaries, state.primaries, old.primary_set)
    new_backups, new_backup_set = _list_and_set(backups, state.backups, old.backup_set)
    members = new_primary_set | new_backup_set
    kept = [addr for addr in state.active if addr in members]
    missing = set(members)
    missing.difference_update(kept)
    promoted = new_primary_set - old.primary_set
    joining_primaries: list[Address] = []
    joining_backups: list[Address] = []
    if missing or promoted:
        for addr in dict.fromkeys((*arrivals, *new_primaries, *new_backups)):
            if addr in promoted:
                joining_primaries.append(addr)
            elif addr in missing:
                joining_backups.append(addr)
    active = place_joiners(
        kept, joining_primaries, joining_backups, new_backup_set - new_primary_set
    )
    index = _Index(new_primaries, new_backups, new_primary_set, new_backup_set, len(members))
    return replace(state, active=active, primaries=new_primaries, backups=new_backups, _index=index)


def notify_failed(state: ProxyState, addr: Address) -> tuple[ProxyState, bool]:
    """Move ``addr`` to the end if it is the active server and others exist.

    Returns the new state and whether the list rotated. A server that is not
    the head is left alone: its failure report is stale, someone already
    moved it.
    """
    if len(state.active) < 2 or state.active[0] != addr:
        return state, False
    return replace(state, active=(*state.active[1:], addr)), True


def add_primary(
    state: ProxyState, addr: Address, *, max_servers: int | None = None
) -> tuple[ProxyState, bool]:
    """Add ``addr`` to the primaries; returns whether it was new there.

    The server stands just before the first backup-only server of the active
    list (:func:`place_joiners`). Without backup-only servers, the common
    case, it is appended in O(1) Python steps (the copies of the lists and
    sets run in C), so filling an empty proxy one add at a time stays fast.

    Args:
        state: the state to add to.
        addr: the server.
        max_servers: the most primaries and backups together; None for no bound.

    Raises:
        TooManyServersError: ``addr`` is not a member yet and the lists
            already hold ``max_servers`` servers.
    """
    index = _index_of(state)
    if addr in index.primary_set:
        return state, False
    primaries = (*state.primaries, addr)
    primary_set = index.primary_set | {addr}
    was_backup = addr in index.backup_set
    members = index.members
    if not was_backup:
        if max_servers is not None and members >= max_servers:
            raise TooManyServersError(
                f"cannot add {addr.canonical}: the primary and backup lists already hold "
                f"{members} servers, the most max_servers ({max_servers}) allows"
            )
        members += 1
    backup_only = index.backup_set - primary_set
    if backup_only:
        active = place_joiners(state.active, (addr,), (), backup_only)
    else:
        active = state.active if was_backup else (*state.active, addr)
    new_index = _Index(primaries, state.backups, primary_set, index.backup_set, members)
    return replace(state, active=active, primaries=primaries, _index=new_index), True


def set_backups(
    state: ProxyState, addrs: Sequence[Address], *, max_servers: int | None = None
) -> ProxyState:
    """Replace the backup list (duplicates collapse to their first place).

    Raises:
        TooManyServersError: the primaries and the new backups together would
            be more than ``max_servers`` servers (None: no bound).
    """
    return _within(with_members(state, state.primaries, addrs), max_servers)


def set_primaries(
    state: ProxyState, addrs: Sequence[Address], *, max_servers: int | None = None
) -> ProxyState:
    """Replace the primary list at once, as an operator's ``set_servers`` does.

    Servers that stop being primaries leave the active list unless they are
    backups; new primaries take their places as :func:`place_joiners` says,
    in the order given; servers that stay primaries keep their places.
    Duplicates collapse to their first place.

    Raises:
        TooManyServersError: the new primaries and the backups together would
            be more than ``max_servers`` servers (None: no bound).
    """
    return _within(with_members(state, addrs, state.backups, addrs), max_servers)


def _within(new: ProxyState, max_servers: int | None) -> ProxyState:
    """``new``, unless its lists hold more than ``max_servers`` servers together."""
    members = _index_of(new).members
    if max_servers is not None and members > max_servers:
        raise TooManyServersError(
            f"{len(new.backups)} backups and {len(new.primaries)} primaries would make "
            f"{members} servers, more than max_servers ({max_servers})"
        )
    return new


def remove_server(state: ProxyState, addr: Address) -> tuple[ProxyState, bool]:
    """Drop ``addr`` from every list; returns whether it was known."""
    index = _index_of(state)
    in_primaries = addr in index.primary_set
    in_backups = addr in index.backup_set
    if not in_primaries and not in_backups:
        return state, False
    return (
        with_members(
            state,
            tuple(a for a in state.primaries if a != addr) if in_primaries else state.primaries,
            tuple(a for a in state.backups if a != addr) if in_backups else state.backups,
        ),
        True,
    )


def list_changes(
    old: tuple[Address, ...], new: tuple[Address, ...]
) -> tuple[tuple[Address, ...], tuple[Address, ...]]:
    """The servers ``new`` added (in its order) and removed (in ``old``'s order).

    An append, the common change (``add_primary_server``, a heartbeat naming
    one more server), is found by a prefix comparison that runs in C, without
    hashing the list.
    """
    if old is new:
        return (), ()
    if len(new) >= len(old) and new[: len(old)] == old:
        return new[len(old) :], ()
    old_set, new_set = frozenset(old), frozenset(new)
    added = tuple(a for a in new if a not in old_set)
    removed = tuple(a for a in old if a not in new_set)
    return added, removed


def check_invariant(state: ProxyState) -> None:
    """Raise AssertionError when the active list is not exactly the members, once each.

    Also checks that an index the state carries describes its lists.
    """
    if len(set(state.active)) != len(state.active):
        raise AssertionError(f"duplicate in active list {state.active}")
    if set(state.active) != members_of(state):
        raise AssertionError(
            f"active {state.active} != primaries {state.primaries} + backups {state.backups}"
        )
    index = state._index
    if index is not None and index.primaries is state.primaries:
        fresh = _build_index(state.primaries, state.backups)
        if (index.primary_set, index.members) != (fresh.primary_set, fresh.members) or (
            index.backups is state.backups and index.backup_set != fresh.backup_set
        ):
            raise AssertionError(f"stale index {index} for {state}")
