"""ProxyClient: the library other Python services use to talk to rpcproxy.

It speaks docs/protocol.md section 1 over a ZeroMQ REQ socket and hides the
transport's failure modes behind the ZeroMQ guide's *Lazy Pirate* pattern:
send, wait at most ``timeout_s``, and on silence throw the socket away (a REQ
socket that missed its reply is stuck), open a fresh one and resend, giving
up after ``retries`` tries with :class:`ProxyTimeoutError`.

Resending is safe because every op is safe to apply twice:

- ``ping``, ``find_server``, ``servers`` and ``status`` only read;
- ``add_primary_server``, ``set_backup_servers`` and ``remove_server`` set a
  membership, so applying one again finds it already set;
- ``notify_failed_server`` only rotates when ``addr`` is *still* the active
  server, so a duplicate after a successful rotation does nothing (unless the
  server became active again in between, which is a fresh failure anyway);
- ``heartbeat`` is a merge that is idempotent, and with ``publisher``/``seq``
  a duplicate is recognised as stale;
- ``rebalance`` and ``reset_rebalance_timer`` at worst run twice, which is
  what a slightly earlier timer would have done.

A duplicate may make a write's reply say "nothing changed" (``added`` false,
``rotated`` false...) although the first copy did change it.

A client owns one socket, and pyzmq sockets are not thread-safe: use one
``ProxyClient`` per thread.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, NamedTuple, Self, TypeVar

import msgspec
import zmq

from rpcproxy.bus.client.keys import CurveClient
from rpcproxy.bus.wire import (
    DEFAULT_QUERY_ENDPOINT,
    PROTOCOL_VERSION,
    ErrorCode,
    HeartbeatEntry,
    HeartbeatPayload,
    Op,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "AddResult",
    "BadRequestError",
    "HeartbeatEntry",
    "ProtocolError",
    "ProxyClient",
    "ProxyError",
    "ProxyInvalidAddressError",
    "ProxyTimeoutError",
    "Publisher",
    "RebalanceResult",
    "Server",
    "Status",
    "UnavailableError",
    "UnknownOpError",
    "UnsupportedVersionError",
]

DEFAULT_ENDPOINT: Final = DEFAULT_QUERY_ENDPOINT

_T = TypeVar("_T")


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
    """No reply after every try; the proxy may be down or unreachable."""

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
    was kept), None when fewer than two servers meant nothing was pinged.
    """

    server: Server | None
    healthy: bool | None


class _Reply(msgspec.Struct):
    ok: bool
    id: Any = msgspec.UNSET


class _ErrorBody(msgspec.Struct):
    code: str
    message: str


class _ErrorReply(msgspec.Struct):
    error: _ErrorBody


class _Pong(msgspec.Struct):
    pong: bool


class _OneServer(msgspec.Struct):
    server: Server | None


class _ServerList(msgspec.Struct):
    servers: list[Server]


class _Rotated(msgspec.Struct):
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
# The client.


