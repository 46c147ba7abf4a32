"""What the service does with each query op (docs/protocol.md section 1), op by op.

An op's wire shapes are :mod:`rpcproxy.bus.wire`'s ``XxxOp`` and
``XxxReply``; here, for each op, is what the service makes of them:

- :func:`validate`: the wire request becomes the op's request type below
  (its addresses parsed, so an actor only ever sees domain values);
- :func:`plan`: the request becomes a :class:`ReadOp` (answered from the
  published snapshot) or a :class:`WriteOp` (the actor message it becomes
  and the encoder of its result).

Both are one ``match`` with a case per op, ending in ``assert_never``: an op
added to the wire's union and left out here is a type error. The query socket
(:mod:`rpcproxy.bus.service.query`) does the socket work and nothing per op.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Generic, TypeAlias, TypeVar, assert_never

from msgspec import Struct

from rpcproxy.actors import (
    AddOutcome,
    AddPrimary,
    ApplyHeartbeat,
    DiscoveryInfo,
    HeartbeatResult,
    NotifyFailed,
    NotifyOutcome,
    ProxyRequest,
    Rebalance,
    RebalanceOutcome,
    Refused,
    RemoveServer,
    Reply,
    ResetRebalanceTimer,
    SetBackups,
    SetServers,
    SetServersOutcome,
    Snapshot,
)
from rpcproxy.bus.service.codec import NO_ID, Decoder, RequestError, server_of, to_heartbeat
from rpcproxy.bus.wire import (
    AddPrimaryServerOp,
    AddPrimaryServerReply,
    Discovery,
    ErrorCode,
    FindServerOp,
    FindServerReply,
    HeartbeatOp,
    HeartbeatReply,
    NotifyFailedServerOp,
    NotifyFailedServerReply,
    Op,
    OpReply,
    OpRequest,
    PingOp,
    PingReply,
    Publisher,
    RebalanceOp,
    RebalanceReply,
    RemoveServerOp,
    RemoveServerReply,
    ResetRebalanceTimerOp,
    ResetRebalanceTimerReply,
    Server,
    ServersOp,
    ServersReply,
    SetBackupServersOp,
    SetBackupServersReply,
    SetServersOp,
    SetServersReply,
    Status,
    StatusOp,
)
from rpcproxy.proxy import Address, Heartbeat, InvalidAddressError, parse_address

__all__ = [
    "READ_ONLY_OPS",
    "AddPrimaryRequest",
    "AnyWriteOp",
    "FindServerRequest",
    "HeartbeatRequest",
    "NotifyFailedRequest",
    "PingRequest",
    "ReadOp",
    "RebalanceRequest",
    "RemoveServerRequest",
    "Request",
    "ResetRebalanceTimerRequest",
    "ServersRequest",
    "SetBackupsRequest",
    "SetServersRequest",
    "StatusRequest",
    "WriteOp",
    "decode_request",
    "plan",
    "validate",
]

R = TypeVar("R")


# --------------------------------------------------------------------------
# Requests: the wire's request with its domain values and the ``id`` to echo.


class PingRequest(Struct, frozen=True):
    """``ping``: is the proxy alive."""

    op: ClassVar[Op] = Op.PING
    id: Any = NO_ID


class FindServerRequest(Struct, frozen=True):
    """``find_server``: the active server."""

    op: ClassVar[Op] = Op.FIND_SERVER
    id: Any = NO_ID


class ServersRequest(Struct, frozen=True):
    """``servers``: the active list."""

    op: ClassVar[Op] = Op.SERVERS
    id: Any = NO_ID


class StatusRequest(Struct, frozen=True):
    """``status``: everything at once."""

    op: ClassVar[Op] = Op.STATUS
    id: Any = NO_ID


class NotifyFailedRequest(Struct, frozen=True):
    """``notify_failed_server``: rotate ``addr`` away if it is the active server."""

    op: ClassVar[Op] = Op.NOTIFY_FAILED_SERVER
    addr: Address
    id: Any = NO_ID


class AddPrimaryRequest(Struct, frozen=True):
    """``add_primary_server``: add ``addr`` to the primaries."""

    op: ClassVar[Op] = Op.ADD_PRIMARY_SERVER
    addr: Address
    id: Any = NO_ID


class SetBackupsRequest(Struct, frozen=True):
    """``set_backup_servers``: replace the backups with ``addrs``."""

    op: ClassVar[Op] = Op.SET_BACKUP_SERVERS
    addrs: tuple[Address, ...]
    id: Any = NO_ID


class SetServersRequest(Struct, frozen=True):
    """``set_servers``: make the answering servers of ``addrs`` the primaries (all: ``force``)."""

    op: ClassVar[Op] = Op.SET_SERVERS
    addrs: tuple[Address, ...]
    force: bool = False
    id: Any = NO_ID


class RemoveServerRequest(Struct, frozen=True):
    """``remove_server``: drop ``addr`` from every list."""

    op: ClassVar[Op] = Op.REMOVE_SERVER
    addr: Address
    id: Any = NO_ID


class HeartbeatRequest(Struct, frozen=True):
    """``heartbeat``: apply one heartbeat as if it came from the heartbeat socket."""

    op: ClassVar[Op] = Op.HEARTBEAT
    heartbeat: Heartbeat
    id: Any = NO_ID


class RebalanceRequest(Struct, frozen=True):
    """``rebalance``: run one rebalance now."""

    op: ClassVar[Op] = Op.REBALANCE
    id: Any = NO_ID


class ResetRebalanceTimerRequest(Struct, frozen=True):
    """``reset_rebalance_timer``: restart the timer at the minimum reuse duration."""

    op: ClassVar[Op] = Op.RESET_REBALANCE_TIMER
    id: Any = NO_ID


Request: TypeAlias = (
    PingRequest
    | FindServerRequest
    | ServersRequest
    | StatusRequest
    | NotifyFailedRequest
    | AddPrimaryRequest
    | SetBackupsRequest
    | SetServersRequest
    | RemoveServerRequest
    | HeartbeatRequest
    | RebalanceRequest
    | ResetRebalanceTimerRequest
)
"""Every op's validated request."""

