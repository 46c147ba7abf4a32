"""A response body read within its bounds as it streams (part of :mod:`.http_fetch`).

A body is bounded on the wire and after decoding, checked chunk by chunk, so
a long body fails at the chunk that crosses the bound, not once it is all in
memory. gzip is decoded here, a bounded step at a time, so a small
compressed body cannot grow into a large one in memory (a gzip bomb); any
other ``Content-Encoding`` is refused. Pure: no sockets, the clock injected.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable

__all__ = ["INFLATE_STEP_BYTES", "BodyError", "read_body"]

INFLATE_STEP_BYTES = 64 * 1024
"""The most bytes one step of gzip decoding produces. A 64 KiB chunk of a
gzip of zeros inflates to some 64 MB: decoded in one call, that is 64 MB in
memory at once and the GIL held for tens of milliseconds (the query socket's
thread waiting); in steps, the bound is checked after each and nothing larger
than a step is ever made."""


class BodyError(Exception):
    """A body broke a bound, or its encoding is bad.

    ``kind`` is one of :class:`~.http_fetch.FetchError`'s: "too_large",
    "timeout" or "encoding".
    """

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _inflater(content_encoding: str) -> zlib._Decompress | None:
    """A gzip decoder for ``Content-Encoding``, or None for an identity body.

    Only gzip is asked for (``Accept-Encoding: gzip``,
    :func:`~.http_fetch.make_fetch_client`), so anything else is refused
    rather than decoded by a path not bounded here.
    """
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if codings in (["gzip"], ["x-gzip"]):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    # Bounded in the message: the header is the peer's.
    raise BodyError(f"unsupported Content-Encoding {content_encoding[:64]!r}", kind="encoding")


def _inflate(inflater: zlib._Decompress, data: bytes, body: bytearray, max_bytes: int) -> None:
    """Decode ``data`` onto ``body`` a step at a time, stopping past ``max_bytes``."""
    while data:
        if inflater.eof:
            raise BodyError("data after the end of the gzip body", kind="encoding")
        # One byte more than the room left, so a body over the bound is seen
        # as such; never more than a step (INFLATE_STEP_BYTES says why).
        step = min(max_bytes - len(body) + 1, INFLATE_STEP_BYTES)
        try:
            body += inflater.decompress(data, step)
        except zlib.error as exc:
            raise BodyError(f"bad gzip body: {exc}", kind="encoding") from None
        if len(body) > max_bytes:
            raise BodyError(f"body over {max_bytes} bytes once decoded", kind="too_large")
        # What the step left unread; empty once all of data is consumed.
        data = inflater.unconsumed_tail
        if inflater.eof and inflater.unused_data:
            raise BodyError("data after the end of the gzip body", kind="encoding")


def read_body(
    chunks: Iterable[bytes],
    *,
    content_encoding: str = "",
    content_length: str | None = None,
    max_wire_bytes: int,
    max_bytes: int,
    deadline_at: float,
    clock: Callable[[], float] = time.monotonic,
) -> bytes:
    """A response body from its chunks as they arrive, within every bound.

    Args:
        chunks: the body as sent (``httpx.Response.iter_raw``: before any
            content decoding, after the transfer encoding's).
        content_encoding: the ``Content-Encoding`` header (gzip is decoded here).
        content_length: the ``Content-Length`` header, if any: a body
            announced over the wire bound fails before a byte is read.
        max_wire_bytes: the most bytes read as sent.
        max_bytes: the most bytes once decoded.
        deadline_at: ``clock()`` time by which the whole body must be in.
        clock: monotonic seconds (injected by tests).

    Raises:
        BodyError: a bound was crossed (kind "too_large" or "timeout") or
            the encoding is bad or unknown (kind "encoding").
    """
    announced = (content_length or "").strip()
    if announced.isascii() and announced.isdigit() and int(announced) > max_wire_bytes:
        raise BodyError(f"body of {announced} bytes, over {max_wire_bytes}", kind="too_large")
    inflater = _inflater(content_encoding)
    body = bytearray()
    wire = 0
    for chunk in chunks:
        # Per chunk, not only per read: a peer sending a byte at a time
        # satisfies every per-read timeout for ever.
        if clock() > deadline_at:
            raise BodyError("body not complete by the fetch's deadline", kind="timeout")
        wire += len(chunk)
        if wire > max_wire_bytes:
            raise BodyError(f"body over {max_wire_bytes} bytes on the wire", kind="too_large")
        if inflater is None:
            body += chunk
            if len(body) > max_bytes:
                raise BodyError(f"body over {max_bytes} bytes", kind="too_large")
        else:
            _inflate(inflater, chunk, body, max_bytes)
    if inflater is not None and not inflater.eof:
        raise BodyError("gzip body cut short", kind="encoding")
    return bytes(body)
