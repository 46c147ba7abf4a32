"""Every exit path of the real ``rpcproxy serve`` ends the process (docs/protocol.md section 8).

``serve`` exits within 10 s of SIGINT or SIGTERM whatever it is doing (exit 0),
and within 10 s of one of its parts dying (exit 1). pykka threads are not
daemons, so any actor left running would keep the process alive for ever;
these tests run the real entry point with a fault planted by
``planted_serve.py`` (a wrapper script: the product has no hook for it) and
wait for the process to end, never for a time.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.helpers import pack
from tests.integration.serving import CTX, NoReplyError, ProcessExitedError, Serve, start_serve
from tests.waiting import poll_until

pytestmark = pytest.mark.integration

PLANTED = (sys.executable, str(Path(__file__).with_name("planted_serve.py")))


def planted(*faults: str, stop_budget_s: float | None = None) -> tuple[str, ...]:
    """The command that runs ``serve`` with ``faults`` planted."""
    command = list(PLANTED)
    for fault in faults:
        command += ["--plant", fault]
    if stop_budget_s is not None:
        command += ["--stop-budget", str(stop_budget_s)]
    return tuple(command)


def exit_code(serve: Serve) -> int:
    """Wait for a process that should end by itself; fail (and kill it) if it does not."""
    code = serve.wait()
    assert serve.stop() == code  # already gone: no signal sent, only the bookkeeping
    return code


def crash_the_proxy_actor(serve: Serve) -> None:
    """Make ProxyActor fail in a told message (notify_failed raises, as planted)."""
    serve.call("add_primary_server", addr="10.0.0.1")
    # The actor dies before replying; whether the query loop answers first is not the point.
    with contextlib.suppress(NoReplyError):
        serve.client.request({"op": "notify_failed_server", "addr": "10.0.0.1"}, timeout=0.5)


def test_a_proxy_actor_that_fails_ends_serve_with_exit_1(
    serve_factory: Callable[..., Serve],
) -> None:
    serve = serve_factory(command=planted("notify-failed"))

    crash_the_proxy_actor(serve)

    assert exit_code(serve) == 1
    text = serve.stderr()
    assert "planted bug in notify_failed" in text
    (error,) = [line for line in text.splitlines() if "stopped unexpectedly" in line]
    assert "proxy actor" in error
    # ProxyActor stopped its children itself: nothing was left for the last sweep.
    assert "actors still running" not in text
    assert "did not stop" not in text


def test_serve_refuses_to_start_on_a_libzmq_older_than_4_3_3(tmp_path: Path) -> None:
    """CVE-2020-15166: one error line, exit 1, before any socket is opened."""
    # start_serve, not serve_factory: pytest loads conftest.py under another
    # module name than ``tests.integration.serving``, so the fixture's
    # ProcessExitedError is not the class imported here.
    with pytest.raises(ProcessExitedError) as exited:
        started = start_serve(tmp_path, command=planted("libzmq-4.3.2"))
        started.stop()  # it started after all: stop it, and pytest.raises fails

    assert exited.value.code == 1
    lines = exited.value.stderr.splitlines()
    (refusal,) = [line for line in lines if "CVE-2020-15166" in line]
    assert " ERROR " in refusal
    assert "libzmq 4.3.2 is older than 4.3.3" in refusal
    assert not [line for line in lines if "serving queries" in line], exited.value.stderr


def test_serve_starts_on_libzmq_4_3_3(serve_factory: Callable[..., Serve]) -> None:
    """The oldest libzmq with the fix is enough (and the planted version alone stops nothing)."""
    serve = serve_factory(command=planted("libzmq-4.3.3"))
    assert serve.call("ping")["pong"] is True
    assert "CVE-2020-15166" not in serve.stderr()


def test_an_actor_left_behind_is_stopped_by_the_last_sweep_after_a_failure(
    serve_factory: Callable[..., Serve],
) -> None:
    serve = serve_factory(command=planted("notify-failed", "leftover-actor"))

    crash_the_proxy_actor(serve)

    assert exit_code(serve) == 1
    assert "stopping 1 actors still running: Leftover" in serve.stderr()


def test_an_actor_left_behind_is_stopped_by_the_last_sweep_after_sigterm(
    serve_factory: Callable[..., Serve],
) -> None:
    serve = serve_factory(command=planted("leftover-actor"))

    assert serve.stop(signal.SIGTERM) == 0

    text = serve.stderr()
    assert "stopping 1 actors still running: Leftover" in text
    assert "Traceback" not in text


def test_an_actor_that_cannot_stop_still_lets_the_process_exit(
    serve_factory: Callable[..., Serve],
) -> None:
    """The watchdog ends a stop that overran its budget, with the signal's exit code."""
    serve = serve_factory(command=planted("stuck-actor", stop_budget_s=2.0))

    assert serve.stop(signal.SIGTERM) == 0

    text = serve.stderr()
    assert "Stuck did not stop within" in text
    assert "stopping took longer than 2 s; exiting now" in text
    assert "Traceback" not in text


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_exits_at_once(
    serve_factory: Callable[..., Serve], second: signal.Signals
) -> None:
    # A budget no test waits for: only the second signal can end this stop.
    serve = serve_factory(command=planted("stuck-actor", stop_budget_s=600.0))
    serve.send_signal(signal.SIGTERM)
    poll_until(
        lambda: "Stuck did not stop within" in serve.stderr(),
        10.0,
        what="the stop to reach the stuck actor",
    )
    assert serve.proc.poll() is None  # held by the stuck thread

    assert serve.stop(second) == 0

    text = serve.stderr()
    assert f"received {second.name} again: exiting now" in text
    assert "stopping took longer" not in text
    assert "Traceback" not in text


# --------------------------------------------------------------------------
# SIGTERM while a rebalance pings servers that never answer (issue 9, row 9).


class HungServer:
    """A TCP listener that accepts connections and never sends a byte."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.accepted = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._listener.accept()
                self._held.append(conn)
                self.accepted.set()

    def close(self) -> None:
        self._listener.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def hung_servers() -> Iterator[list[HungServer]]:
    servers = [HungServer() for _ in range(2)]
    yield servers
    for server in servers:
        server.close()


def test_sigterm_during_a_rebalance_with_hung_servers_exits_cleanly(
    serve_factory: Callable[..., Serve], hung_servers: list[HungServer]
) -> None:
    serve = serve_factory("--ping-timeout-s", "30")
    for server in hung_servers:
        serve.call("add_primary_server", addr=f"127.0.0.1:{server.port}")
    asker: zmq.Socket[Any] = CTX.socket(zmq.REQ)
    asker.linger = 0
    try:
        asker.connect(serve.query)
        asker.send(pack({"op": "rebalance"}))  # its reply would take 30 s; nobody waits
        assert any(s.accepted.wait(10.0) for s in hung_servers), "no ping reached the servers"

        assert serve.stop(signal.SIGTERM) == 0
    finally:
        asker.close()

    text = serve.stderr()
    assert "Traceback" not in text, text
    assert "stopping took longer" not in text, text
