"""A Nomad-shaped HTTP API on loopback, for the section 7 bridge's tests.

A tiny ``http.server`` thread serving the shapes of Nomad's documented
responses: ``/v1/agent/members`` with 0.x tags (``vsn``, ``mvn``, no
``rpc_addr``) and 1.x tags (``rpc_addr``, ``id``, ``raft_vsn``, ``build``...),
``/v1/status/leader`` and ``/v1/nodes``. Tests change what it serves between
polls, and can make it misbehave: trickle a body a byte at a time, never
answer, or send a gzip bomb (:func:`gzip_of_zeros`) as ``Content-Encoding: gzip``.
It serves over TCP, or on a Unix socket as Nomad's Task API does
(``nomad_api(unix=True)``), where a token may be required (``required_token``).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import select
import socket
import socketserver
import ssl
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.helpers import socket_dir


def member_0x(name: str, addr: str, *, status: str = "alive", region: str = "global") -> Any:
    """A server member as Nomad 0.x reports it: no ``rpc_addr`` tag."""
    return {
        "Name": f"{name}.{region}",
        "Addr": addr,
        "Port": 4648,
        "Status": status,
        "ProtocolCur": 2,
        "Tags": {
            "role": "nomad",
            "region": region,
            "dc": "dc1",
            "port": "4647",
            "vsn": "1",
            "mvn": "1",
            "bootstrap": "1",
            "expect": "3",
        },
    }


def member_1x(name: str, rpc_addr: str, *, dc: str = "dc2", region: str = "global") -> Any:
    """A server member as Nomad 1.x reports it: ``rpc_addr``, ``id``, ``raft_vsn``..."""
    return {
        "Name": f"{name}.{region}",
        "Addr": "10.9.9.9",
        "Port": 4648,
        "Status": "alive",
        "Tags": {
            "role": "nomad",
            "region": region,
            "dc": dc,
            "port": "4647",
            "rpc_addr": rpc_addr,
            "id": "c3b9b0e6-0000-0000-0000-000000000000",
            "raft_vsn": "3",
            "build": "1.7.2",
            "vsn": "1",
            "mvn": "1",
            "expect": "3",
        },
    }


def gzip_of_zeros(size: int) -> bytes:
    """A valid gzip of ``size`` zero bytes (about 1 KB per MB: a gzip bomb), made quickly.

    Compressing a gigabyte takes seconds; but after a full flush deflate
    starts afresh, so every MiB of zeros compresses to the same bytes, and
    the body is one MiB's bytes repeated (the CRC still runs over it all).
    """
    mib = bytes(1 << 20)
    whole, rest = divmod(size, len(mib))
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    segment = deflate.compress(mib) + deflate.flush(zlib.Z_FULL_FLUSH)
    last = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    tail = last.compress(bytes(rest)) + last.flush()
    crc = 0
    for _ in range(whole):
        crc = zlib.crc32(mib, crc)
    crc = zlib.crc32(bytes(rest), crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # gzip, deflate, no name, no mtime
    trailer = crc.to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little")
    return header + segment * whole + tail + trailer


def wait_for_hangup(connection: socket.socket, seconds: float, closing: threading.Event) -> bool:
    """Wait up to ``seconds`` for the client of ``connection`` to hang up: True when it did.

    Ends early (False) when ``closing`` is set. Looks in slices of 50 ms, to
    see ``closing`` too, and never reads what the client sent.
    """
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0 and not closing.is_set():
        readable, _, _ = select.select([connection], [], [], min(left, 0.05))
        if readable and not _peek(connection):
            return True
    return False


def write_body(
    handler: Any, body: bytes, trickle_s: float | None, trickling: threading.Event
) -> None:
    """Write ``body`` whole, or a byte every ``trickle_s`` (setting ``trickling``)
    until the client hangs up or the stand-in closes (``handler.wait_hangup``)."""
    if trickle_s is None:
        handler.wfile.write(body)
        return
    trickling.set()
    for index in range(len(body)):
        handler.wfile.write(body[index : index + 1])
        if handler.wait_hangup(trickle_s):
            return


@contextlib.contextmanager
def serving(
    handler: type[BaseHTTPRequestHandler],
    tls: ssl.SSLContext | None,
    closing: threading.Event,
    *,
    unix: bool = False,
) -> Iterator[str]:
    """Serve ``handler`` on a loopback port (HTTPS with ``tls``), or on a Unix
    socket with ``unix``; yields the base URL (``unix:///path`` for a socket).

    On the way out ``closing`` is set first, so handlers that hold, trickle
    or stay silent end, and then the server is shut down and its thread joined.
    """
    with contextlib.ExitStack() as stack:
        server: socketserver.BaseServer
        if unix:
            path = os.path.join(stack.enter_context(socket_dir()), "api.sock")
            server = _UnixHTTPServer(path, handler)
            url = f"unix://{path}"
        else:
            tcp = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            scheme = "http"
            if tls is not None:
                scheme = "https"
                tcp.socket = tls.wrap_socket(tcp.socket, server_side=True)
            server, url = tcp, f"{scheme}://127.0.0.1:{tcp.server_address[1]}"
        # A short poll interval: shutdown() waits up to one, at every test's teardown.
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        try:
            yield url
        finally:
            closing.set()
            server.shutdown()
            server.server_close()
            thread.join(5)


def _peek(connection: socket.socket) -> bytes:
    """What the client sent next, without reading it; b"" when it hung up."""
    try:
        peeked: bytes = connection.recv(1, socket.MSG_PEEK)
    except OSError:  # a reset: the client closed with our bytes unread
        return b""
    return peeked


class NomadFixture:
    """What the fixture serves; tests change it between polls.

    Attributes:
        raw: served as is on every path instead of the documents.
        compress: gzip whatever is served (with ``Content-Encoding: gzip``).
        encoding: a ``Content-Encoding`` header to send (with ``raw``, a body
            already encoded).
        trickle_s: when set, bodies are sent one byte per this many seconds.
        silent: when set, requests are read and never answered.
        required_token: when set, a request without this ``X-Nomad-Token``
            gets a 403, as the Task API answers (it always requires a token).
        hosts: the ``Host`` header of each request.
        arrivals: ``time.monotonic()`` of each request.
        hangups: ``time.monotonic()`` when a client hung up on a trickled
            body (seen within 50 ms), so ``hangups[i] - arrivals[i]`` is how
            long the fetch lasted, as the agent saw it.
        trickling: set when a trickled body has started.
    """

    def __init__(self) -> None:
        self.members: list[Any] = [member_0x("a", "10.0.0.1"), member_1x("b", "10.0.0.2")]
        self.leader = "10.0.0.1:4647"
        self.nodes = 3
        self.status = 200
        self.raw: bytes | None = None
        self.compress = False
        self.encoding: str | None = None
        self.trickle_s: float | None = None
        self.silent = False
        self.required_token: str | None = None
        self.tokens: list[str | None] = []
        self.hosts: list[str | None] = []
        self.paths: list[str] = []
        self.arrivals: list[float] = []
        self.hangups: list[float] = []
        self.trickling = threading.Event()
        self.closing = threading.Event()
        """Set when the fixture closes: trickling and silent handlers end."""

    def body(self, path: str) -> bytes:
        if self.raw is not None:
            return self.raw
        if self.compress:
            return gzip.compress(self.document(path))
        return self.document(path)

    def document(self, path: str) -> bytes:
        if path.startswith("/v1/agent/members"):
            doc: Any = {
                "ServerName": "a.global",
                "ServerRegion": "global",
                "ServerDC": "dc1",
                "Members": self.members,
            }
        elif path.startswith("/v1/status/leader"):
            doc = self.leader
        elif path.startswith("/v1/nodes"):
            doc = [{"ID": f"n{i}", "Status": "ready"} for i in range(self.nodes)]
        else:
            doc = {}
        return json.dumps(doc).encode()


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """``ThreadingHTTPServer``'s twin on a Unix socket (the Task API's transport)."""

    daemon_threads = True


@contextlib.contextmanager
def nomad_api(
    tls: ssl.SSLContext | None = None, fixture: NomadFixture | None = None, *, unix: bool = False
) -> Iterator[tuple[NomadFixture, str]]:
    """Serves a :class:`NomadFixture` on loopback; yields it and its URL.

    Args:
        tls: when set, the API is HTTPS with this server context (a
            handshake that fails drops that connection only).
        fixture: what to serve (a subclass may answer its own way); a new
            :class:`NomadFixture` by default.
        unix: serve on a Unix socket in a fresh directory, as the Task API
            does; the URL is then ``unix:///that/dir/api.sock``.
    """
    state = NomadFixture() if fixture is None else fixture

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            token = self.headers.get("X-Nomad-Token")
            state.tokens.append(token)
            state.hosts.append(self.headers.get("Host"))
            state.paths.append(self.path)
            state.arrivals.append(time.monotonic())
            if state.silent:
                state.closing.wait()
                return
            refused = state.required_token is not None and token != state.required_token
            status = 403 if refused else state.status
            body = b"Permission denied" if refused else state.body(self.path)
            # The client hangs up on a body it refuses (too large, too slow).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                encoding = "gzip" if state.compress and state.raw is None else state.encoding
                if encoding is not None and not refused:
                    self.send_header("Content-Encoding", encoding)
                self.end_headers()
                write_body(self, body, state.trickle_s, state.trickling)

        def wait_hangup(self, seconds: float) -> bool:
            """Wait ``seconds``; True (early) when the client hangs up or the fixture closes."""
            if wait_for_hangup(self.connection, seconds, state.closing):
                state.hangups.append(time.monotonic())
                return True
            return state.closing.is_set()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(Handler, tls, state.closing, unix=unix) as url:
        yield state, url
