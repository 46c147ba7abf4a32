"""The sockets a fetch is bounded and stopped on (part of :mod:`.http_fetch`).

:class:`StoppableNetwork` is an httpcore network backend (httpcore's public
``NetworkBackend`` interface), so httpx's client and httpcore's connection
pool run on it unchanged. It adds what httpx lacks: a deadline on a whole
fetch, counted on every socket operation (DNS lookup, connect, TLS
handshake, each read and write), and :meth:`StoppableNetwork.abort`, which
another thread calls to end a fetch in flight at once. Both hold on a TCP
connection and on a Unix socket's (Nomad's Task API) alike.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import httpcore

from rpcproxy.bus.net.resolve import Endpoint, Resolver, numeric_endpoints, shared_resolver
from rpcproxy.proxy import Address

__all__ = ["StoppableNetwork"]

_Step = Literal["connect", "read", "write"]

_STEP_ERRORS: dict[_Step, tuple[type[Exception], type[Exception]]] = {
    "connect": (httpcore.ConnectTimeout, httpcore.ConnectError),
    "read": (httpcore.ReadTimeout, httpcore.ReadError),
    "write": (httpcore.WriteTimeout, httpcore.WriteError),
}
"""Per step, the httpcore exceptions for a timeout and for any other failure."""

_UNIX_RETRY_S = 0.05
"""How often a connect to a Unix socket whose listener's backlog is full is tried again."""


@contextlib.contextmanager
def _mapped(step: _Step) -> Iterator[None]:
    timeout, failure = _STEP_ERRORS[step]
    try:
        yield
    except TimeoutError as exc:  # socket.timeout
        raise timeout(str(exc) or "timed out") from exc
    except OSError as exc:
        raise failure(str(exc)) from exc


