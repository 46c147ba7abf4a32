"""A Consul-agent-shaped HTTP API on loopback, for the Consul discovery source's tests.

Consul itself cannot be installed on the machine the suite runs on (no
package, no network to fetch its binary), so this stand-in serves the two
endpoints the source reads, in the shapes Consul's documentation gives:

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
which query and header.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.nomadapi import serving, wait_for_hangup

HEALTH_PREFIX = "/v1/health/service/"


def health_entry(
    service_addr: str,
    port: int = 4647,
    *,
    node_addr: str = "10.9.9.9",
    node: str = "",
    service: str = "nomad",
    tags: tuple[str, ...] = ("rpc",),
    status: str = "passing",
) -> Any:
    """One entry of ``/v1/health/service/<service>`` as Consul 1.x answers it.

    ``Service.Address`` is ``service_addr`` (may be empty: then the node's
    address applies); the node has a Serf health check and the service one
    check, both of ``status``.
    """
    name = node or f"node-{node_addr}"
    checks = [
        {"Node": name, "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": status},
        {"Node": name, "CheckID": f"_nomad-check-{port}", "Name": "Nomad Server RPC Check",
         "Status": status, "ServiceName": service},
    ]  # fmt: skip
    return {
        "Node": {
            "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
            "Node": name,
            "Address": node_addr,
            "Datacenter": "dc1",
            "TaggedAddresses": {"lan": node_addr, "wan": node_addr},
            "Meta": {"consul-network-segment": ""},
            "CreateIndex": 5,
            "ModifyIndex": 7,
        },
        "Service": {
            "ID": f"_nomad-server-{port}",
            "Service": service,
            "Tags": list(tags),
            "Address": service_addr,
            "Meta": None,
            "Port": port,
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": False,
            "Proxy": {"MeshGateway": {}, "Expose": {}},
            "Connect": {},
            "CreateIndex": 10,
            "ModifyIndex": 10,
        },
        "Checks": checks,
    }


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


class ConsulFixture:
    """What the stand-in serves; tests change it between discoveries.

    Attributes:
        datacenters: ``/v1/catalog/datacenters``, the agent's own first.
        entries: each datacenter's entries of :attr:`service` (a datacenter
            listed without entries has none).
        service: the service the entries are of; any other has none.
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
        self.datacenters: list[Any] = ["dc1"]
        self.entries: dict[str, list[Any]] = {"dc1": [health_entry("10.0.0.1")]}
        self.service = "nomad"
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
        self._lock = threading.Lock()

    def log(self, request: ConsulRequest) -> None:
        with self._lock:
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
        if request.path == "/v1/catalog/datacenters":
            return 200, json.dumps(self.datacenters).encode()
        if not request.path.startswith(HEALTH_PREFIX):
            return 404, b"not found"
        dc = request.dc or (self.datacenters[0] if self.datacenters else "dc1")
        if dc in self.dc_status:
            return self.dc_status[dc], b"datacenter failing"
        if dc not in self.datacenters:
            return 500, b"No path to datacenter"
        if request.path[len(HEALTH_PREFIX) :] != self.service:
            return 200, b"[]"
        return 200, json.dumps(self.matching(dc, request.query)).encode()

    def raw_body(self, request: ConsulRequest) -> bytes | None:
        """The raw body for ``request`` (``raw``, or its datacenter's ``dc_raw``), if any."""
        if self.raw is not None:
            return self.raw
        if request.path.startswith(HEALTH_PREFIX):
            return self.dc_raw.get(request.dc or "")
        return None

    def matching(self, dc: str, query: dict[str, list[str]]) -> list[Any]:
        """``dc``'s entries that ``tag`` and ``passing`` select."""
        found = []
        for entry in self.entries.get(dc, []):
            if any(tag not in entry["Service"]["Tags"] for tag in query.get("tag", [])):
                continue
            if "passing" in query and any(c["Status"] != "passing" for c in entry["Checks"]):
                continue
            found.append(entry)
        return found


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
                trickle_s = state.trickle_s
                if trickle_s is None:
                    self.wfile.write(body)
                    return
                state.trickling.set()
                for index in range(len(body)):
                    self.wfile.write(body[index : index + 1])
                    if self.wait_hangup(trickle_s):
                        return

        def wait_hangup(self, seconds: float) -> bool:
            """Wait ``seconds``; True (early) when the client hangs up or the stand-in closes."""
            return (
                wait_for_hangup(self.connection, seconds, state.closing) or state.closing.is_set()
            )

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(Handler, tls, state.closing) as url:
        yield state, url
