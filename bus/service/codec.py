"""MessagePack frames of the query, heartbeat and event sockets (docs/protocol.md).

The frame-level work: the envelope (``op``, ``v``, ``id``), error replies,
the success reply's envelope around an op's reply body, heartbeat payloads
(and the peek that conflates them) and the event payload. Each op's own
keys are the wire's structs (:mod:`rpcproxy.bus.wire`), and what the service
does with each op is :mod:`rpcproxy.bus.service.ops`.

Decoding and type checks are one step: msgspec decodes a frame straight into
a frozen Struct, or fails. The requests form a tagged union on ``op``, so the
hot path (``find_server``) costs one C-level decode and no Python-level checks.
Only when that decode fails is the frame read a second time, leniently, to tell
*which* rule it broke and to recover its ``id`` for the error reply; bad input
is rare and may be slow, good input must be fast. Unknown keys are ignored
everywhere, so a newer client can add keys without breaking an older proxy.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import os
import re
from typing import Annotated, Any, Final, TypeVar, cast

import msgspec
from msgspec import UNSET, Meta, Struct

from rpcproxy.bus.wire import (
    OP_REQUESTS,
    PROTOCOL_VERSION,
    ChangeReason,
    ErrorCode,
    Event,
    HeartbeatEntry,
    HeartbeatOp,
    HeartbeatPayload,
    Name,
    Op,
    OpReply,
    OpRequest,
    Server,
    SetBackupServersOp,
    SetServersOp,
)
from rpcproxy.proxy import DEFAULT_MAX_SERVERS, Address, Heartbeat, HeartbeatServer

__all__ = [
    "FIND_SERVER_NO_ID",
    "NO_ID",
    "OPS",
    "Decoder",
    "HeartbeatError",
    "RequestError",
    "decode_heartbeat",
    "encode_error",
    "encode_event",
    "encode_heartbeat",
    "encode_ok",
    "encode_reply",
    "encode_request_error",
    "find_server_id",
    "new_instance_id",
    "peek_heartbeat",
    "server_of",
    "split_at_id",
    "to_heartbeat",
]

NO_ID: Final = UNSET
"""The ``request_id`` of a request that carried no ``id`` (or none could be read)."""


class RequestError(Exception):
    """A request that must be answered with an error reply.

    Attributes:
        code: the error code to send.
        message: a short human-readable reason.
        request_id: the request's ``id`` to echo, or :data:`NO_ID` when the
            request had none or it could not be read.
    """

    def __init__(self, code: ErrorCode, message: str, request_id: Any = NO_ID) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"RequestError({self.code.value!r}, {self.message!r})"


class HeartbeatError(ValueError):
    """A heartbeat payload that breaks docs/protocol.md section 2's table (rule 1: drop it)."""


OPS: Final[frozenset[Op]] = frozenset(Op(str(t.__struct_config__.tag)) for t in OP_REQUESTS)
"""Every op this proxy answers (all of :class:`~rpcproxy.bus.wire.Op`)."""


class _Envelope(Struct, frozen=True):
    """The lenient second read of a frame that failed: any types, to classify."""

    op: Any = UNSET
    v: Any = UNSET
    id: Any = UNSET


# --------------------------------------------------------------------------
# Wire -> domain conversion.


def to_heartbeat(wire: HeartbeatPayload) -> Heartbeat:
    """The domain heartbeat of a payload (or of a ``heartbeat`` op, whose keys are one)."""
    servers = tuple(
        HeartbeatServer(
            s.rpc_advertise_addr, s.rpc_major_version, s.rpc_minor_version, s.datacenter
        )
        for s in wire.servers
    )
    return Heartbeat(servers, wire.num_nodes, wire.leader_rpc_addr, wire.publisher, wire.seq)


# --------------------------------------------------------------------------
# Decoding.

_ENVELOPE_DECODER: Final = msgspec.msgpack.Decoder(_Envelope)

_S = TypeVar("_S", bound=Struct)


def _bounded(base: type[_S], **fields: Any) -> type[_S]:
    """A subclass of ``base`` with ``fields`` retyped, read under the same tag."""
    # A subclass would be tagged with its class name: give it the base's tag.
    tag = base.__struct_config__.tag
    options: dict[str, Any] = {} if tag is None else {"tag": tag}
    made = msgspec.defstruct(
        base.__name__,
        list(fields.items()),
        bases=(base,),
        module=__name__,
        frozen=True,
        **options,
    )
    return cast(type[_S], made)


