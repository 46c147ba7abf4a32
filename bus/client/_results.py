"""What both clients share: errors, result types, and each op's call.

:class:`~rpcproxy.bus.client._client.ProxyClient` (blocking) and
:class:`~rpcproxy.bus.client._aio.AsyncProxyClient` (asyncio) differ only in how
they wait for a reply. What an op sends and how its reply reads is written
once here, as a :class:`Call` made of the wire's request and reply types
(:mod:`rpcproxy.bus.wire`), so the two clients cannot drift from each other
nor from the service.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, NamedTuple, ParamSpec, Protocol, Self, TypeVar, overload

import msgspec

from rpcproxy.bus.wire import (
    PROTOCOL_VERSION,
    AddPrimaryServerOp,
    AddPrimaryServerReply,
    ErrorCode,
    FindServerOp,
    FindServerReply,
    HeartbeatEntry,
    HeartbeatOp,
    HeartbeatReply,
    NotifyFailedServerOp,
    NotifyFailedServerReply,
    OpRequest,
    PingOp,
    PingReply,
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

_T = TypeVar("_T")
_S = TypeVar("_S")
_P = ParamSpec("_P")


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


class NoServerError(ProxyError):
    """``call`` found no server within its hold: the proxy knows none (``no_server``)."""

    default_code = "no_server"


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
# Results. Server, Publisher and Status are the wire's own reply types
# (rpcproxy.bus.wire); the two below are tuples a caller unpacks.


class AddResult(NamedTuple):
    """``add_primary_server``'s reply: the canonical server and whether it was new."""

    server: Server
    added: bool


class SetServersResult(NamedTuple):
    """``set_servers``' reply: the new primaries, and the servers left out for not answering."""

    servers: list[Server]
    dropped: list[Server]


class RebalanceResult(NamedTuple):
    """``rebalance``'s reply.

    ``healthy`` is True when a server answered, False when none did (the list
    was kept), None when fewer than two servers meant nothing was probed.
    """

    server: Server | None
    healthy: bool | None


# --------------------------------------------------------------------------
# The envelope: the keys every reply has besides its op's own.


class _Reply(msgspec.Struct):
    ok: bool
    id: Any = msgspec.UNSET


class _ErrorBody(msgspec.Struct):
    code: str
    message: str


class _ErrorReply(msgspec.Struct):
    error: _ErrorBody


class _View(msgspec.Struct):
    # None from proxies older than docs/protocol.md version 2.
    epoch: int | None = None
    instance: str | None = None


@dataclass(frozen=True, slots=True)
class Observing:
    """A reply that names the active server, with the view it was read from.

    ``epoch`` and ``instance`` (docs/protocol.md section 1, version 2) are None
    from older proxies; ``server`` is None there for ``notify_failed_server``.
    """

    server: Server | None
    epoch: int | None
    instance: str | None


# --------------------------------------------------------------------------
# Calls: what each op sends and how its reply becomes the result.


@dataclass(frozen=True, slots=True)
class Call(Generic[_S, _T]):
    """One op's request keys and how its reply reads.

    Attributes:
        op: the op's wire name.
        keys: the op's request keys (the client adds ``op``, ``v`` and ``id``).
        shape: the op's reply body (a :class:`ProtocolError` when the reply does not fit).
        finish: turns the reply body into the method's result.
        timeout_s: the per-try wait when the caller chose one, else None.
        observes: for replies that name the active server, where it is in the body.
    """

    op: str
    keys: dict[str, Any]
    shape: type[_S]
    finish: Callable[[_S], _T]
    timeout_s: float | None = None
    observes: Callable[[_S], Server | None] | None = None

    def read(self, reply: Mapping[str, Any]) -> tuple[_T, Observing | None]:
        """The result and, for replies that name the active server, the observation."""
        body = convert(reply, self.shape)
        observed = None
        if self.observes is not None:
            view = convert(reply, _View)
            observed = Observing(self.observes(body), view.epoch, view.instance)
        return self.finish(body), observed