class ProxyClient:
    """A blocking client of the proxy's query socket, with Lazy Pirate retries.

    Not thread-safe: it owns one ZeroMQ socket, so use one client per thread.

    Args:
        endpoint: the proxy's query endpoint.
        timeout_s: how long each try waits for the reply.
        retries: how many tries a call makes before :class:`ProxyTimeoutError`.
        context: the ZeroMQ context; the process-wide one by default. The
            client never terminates a context.
        max_message_bytes: the largest reply accepted (ZeroMQ ``MAXMSGSIZE``);
            a bigger one drops the connection and shows up as a timeout.
        curve: the proxy's public key and this client's key pair, for a proxy
            that runs with CURVE (see :mod:`rpcproxy.bus.client.keys`).

    Raises:
        ValueError: ``timeout_s`` is not positive or ``retries`` is below 1.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout_s: float = 2.0,
        retries: int = 3,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        max_message_bytes: int = 1 << 20,
        curve: CurveClient | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        if retries < 1:
            raise ValueError(f"retries must be at least 1, got {retries!r}")
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_message_bytes = max_message_bytes
        self._curve = curve
        self._context = context if context is not None else zmq.Context.instance()
        self._socket: zmq.Socket[bytes] | None = None
        self._ids = itertools.count(1)
        self._closed = False

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket at once (LINGER 0: unsent requests are dropped). Idempotent."""
        self._closed = True
        self._drop_socket()

    # -- ops -----------------------------------------------------------------

    def ping(self, *, timeout_s: float | None = None) -> bool:
        """True when the proxy answers ``pong: true``.

        No answer raises :class:`ProxyTimeoutError` rather than returning False,
        like every other call, so "down" and "said no" stay distinct.
        """
        return self._call_as(_Pong, Op.PING, {}, timeout_s).pong

    def find_server(self) -> Server | None:
        """The active server, or None when the proxy knows no server."""
        return self._call_as(_OneServer, Op.FIND_SERVER, {}).server

    def servers(self) -> list[Server]:
        """The active list, active server first."""
        return self._call_as(_ServerList, Op.SERVERS, {}).servers

    def status(self) -> Status:
        """Everything at once: lists, leader, node count and the rebalance timer."""
        return _convert(self._request(Op.STATUS, {}, None), Status)

    def notify_failed_server(self, addr: str) -> bool:
        """Report that an RPC to ``addr`` failed; True when it was rotated to the end.

        Raises:
            ProxyInvalidAddressError: ``addr`` does not parse.
        """
        return self._call_as(_Rotated, Op.NOTIFY_FAILED_SERVER, {"addr": addr}).rotated

    def add_primary_server(self, addr: str) -> AddResult:
        """Add ``addr`` to the primaries; ``added`` is False when it was already known.

        Raises:
            ProxyInvalidAddressError: ``addr`` does not parse.
        """
        reply = self._call_as(_Added, Op.ADD_PRIMARY_SERVER, {"addr": addr})
        return AddResult(reply.server, reply.added)

    def set_backup_servers(self, addrs: Sequence[str]) -> list[Server]:
        """Replace the backups; returns the new active list.

        Raises:
            ProxyInvalidAddressError: an address does not parse; nothing changed.
        """
        keys = {"addrs": list(addrs)}
        return self._call_as(_ServerList, Op.SET_BACKUP_SERVERS, keys).servers

    def remove_server(self, addr: str) -> bool:
        """Drop ``addr`` from every list; True when it was known.

        Raises:
            ProxyInvalidAddressError: ``addr`` does not parse.
        """
        return self._call_as(_Removed, Op.REMOVE_SERVER, {"addr": addr}).removed

    def heartbeat(
        self,
        servers: Iterable[HeartbeatEntry | Mapping[str, Any]],
        *,
        num_nodes: int = 0,
        leader_rpc_addr: str = "",
        publisher: str | None = None,
        seq: int | None = None,
    ) -> bool:
        """Apply one heartbeat (docs/protocol.md section 2); True when membership changed.

        ``servers`` holds :class:`HeartbeatEntry` values or maps with the same
        keys (sent as they are: the proxy checks them). ``publisher`` and
        ``seq`` are left out when None.
        """
        payload = HeartbeatPayload((), num_nodes, leader_rpc_addr, publisher, seq)
        keys: dict[str, Any] = msgspec.to_builtins(payload)
        keys["servers"] = [_heartbeat_entry(s) for s in servers]
        return self._call_as(_Changed, Op.HEARTBEAT, keys).changed

    def rebalance(self, timeout_s: float | None = None) -> RebalanceResult:
        """Run one rebalance now and wait for it.

        Args:
            timeout_s: per-try wait; a rebalance pings servers, so it can take
                up to the proxy's ``ping_timeout_s`` longer than other calls.
        """
        reply = self._call_as(_Rebalanced, Op.REBALANCE, {}, timeout_s)
        return RebalanceResult(reply.server, reply.healthy)

    def reset_rebalance_timer(self) -> float:
        """Restart the rebalance timer; returns the seconds until it fires."""
        return self._call_as(_NextRebalance, Op.RESET_REBALANCE_TIMER, {}).next_rebalance_s

    def call(self, op: str, /, *, timeout_s: float | None = None, **keys: Any) -> dict[str, Any]:
        """Send any op with ``keys`` and return the whole success reply.

        The escape hatch for ops this client does not wrap yet. ``timeout_s``
        overrides the per-try wait (so an op key cannot be named
        ``timeout_s``).

        Raises:
            ProxyError: a subclass per error code, :class:`ProxyTimeoutError`
                or :class:`ProtocolError`.
        """
        return self._request(op, keys, timeout_s)

    # -- plumbing ------------------------------------------------------------

    def _call_as(
        self, shape: type[_T], op: str, keys: dict[str, Any], timeout_s: float | None = None
    ) -> _T:
        return _convert(self._request(op, keys, timeout_s), shape)

    def _request(self, op: str, keys: dict[str, Any], timeout_s: float | None) -> dict[str, Any]:
        request_id = next(self._ids)
        frame = msgspec.msgpack.encode({**keys, "op": op, "v": PROTOCOL_VERSION, "id": request_id})
        raw = self._exchange(frame, timeout_s if timeout_s is not None else self.timeout_s)
        return _parse_reply(raw, request_id)

    def _exchange(self, frame: bytes, timeout_s: float) -> bytes:
        """Lazy Pirate: try up to ``retries`` times, each on a fresh socket after silence."""
        if self._closed:
            raise RuntimeError("ProxyClient is closed")
        timeout_ms = max(1, round(timeout_s * 1000))
        for _ in range(self.retries):
            socket = self._ensure_socket()
            sent = socket.poll(timeout_ms, zmq.POLLOUT) and self._try_send(socket, frame)
            if sent and socket.poll(timeout_ms, zmq.POLLIN):
                return socket.recv()
            # A REQ socket that lost its reply can never send again: start over.
            self._drop_socket()
        raise ProxyTimeoutError(
            f"no reply from {self.endpoint} after {self.retries} tries of {timeout_s:g} s"
        )

    @staticmethod
    def _try_send(socket: zmq.Socket[bytes], frame: bytes) -> bool:
        try:
            socket.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def _ensure_socket(self) -> zmq.Socket[bytes]:
        if self._socket is None:
            socket = self._context.socket(zmq.REQ)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
            if self._curve is not None:
                self._curve.secure(socket)
            socket.connect(self.endpoint)
            self._socket = socket
        return self._socket

    def _drop_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None


# --------------------------------------------------------------------------
# Reply parsing.


def _parse_reply(raw: bytes, request_id: int) -> dict[str, Any]:
    """Check the reply's envelope and turn an error reply into its exception."""
    try:
        reply = msgspec.msgpack.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProtocolError(f"reply is not valid MessagePack: {exc}") from None
    if not isinstance(reply, dict):
        raise ProtocolError(f"reply must be a map, got {type(reply).__name__}")
    envelope = _convert(reply, _Reply)
    if envelope.id is not msgspec.UNSET and envelope.id != request_id:
        raise ProtocolError(f"reply id {envelope.id!r} does not match request id {request_id}")
    if not envelope.ok:
        error = _convert(reply, _ErrorReply).error
        raise _ERRORS.get(error.code, ProxyError)(error.message, error.code)
    return reply


def _convert(reply: Mapping[str, Any], shape: type[_T]) -> _T:
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
