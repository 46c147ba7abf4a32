"""The wire vocabulary, defined once: what both ends of docs/protocol.md spell.

The service's transport (:mod:`rpcproxy.bus.service`) and the client library
(:mod:`rpcproxy.bus.client`) both import their op names, error codes, topics,
endpoints and event reasons from here, so a name cannot drift between them.
This module imports nothing of rpcproxy: a client process that imports it
loads none of the service.
"""

from __future__ import annotations

import enum
from typing import Final, Literal, TypeAlias

__all__ = [
    "DEFAULT_EVENTS_ENDPOINT",
    "DEFAULT_HEARTBEAT_ENDPOINT",
    "DEFAULT_QUERY_ENDPOINT",
    "EVENT_TOPIC",
    "HEARTBEAT_TOPIC_PREFIX",
    "PROTOCOL_VERSION",
    "ChangeReason",
    "ErrorCode",
    "Op",
    "heartbeat_topic",
]

PROTOCOL_VERSION: Final = 1
"""The request key ``v`` (docs/protocol.md section 1): the only version spoken."""


class Op(enum.StrEnum):
    """The query socket's ops (docs/protocol.md section 1), by their wire names."""

    PING = "ping"
    FIND_SERVER = "find_server"
    SERVERS = "servers"
    STATUS = "status"
    NOTIFY_FAILED_SERVER = "notify_failed_server"
    ADD_PRIMARY_SERVER = "add_primary_server"
    SET_BACKUP_SERVERS = "set_backup_servers"
    REMOVE_SERVER = "remove_server"
    HEARTBEAT = "heartbeat"
    REBALANCE = "rebalance"
    RESET_REBALANCE_TIMER = "reset_rebalance_timer"


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


def heartbeat_topic(region: str) -> bytes:
    """The topic a region's heartbeats are published on."""
    return HEARTBEAT_TOPIC_PREFIX + region.encode()
