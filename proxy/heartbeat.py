"""Merging a heartbeat's server list into the proxy's state (docs/protocol.md section 2).

The merge is a pure function of the state, the heartbeat and who we are. It
reports what it skipped (newer API, unparsable addresses) instead of logging,
so the caller decides how loudly and how often to say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from rpcproxy.proxy.address import Address, InvalidAddressError, parse_address
from rpcproxy.proxy.state import ProxyState, backup_set, primary_set, with_members

MAX_PUBLISHERS = 1024
"""Publishers whose last ``seq`` is remembered; the least recently heard is forgotten first."""


@dataclass(frozen=True, slots=True)
class HeartbeatServer:
    """One entry of a heartbeat's ``servers`` list."""

    rpc_advertise_addr: str
    rpc_major_version: int
    rpc_minor_version: int
    datacenter: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A validated heartbeat payload."""

    servers: tuple[HeartbeatServer, ...]
    num_nodes: int
    leader_rpc_addr: str
    publisher: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class LocalIdentity:
    """What the proxy's own client is: its datacenter and the RPC API it speaks."""

    datacenter: str = "dc1"
    rpc_major_version: int = 1
    rpc_minor_version: int = 1

    def speaks(self, server: HeartbeatServer) -> bool:
        """False when the server's API is newer than ours (major, then minor)."""
        theirs = (server.rpc_major_version, server.rpc_minor_version)
        return theirs <= (self.rpc_major_version, self.rpc_minor_version)


@dataclass(frozen=True, slots=True)
class HeartbeatOutcome:
    """The result of :func:`apply_heartbeat`.

    Attributes:
        state: the new state (the old one when the heartbeat was stale).
        stale: the heartbeat's ``seq`` was not newer than its publisher's last.
        changed: primary or backup membership changed.
        newer_api: servers ignored because they speak a newer API.
        invalid: (address, reason) of entries skipped because they do not parse.
    """

    state: ProxyState
    stale: bool = False
    changed: bool = False
    newer_api: tuple[HeartbeatServer, ...] = ()
    invalid: tuple[tuple[str, str], ...] = ()


def is_stale(state: ProxyState, heartbeat: Heartbeat) -> bool:
    """A heartbeat whose seq is not above its publisher's last applied one."""
    if heartbeat.publisher is None or heartbeat.seq is None:
        return False
    last = state.publisher_seqs.get(heartbeat.publisher)
    return last is not None and heartbeat.seq <= last


def apply_heartbeat(
    state: ProxyState, heartbeat: Heartbeat, local: LocalIdentity
) -> HeartbeatOutcome:
    """Apply rules 2-7 of docs/protocol.md section 2 and the publisher/seq rule."""
    if is_stale(state, heartbeat):
        return HeartbeatOutcome(state, stale=True)

    newer_api: list[HeartbeatServer] = []
    invalid: list[tuple[str, str]] = []
    ours: list[Address] = []
    theirs: list[Address] = []
    arrivals: list[Address] = []
    for server in heartbeat.servers:
        if not local.speaks(server):
            newer_api.append(server)
            continue
        try:
            addr = parse_address(server.rpc_advertise_addr)
        except InvalidAddressError as exc:
            invalid.append((server.rpc_advertise_addr, str(exc)))
            continue
        (ours if server.datacenter == local.datacenter else theirs).append(addr)
        arrivals.append(addr)

    seqs = _record_seq(state.publisher_seqs, heartbeat)
    new_backups = tuple(theirs) if heartbeat.servers else state.backups
    if tuple(ours) == state.primaries and new_backups == state.backups:
        # The common case, a heartbeat repeating what we know: no list changes.
        same = replace(
            state,
            num_nodes=heartbeat.num_nodes,
            leader_addr=heartbeat.leader_rpc_addr,
            publisher_seqs=seqs,
        )
        return HeartbeatOutcome(same, newer_api=tuple(newer_api), invalid=tuple(invalid))

    # Known primaries keep their order; new ones follow in heartbeat order.
    listed = frozenset(ours)
    known = primary_set(state)
    primaries = [a for a in state.primaries if a in listed]
    primaries += [a for a in dict.fromkeys(ours) if a not in known]

    # new_backups may be the state's own tuple, whose set the state already has.
    merged = with_members(state, primaries, new_backups, arrivals)
    # The states' sets compare on the hashes they store, without rehashing.
    changed = primary_set(merged) != known or backup_set(merged) != backup_set(state)
    merged = replace(
        merged,
        num_nodes=heartbeat.num_nodes,
        leader_addr=heartbeat.leader_rpc_addr,
        publisher_seqs=seqs,
    )
    return HeartbeatOutcome(
        merged, changed=changed, newer_api=tuple(newer_api), invalid=tuple(invalid)
    )


def _record_seq(seqs: Mapping[str, int], heartbeat: Heartbeat) -> Mapping[str, int]:
    if heartbeat.publisher is None or heartbeat.seq is None:
        return seqs
    updated = dict(seqs)
    # Re-inserting moves the publisher to the end, so the first key is the
    # least recently heard one and is the one evicted.
    updated.pop(heartbeat.publisher, None)
    updated[heartbeat.publisher] = heartbeat.seq
    while len(updated) > MAX_PUBLISHERS:
        del updated[next(iter(updated))]
    return MappingProxyType(updated)
