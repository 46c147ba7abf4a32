"""Bounded, stoppable HTTP GETs: where the proxy fetches from an HTTP API.

The sources that learn servers over HTTP (Nomad's API, docs/protocol.md
section 7, in :mod:`.nomad_http`; Consul's catalog, section 10) fetch
through this layer, on one maintained client (httpx) with every bound:

* each whole fetch has a deadline of its own (:func:`fetch_deadline` of the
  poll interval), counted on every socket operation, DNS lookup included,
  so a server that trickles its answer a byte at a time cannot hold its
  poller (:class:`~.http_fetch_network.StoppableNetwork`);
* :meth:`HttpFetcher.abort` ends a fetch in flight at once, from another
  thread (the network shuts its sockets down), so a stop waits on no timeout;
* a body is bounded on the wire and after decoding, as it streams: gzip is
  inflated here, a bounded step at a time
  (:func:`~.http_fetch_body.read_body`), so a small compressed body cannot
  grow into a large one in memory;
* every failure is a :class:`FetchError` of a fixed ``kind``, so a poller
  can rate-limit its warnings per kind;
* a body is validated whole with msgspec before anything is taken from it
  (:meth:`HttpFetcher.get_decoded`), and an API's refusal of its token is
  logged once, naming where the token is set (:class:`TokenRefusals`).

:func:`make_fetch_client` builds the client (TLS, headers) and
:class:`HttpFetcher` fetches with it; what a source asks for, and the
shapes it decodes the answers with, are the source's.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpcore
import httpx
import msgspec

from rpcproxy.bus.service.http_fetch_body import BodyError, read_body
from rpcproxy.bus.service.http_fetch_network import StoppableNetwork

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_FETCH_DEADLINE_S",
    "MIN_FETCH_DEADLINE_S",
    "ClientTls",
    "FetchClient",
    "FetchError",
    "HttpFetcher",
    "TokenRefusals",
    "fetch_deadline",
    "make_fetch_client",
]

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
"""The largest response body read, on the wire and decoded; a longer one is a failed fetch."""

MIN_FETCH_DEADLINE_S = 2.0
"""The shortest bound on a whole fetch, whatever the interval (see :func:`fetch_deadline`)."""

MAX_FETCH_DEADLINE_S = 10.0
"""The longest bound on a whole fetch, whatever the interval (see :func:`fetch_deadline`)."""

_T = TypeVar("_T")


class FetchError(Exception):
    """A fetch failed (no answer, a bad status, a body out of bounds or of a bad shape).

    Attributes:
        status: the HTTP status, when one came.
        kind: what went wrong, a fixed word ("network", "timeout", "status",
            "too_large", "encoding"; "shape" when the source cannot decode
            what it fetched): pollers rate-limit their warnings per kind.
    """

    def __init__(self, message: str, *, status: int | None = None, kind: str = "network") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def fetch_deadline(interval_s: float) -> float:
    """The bound on one whole fetch of a poller that polls every ``interval_s``.

    The interval itself, so a stalled server delays the next poll by about
    one poll, within :data:`MIN_FETCH_DEADLINE_S` (a short interval must not
    fail a healthy server on a loaded host) and :data:`MAX_FETCH_DEADLINE_S`
    (a long one must not leave a stalled server unnoticed for minutes).
    """
    return min(max(interval_s, MIN_FETCH_DEADLINE_S), MAX_FETCH_DEADLINE_S)


# --- The client: httpx on a StoppableNetwork -----------------------------------------


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
    ``handle_request`` on the public httpcore API: HTTP/1.1, no proxy. With
    ``unix_socket``, every connection is made to that socket
    (:meth:`StoppableNetwork.connect_unix_socket`) whatever the URL's host.
    """

    def __init__(
        self, network: StoppableNetwork, ssl_context: ssl.SSLContext, unix_socket: str = ""
    ) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            # One fetch at a time; a second connection only while one closes.
            max_connections=2,
            max_keepalive_connections=1,
            uds=unix_socket or None,
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


