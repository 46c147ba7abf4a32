"""Budgets and input strategies shared by the fuzz tests.

``HYPOTHESIS_FUZZ_EXAMPLES`` is the total number of cases for the whole
fuzz directory (default 10,000, which runs in well under a minute); each test
takes a fixed share of it. ``make fuzz`` sets it much higher.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack  # type: ignore[import-untyped]
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.helpers import pack

DEFAULT_TOTAL = 10_000
TOTAL = int(os.environ.get("HYPOTHESIS_FUZZ_EXAMPLES", DEFAULT_TOTAL))

SHARES: dict[str, float] = {
    "binary": 0.25,
    "request_bytes": 0.10,
    "request_shaped": 0.18,
    "heartbeat_bytes": 0.05,
    "heartbeat_shaped": 0.13,
    "heartbeat_as_request": 0.04,
    "process_requests": 0.12,
    "process_ops": 0.05,
    "process_frames": 0.03,
    "process_heartbeat_socket": 0.05,
}
"""Fractions of TOTAL per test; they sum to 1, so the cases add up to TOTAL."""


def budget(name: str) -> int:
    return max(1, round(TOTAL * SHARES[name]))


def fuzz_settings(name: str) -> settings:
    """Settings for one fuzz test: its share of the budget, no deadline."""
    return settings(
        max_examples=budget(name),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


# --------------------------------------------------------------------------
# Values.

VALID_ADDRESSES = [
    "10.0.0.1",
    "10.0.0.2:4647",
    "127.0.0.1:1",
    "[::1]",
    "[::1]:4648",
    "a.nomad",
    "B.nomad:4647",
]
INVALID_ADDRESSES = [
    "",
    " ",
    "bad:0",
    "a.nomad:65536",
    "300.1.1.1",
    "[::1",
    "::1",
    "a b",
    "x" * 400,
    "a.nomad:",
    "[fe80::1%eth0]",
    "\x00",
    "ünï.nomad",
]
OPS = [
    "ping",
    "find_server",
    "servers",
    "status",
    "notify_failed_server",
    "add_primary_server",
    "set_backup_servers",
    "remove_server",
    "heartbeat",
    "rebalance",
    "reset_rebalance_timer",
]
SERVER_KEYS = ["rpc_advertise_addr", "rpc_major_version", "rpc_minor_version", "datacenter"]


def _nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


INTERESTING: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**63),
    0.0,
    1.0,
    -0.5,
    float("nan"),
    float("inf"),
    "",
    "1",
    "op",
    "ping",
    "\x00",
    "é",
    "x" * 2000,
    b"",
    b"\xff",
    b"10.0.0.1",
    [],
    {},
    [1, "a"],
    {"a": 1},
    {1: 2},
    {b"k": "v"},
    [None] * 50,
    _nested(40),
    msgpack.ExtType(5, b"ext"),
    msgpack.ExtType(127, b""),
    msgpack.Timestamp(0, 0),
    msgpack.Timestamp(2**34, 999_999_999),
    msgpack.Timestamp(-1, 5),
]
"""Values known to trip decoders: bounds of int64/uint64, NaN, deep nesting, exts."""

ints = st.one_of(
    st.integers(min_value=-3, max_value=10),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
)
scalars = st.one_of(
    st.sampled_from(INTERESTING),
    ints,
    st.text(max_size=8),
    st.binary(max_size=8),
)
leaves = st.sampled_from(INTERESTING + VALID_ADDRESSES + INVALID_ADDRESSES)
keys = st.sampled_from(["", "a", "op", "v", "id", "addr", "servers", 0, -1, b"op"])
values: st.SearchStrategy[Any] = st.one_of(
    scalars,
    scalars,
    st.lists(leaves, max_size=3),
    st.dictionaries(keys, leaves, max_size=3),
)
"""Any MessagePack value, kept shallow and cheap to draw (deep ones are in INTERESTING)."""

addresses = st.one_of(
    st.sampled_from(VALID_ADDRESSES),
    st.sampled_from(INVALID_ADDRESSES),
    st.text(max_size=24),
    values,
)
names = st.one_of(st.sampled_from(["dc1", "dc2", "", "p", "q"]), st.text(max_size=12), values)

GOOD_SERVERS: list[dict[str, Any]] = [
    {
        "rpc_advertise_addr": addr,
        "rpc_major_version": 2 if n % 7 == 6 else 1,
        "rpc_minor_version": n % 3,
        "datacenter": "dc2" if n % 3 == 2 else "dc1",
    }
    for n, addr in enumerate(VALID_ADDRESSES * 3)
]
"""Well-formed ``servers[]`` entries (a few newer-API or other-datacenter ones),
drawn whole: one draw instead of four keeps the fuzz fast."""
good_servers = st.sampled_from(GOOD_SERVERS)
SERVER_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "rpc_advertise_addr": addresses,
    "rpc_major_version": st.sampled_from([0, 1, 1, 2]) | values,
    "rpc_minor_version": st.sampled_from([0, 1, 1, 2]) | values,
    "datacenter": names,
}


@st.composite
def shaped_servers(draw: st.DrawFn) -> Any:
    """A ``servers[]`` entry: mostly valid, else with keys missing, odd or extra."""
    kind = draw(st.integers(min_value=0, max_value=9))
    if kind < 6:
        return draw(good_servers)
    if kind == 9:
        return draw(values)
    server = dict(draw(good_servers))
    key = draw(st.sampled_from(SERVER_KEYS))
    if kind == 8:
        del server[key]
    else:
        server[key] = draw(SERVER_FIELDS[key])
    return server


HEARTBEAT_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "servers": st.lists(shaped_servers(), max_size=4) | values,
    "num_nodes": st.integers(min_value=0, max_value=10**6) | values,
    "leader_rpc_addr": st.sampled_from(["", "10.0.0.1:4647"]) | names,
    "publisher": names,
    "seq": ints | leaves,
}
GOOD_HEARTBEAT: dict[str, st.SearchStrategy[Any]] = {
    "servers": st.lists(good_servers, max_size=4),
    "num_nodes": st.sampled_from([0, 1, 3, 1000, 2**31]),
    "leader_rpc_addr": st.sampled_from(["", "10.0.0.1:4647"]),
}
REQUEST_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "v": st.sampled_from([1, 1, 1, 0, 2, True, "1", 1.0]) | values,
    "id": values,
    "addr": addresses,
    "addrs": st.lists(addresses, max_size=4) | values,
    **HEARTBEAT_FIELDS,
}
REQUIRED: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "notify_failed_server": {"addr": st.sampled_from(VALID_ADDRESSES)},
    "add_primary_server": {"addr": st.sampled_from(VALID_ADDRESSES)},
    "remove_server": {"addr": st.sampled_from(VALID_ADDRESSES)},
    "set_backup_servers": {"addrs": st.lists(st.sampled_from(VALID_ADDRESSES), max_size=3)},
    "heartbeat": GOOD_HEARTBEAT,
}
EXTRA_KEYS = st.sampled_from(["x", "", "OP", "servers ", 0, -1, b"op", b"addr"]) | st.text(
    max_size=6
)


@st.composite
def _shaped(
    draw: st.DrawFn,
    required: dict[str, st.SearchStrategy[Any]],
    fields: dict[str, st.SearchStrategy[Any]],
) -> dict[Any, Any]:
    """Mostly-right values for ``required``, then a few keys changed, removed or added."""
    message: dict[Any, Any] = {key: draw(good) for key, good in required.items()}
    if required and draw(st.integers(min_value=0, max_value=9)) == 0:
        del message[draw(st.sampled_from(sorted(required)))]
    for key in draw(st.lists(st.sampled_from(sorted(fields)), max_size=2, unique=True)):
        message[key] = draw(fields[key])
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        message[draw(EXTRA_KEYS)] = draw(leaves)
    return message


heartbeat_maps: st.SearchStrategy[dict[Any, Any]] = _shaped(GOOD_HEARTBEAT, HEARTBEAT_FIELDS)
"""Maps shaped like heartbeat payloads: the right keys, any values, some missing."""


@st.composite
def _request_maps(draw: st.DrawFn) -> dict[Any, Any]:
    """Maps shaped like requests: a real op (mostly), its keys, any of the protocol's keys."""
    kind = draw(st.integers(min_value=0, max_value=19))
    if kind < 18:
        op: Any = draw(st.sampled_from(OPS))
    else:
        op = draw(st.text(max_size=12) | values)
    message = draw(_shaped(REQUIRED.get(op, {}) if isinstance(op, str) else {}, REQUEST_FIELDS))
    if kind != 19 or draw(st.booleans()):
        message["op"] = op
    return message