READ_ONLY_OPS: Final[frozenset[type[Request]]] = frozenset(
    {PingRequest, FindServerRequest, ServersRequest, StatusRequest}
)
"""Request types answered from the published snapshot, without the actor."""


def validate(wire: OpRequest) -> Request:
    """The request of a decoded wire struct, its addresses parsed.

    Raises:
        RequestError: ``invalid_address``, with the request's ``id``.
    """
    rid = wire.id
    match wire:  # find_server first: the hot path
        case FindServerOp():
            return FindServerRequest(rid)
        case PingOp():
            return PingRequest(rid)
        case ServersOp():
            return ServersRequest(rid)
        case StatusOp():
            return StatusRequest(rid)
        case NotifyFailedServerOp(addr=addr):
            return NotifyFailedRequest(_address(addr, rid), rid)
        case AddPrimaryServerOp(addr=addr):
            return AddPrimaryRequest(_address(addr, rid), rid)
        case SetBackupServersOp(addrs=addrs):
            return SetBackupsRequest(_addresses(addrs, rid), rid)
        case SetServersOp(addrs=addrs, force=force):
            return SetServersRequest(_addresses(addrs, rid), force, rid)
        case RemoveServerOp(addr=addr):
            return RemoveServerRequest(_address(addr, rid), rid)
        case HeartbeatOp():
            return HeartbeatRequest(to_heartbeat(wire), rid)
        case RebalanceOp():
            return RebalanceRequest(rid)
        case ResetRebalanceTimerOp():
            return ResetRebalanceTimerRequest(rid)
        case _:
            assert_never(wire)


def _addresses(texts: tuple[str, ...], request_id: Any) -> tuple[Address, ...]:
    return tuple(_address(a, request_id, f"addrs[{i}]") for i, a in enumerate(texts))


def _address(text: str, request_id: Any, where: str | None = None) -> Address:
    try:
        return parse_address(text)
    except InvalidAddressError as exc:
        message = f"{where}: {exc}" if where else str(exc)
        raise RequestError(ErrorCode.INVALID_ADDRESS, message, request_id) from None


_DEFAULT_DECODER: Final = Decoder()


def decode_request(frame: bytes, decoder: Decoder = _DEFAULT_DECODER) -> Request:
    """Decode and validate one query-socket request (the default ``max_servers`` unless given).

    Raises:
        RequestError: the frame breaks docs/protocol.md; ``code`` says which
            rule and ``request_id`` is the request's ``id`` whenever it could
            be read.
    """
    return validate(decoder.request(frame))


# --------------------------------------------------------------------------
# What each op does: a read of the snapshot, or a write through the actor.


@dataclass(frozen=True, slots=True, eq=False)
class ReadOp:
    """An op answered from the published snapshot, on the query thread.

    ``eq=False``: each op is one module-level value, hashed by identity (the
    query socket keys its reply cache by it, on the hot path).
    """

    answer: Callable[[Snapshot, float], OpReply]
    """The reply body, from the snapshot and the monotonic clock's now."""
    per_snapshot: bool
    """The reply depends on the snapshot alone, so id-less replies may reuse its bytes."""


@dataclass(frozen=True, slots=True)
class WriteOp(Generic[R]):
    """A state-changing op: the actor message it becomes, and how its result is encoded.

    ``R`` is what the message's ``reply`` is called with, so the type checker
    holds ``encode`` to the message: an encoder given another op's result is
    a type error where the op is built (:func:`plan`). The reply also
    accepts :class:`Refused`, which is answered ``bad_request`` and never
    reaches an encoder.
    """

    make: Callable[[Reply[R | Refused]], ProxyRequest]
    encode: Callable[[R], OpReply]
    weight: int = 1
    """What the write holds while it waits: 1, plus the servers or addresses it carries."""

    def message(self, deliver: Callable[[Refused | Callable[[], OpReply]], None]) -> ProxyRequest:
        """The message to tell the actor; its reply gives ``deliver`` the result.

        The reply runs on the actor's thread, so it only pairs the result with
        its encoder; ``deliver`` hands that over to the query thread, which
        encodes it (a :class:`Refused` is passed as it is).
        """
        encode = self.encode

        def reply(result: R | Refused) -> None:
            deliver(result if isinstance(result, Refused) else functools.partial(encode, result))

        return self.make(reply)


