"""What Consul's answers look like, and the servers they list (docs/protocol.md section 10).

Pure: no sockets, no clock. :mod:`.consul` fetches; this module knows the
two shapes it reads (``/v1/catalog/datacenters`` and
``/v1/health/service/<name>``), each validated whole with msgspec before
anything is taken from it (keys it does not read are ignored: they differ
between Consul versions), and how an entry becomes a server. Every list is
bounded where it is decoded, so a hostile agent's reply costs at most its
bounded body, never a list of millions of small objects.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from rpcproxy.proxy import Address, InvalidAddressError, parse_address

__all__ = [
    "MAX_DATACENTERS_DECODED",
    "MAX_DATACENTER_NAME",
    "HealthEntry",
    "HealthNode",
    "HealthService",
    "Servers",
    "datacenters_decoder",
    "entries_decoder",
    "entry_address",
    "servers_in",
]

MAX_DATACENTERS_DECODED = 10_000
"""The longest list of datacenters decoded: far more than any federation has
(only the first few are asked), and a longer list fails as a reply out of bounds."""

MAX_DATACENTER_NAME = 256
"""The longest datacenter name decoded (Consul's are short DNS labels)."""


class HealthNode(msgspec.Struct):
    """The ``Node`` of a health entry: only its address is read."""

    Address: str = ""


class HealthService(msgspec.Struct):
    """The ``Service`` of a health entry: its address (may be empty) and port."""

    Address: str = ""
    Port: int = 0


class HealthEntry(msgspec.Struct):
    """One entry of ``/v1/health/service/<name>``: a node and its instance of the service."""

    Service: HealthService
    Node: HealthNode = msgspec.field(default_factory=HealthNode)


def datacenters_decoder() -> msgspec.json.Decoder[Any]:
    """``/v1/catalog/datacenters``: a list of names, the agent's own first, then the nearest."""
    name = Annotated[str, Meta(max_length=MAX_DATACENTER_NAME)]
    return msgspec.json.Decoder(Annotated[list[name], Meta(max_length=MAX_DATACENTERS_DECODED)])


def entries_decoder(max_entries: int) -> msgspec.json.Decoder[Any]:
    """``/v1/health/service/<name>``: a list of at most ``max_entries`` :class:`HealthEntry`.

    More is a reply out of bounds (section 8: bad input, never growth), as a
    Nomad API listing more members than its bound.
    """
    return msgspec.json.Decoder(Annotated[list[HealthEntry], Meta(max_length=max_entries)])


def entry_address(entry: HealthEntry) -> Address | None:
    """The server an entry names, or None when it names none.

    ``Service.Address``, or ``Node.Address`` when that is empty (a service
    registered without an address of its own is at its node's), and
    ``Service.Port``. None for an empty address, a port outside 1-65535, or
    an address :func:`~rpcproxy.proxy.address.parse_address` refuses. An
    IPv6 literal comes unbracketed from Consul, and is bracketed here.
    """
    host = entry.Service.Address or entry.Node.Address
    port = entry.Service.Port
    if not host or not 1 <= port <= 65535:
        return None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    try:
        return parse_address(f"{host}:{port}")
    except InvalidAddressError:
        return None


@dataclass(frozen=True, slots=True)
class Servers:
    """The servers a list of entries names, and what was skipped.

    Attributes:
        servers: in the entries' order, each once (by canonical form, the
            first place kept), at most the bound given.
        skipped: entries that named no server (see :func:`entry_address`).
        first_skipped: the first of those as ``address:port``, cut short, for a log line.
    """

    servers: tuple[Address, ...]
    skipped: int = 0
    first_skipped: str = ""


def servers_in(entries: Iterable[HealthEntry], max_servers: int) -> Servers:
    """The servers ``entries`` name, deduplicated, at most ``max_servers``."""
    found: dict[Address, None] = {}
    skipped = 0
    first_skipped = ""
    for entry in entries:
        address = entry_address(entry)
        if address is None:
            if not skipped:
                shown = f"{entry.Service.Address or entry.Node.Address}:{entry.Service.Port}"
                first_skipped = repr(shown[:80])
            skipped += 1
        elif len(found) < max_servers:
            found.setdefault(address)
    return Servers(tuple(found), skipped, first_skipped)
