"""A stand-in's Nomad RPC side: ``Status.Ping`` over msgpack-rpc (docs/protocol.md section 4).

What a Nomad server does with a connection, in small: read the first byte
(``0x01`` plain RPC; ``0x04`` TLS first, when the stand-in has a server
context, then ``0x01`` inside it), then answer msgpack-rpc requests, each a
header and a body, until the peer closes. ``Status.Ping`` gets an empty
``Error`` and its ``Seq`` back; other methods get ``net/rpc``'s error. A
request that does not decode closes the connection, as Nomad's server does.

Two parts, as in :mod:`bus.standins.standin`:

- :class:`NomadResponder` is what is answered, with no socket in sight;
- :class:`NomadRpcListener` is the plumbing: a listening TCP socket, an
  accept thread, one thread per connection. Bounded whatever peers do: at
  most ``max_connections`` at once (one more is closed at once), each closed
  on garbage, on a value over ``max_value_bytes``, or after
  ``idle_timeout_s`` without a byte.

It offers the life cycle :class:`~bus.standins.standin.ServerStandIn` drives
(start, stop, wait, ``alive``, ``paused``, ``endpoint``), so the stand-in can
run either protocol behind the same calls.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import threading
import time
from typing import Final

from rpcproxy.bus.probes.msgpackrpc import (
    RPC_NOMAD,
    RPC_TLS,
    STATUS_PING,
    FramingError,
    RequestHeader,
    ValueSplitter,
    decode_request_header,
    encode_response,
)

__all__ = ["NomadResponder", "NomadRpcListener", "parse_tcp_bind"]

log = logging.getLogger(__name__)

MAX_CONNECTIONS: Final = 128
IDLE_TIMEOUT_S: Final = 30.0
MAX_VALUE_BYTES: Final = 64 * 1024
_RECV_BYTES: Final = 4096


class NomadResponder:
    """Answers Nomad RPC requests as a server's ``Status`` endpoint would.

    Attributes:
        pings: how many ``Status.Ping`` requests were answered.
    """

    def __init__(self) -> None:
        self.pings = 0

    def __call__(self, header: RequestHeader) -> bytes:
        """The reply (header and body) to a request with this header."""
        method = header.service_method
        if method == STATUS_PING:
            self.pings += 1
            return encode_response(header.seq, method)
        service, dot, _ = method.partition(".")
        what = "method" if dot and service == "Status" else "service"
        return encode_response(header.seq, method, f"rpc: can't find {what} {method[:200]}")


def parse_tcp_bind(bind: str) -> tuple[socket.AddressFamily, str, int]:
    """``tcp://host:port`` (``*`` for any host or port, ``[v6]`` brackets) as
    (family, host, port); ``*`` as host listens on both families when it can.

    Raises:
        ValueError: not a ``tcp://`` endpoint.
    """
    rest = bind.removeprefix("tcp://")
    host, sep, port_text = rest.rpartition(":")
    if rest == bind or not sep or not host:
        raise ValueError(f"expected tcp://host:port, got {bind!r}")
    if port_text == "*":
        port = 0
    elif port_text.isascii() and port_text.isdigit() and int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise ValueError(f"bad port in {bind!r}")
    if host == "*":
        return (
            (socket.AF_INET6, "::", port)
            if socket.has_dualstack_ipv6()
            else (
                socket.AF_INET,
                "0.0.0.0",
                port,
            )
        )
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, host[1:-1], port
    return socket.AF_INET, host, port


class NomadRpcListener:
    """Serves ``responder`` on a TCP port until stopped.

    ``paused`` is a plain attribute, read for every request: requests that
    arrive while it is set are read and dropped (a gray failure), so
    resuming does not answer a backlog of stale pings.

    Args:
        bind: ``tcp://host:port``; port ``*`` picks a free one.
        responder: what answers each request.
        tls: a server-side context; with it, a connection may start with
            ``0x04`` and a TLS handshake. Without it ``0x04`` is refused.
        max_connections: connections served at once.
        idle_timeout_s: a connection with no byte for this long is closed.
        max_value_bytes: the largest request header or body.
    """

    name = "rpcproxy-nomad-standin"

    def __init__(
        self,
        bind: str,
        responder: NomadResponder,
        *,
        tls: ssl.SSLContext | None = None,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_value_bytes: int = MAX_VALUE_BYTES,
    ) -> None:
        self._family, self._host, self._port = parse_tcp_bind(bind)
        self._responder = responder
        self._tls = tls
        self._max_connections = max_connections
        self._idle_timeout_s = idle_timeout_s
        self._max_value_bytes = max_value_bytes
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self.endpoint = ""
        self.paused = False
        self.refused = 0
        """Connections closed at once because ``max_connections`` were open."""
        self.dropped = 0
        """Requests read and not answered because ``paused`` was set."""

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def connections(self) -> int:
        """Connections being served now."""
        with self._lock:
            return len(self._conns)

    # -- life cycle ---------------------------------------------------------------

    def start(self, timeout_s: float = 5.0) -> None:
        """Bind and listen here (so a bind error is raised to the caller), then
        accept on a daemon thread.

        Raises:
            RuntimeError: already started.
            OSError: the bind failed; nothing is left open.
        """
        if self._thread is not None:
            raise RuntimeError(f"{self.name} was already started")
        listener = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            # A restart binds the port again while old connections linger in
            # TIME_WAIT.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._family == socket.AF_INET6 and self._host == "::":
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            listener.bind((self._host, self._port))
            listener.listen(64)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            self._close_wake()
            raise
        host, port = listener.getsockname()[:2]
        shown = f"[{host}]" if self._family == socket.AF_INET6 else host
        self.endpoint = f"tcp://{shown}:{port}"
        self._thread = threading.Thread(
            target=self._accept_loop, args=(listener,), name=self.name, daemon=True
        )
        try:
            self._thread.start()
        except BaseException:
            listener.close()
            self._close_wake()
            raise

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the listener and every connection; wait up to ``timeout_s``.

        Once this returns (in time) nothing listens on the port: connecting
        is refused, as with a dead server.
        """
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout_s
        self._stopping.set()
        with contextlib.suppress(OSError):  # Already woken, or the thread is gone.
            self._wake_w.send(b"x")
        self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            conns = list(self._conns.items())
        for conn, _ in conns:
            _shutdown(conn)
        for _, thread in conns:
            thread.join(max(0.0, deadline - time.monotonic()))

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the accept thread has ended; whether it has."""
        if self._thread is not None:
            self._thread.join(timeout_s)
        return not self.alive

    def _close_wake(self) -> None:
        self._wake_r.close()
        self._wake_w.close()

    # -- accepting ----------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            try:
                while not self._stopping.is_set():
                    for key, _ in selector.select():
                        if key.fileobj is listener and not self._stopping.is_set():
                            self._accept(listener)
            finally:
                # Closed by this thread before it ends, so stop() returning
                # means the port refuses connections.
                listener.close()
                self._close_wake()

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return  # The peer gave up meanwhile, or out of descriptors.
        conn.setblocking(True)
        thread = threading.Thread(target=self._serve, args=(conn,), name=self.name, daemon=True)
        with self._lock:
            full = len(self._conns) >= self._max_connections
            if not full:
                self._conns[conn] = thread
        if full:
            self.refused += 1
            conn.close()
            return
        try:
            thread.start()
        except RuntimeError:  # No thread to be had: this peer is turned away.
            with self._lock:
                self._conns.pop(conn, None)
            conn.close()

    # -- one connection -------------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        sock: socket.socket = conn
        try:
            sock.settimeout(self._idle_timeout_s)
            first = _recv_byte(sock)
            if first == RPC_TLS and self._tls is not None:
                sock = self._upgrade(conn)
                first = _recv_byte(sock)
            if first != RPC_NOMAD:
                return  # Not a protocol this stand-in speaks: hang up.
            self._answer(sock)
        except (OSError, ValueError, FramingError) as exc:
            # Timeouts, resets, TLS alerts, garbage: this connection ends.
            log.debug("nomad stand-in: connection closed: %s", exc)
        finally:
            with self._lock:
                self._conns.pop(conn, None)
                self._conns.pop(sock, None)
            sock.close()

    def _upgrade(self, conn: socket.socket) -> ssl.SSLSocket:
        assert self._tls is not None
        tls = self._tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        with self._lock:
            # The plain socket object is detached now: stop() must reach this one.
            thread = self._conns.pop(conn, None)
            if thread is not None:
                self._conns[tls] = thread
        if self._stopping.is_set():
            raise OSError("stopping")
        tls.do_handshake()
        return tls

    def _answer(self, sock: socket.socket) -> None:
        splitter = ValueSplitter(self._max_value_bytes)
        header: RequestHeader | None = None
        while not self._stopping.is_set():
            data = sock.recv(_RECV_BYTES)
            if not data:
                return
            for value in splitter.feed(data):
                if header is None:
                    header = decode_request_header(value)
                    continue
                # The body is read whole and not looked at: a ping's is {}.
                if self.paused:
                    self.dropped += 1
                else:
                    sock.sendall(self._responder(header))
                header = None


def _recv_byte(sock: socket.socket) -> bytes:
    return sock.recv(1)


def _shutdown(sock: socket.socket) -> None:
    """Wake the connection's thread out of recv; it closes the socket itself.

    The plain ``socket.shutdown``, also for a TLS socket: ``SSLSocket.shutdown``
    would drop the SSL object under the thread using it.
    """
    with contextlib.suppress(OSError):  # Not connected any more.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