class FetchClient(httpx.Client):
    """An httpx client on a :class:`StoppableNetwork` (:func:`make_fetch_client` builds it).

    :class:`HttpFetcher` bounds each fetch as a whole on ``network`` and
    ends a fetch in flight with :meth:`abort`.
    """

    def __init__(self, network: StoppableNetwork, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.network = network

    def abort(self) -> None:
        """End the request in flight at once; later ones fail at once too."""
        self.network.abort()


@dataclass(frozen=True, slots=True)
class ClientTls:
    """How a client checks an API's certificate and presents its own.

    Attributes:
        ca_cert: a CA bundle to verify the API's certificate with (the
            system's when empty).
        client_cert: a client certificate (PEM) for mTLS.
        client_key: its key (PEM).
        skip_verify: do not verify the API's certificate at all.
        named: where each file setting above comes from, by its attribute
            name (``{"ca_cert": "NOMAD_CACERT", ...}``): an error names it,
            so the user knows what to fix.
    """

    ca_cert: str = ""
    client_cert: str = ""
    client_key: str = ""
    skip_verify: bool = False
    named: Mapping[str, str] = field(default_factory=dict)

    def _named(self, *settings: str) -> str:
        names = [self.named[s] for s in settings if s in self.named]
        return f" ({', '.join(names)})" if names else ""

    def context(self) -> ssl.SSLContext:
        """The SSL context for these settings.

        Raises:
            ValueError: a certificate file is missing or unusable; it names
                the file and where it was set.
        """
        try:
            context = ssl.create_default_context(cafile=self.ca_cert or None)
        except (OSError, ValueError) as exc:
            raise ValueError(f"CA file {self.ca_cert!r}{self._named('ca_cert')}: {exc}") from None
        if self.skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.client_cert:
            try:
                context.load_cert_chain(self.client_cert, self.client_key or None)
            except (OSError, ValueError) as exc:
                raise ValueError(
                    f"client certificate {self.client_cert!r} / key {self.client_key!r}"
                    f"{self._named('client_cert', 'client_key')}: {exc}"
                ) from None
        return context


def make_fetch_client(
    base_url: str,
    *,
    tls: ClientTls | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 5.0,
    unix_socket: str = "",
) -> FetchClient:
    """An httpx client for one API, on a :class:`StoppableNetwork`.

    Its sockets are the network's, so :class:`HttpFetcher` bounds each fetch
    as a whole and can end one in flight. Proxies and ``.netrc`` from the
    environment are ignored (``trust_env=False``): only what is passed here
    applies.

    Args:
        base_url: the API's URL; fetched paths are relative to it. Over a
            Unix socket, its host is only the ``Host`` header's.
        tls: its certificate checks and the client's certificate.
        headers: sent with every request (a token, say). ``Accept-Encoding``
            is the client's own: only gzip, the one :func:`read_body` decodes.
        timeout_s: the bound on each socket operation (connect, TLS
            handshake, one read or write); a whole fetch has its own
            (:func:`fetch_deadline`), and each operation waits no longer
            than what is left of it.
        unix_socket: the path of a Unix socket every request goes to (an
            agent's API on one, Nomad's Task API); empty for TCP.

    Raises:
        ValueError: a certificate file is missing or unusable; it names the file.
    """
    context = (tls if tls is not None else ClientTls()).context()
    # Only gzip: read_body decodes it in bounded steps, and nothing else.
    sent = {"Accept-Encoding": "gzip"}
    sent.update((k, v) for k, v in (headers or {}).items() if k.lower() != "accept-encoding")
    network = StoppableNetwork()
    return FetchClient(
        network,
        base_url=base_url,
        headers=sent,
        transport=_Transport(network, context, unix_socket),
        timeout=timeout_s,
        trust_env=False,
    )


# --- The fetch ---------------------------------------------------------------------


class HttpFetcher:
    """GETs from one API, each bounded in bytes and in time.

    Each fetch completes or fails within its deadline (``deadline_s``, or
    the one its caller passes), and its body is bounded on the wire and
    decoded (:func:`read_body`). With a client from
    :func:`make_fetch_client` the deadline holds on every socket operation
    and :meth:`abort` ends a fetch in flight; with another client (an
    in-memory ``httpx.MockTransport``, say) only between the body's chunks.

    Args:
        client: the httpx client (:func:`make_fetch_client`).
        tls_server_name: the name the API's certificate must carry (sent as
            SNI and checked); the URL's host when empty.
        max_body_bytes: the largest body read, on the wire and decoded.
        deadline_s: the bound on one whole fetch when the caller gives none.
        clock: monotonic seconds (injected by tests).
    """

    def __init__(
        self,
        client: httpx.Client,
        *,
        tls_server_name: str = "",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        deadline_s: float = MAX_FETCH_DEADLINE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._network = client.network if isinstance(client, FetchClient) else None
        self._tls_server_name = tls_server_name
        self._max_body = max_body_bytes
        self._deadline_s = deadline_s
        self._clock = clock

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
            FetchError: no answer, a status other than 200, a body too long,
                badly encoded or not all in by the deadline.
        """
        deadline_s = self._deadline_s if deadline_s is None else deadline_s
        deadline_at = self._clock() + deadline_s
        extensions: dict[str, Any] = {}
        if self._tls_server_name:
            extensions["sni_hostname"] = self._tls_server_name
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
                raise _fetch_error(path, exc, deadline_s) from exc
            try:
                if response.status_code != 200:
                    raise FetchError(
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
                raise _fetch_error(path, exc, deadline_s) from None
            except httpx.HTTPError as exc:
                raise _fetch_error(path, exc, deadline_s) from exc
            finally:
                response.close()

    def get_decoded(
        self,
        path: str,
        decoder: msgspec.json.Decoder[_T],
        params: Mapping[str, str] | None = None,
        *,
        deadline_s: float | None = None,
    ) -> _T:
        """:meth:`get`'s body decoded by ``decoder``, its shape validated whole.

        The decoder's type is the source's (with its bounds, ``max_length``
        on a list, say); nothing is taken from a body that does not fit it.

        Raises:
            FetchError: as :meth:`get`'s; of kind "shape" when the body is
                not JSON of the decoder's type.
        """
        body = self.get(path, params, deadline_s=deadline_s)
        try:
            return decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise FetchError(f"GET {path}: {exc}", kind="shape") from exc


class TokenRefusals:
    """An API's refusals of its token (401 or 403), logged once as an error.

    A refused token is the operator's to fix, not a passing fault of the
    API: one error line says so, naming where the token is set, and the
    retries that follow add nothing to the log. Never the token's value:
    no :class:`FetchError` message holds a header.

    When no token is set, the line says so instead: the fix is to set one,
    not to change it.

    Args:
        logger: where the line goes.
        api: the API, as the line starts ("nomad API").
        token_source: where the token is set ("NOMAD_TOKEN / --token").
        token_set: whether a token was sent at all.
        hint: added to the line when no token is set (why one is needed here).
    """

    def __init__(
        self,
        logger: logging.Logger,
        api: str,
        token_source: str,
        *,
        token_set: bool = True,
        hint: str = "",
    ) -> None:
        self._logger = logger
        self._api = api
        self._token_source = token_source
        self._token_set = token_set
        self._hint = hint
        self._logged = False

    def check(self, exc: FetchError) -> bool:
        """Whether ``exc`` is a refusal of the token; the first one is logged."""
        if exc.status not in (401, 403):
            return False
        if self._logged:
            return True
        self._logged = True
        if self._token_set:
            self._logger.error(
                "%s refused the ACL token (%s): %s", self._api, self._token_source, exc
            )
        else:
            self._logger.error(
                "%s refused a request without an ACL token: none is set (%s)%s: %s",
                self._api,
                self._token_source,
                self._hint,
                exc,
            )
        return True


def _fetch_error(path: str, exc: Exception, deadline_s: float) -> FetchError:
    """``exc`` from a fetch of ``path`` as a :class:`FetchError` of its kind."""
    if isinstance(exc, BodyError):
        kind = exc.kind
    elif isinstance(exc, httpx.TimeoutException):
        kind = "timeout"
    else:
        kind = "network"
    detail = str(exc) or type(exc).__name__
    if kind == "timeout":
        detail += f" (a whole fetch may take {deadline_s:g} s)"
    return FetchError(f"GET {path}: {detail}", kind=kind)
