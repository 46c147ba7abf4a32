"""HTTP/1.x on the wire for the metrics endpoint: parse a request head, render a response.

Pure functions and values, no sockets: :mod:`rpcproxy.bus.service.http_front`
reads bytes and hands them here. Only what the endpoint needs: ``GET`` and
``HEAD`` of a path, one request per connection (every response closes it),
no request bodies. The route table maps a path to a :data:`Route`; anything
else is answered here (404, 405, 400, 431, 505) without running a route.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TypeAlias
from urllib.parse import urlsplit

__all__ = [
    "MAX_HEAD_BYTES",
    "HttpError",
    "Request",
    "Response",
    "Route",
    "head_end",
    "parse_head",
    "render",
    "route_of",
]

MAX_HEAD_BYTES = 8192
"""The request line and headers together; a scrape's head is a few hundred bytes."""

_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Request:
    """A parsed request head.

    Attributes:
        method: ``GET`` or ``HEAD`` (others never reach a route).
        path: the target's path, without the query.
        query: the target's query string, without ``?``.
        headers: lower-case names; repeated headers joined with ``", "``.
    """

    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Response:
    """What a route answers; :func:`render` adds the framing."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


Route: TypeAlias = Callable[[Request], Response]
"""Runs on a worker thread of the front, never on its I/O loop."""


class HttpError(Exception):
    """A request that gets an error response without reaching a route."""

    def __init__(self, status: HTTPStatus, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status.value} {status.phrase}")
        self.response = Response(status.value, f"{status.phrase}\n".encode(), headers=headers or {})


def head_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """Where the head in ``buffer`` ends (past its blank line), or -1 if not yet.

    ``start`` is where the previous search gave up, so a head arriving a byte
    at a time is scanned once in all, not once per byte. Bare ``LF`` line
    ends are accepted as RFC 9112 allows.
    """
    start = max(0, start - 3)
    crlf = buffer.find(b"\r\n\r\n", start)
    lf = buffer.find(b"\n\n", start)
    ends = [i + 4 for i in (crlf,) if i >= 0] + [i + 2 for i in (lf,) if i >= 0]
    return min(ends) if ends else -1


def parse_head(head: bytes) -> Request:
    """The request in ``head`` (the bytes up to and including its blank line).

    Raises:
        HttpError: 400 for a malformed head, 405 for a method other than
            GET and HEAD, 505 for a version other than HTTP/1.x.
    """
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise HttpError(HTTPStatus.BAD_REQUEST)
    method, target, version = parts
    if not version.startswith("HTTP/"):
        raise HttpError(HTTPStatus.BAD_REQUEST)
    if not version.startswith("HTTP/1."):
        raise HttpError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        # A name with spaces (or a folded line) is refused, as RFC 9112 asks.
        if not colon or not name or name != name.strip():
            raise HttpError(HTTPStatus.BAD_REQUEST)
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if method not in _METHODS:
        raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, {"Allow": "GET, HEAD"})
    split = urlsplit(target)  # origin form ("/metrics") or absolute form
    return Request(method, split.path or "/", split.query, headers)


def route_of(routes: Mapping[str, Route], request: Request) -> Route:
    """The route serving ``request``.

    Raises:
        HttpError: 404 for a path with no route.
    """
    route = routes.get(request.path)
    if route is None:
        raise HttpError(HTTPStatus.NOT_FOUND)
    return route


def render(response: Response, *, head_only: bool = False) -> bytes:
    """The bytes of ``response``, closing the connection (one request each).

    ``head_only`` answers a HEAD: the same headers, ``Content-Length``
    included, without the body.
    """
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = ""
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in response.headers.items()),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body
