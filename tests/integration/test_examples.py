"""The README's examples run as written against a real proxy."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.serving import Serve, addrs
from tests.waiting import poll_until

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str, timeout: float = 30) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_publishing_heartbeats_fills_the_list(serve_factory: Callable[..., Serve]) -> None:
    proxy = serve_factory()
    # PUB drops what it sends before the connection is up, so send a few.
    out = run_example(
        "publish_heartbeats.py", "--proxy", proxy.heartbeat,
        "--server", "10.0.0.1:4647", "--server", "10.0.0.2", "--count", "20", "--interval", "0.05",
    )  # fmt: skip
    assert "sent heartbeat 20 listing 2 servers" in out

    # The last heartbeat is sent on an established connection, so it arrives;
    # the proxy applies it a moment after the example has exited.
    def applied_last() -> dict[str, Any] | None:
        status = proxy.call("status")
        seqs = [p["seq"] for p in status["publishers"]]
        return status if seqs == [20] else None

    status = poll_until(applied_last, what="the last heartbeat to be applied")
    assert addrs(status["servers"]) == ["10.0.0.1:4647", "10.0.0.2:4647"]
    assert [p["publisher"] for p in status["publishers"]] == ["example-publisher"]


def test_the_client_reports_a_failed_server(serve_factory: Callable[..., Serve]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as live:
        live_addr = f"127.0.0.1:{live.getsockname()[1]}"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            dead_addr = f"127.0.0.1:{probe.getsockname()[1]}"  # bound, never listening
            proxy = serve_factory("--primary-servers", f"{dead_addr},{live_addr}")
            out = run_example("client_lookup.py", "--proxy", proxy.query, "--rounds", "2")
    assert out.splitlines() == [
        f"{dead_addr}: failed, reported (moved to the end: True)",
        f"{live_addr}: ok",
    ]


def test_the_subscriber_sees_active_server_changes(serve_factory: Callable[..., Serve]) -> None:
    proxy = serve_factory()
    watcher = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / "watch_events.py"),
            "--proxy",
            proxy.events,
            "--count",
            "1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().strip() == "subscribed"

        # The subscription may not have reached the proxy yet: change the
        # active server until the watcher has printed its one event and exited.
        def changed_and_seen() -> bool:
            proxy.call("add_primary_server", addr="10.0.0.7")
            proxy.call("remove_server", addr="10.0.0.7")
            return watcher.poll() is not None

        poll_until(changed_and_seen, timeout=10, what="the watcher to print an event")
        line = watcher.stdout.readline().strip()
        assert re.fullmatch(
            r"active server: (10\.0\.0\.7:4647 \(added|none \(removed), epoch \d+\)", line
        ), line
        assert watcher.returncode == 0
    finally:
        watcher.kill()
        watcher.wait()


@contextlib.contextmanager
def dead_and_live_servers() -> Iterator[tuple[str, str]]:
    """A bound port nobody listens on, and a line echo server, as ``host:port``."""

    class Echo(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())

    class EchoServer(socketserver.ThreadingTCPServer):
        # socketserver's default backlog is 5: a burst of concurrent connects
        # overflows it, and a dropped SYN is retried after 1 s, longer than
        # the examples' call timeout (the live server would look dead).
        request_queue_size = 1024

    with EchoServer(("127.0.0.1", 0), Echo) as echo:
        echo.daemon_threads = True
        thread = threading.Thread(target=echo.serve_forever, daemon=True)
        thread.start()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            try:
                yield f"127.0.0.1:{probe.getsockname()[1]}", f"127.0.0.1:{echo.server_address[1]}"
            finally:
                echo.shutdown()


def test_the_web_handlers_share_one_watching_client(serve_factory: Callable[..., Serve]) -> None:
    with dead_and_live_servers() as (dead, live):
        proxy = serve_factory("--primary-servers", f"{dead},{live}", "--events-refresh-s", "0.2")
        web = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "web_handler.py"), "--proxy", proxy.query,
             "--events", proxy.events, "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert web.stdout is not None
            url = web.stdout.readline().strip().removeprefix("listening on ")
            assert url.startswith("http://127.0.0.1:"), url

            def get(_: int) -> dict[str, Any]:
                with urllib.request.urlopen(url, timeout=10) as response:
                    body: dict[str, Any] = json.loads(response.read())
                    return body

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(get, range(40)))
            assert {a["server"] for a in answers} == {live}
            # Only requests that saw the dead head before the first report of it retried.
            assert all(a["attempts"] in (1, 2) for a in answers)
            assert proxy.call("find_server")["server"] == {"addr": live}
        finally:
            web.send_signal(signal.SIGTERM)
            _, err = web.communicate(timeout=10)
        assert web.returncode == 0, err
        assert "stopped" in err


def test_the_asyncio_service_reports_a_failed_server(serve_factory: Callable[..., Serve]) -> None:
    with dead_and_live_servers() as (dead, live):
        proxy = serve_factory("--primary-servers", f"{dead},{live}", "--events-refresh-s", "0.2")
        out = run_example(
            "asyncio_service.py", "--proxy", proxy.query, "--events", proxy.events,
            "--calls", "20", "--concurrency", "4",
        )  # fmt: skip
    assert out.splitlines() == [f"{n} {live} ok" for n in range(1, 21)]
    assert proxy.call("find_server")["server"] == {"addr": live}
