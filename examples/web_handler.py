"""A threaded web service whose handlers look up their Nomad server locally.

    python examples/web_handler.py --proxy tcp://127.0.0.1:4650 \\
        --events tcp://127.0.0.1:4652 --port 8080

One watching :class:`~rpcproxy.ProxyClient` serves every worker thread: it
follows the proxy's events, so ``find_server()`` is a read of an immutable
value held in this process, not a round trip. A handler calls the server it
is given; when the call fails it reports the server, and the report's reply
updates the local view at once, so the retry already gets the next server.

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

from rpcproxy import ProxyClient, ProxyError

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
MAX_ATTEMPTS = 3
"""Servers a request tries before it gives up (a failed one is rotated away)."""


def call_server(addr: str, timeout_s: float = 0.5) -> bool:
    """Stand-in for an RPC: can we open a TCP connection to the server?"""
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def make_app(proxy: ProxyClient) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """The WSGI application: every request asks ``proxy`` for its server."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                server = proxy.find_server()  # local: no round trip while the view is fresh
            except ProxyError as exc:
                return respond(start_response, "503 Service Unavailable", {"error": str(exc)})
            if server is None:
                break
            if call_server(server.addr):
                body = {"server": server.addr, "attempts": attempt}
                return respond(start_response, "200 OK", body)
            # Read-your-writes: the next find_server() already skips it.
            proxy.notify_failed_server(server.addr)
        return respond(start_response, "503 Service Unavailable", {"error": "no server answered"})

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
