"""Nomad's msgpack-rpc framing, both ways, bounded (docs/protocol.md section 4).

Nomad speaks Go's ``net/rpc`` through hashicorp/net-rpc-msgpackrpc: after the
connection's first byte (:data:`RPC_NOMAD`), every request and every reply is
a header and a body, two MessagePack values back to back with no length
prefix. So the only way to know where a value ends is to walk it.

:class:`ValueSplitter` does that walk and nothing else: it finds the end of
each value in a byte stream without decoding it, resumes where it stopped
when more bytes arrive (a peer that trickles a byte at a time costs one pass
over the bytes, not one per byte), and refuses any value larger than its
bound or nested deeper than its limit *before* buffering it. Only a value
known to be whole and small is handed to msgspec, decoded into a typed
struct, so a hostile peer cannot make us allocate what it declares.

msgspec, already a dependency, has no streaming decoder; ``msgpack``'s
``Unpacker`` has one, but a ping needs only the framing, and this keeps the
runtime dependencies as they were.

Go's decoder (go-msgpack with ``WriteExt`` off) rejects bin where it expects
a string, so everything here is encoded as MessagePack str.
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = [
    "MAX_DEPTH",
    "RPC_NOMAD",
    "RPC_TLS",
    "STATUS_PING",
    "FramingError",
    "RequestHeader",
    "ResponseHeader",
    "ValueSplitter",
    "decode_request_header",
    "decode_response_header",
    "encode_request",
    "encode_response",
]

RPC_NOMAD: Final = b"\x01"
"""First byte of a plain Nomad RPC connection (``pool.RpcNomad``)."""

RPC_TLS: Final = b"\x04"
"""First byte of a connection that upgrades to TLS (``pool.RpcTLS``); the
byte after the handshake, inside TLS, says what follows."""

STATUS_PING: Final = "Status.Ping"

MAX_DEPTH: Final = 32
"""Nesting allowed in one value; a ping's header and body nest one deep."""

_EMPTY_MAP: Final = b"\x80"


class FramingError(ValueError):
    """The stream holds no MessagePack value, or one past the splitter's bounds."""


# MessagePack type bytes that are a whole scalar with a fixed size, by size.
_FIXED: Final[dict[int, int]] = {
    0xC0: 1,  # nil
    0xC2: 1,  # false
    0xC3: 1,  # true
    0xCA: 5,  # float 32
    0xCB: 9,  # float 64
    0xCC: 2,  # uint 8
    0xCD: 3,  # uint 16
    0xCE: 5,  # uint 32
    0xCF: 9,  # uint 64
    0xD0: 2,  # int 8
    0xD1: 3,  # int 16
    0xD2: 5,  # int 32
    0xD3: 9,  # int 64
    0xD4: 3,  # fixext 1
    0xD5: 4,  # fixext 2
    0xD6: 6,  # fixext 4
    0xD7: 10,  # fixext 8
    0xD8: 18,  # fixext 16
}

# Scalars whose size follows the type byte: (bytes of the length, bytes after it
# before the payload). Ext has a type byte between its length and its payload.
_SIZED: Final[dict[int, tuple[int, int]]] = {
    0xC4: (1, 0),  # bin 8
    0xC5: (2, 0),  # bin 16
    0xC6: (4, 0),  # bin 32
    0xC7: (1, 1),  # ext 8
    0xC8: (2, 1),  # ext 16
    0xC9: (4, 1),  # ext 32
    0xD9: (1, 0),  # str 8
    0xDA: (2, 0),  # str 16
    0xDB: (4, 0),  # str 32
}

# Containers whose count follows the type byte: (bytes of the count, items per count).
_CONTAINERS: Final[dict[int, tuple[int, int]]] = {
    0xDC: (2, 1),  # array 16
    0xDD: (4, 1),  # array 32
    0xDE: (2, 2),  # map 16
    0xDF: (4, 2),  # map 32
}