class Decoder:
    """Reads query requests and heartbeats, with server lists bounded.

    ``max_servers`` (docs/protocol.md section 8) bounds a heartbeat's ``servers``
    and a ``set_backup_servers``'s ``addrs``. msgspec checks a list's length
    as it reads the list, before it builds any entry, so an oversized list
    costs next to nothing; the bound is part of the wire type, so each
    Decoder makes its own copy of the types that carry it. Build one at
    start, not per message. The query and heartbeat sockets may share one:
    requests and heartbeats are read by two separate msgspec decoders, one
    per thread.

    Args:
        max_servers: the longest list accepted.
    """

    def __init__(self, max_servers: int = DEFAULT_MAX_SERVERS) -> None:
        if max_servers < 1:
            raise ValueError(f"max_servers must be at least 1, got {max_servers}")
        self.max_servers = max_servers
        servers = Annotated[tuple[HeartbeatEntry, ...], Meta(max_length=max_servers)]
        addrs = Annotated[tuple[str, ...], Meta(max_length=max_servers)]
        some_addrs = Annotated[tuple[str, ...], Meta(min_length=1, max_length=max_servers)]
        bounded: dict[type[Any], type[Any]] = {
            SetBackupServersOp: _bounded(SetBackupServersOp, addrs=addrs),
            SetServersOp: _bounded(SetServersOp, addrs=some_addrs),
            HeartbeatOp: _bounded(HeartbeatOp, servers=servers),
        }
        request_type = functools.reduce(operator.or_, (bounded.get(t, t) for t in OP_REQUESTS))
        self._requests: msgspec.msgpack.Decoder[OpRequest] = msgspec.msgpack.Decoder(request_type)
        self._heartbeats = msgspec.msgpack.Decoder(_bounded(HeartbeatPayload, servers=servers))

    def request(self, frame: bytes) -> OpRequest:
        """Decode one query-socket request into its op's wire struct.

        Its keys have their types; its addresses are still strings, parsed
        by :func:`rpcproxy.bus.service.ops.validate`.

        Args:
            frame: the request's body frame.

        Raises:
            RequestError: the frame breaks docs/protocol.md; ``code`` says which
                rule and ``request_id`` is the request's ``id`` whenever it
                could be read. A list longer than ``max_servers`` is
                ``bad_request``.
        """
        try:
            return self._requests.decode(frame)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            raise _classify(frame, exc) from None

    def heartbeat(self, payload: bytes) -> Heartbeat:
        """Decode and validate a heartbeat payload (docs/protocol.md section 2).

        Entries whose address does not parse are kept: rule 3 skips them one
        by one later, whereas anything raised here drops the whole payload
        (rule 1), as does a list of more than ``max_servers`` servers.

        Raises:
            HeartbeatError: the payload breaks the table; the message says how.
        """
        try:
            wire = self._heartbeats.decode(payload)
        except msgspec.ValidationError as exc:
            raise HeartbeatError(_describe(exc)) from None
        except msgspec.DecodeError as exc:
            raise HeartbeatError(_not_msgpack(exc)) from None
        except RecursionError:
            raise HeartbeatError("nesting too deep") from None
        except UnicodeDecodeError:
            raise HeartbeatError(_BAD_UTF8) from None
        return to_heartbeat(wire)


_DEFAULT_DECODER: Final = Decoder()


class _HeartbeatKeyWire(Struct, frozen=True):
    """The two keys of a heartbeat that say which pending one it supersedes."""

    publisher: Name | None = None
    seq: int | None = None


_HEARTBEAT_KEY_DECODER: Final = msgspec.msgpack.Decoder(_HeartbeatKeyWire)


def decode_heartbeat(payload: bytes) -> Heartbeat:
    """:meth:`Decoder.heartbeat` with the default ``max_servers``."""
    return _DEFAULT_DECODER.heartbeat(payload)


