"""Heartbeats from a Nomad cluster's HTTP API (docs/protocol.md section 7).

:class:`NomadPoller` asks a Nomad agent for ``/v1/agent/members``,
``/v1/status/leader`` and (at most every ``nodes_refresh_s``) ``/v1/nodes``,
and turns the answers into a :class:`~rpcproxy.proxy.Heartbeat`. One
implementation serves both ``rpcproxy publish --nomad-addr`` (which puts the
heartbeats on the bus) and ``serve`` with ``nomad_addr`` (which hands them to
the proxy in process).

Every response is validated whole with msgspec before anything is taken from
it, and bounded (bytes read, members decoded): a broken or hostile API gets
a logged failure and publishes nothing, and a fetch that finds no server
publishes nothing either, so a broken API never empties a proxy's list.

Every fetch is bounded as a whole, not only per read: it completes or fails
within its own deadline (:func:`fetch_deadline`), counted on every socket
operation, DNS lookup included, so an agent that trickles its answer a byte
at a time cannot hold the poller; and :meth:`NomadPoller.stop` interrupts a
fetch in flight at once (:class:`StoppableNetwork` shuts its sockets down).
A body is bounded on the wire and after decoding, as it streams: a gzip body
is inflated here, a bounded step at a time (:func:`read_body`), so a small
compressed body cannot grow into a large one in memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

import httpcore
import httpx
import msgspec
import zmq
from msgspec import Meta

from rpcproxy.actors.log_gate import PeerLog
from rpcproxy.bus.service.codec import encode_heartbeat
from rpcproxy.bus.service.resolve import Endpoint, Resolver, numeric_endpoints, shared_resolver
from rpcproxy.bus.wire import heartbeat_topic
from rpcproxy.proxy import Heartbeat, HeartbeatServer
from rpcproxy.proxy.address import Address

log = logging.getLogger(__name__)

DEFAULT_NODES_REFRESH_S = 300.0
"""How often ``/v1/nodes`` is fetched at most: it costs the server O(nodes)."""

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
"""The largest response body read, on the wire and decoded; a longer one is a failed fetch."""

MIN_FETCH_DEADLINE_S = 2.0
"""The shortest bound on a whole fetch, whatever the interval (see :func:`fetch_deadline`)."""

MAX_FETCH_DEADLINE_S = 10.0
"""The longest bound on a whole fetch, whatever the interval (see :func:`fetch_deadline`)."""

INFLATE_STEP_BYTES = 64 * 1024
"""The most bytes one step of gzip decoding produces. A 64 KiB chunk of a
gzip of zeros inflates to some 64 MB: decoded in one call, that is 64 MB in
memory at once and the GIL held for tens of milliseconds (the query socket's
thread waiting); in steps, the bound is checked after each and nothing larger
than a step is ever made."""

DEFAULT_MAX_MEMBERS = 1024
"""The most members (and nodes, counted) decoded from one response."""

MAX_BACKOFF_S = 60.0
"""The longest wait between retries of a failing API."""

ENV_KEYS = {
    "addr": "NOMAD_ADDR",
    "token": "NOMAD_TOKEN",
    "region": "NOMAD_REGION",
    "ca_cert": "NOMAD_CACERT",
    "client_cert": "NOMAD_CLIENT_CERT",
    "client_key": "NOMAD_CLIENT_KEY",
    "tls_server_name": "NOMAD_TLS_SERVER_NAME",
    "skip_verify": "NOMAD_SKIP_VERIFY",
}
"""Nomad's own environment variables, by the setting each one fills."""


class NomadApiError(Exception):
    """A fetch from the Nomad API failed (no answer, a bad status or shape).

    Attributes:
        status: the HTTP status, when one came.
        kind: what went wrong, a fixed word ("network", "timeout", "status",
            "too_large", "encoding", "shape"): the poller's warnings are
            rate-limited per kind.
    """

    def __init__(self, message: str, *, status: int | None = None, kind: str = "network") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def fetch_deadline(interval_s: float) -> float:
    """The bound on one whole fetch of a poller that polls every ``interval_s``.

    The interval itself, so a stalled agent delays the next poll by about one
    poll, within :data:`MIN_FETCH_DEADLINE_S` (a short interval must not fail
    a healthy agent on a loaded host) and :data:`MAX_FETCH_DEADLINE_S` (a long
    one must not leave a stalled agent unnoticed for minutes).
    """
    return min(max(interval_s, MIN_FETCH_DEADLINE_S), MAX_FETCH_DEADLINE_S)