def _call(
    request: OpRequest,
    shape: type[_S],
    finish: Callable[[_S], _T],
    timeout_s: float | None = None,
    observes: Callable[[_S], Server | None] | None = None,
) -> Call[_S, _T]:
    """The :class:`Call` that sends ``request``'s keys (the wire's struct, so they cannot drift)."""
    keys: dict[str, Any] = msgspec.to_builtins(request)
    op = keys.pop("op")
    return Call(op, keys, shape, finish, timeout_s, observes)


# Each op's call. The clients' methods of the same names (:class:`Ops`) take
# the same arguments and carry these docstrings.


def ping(*, timeout_s: float | None = None) -> Call[PingReply, bool]:
    """True when the proxy answers ``pong: true``.

    No answer raises :class:`ProxyTimeoutError` rather than returning False,
    like every other call, so "down" and "said no" stay distinct.
    """
    return _call(PingOp(), PingReply, lambda r: r.pong, timeout_s)


def find_server() -> Call[FindServerReply, Server | None]:
    """The active server, or None when the proxy knows no server."""
    return _call(FindServerOp(), FindServerReply, _server, observes=_server)


def servers() -> Call[ServersReply, list[Server]]:
    """The active list, active server first."""
    return _call(ServersOp(), ServersReply, lambda r: r.servers)


def status() -> Call[Status, Status]:
    """Everything at once: lists, leader, node count and the rebalance timer."""
    return _call(StatusOp(), Status, lambda r: r)


def notify_failed_server(addr: str) -> Call[NotifyFailedServerReply, bool]:
    """Report that an RPC to ``addr`` failed; True when it was rotated to the end.

    Raises:
        ProxyInvalidAddressError: ``addr`` does not parse.
    """
    return _call(
        NotifyFailedServerOp(addr=addr),
        NotifyFailedServerReply,
        lambda r: r.rotated,
        observes=_server,
    )


def add_primary_server(addr: str) -> Call[AddPrimaryServerReply, AddResult]:
    """Add ``addr`` to the primaries; ``added`` is False when it was already known.

    Raises:
        ProxyInvalidAddressError: ``addr`` does not parse.
    """
    return _call(
        AddPrimaryServerOp(addr=addr), AddPrimaryServerReply, lambda r: AddResult(r.server, r.added)
    )


def set_backup_servers(addrs: Sequence[str]) -> Call[SetBackupServersReply, list[Server]]:
    """Replace the backups; returns the new backup list.

    Raises:
        ProxyInvalidAddressError: an address does not parse; nothing changed.
    """
    return _call(SetBackupServersOp(addrs=tuple(addrs)), SetBackupServersReply, lambda r: r.servers)


def set_servers(
    addrs: Sequence[str], *, force: bool = False
) -> Call[SetServersReply, SetServersResult]:
    """Replace the primaries at once with those of ``addrs`` that answer a probe.

    As an operator does with Nomad's ``PUT /v1/agent/servers``: every
    address is probed in parallel and those that do not answer are left out
    (``dropped``), unless ``force`` keeps them all. Servers that stop being
    primaries leave the active list unless they are backups. The next
    heartbeat that lists servers replaces the primaries again.

    Raises:
        ProxyInvalidAddressError: an address does not parse; nothing changed.
        UnavailableError: no address answered; nothing changed.
        BadRequestError: no address, or more than the proxy's ``max_servers``.
    """
    return _call(
        SetServersOp(addrs=tuple(addrs), force=force),
        SetServersReply,
        lambda r: SetServersResult(r.servers, r.dropped),
    )


def remove_server(addr: str) -> Call[RemoveServerReply, bool]:
    """Drop ``addr`` from every list; True when it was known.

    Raises:
        ProxyInvalidAddressError: ``addr`` does not parse.
    """
    return _call(RemoveServerOp(addr=addr), RemoveServerReply, lambda r: r.removed)