def peek_heartbeat(payload: bytes | memoryview) -> tuple[str | None, int | None]:
    """Read only a heartbeat's ``publisher`` and ``seq``, skipping the rest.

    A small fraction of :func:`decode_heartbeat`'s cost (msgspec skips the
    server list without building anything), so the heartbeat socket can read
    a flood at the transport's pace and fully decode only the latest payload
    of each publisher (docs/protocol.md section 2: heartbeats are state).

    Raises:
        HeartbeatError: the payload is not a map or those two keys have the
            wrong type; :func:`decode_heartbeat` says it more precisely.
    """
    try:
        key = _HEARTBEAT_KEY_DECODER.decode(payload)
    except msgspec.ValidationError as exc:
        raise HeartbeatError(_describe(exc)) from None
    except msgspec.DecodeError as exc:
        raise HeartbeatError(_not_msgpack(exc)) from None
    except RecursionError:
        raise HeartbeatError("nesting too deep") from None
    except UnicodeDecodeError:
        raise HeartbeatError(_BAD_UTF8) from None
    return key.publisher, key.seq


def _classify(frame: bytes, cause: Exception) -> RequestError:
    """Say which rule a frame that failed the fast decode broke.

    The checks run in docs/protocol.md's order of precedence: the envelope (so the
    ``id`` can be echoed), then ``v``, then ``op``, then the op's own keys.
    """
    try:
        envelope = _ENVELOPE_DECODER.decode(frame)
    except msgspec.ValidationError as exc:
        # With every field typed Any, only the frame's shape can be wrong.
        if "`key`" in str(exc):
            return RequestError(ErrorCode.BAD_REQUEST, "request keys must be strings")
        return RequestError(ErrorCode.BAD_REQUEST, "request must be a MessagePack map")
    except msgspec.DecodeError as exc:
        return RequestError(ErrorCode.BAD_REQUEST, _not_msgpack(exc))
    except RecursionError:
        return RequestError(ErrorCode.BAD_REQUEST, "nesting too deep")
    except UnicodeDecodeError:
        return RequestError(ErrorCode.BAD_REQUEST, _BAD_UTF8)
    return _classify_envelope(envelope) or _classify_keys(cause, envelope.id)


def _classify_envelope(envelope: _Envelope) -> RequestError | None:
    op, v, rid = envelope.op, envelope.v, envelope.id
    if op is UNSET:
        return RequestError(ErrorCode.BAD_REQUEST, "missing required key 'op'", rid)
    if not isinstance(op, str):
        return RequestError(
            ErrorCode.BAD_REQUEST, f"key 'op' must be str, got {_msgpack_type(op)}", rid
        )
    if v is not UNSET and not (type(v) is int and v == PROTOCOL_VERSION):
        return RequestError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"`v` {_preview(v)} is not supported (this proxy speaks {PROTOCOL_VERSION})",
            rid,
        )
    if op not in OPS:
        return RequestError(ErrorCode.UNKNOWN_OP, f"op {_preview(op)} is not an operation", rid)
    return None


def _classify_keys(cause: Exception, rid: Any) -> RequestError:
    if isinstance(cause, RecursionError):
        return RequestError(ErrorCode.BAD_REQUEST, "nesting too deep", rid)
    if isinstance(cause, UnicodeDecodeError):
        return RequestError(ErrorCode.BAD_REQUEST, _BAD_UTF8, rid)
    if isinstance(cause, msgspec.ValidationError):
        return RequestError(ErrorCode.BAD_REQUEST, _describe(cause), rid)
    return RequestError(ErrorCode.BAD_REQUEST, _not_msgpack(cause), rid)


_BAD_UTF8: Final = "not valid MessagePack: a string is not valid UTF-8"


def _not_msgpack(exc: Exception) -> str:
    return "not valid MessagePack: " + str(exc).removeprefix("MessagePack data is malformed: ")


_MSGPACK_NAMES: Final = (("`object`", "map"), ("`None`", "nil"), ("`bytes`", "bin"))
"""msgspec speaks of Python types; replies speak of MessagePack ones."""

_MSGSPEC_ERROR = re.compile(r"(?P<what>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?", re.DOTALL)
_MISSING = re.compile(r"Object missing required field `(?P<key>[^`]*)`")


def _describe(exc: msgspec.ValidationError) -> str:
    """Rephrase a msgspec error in the protocol's words ("key", "map").

    Falls back to msgspec's own text for shapes not recognised: a message
    that is slightly less tidy beats one that is wrong.
    """
    text = str(exc)
    match = _MSGSPEC_ERROR.fullmatch(text)
    if match is None:  # pragma: no cover - the pattern matches any text
        return text
    what, path = match["what"], match["path"]
    missing = _MISSING.fullmatch(what)
    if missing:
        where = f" in {path}" if path else ""
        return f"missing required key {missing['key']!r}{where}"
    for python_name, msgpack_name in _MSGPACK_NAMES:
        what = what.replace(python_name, msgpack_name)
    what = what.replace("`", "")
    if path and what.startswith("Expected "):
        return f"key {path!r} must be {what.removeprefix('Expected ')}"
    return f"{what} at {path}" if path else what


