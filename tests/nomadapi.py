"""A Nomad-shaped HTTP API on loopback, for the section 7 bridge's tests.

A tiny ``http.server`` thread serving the shapes of Nomad's documented
responses: ``/v1/agent/members`` with 0.x tags (``vsn``, ``mvn``, no
``rpc_addr``) and 1.x tags (``rpc_addr``, ``id``, ``raft_vsn``, ``build``...),
``/v1/status/leader`` and ``/v1/nodes``. Tests change what it serves between
polls.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


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


class NomadFixture:
    """What the fixture serves; tests change it between polls."""

    def __init__(self) -> None:
        self.members: list[Any] = [member_0x("a", "10.0.0.1"), member_1x("b", "10.0.0.2")]
        self.leader = "10.0.0.1:4647"
        self.nodes = 3
        self.status = 200
        self.raw: bytes | None = None
        self.tokens: list[str | None] = []
        self.paths: list[str] = []

    def body(self, path: str) -> bytes:
        if self.raw is not None:
            return self.raw
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


@contextlib.contextmanager
def nomad_api(tls: ssl.SSLContext | None = None) -> Iterator[tuple[NomadFixture, str]]:
    """Serves a :class:`NomadFixture` on loopback; yields it and its URL.

    Args:
        tls: when set, the API is HTTPS with this server context (a
            handshake that fails drops that connection only).
    """
    state = NomadFixture()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.tokens.append(self.headers.get("X-Nomad-Token"))
            state.paths.append(self.path)
            body = state.body(self.path)
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    scheme = "http"
    if tls is not None:
        scheme = "https"
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
