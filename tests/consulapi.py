"""A Consul-agent-shaped HTTP API on loopback, for the Consul discovery source's tests.

Consul itself cannot be installed on the machine the suite runs on (no
package, no network to fetch its binary), so this stand-in serves the two
endpoints the source reads, in the shapes Consul's documentation gives
(the shapes and what a query selects are the demo's Consul stand-in's,
:class:`rpcproxy.bus.standins.consul.ConsulCatalog`, so both agree):

* ``/v1/catalog/datacenters``: a JSON list of names, the agent's own first;
* ``/v1/health/service/<name>``: a list of ``{"Node", "Service", "Checks"}``
  entries, honouring ``dc`` (the agent's own when absent; an unknown one is
  a 500 "No path to datacenter", as Consul answers), ``tag`` (only entries
  whose ``Service.Tags`` hold it) and ``passing`` (only entries whose every
  check is passing).

Tests set each datacenter's entries (:func:`health_entry`), may require a
token (a missing or wrong ``X-Consul-Token`` is a 403, as Consul's "ACL not
found"), override the status, serve a raw body (a gzip bomb, say), trickle a
body a byte at a time, hold each answer back a while, or never answer; every request is
logged (:class:`ConsulRequest`) so a test asserts which were made, with
which query and header. Those failures are why this HTTP handler is not the
demo's (:class:`rpcproxy.bus.standins.consul.ConsulStandIn`): the demo needs
none of them.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from rpcproxy.bus.standins.consul import HEALTH_PREFIX, ConsulCatalog, health_entry
from tests.nomadapi import serving, wait_for_hangup, write_body

__all__ = ["HEALTH_PREFIX", "ConsulFixture", "ConsulRequest", "consul_api", "health_entry"]


@dataclass(frozen=True)
class ConsulRequest:
    """One request the stand-in received.

    Attributes:
        path: the path, percent-decoded, without the query.
        query: the query's parameters (each name's values, in order).
        token: the ``X-Consul-Token`` header, None when absent.
        arrived: ``time.monotonic()`` when it was read.
    """

    path: str
    query: dict[str, list[str]]
    token: str | None
    arrived: float

    @property
    def dc(self) -> str | None:
        """The ``dc`` parameter, None when absent."""
        return self.query["dc"][0] if "dc" in self.query else None


class ConsulFixture(ConsulCatalog):
    """What the stand-in serves; tests change it between discoveries.

    The catalog (``datacenters``, ``entries``, ``service``) is
    :class:`~rpcproxy.bus.standins.consul.ConsulCatalog`'s; what follows
    makes it fail.

    Attributes:
        token: when set, the only ``X-Consul-Token`` answered (403 otherwise).
        status: when set, every request is answered with it (and a short text body).
        dc_status: a status for one datacenter's health requests.
        raw: served as is, status 200, on every path.
        dc_raw: served as is for one datacenter's health requests.
        encoding: a ``Content-Encoding`` header sent with ``raw`` and
            ``dc_raw`` bodies, already so encoded
            (:func:`tests.nomadapi.gzip_of_zeros`, say).
        delay_s: each answer held back this long (the agent thinking).
        trickle_s: when set, bodies are sent one byte per this many seconds.
        silent: requests are read and never answered.
        requests: every request, in order of arrival.
        trickling: set when a trickled body has started.
        closing: set when the stand-in closes: held, trickling and silent handlers end.
    """

    def __init__(self) -> None:
        super().__init__(["dc1"], {"dc1": [health_entry("10.0.0.1")]})
        self.token: str | None = None
        self.status: int | None = None
        self.dc_status: dict[str, int] = {}
        self.raw: bytes | None = None
        self.dc_raw: dict[str, bytes] = {}
        self.encoding: str | None = None
        self.delay_s = 0.0
        self.trickle_s: float | None = None
        self.silent = False
        self.requests: list[ConsulRequest] = []
        self.trickling = threading.Event()
        self.closing = threading.Event()
        self._requests_lock = threading.Lock()

    def log(self, request: ConsulRequest) -> None:
        with self._requests_lock:
            self.requests.append(request)

    def health_dcs(self) -> list[str | None]:
        """The ``dc`` of each health request, in order."""
        return [r.dc for r in self.requests if r.path.startswith(HEALTH_PREFIX)]

    def answer(self, request: ConsulRequest) -> tuple[int, bytes]:
        """The status and body for ``request``; see :meth:`raw_body` too."""
        if self.token is not None and request.token != self.token:
            return 403, b"ACL not found"
        if self.status is not None:
            return self.status, f"status {self.status} from the stand-in".encode()
        raw = self.raw_body(request)
        if raw is not None:
            return 200, raw
        if request.path.startswith(HEALTH_PREFIX):
            dc = self.dc_of(request.query)
            if dc in self.dc_status:
                return self.dc_status[dc], b"datacenter failing"
        return self.route(request.path, request.query)

    def raw_body(self, request: ConsulRequest) -> bytes | None:
        """The raw body for ``request`` (``raw``, or its datacenter's ``dc_raw``), if any."""
        if self.raw is not None:
            return self.raw
        if request.path.startswith(HEALTH_PREFIX):
            return self.dc_raw.get(request.dc or "")
        return None


@contextlib.contextmanager
def consul_api(
    tls: ssl.SSLContext | None = None, fixture: ConsulFixture | None = None
) -> Iterator[tuple[ConsulFixture, str]]:
    """Serves a :class:`ConsulFixture` on loopback; yields it and its URL.

    Args:
        tls: when set, the API is HTTPS with this server context (a
            handshake that fails drops that connection only).
        fixture: what to serve; a new :class:`ConsulFixture` by default.
    """
    state = ConsulFixture() if fixture is None else fixture

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            split = urlsplit(self.path)
            request = ConsulRequest(
                path=unquote(split.path),
                query=parse_qs(split.query, keep_blank_values=True),
                token=self.headers.get("X-Consul-Token"),
                arrived=time.monotonic(),
            )
            state.log(request)
            if state.silent:
                state.closing.wait()
                return
            if state.delay_s and self.wait_hangup(state.delay_s):
                return
            status, body = state.answer(request)
            # The client hangs up on a body it refuses (too large, too slow).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Consul-Index", "42")
                if state.encoding is not None and state.raw_body(request) is not None:
                    self.send_header("Content-Encoding", state.encoding)
                self.end_headers()
                write_body(self, body, state.trickle_s, state.trickling)

        def wait_hangup(self, seconds: float) -> bool:
            """Wait ``seconds``; True (early) when the client hangs up or the stand-in closes."""
            return (
                wait_for_hangup(self.connection, seconds, state.closing) or state.closing.is_set()
            )

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(Handler, tls, state.closing) as url:
        yield state, url