_MSGPACK_TYPES: Final[dict[type[Any], str]] = {
    type(None): "nil",
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    bytes: "bin",
    list: "array",
    dict: "map",
}


def _msgpack_type(value: Any) -> str:
    return _MSGPACK_TYPES.get(type(value), "ext")


def _preview(value: Any, limit: int = 60) -> str:
    """A bounded repr, so a hostile value cannot blow up a reply or a log line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------
# Encoding.

_ENCODER: Final = msgspec.msgpack.Encoder()


def encode_ok(request_id: Any, /, **fields: Any) -> bytes:
    """``{"ok": true, "id"?: request_id, **fields}``; ``id`` only if the request had one."""
    reply: dict[str, Any] = {"ok": True}
    if request_id is not NO_ID:
        reply["id"] = request_id
    reply.update(fields)
    return _ENCODER.encode(reply)


def encode_error(code: ErrorCode, message: str, request_id: Any = NO_ID) -> bytes:
    """``{"ok": false, "error": {"code", "message"}, "id"?: request_id}``."""
    reply: dict[str, Any] = {"ok": False, "error": {"code": str(code), "message": message}}
    if request_id is not NO_ID:
        reply["id"] = request_id
    return _ENCODER.encode(reply)


# --------------------------------------------------------------------------
# The find_server fast path: frames recognised by their bytes.
#
# Nearly every request a proxy answers is a find_server with no keys but
# op, v and id, written the same way by every client of one library. For
# those exact byte patterns the query socket skips the decode, the envelope
# and the encode, and sends the snapshot's pre-encoded reply with the
# request's id spliced in (the reply's keys are ok, id, the body, epoch,
# instance: the id's bytes sit at a fixed place). Anything else, including
# the same request written another way, takes the normal path; so the only
# promise to keep is that a recognised frame gets the very bytes the normal
# path would send, which tests/unit/test_codec.py checks against
# encode_reply over ids of every MessagePack width.

_OP_FIND_SERVER: Final = b"\xa2op\xabfind_server"
_V1: Final = b"\xa1v\x01"
_ID_KEY: Final = b"\xa2id"

FIND_SERVER_NO_ID: Final = frozenset(
    {
        b"\x81" + _OP_FIND_SERVER,  # {"op": "find_server"}
        b"\x82" + _OP_FIND_SERVER + _V1,  # {"op": "find_server", "v": 1}
        b"\x82" + _V1 + _OP_FIND_SERVER,  # {"v": 1, "op": "find_server"}
    }
)
"""The id-less find_server frames answered by the snapshot's cached reply bytes."""

_FIND_SERVER_ID_PREFIXES: Final = (
    b"\x82" + _OP_FIND_SERVER + _ID_KEY,  # {"op": "find_server", "id": ...}
    # {"op": "find_server", "v": 1, "id": ...}: what rpcproxy's own client sends.
    b"\x83" + _OP_FIND_SERVER + _V1 + _ID_KEY,
)

# First byte of a wider int -> (bytes after it, signed, the bound its value
# must pass to be the shortest form, the one msgspec writes back).
_INT_FORMS: Final[dict[int, tuple[int, bool, int]]] = {
    0xCC: (1, False, 1 << 7),
    0xCD: (2, False, 1 << 8),
    0xCE: (4, False, 1 << 16),
    0xCF: (8, False, 1 << 32),
    0xD0: (1, True, -(1 << 5)),
    0xD1: (2, True, -(1 << 7)),
    0xD2: (4, True, -(1 << 15)),
    0xD3: (8, True, -(1 << 31)),
}


def find_server_id(frame: bytes) -> bytes | None:
    """The id bytes of a find_server frame the fast path answers, else None.

    Recognised: ``{"op": "find_server", "id": X}`` and ``{"op":
    "find_server", "v": 1, "id": X}`` in that key order, where ``X`` is an
    int, nil, a bool or an ASCII string of under 256 bytes, written in the
    shortest form (so that encoding the decoded id gives back the same
    bytes). The caller splices the returned bytes into the reply as they are.
    """
    for prefix in _FIND_SERVER_ID_PREFIXES:
        if frame.startswith(prefix):
            raw = frame[len(prefix) :]
            return raw if _canonical_value(raw) else None
    return None


