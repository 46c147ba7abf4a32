"""The saved form of a ProxyState: what a restarted proxy needs to answer at once.

Pure conversion both ways. Loading validates everything, because the file may
be truncated, hand-edited or written by another version; a document that
breaks any rule is refused whole (the caller then starts empty).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from rpcproxy.proxy.address import Address, InvalidAddressError, parse_address
from rpcproxy.proxy.state import ProxyState, with_members

FORMAT_VERSION = 1


def to_document(state: ProxyState) -> dict[str, Any]:
    """The state as plain data: lists of canonical addresses, leader, node count.

    The active order is kept too, so a restarted proxy names the same active
    server as before it stopped.
    """
    return {
        "format": FORMAT_VERSION,
        "active": [a.canonical for a in state.active],
        "primaries": [a.canonical for a in state.primaries],
        "backups": [a.canonical for a in state.backups],
        "leader_addr": state.leader_addr,
        "num_nodes": state.num_nodes,
    }


def from_document(document: object) -> ProxyState:
    """Rebuild a state from :func:`to_document`'s output.

    Raises:
        ValueError: the document is not one this version wrote, or breaks a rule.
    """
    if not isinstance(document, Mapping):
        raise ValueError("not a JSON object")
    version = document.get("format")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ValueError(f"unknown format {version!r}")
    leader = document.get("leader_addr")
    num_nodes = document.get("num_nodes")
    if not isinstance(leader, str):
        raise ValueError("leader_addr is not a string")
    if not isinstance(num_nodes, int) or isinstance(num_nodes, bool) or num_nodes < 0:
        raise ValueError("num_nodes is not an int >= 0")
    saved = ProxyState(
        active=_addresses(document, "active"),
        primaries=_addresses(document, "primaries"),
        backups=_addresses(document, "backups"),
        leader_addr=leader,
        num_nodes=num_nodes,
    )
    # The saved lists are the starting point, so no server counts as newly
    # promoted and the saved order stands; with_members still drops active
    # entries that are not members and appends missing members, so an
    # inconsistent file yields a valid state.
    return with_members(saved, saved.primaries, saved.backups)


def within_max_servers(state: ProxyState, max_servers: int) -> tuple[ProxyState, int]:
    """``state`` cut to at most ``max_servers`` servers, and how many it dropped.

    docs/protocol.md section 8 bounds the primary and backup lists together;
    a saved state may exceed it (saved under a larger ``max_servers``, or a
    file a hostile or careless hand wrote), and held whole it would refuse
    every add until servers left. The first ``max_servers`` servers of the
    active list are kept, in its order: that is the order the saved proxy
    answered in, so the active server stays the active server; and backups
    stand behind every primary that has not failed, so they are dropped first.
    Each kept server stays a primary, a backup or both, as saved.

    Raises:
        ValueError: ``max_servers`` is below 1 (the configuration's own bound).
    """
    if max_servers < 1:
        raise ValueError(f"max_servers must be at least 1, got {max_servers}")
    if state.num_members <= max_servers:
        return state, 0
    kept = state.active[:max_servers]
    keep = frozenset(kept)
    # with_members keeps the active order of the servers that stay members,
    # and none joins, so the active list comes out as ``kept``.
    held = with_members(
        replace(state, active=kept),
        tuple(a for a in state.primaries if a in keep),
        tuple(a for a in state.backups if a in keep),
    )
    return held, state.num_members - held.num_members


def _addresses(document: Mapping[str, Any], key: str) -> tuple[Address, ...]:
    values = document.get(key)
    if not isinstance(values, list):
        raise ValueError(f"{key} is not a list")
    try:
        return tuple(dict.fromkeys(parse_address(v) for v in values))
    except (InvalidAddressError, TypeError) as exc:
        raise ValueError(f"{key}: {exc}") from None
