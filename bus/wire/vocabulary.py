"""The wire's words: versions, error codes, topics, endpoints, event reasons, heartbeats.

What every part of docs/protocol.md spells besides the query ops, whose
shapes are in :mod:`rpcproxy.bus.wire.ops`. Imported through the facade,
:mod:`rpcproxy.bus.wire`.

No ``from __future__ import annotations`` here: the client's facade names
these classes ``rpcproxy``'s (their ``__module__``), and msgspec reads a
Struct's string annotations in that module, which does not hold ``Name``.
"""

import enum
from typing import Annotated, Final, Literal, TypeAlias

from msgspec import Meta, Struct

__all__ = [
    "DEFAULT_EVENTS_ENDPOINT",
    "DEFAULT_HEARTBEAT_ENDPOINT",
    "DEFAULT_QUERY_ENDPOINT",
    "EVENT_TOPIC",
    "HEARTBEAT_TOPIC_PREFIX",
    "MAX_NAME_LEN",
    "PROTOCOL_VERSION",
    "ChangeReason",
    "ErrorCode",
    "HeartbeatEntry",
    "HeartbeatPayload",
    "Name",
    "Version",
    "heartbeat_topic",
]

Version: TypeAlias = Literal[1]
"""The versions of docs/protocol.md spoken; the service's decoder reads ``v`` as this."""

PROTOCOL_VERSION: Final[Version] = 1
"""The request key ``v`` (docs/protocol.md section 1): the only version spoken."""

MAX_NAME_LEN: Final = 1024
"""Longest datacenter, publisher or leader address string (docs/protocol.md section 8).

Server addresses themselves are not bounded here: the service's address
parser rejects long ones, and an address that does not parse must give
``invalid_address`` (requests) or be skipped (heartbeat rule 3), not fail the
whole message.
"""

Name: TypeAlias = Annotated[str, Meta(max_length=MAX_NAME_LEN)]
"""A string bounded by :data:`MAX_NAME_LEN` when it is decoded."""


class ErrorCode(enum.StrEnum):
    """The ``error.code`` values of docs/protocol.md's error table."""

    BAD_REQUEST = "bad_request"
    UNKNOWN_OP = "unknown_op"
    INVALID_ADDRESS = "invalid_address"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNAVAILABLE = "unavailable"


ChangeReason: TypeAlias = Literal[
    "rebalance", "failed", "heartbeat", "added", "removed", "backup", "refresh"
]
"""An event's ``reason`` (docs/protocol.md section 5): what changed the active server."""

HEARTBEAT_TOPIC_PREFIX: Final = b"heartbeat/"
"""Heartbeats are published on ``heartbeat/<region>`` (docs/protocol.md section 2)."""

EVENT_TOPIC: Final = b"event/active_server"
"""The topic of every event (docs/protocol.md section 5)."""

DEFAULT_QUERY_ENDPOINT: Final = "tcp://127.0.0.1:4650"
DEFAULT_HEARTBEAT_ENDPOINT: Final = "tcp://127.0.0.1:4651"
DEFAULT_EVENTS_ENDPOINT: Final = "tcp://127.0.0.1:4652"


class HeartbeatEntry(Struct, frozen=True):
    """One server of a heartbeat's ``servers`` (docs/protocol.md section 2)."""

    rpc_advertise_addr: str
    rpc_major_version: int
    rpc_minor_version: int
    datacenter: Name


class HeartbeatPayload(Struct, frozen=True, omit_defaults=True):
    """A heartbeat (docs/protocol.md section 2): the SUB payload and the ``heartbeat`` op's keys.

    ``publisher`` and ``seq`` are optional, and left out of an encoded
    payload when None (``omit_defaults``) rather than sent as nil.
    """

    # Bounded by max_servers in the copy each of the service's decoders makes.
    servers: tuple[HeartbeatEntry, ...]
    num_nodes: Annotated[int, Meta(ge=0)]
    leader_rpc_addr: Name
    publisher: Name | None = None
    seq: int | None = None


def heartbeat_topic(region: str) -> bytes:
    """The topic a region's heartbeats are published on."""
    return HEARTBEAT_TOPIC_PREFIX + region.encode()