def _canonical_value(raw: bytes) -> bool:
    """Whether ``raw`` is exactly one int, nil, bool or ASCII str in msgspec's own form."""
    if not raw:
        return False
    first = raw[0]
    if len(raw) == 1:
        # Fixints, nil, false, true; and the empty string.
        return first <= 0x7F or first >= 0xE0 or first in (0xC0, 0xC2, 0xC3, 0xA0)
    if 0xA0 <= first <= 0xBF:  # fixstr: up to 31 bytes
        # ASCII is valid UTF-8 whatever the decoder; anything else takes the normal path.
        return len(raw) == 1 + (first & 0x1F) and raw[1:].isascii()
    if first == 0xD9:  # str8: msgspec uses it from 32 bytes on
        return len(raw) == 2 + raw[1] and raw[1] >= 32 and raw[2:].isascii()
    form = _INT_FORMS.get(first)
    if form is None:
        return False
    width, signed, bound = form
    if len(raw) != 1 + width:
        return False
    value = int.from_bytes(raw[1:], "big", signed=signed)
    return value < bound if signed else value >= bound


def split_at_id(reply_with_zero_id: bytes) -> tuple[bytes, bytes]:
    """A success reply's bytes before and after its ``id``, given the reply encoded with id 0.

    :func:`encode_reply` writes ``ok`` then ``id`` first, so the id (0: the
    one byte ``\\x00``) follows the first ``"id"`` key; any other id's bytes
    put between the two parts make that id's reply.
    """
    at = reply_with_zero_id.index(_ID_KEY + b"\x00") + len(_ID_KEY)
    return reply_with_zero_id[:at], reply_with_zero_id[at + 1 :]


def encode_request_error(error: RequestError) -> bytes:
    """The error reply for a :class:`RequestError` raised by :func:`decode_request`."""
    return encode_error(error.code, error.message, error.request_id)


def encode_reply(request_id: Any, body: OpReply, epoch: int, instance: str) -> bytes:
    """A success reply: the envelope around an op's reply body (docs/protocol.md section 1).

    ``{"ok": true, "id"?: request_id, **body, "epoch": epoch, "instance": instance}``.
    """
    return encode_ok(request_id, **_fields(body), epoch=epoch, instance=instance)


def _fields(body: OpReply) -> dict[str, Any]:
    """A reply body's keys, shallow: msgspec encodes the values (servers...) itself."""
    if isinstance(body, Struct):
        return msgspec.structs.asdict(body)
    # Status, a dataclass for its users' sake (rpcproxy.bus.wire.ops): not a hot path.
    return {f.name: getattr(body, f.name) for f in dataclasses.fields(body)}


def server_of(addr: Address | None) -> Server | None:
    """The server object ``{"addr": canonical}`` of a reply or an event, or None (nil)."""
    return None if addr is None else Server(addr.canonical)


def encode_event(server: Address | None, reason: ChangeReason, epoch: int, instance: str) -> bytes:
    """The events socket's payload (docs/protocol.md section 5): the wire's :class:`Event`."""
    event = Event(server=server_of(server), reason=reason, epoch=epoch, instance=instance)
    return _ENCODER.encode(event)


def new_instance_id() -> str:
    """A random id for one run of ``serve`` (16 hex digits), sent in replies and events.

    Random rather than derived from the pid or the clock, so two proxies (or
    one restarted in a fresh container, where pids repeat) never share one.
    ``os.urandom`` is what ``secrets.token_hex`` reads, without the module:
    it loads hashlib, and with it OpenSSL's libcrypto, 3.8 MiB of an idle proxy.
    """
    return os.urandom(8).hex()


def encode_heartbeat(heartbeat: Heartbeat) -> bytes:
    """A heartbeat payload that :func:`decode_heartbeat` reads back to an equal value.

    ``publisher`` and ``seq`` are left out when None rather than sent as nil
    (:class:`~rpcproxy.bus.wire.HeartbeatPayload` omits defaults), so that
    strict readers of the table see only keys they know.
    """
    servers = tuple(
        HeartbeatEntry(s.rpc_advertise_addr, s.rpc_major_version, s.rpc_minor_version, s.datacenter)
        for s in heartbeat.servers
    )
    payload = HeartbeatPayload(
        servers, heartbeat.num_nodes, heartbeat.leader_rpc_addr, heartbeat.publisher, heartbeat.seq
    )
    return _ENCODER.encode(payload)
