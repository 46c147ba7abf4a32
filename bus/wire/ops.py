"""The query ops' shapes (docs/protocol.md section 1) and the event's (section 5), once.

Each op is a request struct (``XxxOp``: the MessagePack map a client sends,
tagged by its ``op``) and a reply body (``XxxReply``: the op's own keys of a
success reply; the envelope, ``ok``, ``id``, ``epoch`` and ``instance``, is
added and read by each end's frame code). The service decodes the requests
and encodes the replies with these types, both clients encode the requests
and decode the replies with them, and :class:`rpcproxy.testing.InMemoryProxy`
answers with them, so an op's keys and their types are written here and
nowhere else. Decoding ignores unknown keys (docs/protocol.md, "Encoding"),
msgspec's default.

No ``from __future__ import annotations`` here: the client's facade names
some of these classes ``rpcproxy``'s (their ``__module__``), and msgspec
reads string annotations in that module, which does not hold these names.
"""

import enum
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias, get_args

from msgspec import UNSET, Struct, UnsetType

from rpcproxy.bus.wire.vocabulary import HeartbeatPayload, Version

__all__ = [
    "OP_REQUESTS",
    "AddPrimaryServerOp",
    "AddPrimaryServerReply",
    "Discovery",
    "Event",
    "FindServerOp",
    "FindServerReply",
    "HeartbeatOp",
    "HeartbeatReply",
    "NotifyFailedServerOp",
    "NotifyFailedServerReply",
    "Op",
    "OpReply",
    "OpRequest",
    "PingOp",
    "PingReply",
    "Publisher",
    "RebalanceOp",
    "RebalanceReply",
    "RemoveServerOp",
    "RemoveServerReply",
    "ResetRebalanceTimerOp",
    "ResetRebalanceTimerReply",
    "Server",
    "ServersOp",
    "ServersReply",
    "SetBackupServersOp",
    "SetBackupServersReply",
    "SetServersOp",
    "SetServersReply",
    "Status",
    "StatusOp",
]


class Op(enum.StrEnum):
    """The query socket's ops (docs/protocol.md section 1), by their wire names."""

    PING = "ping"
    FIND_SERVER = "find_server"
    SERVERS = "servers"
    STATUS = "status"
    NOTIFY_FAILED_SERVER = "notify_failed_server"
    ADD_PRIMARY_SERVER = "add_primary_server"
    SET_BACKUP_SERVERS = "set_backup_servers"
    SET_SERVERS = "set_servers"
    REMOVE_SERVER = "remove_server"
    HEARTBEAT = "heartbeat"
    REBALANCE = "rebalance"
    RESET_REBALANCE_TIMER = "reset_rebalance_timer"


# --------------------------------------------------------------------------
# Server objects and the public results that are whole replies.
#
# Frozen dataclasses rather than Structs: they are the client's public result
# types (``rpcproxy.Server``, ``rpcproxy.Status``), and users, like
# ``rpcproxy status --json``, read them with ``dataclasses.asdict``. msgspec
# encodes and decodes dataclasses as it does Structs (unknown keys ignored).


@dataclass(frozen=True, slots=True)
class Server:
    """A server object of a reply or an event; keys added to it later are ignored."""

    addr: str


@dataclass(frozen=True, slots=True)
class Publisher:
    """The last heartbeat applied from one publisher (``status``'s ``publishers``)."""

    publisher: str
    seq: int
    age_s: float | None


@dataclass(frozen=True, slots=True)
class Discovery:
    """The last discovery that found servers (``status``'s ``discovery``, section 10)."""

    source: str
    """``consul`` or ``dns``."""
    found: int
    """How many servers it found (they became the backups)."""
    age_s: float
    """Seconds since it ran."""


@dataclass(frozen=True, slots=True)
class Status:
    """The ``status`` reply: everything at once.

    ``heartbeat_age_s`` (seconds since the last applied heartbeat, None before
    the first) and ``publishers`` are additions to docs/protocol.md's keys; they
    default to "unknown" so older proxies' replies still parse.
    """

    servers: list[Server]
    primary: list[Server]
    backup: list[Server]
    leader_addr: str
    num_nodes: int
    num_servers: int
    next_rebalance_s: float
    heartbeat_age_s: float | None = None
    publishers: list[Publisher] = field(default_factory=list)
    offline: bool = False
    """No server answered the last rebalance's pings (False from proxies without it)."""
    discovery: Discovery | None = None
    """The last discovery that found servers; None before one did (or from older proxies)."""


# --------------------------------------------------------------------------
# Requests: one tagged struct per op; together the tagged union the service
# decodes in one step.


class _Query(Struct, frozen=True, kw_only=True, tag_field="op"):
    # Version (Literal[1]) makes any other ``v`` (2, True, "1", 1.0) fail the
    # service's fast decode; its slow path then says unsupported_version.
    v: Version | UnsetType = UNSET
    id: Any = UNSET
    """Any MessagePack value, echoed back; left out when UNSET."""


