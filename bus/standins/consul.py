"""A Consul-agent-shaped HTTP API on loopback, for the demo (and, in part, the tests).

Not the product, and not Consul: rpcproxy reads a real Consul agent's
catalog (docs/protocol.md section 10). Consul itself cannot be installed
where the demo and the suite run (no package, no binary to fetch), so this
serves the two reads discovery makes, in the shapes Consul's documentation
gives, from what it is told to hold:

* ``/v1/catalog/datacenters``: a JSON list of names, the agent's own first;
* ``/v1/health/service/<name>``: a list of ``{"Node", "Service", "Checks"}``
  entries (:func:`health_entry`), honouring ``dc`` (the agent's own when
  absent; an unknown one is a 500 "No path to datacenter", as Consul
  answers), ``tag`` (only entries whose ``Service.Tags`` hold it) and
  ``passing`` (only entries whose every check is passing).

Two parts. :class:`ConsulCatalog` is what is held and answered, with no
socket in sight; tests/consulapi.py builds its fixture on it, so the demo
and the tests agree on Consul's shapes and on what the query selects.
:class:`ConsulStandIn` serves a catalog over HTTP for the demo. The tests
keep an HTTP handler of their own: theirs injects failures (refused tokens,
forced statuses, raw and compressed bodies, trickled, held or never-sent
answers, TLS) that the demo has no use for, and carrying them here would
make this server harder to read for what it is.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["DATACENTERS_PATH", "HEALTH_PREFIX", "ConsulCatalog", "ConsulStandIn", "health_entry"]

DATACENTERS_PATH: Final = "/v1/catalog/datacenters"
HEALTH_PREFIX: Final = "/v1/health/service/"


def health_entry(
    service_addr: str,
    port: int = 4647,
    *,
    node_addr: str = "127.0.0.1",
    node: str = "",
    service: str = "nomad",
    tags: tuple[str, ...] = ("rpc",),
    status: str = "passing",
) -> Any:
    """One entry of ``/v1/health/service/<service>`` as Consul 1.x answers it.

    ``Service.Address`` is ``service_addr`` (may be empty: then the node's
    address applies); the node has a Serf health check and the service one
    check, both of ``status``. The node is on loopback unless told otherwise:
    an entry with no service address then names this machine, never a host
    on a network nothing here serves.
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


class ConsulCatalog:
    """What the agent holds, and its answer to each read.

    The attributes may be replaced whole at any time (tests do, between
    discoveries); :meth:`update` replaces them together, under the lock
    :meth:`route` reads them under, so a reader never sees the new entries
    with the old datacenters.

    Attributes:
        datacenters: ``/v1/catalog/datacenters``, the agent's own first.
        entries: each datacenter's entries of :attr:`service` (a datacenter
            listed without entries has none).
        service: the service the entries are of; any other has none.
    """

    def __init__(
        self,
        datacenters: Sequence[str] = ("dc1",),
        entries: Mapping[str, Sequence[Any]] | None = None,
        service: str = "nomad",
    ) -> None:
        self.datacenters: list[str] = list(datacenters)
        self.entries: dict[str, list[Any]] = {dc: list(e) for dc, e in (entries or {}).items()}
        self.service = service
        self._lock = threading.Lock()

    def update(
        self, entries: Mapping[str, Sequence[Any]], datacenters: Sequence[str] | None = None
    ) -> None:
        """Replace every datacenter's entries (and the datacenters, when given) at once."""
        with self._lock:
            self.entries = {dc: list(found) for dc, found in entries.items()}
            if datacenters is not None:
                self.datacenters = list(datacenters)

    def dc_of(self, query: Mapping[str, Sequence[str]]) -> str:
        """The datacenter a health read is about: ``dc``, else the agent's own."""
        with self._lock:
            return _dc_of(query, self.datacenters)

    def route(self, path: str, query: Mapping[str, Sequence[str]]) -> tuple[int, bytes]:
        """The status and JSON body for a GET of ``path`` (percent-decoded) with ``query``."""
        with self._lock:
            datacenters, entries, service = self.datacenters, self.entries, self.service
        if path == DATACENTERS_PATH:
            return 200, json.dumps(datacenters).encode()
        if not path.startswith(HEALTH_PREFIX):
            return 404, b"not found"
        dc = _dc_of(query, datacenters)
        if dc not in datacenters:
            return 500, b"No path to datacenter"
        if path[len(HEALTH_PREFIX) :] != service:
            return 200, b"[]"
        return 200, json.dumps(_selected(entries.get(dc, []), query)).encode()


def _dc_of(query: Mapping[str, Sequence[str]], datacenters: Sequence[str]) -> str:
    given = (query.get("dc") or [""])[0]  # an empty ``dc=`` counts as absent
    if given:
        return given
    return datacenters[0] if datacenters else "dc1"


def _selected(entries: Sequence[Any], query: Mapping[str, Sequence[str]]) -> list[Any]:
    """The ``entries`` that ``tag`` (every one given) and ``passing`` select."""
    found = []
    for entry in entries:
        if any(tag not in entry["Service"]["Tags"] for tag in query.get("tag", [])):
            continue
        if "passing" in query and any(c["Status"] != "passing" for c in entry["Checks"]):
            continue
        found.append(entry)
    return found


class ConsulStandIn:
    """Serves a :class:`ConsulCatalog` over HTTP on loopback, from daemon threads.

    Args:
        catalog: what is served; by default an agent in ``dc1`` that lists no server.
        port: the loopback port; 0 picks a free one.

    Attributes:
        catalog: change it (:meth:`ConsulCatalog.update`) while it serves.
    """

    def __init__(self, catalog: ConsulCatalog | None = None, *, port: int = 0) -> None:
        self.catalog = catalog if catalog is not None else ConsulCatalog(entries={})
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: what ``consul_addr`` is set to."""
        if self._server is None:
            raise RuntimeError("the Consul stand-in has not been started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        """Bind and serve; return once bound.

        Raises:
            RuntimeError: already running.
            OSError: the bind failed (the port is taken, say).
        """
        if self._server is not None:
            raise RuntimeError("the Consul stand-in is already running")
        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), _handler_for(self.catalog))
        self._server.daemon_threads = True
        # A short poll interval: stop() waits up to one for the loop to notice.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="rpcproxy-consul-standin",
            daemon=True,
        )
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving and close the port; a no-op if not running."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _handler_for(catalog: ConsulCatalog) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            split = urlsplit(self.path)
            status, body = catalog.route(
                unquote(split.path), parse_qs(split.query, keep_blank_values=True)
            )
            # A client that gave up (its deadline passed) has hung up.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Consul-Index", "42")
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # The demo's screen is the status view; a line per request would scroll it.

    return Handler
