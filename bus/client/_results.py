"""What both clients share: errors, result types, and each op's request and reply.

:class:`~rpcproxy.bus.client._client.ProxyClient` (blocking) and
:class:`~rpcproxy.bus.client._aio.AsyncProxyClient` (asyncio) differ only in how
they wait for a reply. Everything that says what an op sends and how its reply
reads is written once here, as a :class:`Call`, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, NamedTuple, TypeVar

import msgspec

from rpcproxy.bus.wire import PROTOCOL_VERSION, ErrorCode, HeartbeatEntry, HeartbeatPayload, Op

_T = TypeVar("_T")
_S = TypeVar("_S")


# --------------------------------------------------------------------------
# Errors.


class ProxyError(Exception):
    """Base of every error the client raises for a failed call.

    Attributes:
        code: the proxy's error code (an :class:`~rpcproxy.bus.wire.ErrorCode` value),
            or ``"timeout"`` / ``"protocol_error"`` for failures seen only here.
        message: the human-readable reason.
    """

    default_code: str = "error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code: str = code if code is not None else self.default_code
        self.message = message


class BadRequestError(ProxyError):
    """The proxy could not read the request (``bad_request``)."""

    default_code = ErrorCode.BAD_REQUEST


class UnknownOpError(ProxyError):
    """The proxy does not know the op (``unknown_op``); it may be older than this client."""

    default_code = ErrorCode.UNKNOWN_OP


class ProxyInvalidAddressError(ProxyError):
    """An address did not parse (``invalid_address``); nothing changed."""

    default_code = ErrorCode.INVALID_ADDRESS


class UnsupportedVersionError(ProxyError):
    """The proxy does not speak this protocol version (``unsupported_version``)."""

    default_code = ErrorCode.UNSUPPORTED_VERSION


class UnavailableError(ProxyError):
    """The proxy is shutting down or an internal step timed out (``unavailable``)."""

    default_code = ErrorCode.UNAVAILABLE


class ProxyTimeoutError(ProxyError):
    """No reply after every try; the proxy may be down or unreachable.

    A transport raises it for one silent try; the client raises it once every
    try was silent.
    """

    default_code = "timeout"


class ProtocolError(ProxyError):
    """The reply does not follow docs/protocol.md (not a map, a key of the wrong type...)."""

    default_code = "protocol_error"


_ERRORS: Final[dict[str, type[ProxyError]]] = {
    ErrorCode.BAD_REQUEST: BadRequestError,
    ErrorCode.UNKNOWN_OP: UnknownOpError,
    ErrorCode.INVALID_ADDRESS: ProxyInvalidAddressError,
    ErrorCode.UNSUPPORTED_VERSION: UnsupportedVersionError,
    ErrorCode.UNAVAILABLE: UnavailableError,
}


def error_for(code: str, message: str) -> ProxyError:
    """The exception an error reply with ``code`` raises (the base class for unknown codes)."""
    return _ERRORS.get(code, ProxyError)(message, code)


# --------------------------------------------------------------------------
# Results.


@dataclass(frozen=True, slots=True)
class Server:
    """A server object of a reply; keys added to it later are ignored."""

    addr: str


@dataclass(frozen=True, slots=True)
class Publisher:
    """The last heartbeat applied from one publisher (``status``'s ``publishers``)."""

    publisher: str
    seq: int
    age_s: float | None


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


class AddResult(NamedTuple):
    """``add_primary_server``'s reply: the canonical server and whether it was new."""

    server: Server
    added: bool


class RebalanceResult(NamedTuple):
    """``rebalance``'s reply.

    ``healthy`` is True when a server answered, False when none did (the list
    was kept), None when fewer than two servers meant nothing was probed.
    """

    server: Server | None
    healthy: bool | None


# --------------------------------------------------------------------------
# Reply shapes: the keys each op's reply must have (others are ignored).


class _Reply(msgspec.Struct):
    ok: bool
    id: Any = msgspec.UNSET


class _ErrorBody(msgspec.Struct):
    code: str
    message: str


class _ErrorReply(msgspec.Struct):
    error: _ErrorBody


class Observing(msgspec.Struct, kw_only=True):
    """A reply that names the active server with the view it was read from.

    ``epoch`` and ``instance`` (docs/protocol.md section 1, version 2) are None
    from older proxies; ``server`` is None there for ``notify_failed_server``.
    """

    server: Server | None = None
    epoch: int | None = None
    instance: str | None = None


class _Pong(msgspec.Struct):
    pong: bool


class _OneServer(Observing, kw_only=True):
    server: Server | None


class _ServerList(msgspec.Struct):
    servers: list[Server]


class _Rotated(Observing, kw_only=True):
    rotated: bool


class _Added(msgspec.Struct):
    server: Server
    added: bool


class _Removed(msgspec.Struct):
    removed: bool


class _Changed(msgspec.Struct):
    changed: bool


class _Rebalanced(msgspec.Struct):
    server: Server | None
    healthy: bool | None


class _NextRebalance(msgspec.Struct):
    next_rebalance_s: float


# --------------------------------------------------------------------------
# Calls: what each op sends and how its reply becomes the result.


@dataclass(frozen=True, slots=True)
class Call(Generic[_S, _T]):
    """One op's request keys and how its reply reads.

    Attributes:
        op: the op's wire name.
        keys: the op's request keys (the client adds ``op``, ``v`` and ``id``).
        shape: what the reply is converted to (a :class:`ProtocolError` when it does not fit).
        finish: turns the converted reply into the method's result.
        timeout_s: the per-try wait when the caller chose one, else None.
    """

    op: str
    keys: dict[str, Any]
    shape: type[_S]
    finish: Callable[[_S], _T]
    timeout_s: float | None = None

    def read(self, reply: Mapping[str, Any]) -> tuple[_T, Observing | None]:
        """The result and, for replies that name the active server, the observation."""
        converted = convert(reply, self.shape)
        observed = converted if isinstance(converted, Observing) else None
        return self.finish(converted), observed


def ping(timeout_s: float | None) -> Call[_Pong, bool]:
    return Call(Op.PING, {}, _Pong, lambda r: r.pong, timeout_s)


def find_server() -> Call[_OneServer, Server | None]:
    return Call(Op.FIND_SERVER, {}, _OneServer, lambda r: r.server)


def servers() -> Call[_ServerList, list[Server]]:
    return Call(Op.SERVERS, {}, _ServerList, lambda r: r.servers)


def status() -> Call[Status, Status]:
    return Call(Op.STATUS, {}, Status, lambda r: r)


def notify_failed_server(addr: str) -> Call[_Rotated, bool]:
    return Call(Op.NOTIFY_FAILED_SERVER, {"addr": addr}, _Rotated, lambda r: r.rotated)


def add_primary_server(addr: str) -> Call[_Added, AddResult]:
    return Call(
        Op.ADD_PRIMARY_SERVER, {"addr": addr}, _Added, lambda r: AddResult(r.server, r.added)
    )


def set_backup_servers(addrs: Sequence[str]) -> Call[_ServerList, list[Server]]:
    return Call(Op.SET_BACKUP_SERVERS, {"addrs": list(addrs)}, _ServerList, lambda r: r.servers)


def remove_server(addr: str) -> Call[_Removed, bool]:
    return Call(Op.REMOVE_SERVER, {"addr": addr}, _Removed, lambda r: r.removed)


def heartbeat(
    entries: Iterable[HeartbeatEntry | Mapping[str, Any]],
    num_nodes: int,
    leader_rpc_addr: str,
    publisher: str | None,
    seq: int | None,
) -> Call[_Changed, bool]:
    payload = HeartbeatPayload((), num_nodes, leader_rpc_addr, publisher, seq)
    keys: dict[str, Any] = msgspec.to_builtins(payload)
    keys["servers"] = [_heartbeat_entry(s) for s in entries]
    return Call(Op.HEARTBEAT, keys, _Changed, lambda r: r.changed)


def rebalance(timeout_s: float | None) -> Call[_Rebalanced, RebalanceResult]:
    return Call(
        Op.REBALANCE, {}, _Rebalanced, lambda r: RebalanceResult(r.server, r.healthy), timeout_s
    )


def reset_rebalance_timer() -> Call[_NextRebalance, float]:
    return Call(Op.RESET_REBALANCE_TIMER, {}, _NextRebalance, lambda r: r.next_rebalance_s)


# --------------------------------------------------------------------------
# Frames.

_encoder: Final = msgspec.msgpack.Encoder()


def encode_request(op: str, keys: Mapping[str, Any], request_id: int) -> bytes:
    """One request frame: the op's keys plus ``op``, ``v`` and ``id``."""
    return _encoder.encode({**keys, "op": op, "v": PROTOCOL_VERSION, "id": request_id})


def parse_reply(raw: bytes, request_id: int) -> dict[str, Any]:
    """Check the reply's envelope and turn an error reply into its exception."""
    try:
        reply = msgspec.msgpack.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProtocolError(f"reply is not valid MessagePack: {exc}") from None
    if not isinstance(reply, dict):
        raise ProtocolError(f"reply must be a map, got {type(reply).__name__}")
    envelope = convert(reply, _Reply)
    if envelope.id is not msgspec.UNSET and envelope.id != request_id:
        raise ProtocolError(f"reply id {envelope.id!r} does not match request id {request_id}")
    if not envelope.ok:
        error = convert(reply, _ErrorReply).error
        raise error_for(error.code, error.message)
    return reply


def convert(reply: Mapping[str, Any], shape: type[_T]) -> _T:
    """Read the keys ``shape`` names from a reply, ignoring the rest."""
    try:
        return msgspec.convert(reply, shape)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"malformed reply: {exc}") from None


def _heartbeat_entry(server: HeartbeatEntry | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(server, HeartbeatEntry):
        entry: dict[str, Any] = msgspec.to_builtins(server)
        return entry
    return dict(server)