def heartbeat(
    servers: Iterable[HeartbeatEntry | Mapping[str, Any]],
    *,
    num_nodes: int = 0,
    leader_rpc_addr: str = "",
    publisher: str | None = None,
    seq: int | None = None,
) -> Call[HeartbeatReply, bool]:
    """Apply one heartbeat (docs/protocol.md section 2); True when membership changed.

    ``servers`` holds :class:`HeartbeatEntry` values or maps with the same
    keys (sent as they are: the proxy checks them). ``publisher`` and
    ``seq`` are left out when None.
    """
    request = HeartbeatOp((), num_nodes, leader_rpc_addr, publisher, seq)
    call = _call(request, HeartbeatReply, lambda r: r.changed)
    # Maps are sent as they are: the proxy, not the client, checks them.
    call.keys["servers"] = [_heartbeat_entry(s) for s in servers]
    return call


def rebalance(timeout_s: float | None = None) -> Call[RebalanceReply, RebalanceResult]:
    """Run one rebalance now and wait for it.

    Args:
        timeout_s: per-try wait; a rebalance probes servers, so it can take
            up to the proxy's ``ping_timeout_s`` longer than other calls.
    """
    return _call(
        RebalanceOp(), RebalanceReply, lambda r: RebalanceResult(r.server, r.healthy), timeout_s
    )


def reset_rebalance_timer() -> Call[ResetRebalanceTimerReply, float]:
    """Restart the rebalance timer; returns the seconds until it fires."""
    return _call(ResetRebalanceTimerOp(), ResetRebalanceTimerReply, lambda r: r.next_rebalance_s)


def _server(reply: FindServerReply | NotifyFailedServerReply) -> Server | None:
    return reply.server


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


# --------------------------------------------------------------------------
# Methods: each op's call as a method of both clients, written once.


class _Sends(Protocol):
    """A blocking client: sends a call and returns its result."""

    def _run(self, call: Call[Any, _T]) -> _T: ...


class _SendsAsync(Protocol):
    """An asyncio client: sends a call in a coroutine."""

    async def _run(self, call: Call[Any, _T]) -> _T: ...


class OpMethod(Generic[_P, _S, _T]):
    """An op's method on both clients, from the function that makes its :class:`Call`.

    On a :class:`~rpcproxy.ProxyClient` it takes the function's arguments and
    returns the call's result; on an :class:`~rpcproxy.AsyncProxyClient` it
    is a coroutine function of the same arguments. It carries the function's
    name, docstring and signature (``help(ProxyClient.servers)`` shows them).
    """

    def __init__(self, make: Callable[_P, Call[_S, _T]]) -> None:
        self.make = make
        self.__name__ = make.__name__
        self.__doc__ = make.__doc__
        self.__wrapped__ = make

    @overload
    def __get__(self, client: None, owner: type[Any]) -> Self: ...

    @overload
    def __get__(self, client: _Sends, owner: type[Any]) -> Callable[_P, _T]: ...

    @overload
    def __get__(
        self, client: _SendsAsync, owner: type[Any]
    ) -> Callable[_P, Coroutine[Any, Any, _T]]: ...

    def __get__(self, client: Any, owner: type[Any]) -> Any:
        if client is None:
            return self
        make, run = self.make, client._run
        if inspect.iscoroutinefunction(run):

            @functools.wraps(make)
            async def op_coroutine(*args: Any, **kwargs: Any) -> Any:
                return await run(make(*args, **kwargs))

            return op_coroutine

        @functools.wraps(make)
        def op(*args: Any, **kwargs: Any) -> Any:
            return run(make(*args, **kwargs))

        return op


class Ops:
    """The ops both clients send as one call each, with nothing of their own.

    A new op is a function above that makes its :class:`Call`, and one line
    here; ``find_server`` is written in each client, as a watching client
    answers it from its view.
    """

    ping = OpMethod(ping)
    servers = OpMethod(servers)
    status = OpMethod(status)
    notify_failed_server = OpMethod(notify_failed_server)
    add_primary_server = OpMethod(add_primary_server)
    set_backup_servers = OpMethod(set_backup_servers)
    set_servers = OpMethod(set_servers)
    remove_server = OpMethod(remove_server)
    heartbeat = OpMethod(heartbeat)
    rebalance = OpMethod(rebalance)
    reset_rebalance_timer = OpMethod(reset_rebalance_timer)