request_maps: st.SearchStrategy[dict[Any, Any]] = _request_maps()


request_frames = request_maps.map(pack)
heartbeat_frames = heartbeat_maps.map(pack)
DEEP_FRAMES = [
    b"\x91" * 100_000 + b"\xc0",  # arrays in arrays
    b"\x81\xa1k" * 50_000 + b"\xc0",  # maps in maps
    b"\x82\xa2op\xa4ping\xa2id" + b"\x91" * 100_000 + b"\xc0",  # a deep id
    b"\xdd\xff\xff\xff\xff",  # an array claiming 4 G entries
    b"\xdf\xff\xff\xff\xff",  # a map claiming 4 G entries
    b"\xdb\xff\xff\xff\xff",  # a str claiming 4 GiB
    b"\xc7\x00\xff",  # an empty ext -1 (bad timestamp)
    b"\xd6\xff\xff\xff\xff\xff",
    b"\xc1",  # the byte MessagePack never uses
]
raw_frames = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(DEEP_FRAMES),
    values.map(pack),
    # A valid map prefix followed by garbage, or cut short.
    st.tuples(request_frames, st.integers(min_value=0, max_value=64), st.binary(max_size=8)).map(
        lambda t: t[0][: max(0, len(t[0]) - t[1])] + t[2]
    ),
)
