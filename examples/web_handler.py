"""A threaded web service whose handlers look up their Nomad server locally.

    python examples/web_handler.py --proxy tcp://127.0.0.1:4650 \\
        --events tcp://127.0.0.1:4652 --port 8080

One watching :class:`~rpcproxy.ProxyClient` serves every worker thread: it
follows the proxy's events, so ``find_server()`` is a read of an immutable
value held in this process, not a round trip. A handler hands its RPC to
``proxy.call``, which runs it on the active server and, when it fails with a
connection error, reports that server and tries the next (Nomad's own retry
rules: a hold of 5 s, a short random pause between tries); the report's
reply updates the local view at once, so the retry already gets the next
server.

``GET /`` answers ``{"server": "<addr>", "attempts": n}`` as JSON, or 503
when no server answers. Here "calling" a server is a TCP connect; a real
service sends its RPC instead. Run it under any thread-pool server (this one
uses the standard library's threaded WSGI server; waitress or
``gunicorn --threads`` work the same way): the client is shared, not per
thread.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from rpcproxy import ProxyClient, ProxyError, Server

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
HOLD_S = 2.0
"""How long a request keeps trying servers before it answers 503."""


def call_server(addr: str, timeout_s: float = 0.5) -> None:
    """Stand-in for an RPC: open a TCP connection to the server (OSError if it fails)."""
    host, _, port = addr.rpartition(":")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
        pass


def make_app(proxy: ProxyClient) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """The WSGI application: every request runs its RPC through ``proxy.call``."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        tried: list[str] = []

        def rpc(server: Server) -> str:
            tried.append(server.addr)
            call_server(server.addr)
            return server.addr

        try:
            # Connection errors (OSError) are retried on the next server.
            addr = proxy.call(rpc, hold_s=HOLD_S)
        except (OSError, ProxyError) as exc:
            return respond(start_response, "503 Service Unavailable", {"error": str(exc)})
        return respond(start_response, "200 OK", {"server": addr, "attempts": len(tried)})

    return app


def respond(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json")])
    return [data]


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per request, all sharing the one watching client."""

    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Access lines would drown the example's own output."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", default="tcp://127.0.0.1:4650", help="query endpoint")
    parser.add_argument("--events", default="tcp://127.0.0.1:4652", help="events endpoint")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port (0: any free one)")
    args = parser.parse_args()

    with ProxyClient(args.proxy, events=args.events, watch=True, timeout_s=1.0) as proxy:
        server = make_server(
            "127.0.0.1",
            args.port,
            make_app(proxy),
            server_class=ThreadingWSGIServer,
            handler_class=QuietHandler,
        )

        def stop(signum: int, frame: FrameType | None) -> None:
            # shutdown() waits for serve_forever(), so it runs off the main thread.
            threading.Thread(target=server.shutdown).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print(f"listening on http://127.0.0.1:{server.server_port}/", flush=True)
        with server:
            server.serve_forever()
    print("stopped", file=sys.stderr)


if __name__ == "__main__":
    main()
