"""Small builders shared by the unit tests of ``proxy/``."""

from __future__ import annotations

from collections.abc import Iterable

from rpcproxy.proxy import (
    Address,
    LocalIdentity,
    ProxyState,
    add_primary,
    parse_address,
    set_backups,
)

LOCAL = LocalIdentity("dc1", rpc_major_version=1, rpc_minor_version=1)
"""The proxy's own identity in these tests: datacenter dc1, RPC API 1.1."""

SPELLINGS = [
    "10.0.0.1",
    "10.0.0.1:4647",
    "10.0.0.2:4647",
    "10.0.0.2:4648",
    "[::1]",
    "[0:0::1]:4647",
    "[2001:db8::7]:9000",
    "A.nomad",
    "a.nomad:4647",
    "b.nomad",
    "B.nomad:4647",
    "c.nomad:4648",
    "d.nomad",
]
"""Valid addresses, several spellings per server (default port, IPv6 zeros, case)."""
POOL: list[Address] = list(dict.fromkeys(parse_address(s) for s in SPELLINGS))
"""The distinct servers SPELLINGS names, in order."""


def addr(text: str) -> Address:
    """Parse an address the test knows to be valid."""
    return parse_address(text)


def addrs(*texts: str) -> tuple[Address, ...]:
    return tuple(parse_address(t) for t in texts)


def server_names(count: int, prefix: str = "s") -> list[str]:
    """``count`` distinct host names, ``s00.nomad`` style, in order."""
    return [f"{prefix}{i:03d}.nomad:4647" for i in range(count)]


def with_primaries(names: Iterable[str], state: ProxyState | None = None) -> ProxyState:
    """A state whose primaries (and active list) are ``names`` in order."""
    current = state if state is not None else ProxyState()
    for name in names:
        current, _ = add_primary(current, addr(name))
    return current


def with_backups(names: Iterable[str], state: ProxyState | None = None) -> ProxyState:
    current = state if state is not None else ProxyState()
    return set_backups(current, [addr(n) for n in names])


def canon(state: ProxyState) -> list[str]:
    """The active list as canonical strings, for readable assertions."""
    return [a.canonical for a in state.active]