AnyWriteOp: TypeAlias = (
    WriteOp[bool]
    | WriteOp[AddOutcome]
    | WriteOp[NotifyOutcome]
    | WriteOp[tuple[Address, ...]]
    | WriteOp[HeartbeatResult]
    | WriteOp[SetServersOutcome]
    | WriteOp[RebalanceOutcome]
    | WriteOp[float]
)
"""Every op's :class:`WriteOp`, by the result it is answered with.

A union, not ``WriteOp[Any]``: an ``Any`` expected where an op is built
would bind its ``R`` to ``Any`` and let any encoder through.
"""


def _write(
    make: Callable[[Reply[R | Refused]], ProxyRequest],
    encode: Callable[[R], OpReply],
    weight: int = 1,
) -> WriteOp[R]:
    """One op's :class:`WriteOp`, ``R`` bound here from the encoder and checked against ``make``."""
    return WriteOp(make, encode, weight)


def plan(request: Request) -> ReadOp | AnyWriteOp:
    """What answering ``request`` takes: one row per op."""
    match request:  # find_server first: the hot path
        case FindServerRequest():
            return _FIND_SERVER
        case PingRequest():
            return _PING
        case ServersRequest():
            return _SERVERS
        case StatusRequest():
            return _STATUS
        case NotifyFailedRequest(addr=addr):
            return _write(lambda r: NotifyFailed(addr, r), _rotated)
        case AddPrimaryRequest(addr=addr):
            return _write(lambda r: AddPrimary(addr, r), _added)
        case SetBackupsRequest(addrs=addrs):
            return _write(lambda r: SetBackups(addrs, r), _backups, 1 + len(addrs))
        case SetServersRequest(addrs=addrs, force=force):
            return _write(lambda r: SetServers(addrs, force, r), _set_servers, 1 + len(addrs))
        case RemoveServerRequest(addr=addr):
            return _write(lambda r: RemoveServer(addr, r), RemoveServerReply)
        case HeartbeatRequest(heartbeat=heartbeat):
            weight = 1 + len(heartbeat.servers)
            return _write(lambda r: ApplyHeartbeat(heartbeat, r), _heartbeat, weight)
        case RebalanceRequest():
            return _write(Rebalance, _rebalanced)
        case ResetRebalanceTimerRequest():
            return _write(ResetRebalanceTimer, ResetRebalanceTimerReply)
        case _:
            assert_never(request)


# The reads, answered from a snapshot.


def _servers(addrs: tuple[Address, ...]) -> list[Server]:
    return [Server(a.canonical) for a in addrs]


def _age(at: float | None, now: float) -> float | None:
    return None if at is None else max(0.0, now - at)


def _status(snapshot: Snapshot, now: float) -> Status:
    state = snapshot.state
    return Status(
        servers=_servers(state.active),
        primary=_servers(state.primaries),
        backup=_servers(state.backups),
        leader_addr=state.leader_addr,
        num_nodes=state.num_nodes,
        num_servers=len(state.active),
        next_rebalance_s=max(0.0, snapshot.rebalance_deadline - now),
        heartbeat_age_s=_age(snapshot.last_heartbeat_at, now),
        publishers=[Publisher(p.name, p.seq, _age(p.heard_at, now)) for p in snapshot.publishers],
        offline=snapshot.offline,
        discovery=_discovery(snapshot.discovery, now),
    )


def _discovery(found: DiscoveryInfo | None, now: float) -> Discovery | None:
    if found is None:
        return None
    return Discovery(found.source, found.found, max(0.0, now - found.at))


_PING: Final = ReadOp(lambda _s, _now: PingReply(pong=True), per_snapshot=True)
_FIND_SERVER: Final = ReadOp(
    lambda snapshot, _now: FindServerReply(server_of(snapshot.state.head)), per_snapshot=True
)
_SERVERS: Final = ReadOp(
    lambda snapshot, _now: ServersReply(_servers(snapshot.state.active)), per_snapshot=True
)
_STATUS: Final = ReadOp(_status, per_snapshot=False)  # ages and the timer move with the clock


# The writes' encoders: each typed with the result its message is answered.


def _rotated(result: NotifyOutcome) -> NotifyFailedServerReply:
    return NotifyFailedServerReply(result.rotated, server_of(result.server))


def _added(result: AddOutcome) -> AddPrimaryServerReply:
    return AddPrimaryServerReply(Server(result.server.canonical), result.added)


def _backups(backups: tuple[Address, ...]) -> SetBackupServersReply:
    return SetBackupServersReply(_servers(backups))


def _set_servers(result: SetServersOutcome) -> SetServersReply:
    return SetServersReply(_servers(result.servers), _servers(result.dropped))


def _heartbeat(result: HeartbeatResult) -> HeartbeatReply:
    return HeartbeatReply(result.changed, result.stale)


def _rebalanced(result: RebalanceOutcome) -> RebalanceReply:
    return RebalanceReply(server_of(result.server), result.healthy)