@dataclass(frozen=True, slots=True)
class NomadApiSettings:
    """Where the Nomad API is and how to talk to it.

    Attributes:
        addr: the agent's URL (``http://127.0.0.1:4646`` by default, as Nomad's).
        token: the ACL token sent as ``X-Nomad-Token``; empty sends none.
        region: the region whose servers are kept.
        ca_cert: a CA bundle to verify the API's certificate with.
        client_cert: a client certificate (PEM) for mTLS.
        client_key: its key (PEM).
        tls_server_name: the name the API's certificate must carry.
        skip_verify: do not verify the API's certificate at all.
    """

    addr: str = "http://127.0.0.1:4646"
    token: str = field(default="", repr=False)
    region: str = "global"
    ca_cert: str = ""
    client_cert: str = ""
    client_key: str = ""
    tls_server_name: str = ""
    skip_verify: bool = False

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, **overrides: str | bool | None
    ) -> NomadApiSettings:
        """Nomad's environment variables, each overridden by a non-None keyword.

        Args:
            env: the environment (``os.environ`` by default).
            overrides: settings by attribute name (flags); None leaves the variable's.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for key, var in ENV_KEYS.items():
            if var in env and env[var] != "":
                raw = env[var]
                values[key] = _truthy(raw) if key == "skip_verify" else raw
        for key, value in overrides.items():
            if key not in ENV_KEYS:
                raise TypeError(f"unknown Nomad API setting {key!r}")
            if value is not None:
                values[key] = value
        return replace(cls(), **values)


def _truthy(raw: str) -> bool:
    # Nomad parses NOMAD_SKIP_VERIFY with strconv.ParseBool.
    return raw.strip().lower() in {"1", "t", "true"}


class _Member(msgspec.Struct):
    # Only what section 7 reads; msgspec ignores the other keys.
    Addr: str = ""
    Status: str = ""
    Tags: dict[str, str] = {}


def _members_type(max_members: int) -> type[msgspec.Struct]:
    # Built at run time (defstruct), since the bound is a setting; a class
    # statement would see the annotation as a string under future annotations.
    members = Annotated[list[_Member], Meta(max_length=max_members)]
    return msgspec.defstruct("_Members", [("Members", members), ("ServerName", str, "")])


@dataclass(frozen=True, slots=True)
class NomadView:
    """What one poll saw: the region's servers, the leader, the node count."""

    servers: tuple[HeartbeatServer, ...]
    leader_rpc_addr: str
    num_nodes: int
    server_name: str


def member_server(member: Any, region: str) -> HeartbeatServer | None:
    """The server a member is, under section 7's mapping, or None.

    Args:
        member: one decoded entry of ``Members``.
        region: the proxy's region.
    """
    tags: dict[str, str] = member.Tags
    if member.Status != "alive" or tags.get("role") != "nomad":
        return None
    if tags.get("region") != region or "port" not in tags:
        return None
    host = tags.get("rpc_addr") or member.Addr
    if not host:
        return None
    try:
        port = int(tags["port"])
        major = int(tags.get("vsn", "1"))
        minor = int(tags.get("mvn", "1"))
    except ValueError:
        return None
    if not 0 < port < 65536:
        return None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address, bracketed as Nomad does
    return HeartbeatServer(
        rpc_advertise_addr=f"{host}:{port}",
        rpc_major_version=major,
        rpc_minor_version=minor,
        datacenter=tags.get("dc", ""),
    )


# --- Bounded bodies ------------------------------------------------------------


class BodyError(Exception):
    """A body broke a bound, or its encoding is bad; ``kind`` as :class:`NomadApiError`'s."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _inflater(content_encoding: str) -> zlib._Decompress | None:
    """A gzip decoder for ``Content-Encoding``, or None for an identity body.

    Only gzip is asked for (``Accept-Encoding: gzip``, :func:`make_client`),
    so anything else is refused rather than decoded by a path not bounded here.
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


# --- Sockets a fetch can be bounded and stopped on -------------------------------