class StoppableNetwork(httpcore.NetworkBackend):
    """httpcore's network for a bounded fetch: each fetch has a deadline, and abort() ends it.

    httpx bounds each socket operation, never a whole request, so a server
    sending a byte a second holds a fetch for as long as it likes. Here every
    operation (DNS lookup, connect, TLS handshake, read, write) waits no
    longer than what is left of the fetch's deadline (:meth:`deadline`), and
    :meth:`abort` shuts down every socket it made, which wakes a thread
    blocked on one at once, so ``serve`` stops within its budget.

    One fetch at a time (one thread fetches, another may abort): the deadline
    is the network's, not each request's.

    Args:
        clock: monotonic seconds.
        resolver: where host names are looked up, off this thread, so a
            lookup that hangs ends at the deadline or at :meth:`abort` too.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, resolver: Resolver | None = None
    ) -> None:
        self._clock = clock
        self._resolver = resolver if resolver is not None else shared_resolver()
        # Guards the fields below; abort() runs on another thread than the fetch.
        self._lock = threading.Lock()
        self._deadline: float | None = None
        self._aborted = False
        self._streams: set[_Stream] = set()
        self._wakers: set[threading.Event] = set()
        self._stopped = threading.Event()

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Bound every operation in the block by ``seconds`` from now, together."""
        with self._lock:
            self._deadline = self._clock() + seconds
        try:
            yield
        finally:
            with self._lock:
                self._deadline = None

    @property
    def aborted(self) -> bool:
        return self._stopped.is_set()

    def abort(self) -> None:
        """End the fetch in flight and refuse every later one (for stop)."""
        with self._lock:
            self._aborted = True
            self._stopped.set()
            wakers = list(self._wakers)
            # Under the lock: a stream forgets itself under it before closing
            # its socket, so no descriptor is shut down after being reused.
            for stream in self._streams:
                stream.interrupt()
        for waker in wakers:
            waker.set()

    def wait_for(self, timeout: float | None, step: _Step) -> float | None:
        """How long one operation may wait: its timeout, cut to the deadline's rest.

        Raises:
            httpcore's timeout for ``step`` when the deadline has passed, its
            error when the network was aborted.
        """
        expired, failure = _STEP_ERRORS[step]
        with self._lock:
            aborted, deadline = self._aborted, self._deadline
        if aborted:
            raise failure("stopped")
        if deadline is None:
            return timeout
        left = deadline - self._clock()
        if left <= 0:
            raise expired("the fetch's deadline passed")
        return left if timeout is None else min(timeout, left)

    def _track(self, stream: _Stream) -> None:
        with self._lock:
            if self._aborted:
                raise httpcore.ConnectError("stopped")
            self._streams.add(stream)

    def _forget(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def _resolve(self, host: str, port: int, timeout: float | None) -> list[Endpoint]:
        address = Address(host, port)
        found = numeric_endpoints(address)
        if found is not None:
            return found
        resolved: list[Endpoint] = []
        done = threading.Event()

        def on_resolved(endpoints: list[Endpoint]) -> None:
            resolved.extend(endpoints)
            done.set()

        with self._lock:
            if self._aborted:
                raise httpcore.ConnectError("stopped")
            self._wakers.add(done)
        try:
            lookup = self._resolver.resolve(address, on_resolved)
            if lookup is None:
                raise httpcore.ConnectError(f"cannot resolve {host!r}: too many lookups running")
            wait = self.wait_for(timeout, "connect")
            if not done.wait(wait) or self.aborted:
                self._resolver.cancel(lookup, on_resolved)
                self.wait_for(None, "connect")  # raises: stopped or past the deadline
                raise httpcore.ConnectTimeout(f"no address for {host!r} within {wait:.3g} s")
        finally:
            with self._lock:
                self._wakers.discard(done)
        if not resolved:
            raise httpcore.ConnectError(f"cannot resolve {host!r}")
        return resolved

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        failure: Exception = httpcore.ConnectError(f"no address for {host!r}")
        for family, sockaddr in self._resolve(host, port, timeout):
            with _mapped("connect"):  # out of descriptors, say: a failed fetch, not a bug
                sock = socket.socket(family, socket.SOCK_STREAM)
            # Tracked before connecting, so abort() wakes a connect that hangs.
            stream = _Stream(self, sock)
            try:
                with _mapped("connect"):
                    for option in socket_options or ():
                        sock.setsockopt(*option)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    if local_address is not None:
                        sock.bind((local_address, 0))
                    sock.settimeout(self.wait_for(timeout, "connect"))
                    sock.connect(sockaddr)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                stream.close()
                if self.aborted:
                    raise
                failure = exc
                continue
            return stream
        raise failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """A stream on the Unix socket at ``path`` (Nomad's Task API), bounded as a TCP one.

        Its reads and writes are a :class:`_Stream`'s, so the fetch's
        deadline and :meth:`abort` hold on them as on TCP's.
        """
        with _mapped("connect"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Tracked before connecting, as in connect_tcp: abort() ends its wait.
        stream = _Stream(self, sock)
        try:
            with _mapped("connect"):
                for option in socket_options or ():
                    sock.setsockopt(*option)
                self._connect_unix(sock, path, timeout)
        except BaseException:
            stream.close()
            raise
        return stream

    def _connect_unix(self, sock: socket.socket, path: str, timeout: float | None) -> None:
        """Connect ``sock`` to ``path``, waiting out a full backlog until the time is up.

        A non-blocking connect to a Unix listener whose backlog is full fails
        at once (EAGAIN), where TCP's waits for the listener: so it is tried
        again every :data:`_UNIX_RETRY_S`, up to ``timeout`` and the fetch's
        deadline, and an abort ends the wait. Never a blocking connect,
        which neither a deadline nor a shutdown would end.
        """
        until = None if timeout is None else self._clock() + timeout
        while True:
            left = None if until is None else until - self._clock()
            if left is not None and left <= 0:
                raise httpcore.ConnectTimeout(f"{path}: the listener's backlog stayed full")
            wait = self.wait_for(left, "connect")  # raises when aborted or past the deadline
            step = _UNIX_RETRY_S if wait is None else min(wait, _UNIX_RETRY_S)
            sock.settimeout(step)
            try:
                sock.connect(path)
            except BlockingIOError:
                self._stopped.wait(step)
                continue
            return

    def sleep(self, seconds: float) -> None:
        # httpcore sleeps between connect retries (none are configured); a stop wakes it.
        self._stopped.wait(seconds)


class _Stream(httpcore.NetworkStream):
    """One socket of a :class:`StoppableNetwork`: every wait cut to the fetch's deadline."""

    def __init__(self, network: StoppableNetwork, sock: socket.socket) -> None:
        self.sock = sock
        self._network = network
        try:
            network._track(self)
        except BaseException:
            sock.close()
            raise

    def interrupt(self) -> None:
        """Shut the socket down: a thread blocked on it wakes now (the network's lock held)."""
        with contextlib.suppress(OSError):
            # socket.socket's own shutdown, also for a TLS socket: ssl's
            # version would drop its SSL object under the reading thread.
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _mapped("read"):
            self.sock.settimeout(self._network.wait_for(timeout, "read"))
            return self.sock.recv(max_bytes)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        with _mapped("write"):
            while buffer:
                self.sock.settimeout(self._network.wait_for(timeout, "write"))
                sent = self.sock.send(buffer)
                buffer = buffer[sent:]

    def close(self) -> None:
        self._network._forget(self)
        self.sock.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        try:
            with _mapped("connect"):
                # The handshake apart from the wrap, so the TLS socket is the
                # one abort() shuts down while the handshake waits.
                tls = ssl_context.wrap_socket(
                    self.sock, server_hostname=server_hostname, do_handshake_on_connect=False
                )
                self.sock = tls
                tls.settimeout(self._network.wait_for(timeout, "connect"))
                tls.do_handshake()
        except BaseException:
            self.close()
            raise
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object" and isinstance(self.sock, ssl.SSLSocket):
            # httpcore asks it only for selected_alpn_protocol(), which the socket has.
            return self.sock
        if info == "client_addr":
            return self.sock.getsockname()
        if info == "server_addr":
            return self.sock.getpeername()
        if info == "socket":
            return self.sock
        if info == "is_readable":
            # A kept-alive connection the server has closed reads as readable (EOF).
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            return bool(poller.poll(0))
        return None