class ValueSplitter:
    """Cuts a byte stream into whole MessagePack values, within bounds.

    Feed it bytes as they arrive; it returns each value once its last byte
    is in. Memory is bounded by ``max_value_bytes`` (bytes of the value under
    way) and ``max_depth`` (containers open inside it), whatever the stream.

    Args:
        max_value_bytes: the largest value accepted; a value that is or
            declares itself larger raises :class:`FramingError` at once.
        max_depth: containers that may be open at once inside one value.
    """

    def __init__(self, max_value_bytes: int, *, max_depth: int = MAX_DEPTH) -> None:
        if max_value_bytes < 1:
            raise ValueError("max_value_bytes must be at least 1")
        self._max = max_value_bytes
        self._max_depth = max_depth
        self._buf = bytearray()
        self._pos = 0  # Where the next type byte of the value under way is.
        self._open: list[int] = []  # Items still due, per open container.
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as part of a whole value."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Take ``data``; return the values it completed, in order.

        Raises:
            FramingError: the stream is not MessagePack, or a value is over
                the bounds. The splitter is then spent: every later call raises.
        """
        if self._failed:
            raise FramingError("the stream already failed")
        self._buf += data
        values: list[bytes] = []
        try:
            while (end := self._scan()) is not None:
                values.append(bytes(self._buf[:end]))
                del self._buf[:end]
                self._pos = 0
        except FramingError:
            self._failed = True
            raise
        if len(self._buf) > self._max:
            self._failed = True
            raise FramingError(f"a value is longer than {self._max} bytes")
        return values

    def _scan(self) -> int | None:
        """Walk the value at the start of the buffer from where the last walk
        stopped; its end, or None until more bytes arrive."""
        buf, limit = self._buf, self._max
        while self._pos < len(buf):
            pos = self._pos
            size, items = self._item_at(pos)
            if size is None:
                return None  # Its length is not all in yet.
            if pos + size > limit:
                raise FramingError(f"a value is longer than {limit} bytes")
            if pos + size > len(buf):
                return None
            self._pos = pos + size
            if items:
                # Each item takes at least a byte: a count past the bound is a lie.
                if items > limit - self._pos:
                    raise FramingError(f"a value is longer than {limit} bytes")
                if len(self._open) == self._max_depth:
                    raise FramingError(f"a value nests deeper than {self._max_depth}")
                self._open.append(items)
                continue
            # One item done; it may close the containers it ends.
            while self._open:
                self._open[-1] -= 1
                if self._open[-1]:
                    break
                self._open.pop()
            if not self._open:
                return self._pos
        return None

    def _item_at(self, pos: int) -> tuple[int | None, int]:
        """(bytes of the item's own encoding, items it contains) for the type
        byte at ``pos``; the size is None while its length bytes are missing."""
        buf = self._buf
        kind = buf[pos]
        if kind <= 0x7F or kind >= 0xE0:  # Positive and negative fixint.
            return 1, 0
        if kind <= 0x8F:  # fixmap
            return 1, 2 * (kind & 0x0F)
        if kind <= 0x9F:  # fixarray
            return 1, kind & 0x0F
        if kind <= 0xBF:  # fixstr
            return 1 + (kind & 0x1F), 0
        if kind in _FIXED:
            return _FIXED[kind], 0
        if kind in _SIZED:
            width, extra = _SIZED[kind]
            length = self._number(pos + 1, width)
            return (None if length is None else 1 + width + extra + length), 0
        if kind in _CONTAINERS:
            width, per = _CONTAINERS[kind]
            count = self._number(pos + 1, width)
            return (None, 0) if count is None else (1 + width, per * count)
        raise FramingError(f"0x{kind:02x} starts no MessagePack value")

    def _number(self, pos: int, width: int) -> int | None:
        if pos + width > len(self._buf):
            return None
        return int.from_bytes(self._buf[pos : pos + width], "big")


# -- the headers -------------------------------------------------------------------


class RequestHeader(msgspec.Struct, rename="pascal", frozen=True):
    """``net/rpc``'s ``Request``: which method, and the number to echo."""

    service_method: str
    seq: int


class ResponseHeader(msgspec.Struct, rename="pascal", frozen=True):
    """``net/rpc``'s ``Response``. Typed decoding skips other keys without
    building them. ``Error`` is a string in Go, so never nil there; nil is
    taken as empty here rather than as a failure nobody meant."""

    seq: int
    service_method: str = ""
    error: str | None = ""


_REQUEST_DECODER: Final = msgspec.msgpack.Decoder(RequestHeader)
_RESPONSE_DECODER: Final = msgspec.msgpack.Decoder(ResponseHeader)


def encode_request(seq: int, method: str = STATUS_PING) -> bytes:
    """A request's header and empty body, e.g. for ``Status.Ping`` ``Seq`` 1:
    ``82 a3 'Seq' 01 ad 'ServiceMethod' ab 'Status.Ping' 80``."""
    header = msgspec.msgpack.encode({"Seq": seq, "ServiceMethod": method})
    return header + _EMPTY_MAP


def encode_response(seq: int, method: str, error: str = "") -> bytes:
    """A reply's header and empty body, in the key order Nomad sends them."""
    header = msgspec.msgpack.encode({"Error": error, "Seq": seq, "ServiceMethod": method})
    return header + _EMPTY_MAP


def decode_request_header(value: bytes) -> RequestHeader:
    """Decode one whole value as a request header.

    Raises:
        FramingError: not a map with a str ``ServiceMethod`` and an int ``Seq``.
    """
    try:
        return _REQUEST_DECODER.decode(value)
    except (msgspec.MsgspecError, RecursionError) as exc:
        raise FramingError(f"not a request header: {exc}") from None


def decode_response_header(value: bytes) -> ResponseHeader:
    """Decode one whole value as a response header.

    Raises:
        FramingError: not a map with str ``ServiceMethod``, int ``Seq`` and
            str ``Error``.
    """
    try:
        return _RESPONSE_DECODER.decode(value)
    except (msgspec.MsgspecError, RecursionError) as exc:
        raise FramingError(f"not a response header: {exc}") from None