_Step = Literal["connect", "read", "write"]

_STEP_ERRORS: dict[_Step, tuple[type[Exception], type[Exception]]] = {
    "connect": (httpcore.ConnectTimeout, httpcore.ConnectError),
    "read": (httpcore.ReadTimeout, httpcore.ReadError),
    "write": (httpcore.WriteTimeout, httpcore.WriteError),
}
"""Per step, the httpcore exceptions for a timeout and for any other failure."""


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
    """httpcore's network for the bridge: each fetch has a deadline, and stop() ends it.

    httpx bounds each socket operation, never a whole request, so an agent
    sending a byte a second holds a fetch for as long as it likes. Here every
    operation (DNS lookup, connect, TLS handshake, read, write) waits no
    longer than what is left of the fetch's deadline (:meth:`deadline`), and
    :meth:`abort` shuts down every socket it made, which wakes a thread
    blocked on one at once, so ``serve`` stops within its budget.

    One fetch at a time (the poller's thread): the deadline is the network's.

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
        raise httpcore.ConnectError("unix sockets are not supported by the Nomad API bridge")

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
            # A kept-alive connection the agent has closed reads as readable (EOF).
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            return bool(poller.poll(0))
        return None


_HTTPCORE_TO_HTTPX: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)
"""httpcore's exceptions as httpx's, most specific first (httpx's own transport maps so)."""


@contextlib.contextmanager
def _httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core, mapped in _HTTPCORE_TO_HTTPX:
            if isinstance(exc, core):
                raise mapped(str(exc), request=request) from exc
        raise


class _Body(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        with _httpx_errors(self._request):
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class _Transport(httpx.BaseTransport):
    """httpx's transport on httpcore's pool over a :class:`StoppableNetwork`.

    httpx's own HTTPTransport takes no network backend, so this is its
    ``handle_request`` on the public httpcore API: HTTP/1.1, no proxy.
    """

    def __init__(self, network: StoppableNetwork, ssl_context: ssl.SSLContext) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            # One fetch at a time; a second connection only while one closes.
            max_connections=2,
            max_keepalive_connections=1,
            network_backend=network,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors(request):
            response = self._pool.handle_request(core)
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream, request),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


class NomadClient(httpx.Client):
    """An httpx client on a :class:`StoppableNetwork` (:func:`make_client` builds it).

    :class:`NomadFetcher` bounds each fetch as a whole on ``network`` and
    ends a fetch in flight with :meth:`abort`.
    """

    def __init__(self, network: StoppableNetwork, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.network = network

    def abort(self) -> None:
        """End the request in flight at once; later ones fail at once too."""
        self.network.abort()


def make_client(settings: NomadApiSettings, *, timeout_s: float = 5.0) -> NomadClient:
    """An httpx client for the API: TLS as configured, the token as a header.

    Its sockets are a :class:`StoppableNetwork`'s, so :class:`NomadFetcher`
    bounds each fetch as a whole and can end one in flight.

    Args:
        settings: the API's address and credentials.
        timeout_s: the bound on each socket operation (connect, read, write);
            a whole fetch has its own (:func:`fetch_deadline`).

    Raises:
        ValueError: a certificate file is missing or unusable; it names the file.
    """
    try:
        context = ssl.create_default_context(cafile=settings.ca_cert or None)
    except (OSError, ValueError) as exc:
        raise ValueError(f"CA file {settings.ca_cert!r} (NOMAD_CACERT): {exc}") from None
    if settings.skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.client_cert:
        try:
            context.load_cert_chain(settings.client_cert, settings.client_key or None)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"client certificate {settings.client_cert!r} / key {settings.client_key!r}"
                f" (NOMAD_CLIENT_CERT, NOMAD_CLIENT_KEY): {exc}"
            ) from None
    # Only gzip: read_body decodes it in bounded steps, and nothing else.
    headers = {"Accept-Encoding": "gzip"}
    if settings.token:
        headers["X-Nomad-Token"] = settings.token
    network = StoppableNetwork()
    return NomadClient(
        network,
        base_url=settings.addr,
        headers=headers,
        transport=_Transport(network, context),
        timeout=timeout_s,
        trust_env=False,
    )


class NomadFetcher:
    """Fetches and validates the three endpoints section 7 reads.

    Each fetch completes or fails within its deadline (``deadline_s``, or
    the one its caller passes), and its body is bounded on the wire and
    decoded (:func:`read_body`). With a client from :func:`make_client` the
    deadline holds on every socket operation and :meth:`abort` ends a fetch
    in flight; with another client only between the body's chunks.

    Args:
        client: the httpx client (:func:`make_client`).
        settings: for the region and the server name.
        max_members: the most members decoded from ``/v1/agent/members``.
        max_body_bytes: the largest body read from any endpoint, on the wire
            and decoded.
        deadline_s: the bound on one whole fetch when the caller gives none.
        clock: monotonic seconds (injected by tests).
    """

    def __init__(
        self,
        client: httpx.Client,
        settings: NomadApiSettings,
        *,
        max_members: int = DEFAULT_MAX_MEMBERS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        deadline_s: float = MAX_FETCH_DEADLINE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._network = client.network if isinstance(client, NomadClient) else None
        self._settings = settings
        self._max_body = max_body_bytes
        self._deadline_s = deadline_s
        self._clock = clock
        self._members_decoder = msgspec.json.Decoder(_members_type(max_members))
        self._leader_decoder = msgspec.json.Decoder(str)
        # Nodes are only counted: each one's content is left unchecked.
        nodes = Annotated[list[msgspec.Raw], Meta(max_length=max(max_members, 100_000))]
        self._nodes_decoder = msgspec.json.Decoder(nodes)

    def abort(self) -> None:
        """End a fetch in flight now and fail every later one (for stop)."""
        if self._network is not None:
            self._network.abort()
        else:
            self._client.close()

    def get(
        self, path: str, params: Mapping[str, str] | None = None, *, deadline_s: float | None = None
    ) -> bytes:
        """The body of a 200 answer to ``GET path``, bounded in bytes and in time.

        Args:
            path: the endpoint.
            params: its query.
            deadline_s: the bound on the whole fetch (the fetcher's by default).

        Raises:
            NomadApiError: no answer, a status other than 200, a body too
                long, badly encoded or not all in by the deadline.
        """
        deadline_s = self._deadline_s if deadline_s is None else deadline_s
        deadline_at = self._clock() + deadline_s
        extensions: dict[str, Any] = {}
        if self._settings.tls_server_name:
            extensions["sni_hostname"] = self._settings.tls_server_name
        bounded = (
            self._network.deadline(deadline_s)
            if self._network is not None
            else contextlib.nullcontext()
        )
        with bounded:
            try:
                request = self._client.build_request(
                    "GET", path, params=params, extensions=extensions
                )
                response = self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise _api_error(path, exc, deadline_s) from exc
            try:
                if response.status_code != 200:
                    raise NomadApiError(
                        f"GET {path}: status {response.status_code}",
                        status=response.status_code,
                        kind="status",
                    )
                return read_body(
                    response.iter_raw(),
                    content_encoding=response.headers.get("Content-Encoding", ""),
                    content_length=response.headers.get("Content-Length"),
                    max_wire_bytes=self._max_body,
                    max_bytes=self._max_body,
                    deadline_at=deadline_at,
                    clock=self._clock,
                )
            except BodyError as exc:
                raise _api_error(path, exc, deadline_s) from None
            except httpx.HTTPError as exc:
                raise _api_error(path, exc, deadline_s) from exc
            finally:
                response.close()

    def members(
        self, *, deadline_s: float | None = None
    ) -> tuple[tuple[HeartbeatServer, ...], str]:
        """The region's servers and the agent's ``ServerName``."""
        body = self.get("/v1/agent/members", deadline_s=deadline_s)
        try:
            decoded: Any = self._members_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise NomadApiError(f"GET /v1/agent/members: {exc}", kind="shape") from exc
        servers = []
        seen: set[str] = set()
        for member in decoded.Members:
            server = member_server(member, self._settings.region)
            if server is not None and server.rpc_advertise_addr not in seen:
                seen.add(server.rpc_advertise_addr)
                servers.append(server)
        return tuple(servers), decoded.ServerName

    def leader(self, *, deadline_s: float | None = None) -> str:
        """``/v1/status/leader``: the leader's RPC address, a JSON string."""
        body = self.get("/v1/status/leader", deadline_s=deadline_s)
        try:
            return self._leader_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise NomadApiError(f"GET /v1/status/leader: {exc}", kind="shape") from exc

    def num_nodes(self, *, deadline_s: float | None = None) -> int:
        """The length of ``/v1/nodes?stale=true``."""
        body = self.get("/v1/nodes", {"stale": "true"}, deadline_s=deadline_s)
        try:
            return len(self._nodes_decoder.decode(body))
        except msgspec.DecodeError as exc:
            raise NomadApiError(f"GET /v1/nodes: {exc}", kind="shape") from exc


def _api_error(path: str, exc: Exception, deadline_s: float) -> NomadApiError:
    """``exc`` from a fetch of ``path`` as a :class:`NomadApiError` of its kind."""
    if isinstance(exc, BodyError):
        kind = exc.kind
    elif isinstance(exc, httpx.TimeoutException):
        kind = "timeout"
    else:
        kind = "network"
    detail = str(exc) or type(exc).__name__
    if kind == "timeout":
        detail += f" (a whole fetch may take {deadline_s:g} s)"
    return NomadApiError(f"GET {path}: {detail}", kind=kind)


class NomadPoller:
    """Polls the API and hands a :class:`Heartbeat` to ``emit`` for each good poll.

    A poll that fails, or finds no server, emits nothing and is retried with
    a doubling backoff (``interval_s`` up to :data:`MAX_BACKOFF_S`); its
    warning is rate-limited per kind of failure (the agent decides how often
    it fails). A 401 or 403 is logged once as an error naming the token
    (never its value). Each fetch has a deadline of its own
    (``fetch_deadline_s``), and :meth:`stop` ends one in flight.
    ``seq`` grows with every heartbeat emitted. Polling every ``interval_s``
    and emitting each good poll covers both section 7's rules: one heartbeat
    per interval, and the members' changes within one.

    Args:
        fetcher: the validated fetches.
        emit: called with each heartbeat (on the poller's thread).
        interval_s: seconds between polls.
        nodes_refresh_s: seconds between two fetches of ``/v1/nodes`` at least.
        publisher: the heartbeats' ``publisher``; the agent's ``ServerName`` by default.
        fetch_deadline_s: the bound on each fetch; :func:`fetch_deadline` of
            ``interval_s`` by default.
        clock: monotonic seconds (injected by tests).
        wait: waits up to its argument in seconds, True when stopped (injected
            by tests; an Event's ``wait`` by default).
    """

    def __init__(
        self,
        fetcher: NomadFetcher,
        emit: Callable[[Heartbeat], None],
        *,
        interval_s: float = 10.0,
        nodes_refresh_s: float = DEFAULT_NODES_REFRESH_S,
        publisher: str | None = None,
        fetch_deadline_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self._fetcher = fetcher
        self._emit = emit
        self._interval_s = interval_s
        self._fetch_deadline_s = (
            fetch_deadline(interval_s) if fetch_deadline_s is None else fetch_deadline_s
        )
        self._peer_log = PeerLog(log, clock=clock)
        self._nodes_refresh_s = nodes_refresh_s
        self._publisher = publisher
        self._clock = clock
        self._stop = threading.Event()
        self._wait = wait if wait is not None else self._stop.wait
        self._nodes: int | None = None
        self._nodes_at: float | None = None
        self._failures = 0
        self._auth_logged = False
        self._thread: threading.Thread | None = None
        self.seq = 0

    def poll_once(self) -> Heartbeat | None:
        """One poll: the heartbeat emitted, or None when nothing was."""
        deadline_s = self._fetch_deadline_s
        try:
            servers, server_name = self._fetcher.members(deadline_s=deadline_s)
            leader = self._fetcher.leader(deadline_s=deadline_s)
            num_nodes = self._refresh_nodes()
        except NomadApiError as exc:
            self._failed(exc)
            return None
        if not servers:
            self._failures += 1
            self._peer_log.warning(
                "empty",
                "nomad API: no alive server in the region; publishing nothing, retrying in %.3g s",
                self.next_delay(),
            )
            return None
        self._failures = 0
        self.seq += 1
        heartbeat = Heartbeat(
            servers=servers,
            num_nodes=num_nodes,
            leader_rpc_addr=leader,
            publisher=self._publisher or server_name or "nomad",
            seq=self.seq,
        )
        self._emit(heartbeat)
        return heartbeat

    def _refresh_nodes(self) -> int:
        now = self._clock()
        due = self._nodes_at is None or now - self._nodes_at >= self._nodes_refresh_s
        if due or self._nodes is None:
            self._nodes = self._fetcher.num_nodes(deadline_s=self._fetch_deadline_s)
            self._nodes_at = now
        return self._nodes

    def _failed(self, exc: NomadApiError) -> None:
        self._failures += 1
        if self._stop.is_set():
            # stop() ended the fetch: nothing went wrong with the agent.
            log.debug("nomad API: %s (stopping)", exc)
            return
        if exc.status in (401, 403):
            if not self._auth_logged:
                self._auth_logged = True
                log.error("nomad API refused the ACL token (NOMAD_TOKEN / --token): %s", exc)
            return
        self._peer_log.warning(
            exc.kind,
            "nomad API: %s; publishing nothing, retrying in %.3g s",
            exc,
            self.next_delay(),
        )

    def next_delay(self) -> float:
        """Seconds until the next poll: the interval, doubled per failure, capped."""
        if self._failures == 0:
            return self._interval_s
        factor = 2.0 ** min(self._failures - 1, 16)
        return min(self._interval_s * factor, max(MAX_BACKOFF_S, self._interval_s))

    def run(self) -> None:
        """Polls until :meth:`stop` (or the injected ``wait`` says stopped)."""
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # a bug must not end the bridge silently
                self._failures += 1
                log.exception("nomad poller: unexpected error")
            if self._wait(self.next_delay()):
                return

    def start(self) -> None:
        """Runs :meth:`run` on a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="rpcproxy-nomad", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stops polling, ends a fetch in flight at once, and joins the thread."""
        self._stop.set()
        self._fetcher.abort()
        if self._thread is not None:
            self._thread.join(timeout_s)


class NomadBridge:
    """``serve`` with ``nomad_addr``: the poller on a thread of its own, in process.

    Its heartbeats take the heartbeat socket's own path: they are published
    on an inproc PUB socket that the heartbeat SUB socket connects to, so the
    same validation, conflation and bounded batches apply
    (bus/service/heartbeats.py), and nothing else reaches the proxy.

    Args:
        context: the process's ZeroMQ context.
        endpoint: the inproc endpoint the PUB socket binds.
        fetcher: the validated fetches.
        region: heartbeats go out on ``heartbeat/<region>``.
        interval_s: seconds between polls.
        nodes_refresh_s: seconds between two ``/v1/nodes`` fetches at least.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        endpoint: str,
        fetcher: NomadFetcher,
        *,
        region: str,
        interval_s: float,
        nodes_refresh_s: float = DEFAULT_NODES_REFRESH_S,
    ) -> None:
        self._context = context
        self._endpoint = endpoint
        self._topic = heartbeat_topic(region)
        self._poller = NomadPoller(
            fetcher, self._send, interval_s=interval_s, nodes_refresh_s=nodes_refresh_s
        )
        self._pub: zmq.Socket[bytes] | None = None
        self._thread = threading.Thread(target=self._run, name="rpcproxy-nomad", daemon=True)

    def start(self) -> None:
        """Binds the PUB socket (here, before the thread uses it) and starts polling."""
        pub: zmq.Socket[bytes] = self._context.socket(zmq.PUB)
        pub.linger = 0
        try:
            pub.bind(self._endpoint)
        except zmq.ZMQError:
            pub.close()
            raise
        self._pub = pub
        # From Thread.start() on, only the thread uses (and closes) the socket.
        self._thread.start()

    def _run(self) -> None:
        try:
            self._poller.run()
        finally:
            if self._pub is not None:
                self._pub.close()

    def _send(self, heartbeat: Heartbeat) -> None:
        assert self._pub is not None
        self._pub.send_multipart([self._topic, encode_heartbeat(heartbeat)])

    def stop(self, timeout_s: float) -> None:
        """Stops polling; a fetch in flight ends at once (its sockets are shut down)."""
        self._poller.stop()
        if self._thread.ident is not None:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