class PingOp(_Query, frozen=True, tag=Op.PING.value):
    """``ping``: is the proxy alive."""


class FindServerOp(_Query, frozen=True, tag=Op.FIND_SERVER.value):
    """``find_server``: the active server."""


class ServersOp(_Query, frozen=True, tag=Op.SERVERS.value):
    """``servers``: the active list."""


class StatusOp(_Query, frozen=True, tag=Op.STATUS.value):
    """``status``: everything at once."""


class NotifyFailedServerOp(_Query, frozen=True, tag=Op.NOTIFY_FAILED_SERVER.value):
    """``notify_failed_server``: rotate ``addr`` away if it is the active server."""

    addr: str


class AddPrimaryServerOp(_Query, frozen=True, tag=Op.ADD_PRIMARY_SERVER.value):
    """``add_primary_server``: add ``addr`` to the primaries."""

    addr: str


class SetBackupServersOp(_Query, frozen=True, tag=Op.SET_BACKUP_SERVERS.value):
    """``set_backup_servers``: replace the backups with ``addrs``."""

    # Bounded by max_servers in the copy each of the service's decoders makes.
    addrs: tuple[str, ...]


class SetServersOp(_Query, frozen=True, tag=Op.SET_SERVERS.value):
    """``set_servers``: replace the primaries with those of ``addrs`` that answer a probe."""

    # Bounded to 1..max_servers in the copy each of the service's decoders makes.
    addrs: tuple[str, ...]
    force: bool = False
    """Keep every address, probing none."""


class RemoveServerOp(_Query, frozen=True, tag=Op.REMOVE_SERVER.value):
    """``remove_server``: drop ``addr`` from every list."""

    addr: str


class HeartbeatOp(
    HeartbeatPayload, frozen=True, kw_only=True, tag_field="op", tag=Op.HEARTBEAT.value
):
    """``heartbeat``: section 2's payload keys plus the envelope's (the payload is the body)."""

    v: Version | UnsetType = UNSET
    id: Any = UNSET


class RebalanceOp(_Query, frozen=True, tag=Op.REBALANCE.value):
    """``rebalance``: run one rebalance now."""


class ResetRebalanceTimerOp(_Query, frozen=True, tag=Op.RESET_REBALANCE_TIMER.value):
    """``reset_rebalance_timer``: restart the timer at the minimum reuse duration."""


OpRequest: TypeAlias = (
    PingOp
    | FindServerOp
    | ServersOp
    | StatusOp
    | NotifyFailedServerOp
    | AddPrimaryServerOp
    | SetBackupServersOp
    | SetServersOp
    | RemoveServerOp
    | HeartbeatOp
    | RebalanceOp
    | ResetRebalanceTimerOp
)
"""Every op's request: the tagged union on ``op``."""

OP_REQUESTS: Final[tuple[type[OpRequest], ...]] = get_args(OpRequest)
"""The members of :data:`OpRequest`, in order."""


# --------------------------------------------------------------------------
# Replies: the op's own keys. Defaults are for older proxies that did not
# send a key yet; the service always sends every key.


class PingReply(Struct, frozen=True):
    pong: bool


class FindServerReply(Struct, frozen=True):
    server: Server | None


class ServersReply(Struct, frozen=True):
    servers: list[Server]


class NotifyFailedServerReply(Struct, frozen=True):
    rotated: bool
    server: Server | None = None
    """The active server after it (None from proxies older than protocol version 2)."""


class AddPrimaryServerReply(Struct, frozen=True):
    server: Server
    added: bool


class SetBackupServersReply(Struct, frozen=True):
    servers: list[Server]
    """The new backup list."""


class SetServersReply(Struct, frozen=True):
    servers: list[Server]
    """The new primaries."""
    dropped: list[Server]
    """The addresses left out because they did not answer."""


class RemoveServerReply(Struct, frozen=True):
    removed: bool


class HeartbeatReply(Struct, frozen=True):
    changed: bool
    stale: bool = False


class RebalanceReply(Struct, frozen=True):
    server: Server | None
    healthy: bool | None


class ResetRebalanceTimerReply(Struct, frozen=True):
    next_rebalance_s: float


OpReply: TypeAlias = (
    PingReply
    | FindServerReply
    | ServersReply
    | Status
    | NotifyFailedServerReply
    | AddPrimaryServerReply
    | SetBackupServersReply
    | SetServersReply
    | RemoveServerReply
    | HeartbeatReply
    | RebalanceReply
    | ResetRebalanceTimerReply
)
"""Every op's reply body, in :data:`OpRequest`'s order."""


# --------------------------------------------------------------------------
# The events socket's payload.


class Event(Struct, frozen=True, kw_only=True):
    """An event (docs/protocol.md section 5), on the topic ``event/active_server``.

    ``reason`` is a :data:`~rpcproxy.bus.wire.ChangeReason` when the service
    sends it; a reader takes any string (a newer proxy may add reasons) and
    none, since a client follows the server and the epoch only.
    """

    server: Server | None
    reason: str = ""
    epoch: int
    instance: str
