"""Helpers and fixtures that run the real ``rpcproxy serve`` and talk to it over real sockets.

A module of its own, not the conftest: pytest imports a conftest under a
name of its choosing, so tests importing helpers from it would get a second
copy (a second list of live processes, a second exception class). The
conftest re-exports the fixtures and the hook from here.

Everything here speaks the wire protocol with the independent ``msgpack``
package, never with the product's codec, so the tests check docs/protocol.md and
not the codec's own idea of it. Waiting is always polling with a deadline or
waiting on a socket; nothing sleeps blindly.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq

from rpcproxy.bus.standins.standin import ServerStandIn
from tests.helpers import free_port, pack, tcp, unpack
from tests.waiting import poll_until

RPCPROXY = str(Path(sys.executable).parent / "rpcproxy")
"""The console script installed next to the interpreter running the tests."""

CTX: zmq.Context[Any] = zmq.Context()
EVENT_TOPIC = b"event/active_server"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0

_T = TypeVar("_T")
_live: list[Serve] = []
"""Every serve process still running, so a failing test can show their stderr."""


# --------------------------------------------------------------------------
# Small helpers.


def addrs(servers: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ``addr`` of each server object of a reply."""
    return [s["addr"] for s in servers]


def hb_server(addr: str, datacenter: str = "dc1", major: int = 1, minor: int = 1) -> dict[str, Any]:
    """One ``servers[]`` entry of a heartbeat payload."""
    return {
        "rpc_advertise_addr": addr,
        "rpc_major_version": major,
        "rpc_minor_version": minor,
        "datacenter": datacenter,
    }


def hb_payload(
    servers: Sequence[dict[str, Any]], num_nodes: int = 0, leader: str = "", **extra: Any
) -> dict[str, Any]:
    return {"servers": list(servers), "num_nodes": num_nodes, "leader_rpc_addr": leader, **extra}


# --------------------------------------------------------------------------
# Sockets.


def without_view(reply: Mapping[str, Any]) -> dict[str, Any]:
    """A success reply without its ``epoch`` and ``instance`` (docs/protocol.md section 1).

    Checked, not just dropped: both must be there, of the right types.
    """
    rest = dict(reply)
    epoch, instance = rest.pop("epoch"), rest.pop("instance")
    assert isinstance(epoch, int) and epoch >= 0, reply
    assert isinstance(instance, str) and len(instance) == 16, reply
    return rest


class NoReplyError(AssertionError):
    """A request got no reply in time."""


class RawClient:
    """A REQ socket speaking MessagePack with the ``msgpack`` package.

    After a missed reply the REQ socket is stuck, so it is thrown away and a
    fresh one opened on the next request (the guide's Lazy Pirate).
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._sock: zmq.Socket[bytes] | None = None

    def _socket(self) -> zmq.Socket[bytes]:
        if self._sock is None:
            sock: zmq.Socket[bytes] = CTX.socket(zmq.REQ)
            sock.linger = 0
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def send_raw(self, frame: bytes, timeout: float = 5.0) -> bytes:
        sock = self._socket()
        sock.send(frame)
        if not sock.poll(int(timeout * 1000)):
            self.close()
            raise NoReplyError(f"no reply from {self.endpoint} within {timeout} s")
        return sock.recv()

    def request(self, message: Any, timeout: float = 5.0) -> dict[str, Any]:
        reply = unpack(self.send_raw(pack(message), timeout))
        assert isinstance(reply, dict), reply
        return reply

    def call(self, op: str, timeout: float = 5.0, **keys: Any) -> dict[str, Any]:
        """Send ``op`` and return its reply, asserting it succeeded."""
        reply = self.request({"op": op, **keys}, timeout)
        assert reply.get("ok") is True, reply
        return reply

    def error(self, message: Any, timeout: float = 5.0) -> dict[str, Any]:
        """Send ``message`` and return the reply's error, asserting it failed."""
        reply = self.request(message, timeout)
        assert reply.get("ok") is False, reply
        assert set(reply["error"]) >= {"code", "message"}, reply
        assert isinstance(reply["error"]["message"], str)
        error: dict[str, Any] = reply["error"]
        return error

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventSub:
    """A SUB socket on the proxy's events endpoint.

    Every event it reads is checked against docs/protocol.md section 5: one
    instance, and each change's epoch one more than the last change's (a
    refresh repeats the current epoch). Tests that lose events on purpose
    pass ``consecutive=False``.
    """

    def __init__(self, endpoint: str, *, consecutive: bool = True) -> None:
        self.sock: zmq.Socket[bytes] = CTX.socket(zmq.SUB)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.SUBSCRIBE, EVENT_TOPIC)
        self.sock.connect(endpoint)
        self.consecutive = consecutive
        self.epoch: int | None = None
        self.instance: str | None = None

    def next(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next change's ``server`` and ``reason``, skipping refreshes.

        Fails after ``timeout`` seconds without a change.
        """
        deadline = time.monotonic() + timeout
        while True:
            event = self.next_event(max(0.0, deadline - time.monotonic()))
            if event["reason"] != "refresh":
                return {"server": event["server"], "reason": event["reason"]}

    def next_event(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next event's whole payload, refreshes included."""
        if not self.sock.poll(int(timeout * 1000)):
            raise AssertionError(f"no event within {timeout} s")
        topic, payload = self.sock.recv_multipart()
        assert topic == EVENT_TOPIC
        event = unpack(payload)
        assert isinstance(event, dict), event
        assert set(event) >= {"server", "reason", "epoch", "instance"}, event
        epoch, instance = event["epoch"], event["instance"]
        assert isinstance(epoch, int) and isinstance(instance, str) and instance, event
        if self.instance is not None:
            assert instance == self.instance, f"instance changed: {event}"
        if self.consecutive and self.epoch is not None:
            expected = self.epoch if event["reason"] == "refresh" else self.epoch + 1
            assert epoch == expected, f"epoch {epoch} after {self.epoch}: {event}"
        self.epoch, self.instance = epoch, instance
        return event

    def sync(self, client: RawClient, timeout: float = 5.0) -> None:
        """Wait until the subscription reaches the proxy (PUB/SUB slow joiner).

        Needs an empty active list: adds and removes a probe server until an
        event arrives, then reads up to the probe's last ``removed`` event, so
        the stream is empty and in step afterwards.
        """
        probe = "sync-probe.invalid:1"
        assert client.call("servers")["servers"] == [], "sync needs an empty list"

        def probe_seen() -> dict[str, Any] | None:
            client.call("add_primary_server", addr=probe)
            client.call("remove_server", addr=probe)
            if self.sock.poll(50):
                return self.next()
            return None

        first = poll_until(probe_seen, timeout, interval=0, what="the events subscription")
        assert first is not None
        event = first
        while not (event["reason"] == "removed" and event["server"] is None):
            event = self.next()

    def close(self) -> None:
        self.sock.close(linger=0)


class HeartbeatPub:
    """A PUB socket that sends heartbeats (two frames: topic and payload)."""

    def __init__(self, *, connect: str = "", bind: str = "") -> None:
        self.sock: zmq.Socket[bytes] = CTX.socket(zmq.PUB)
        self.sock.linger = 0
        if bind:
            self.sock.bind(bind)
        if connect:
            self.sock.connect(connect)

    def send(self, payload: Any, topic: str = "heartbeat/global") -> None:
        body = payload if isinstance(payload, bytes) else pack(payload)
        self.sock.send_multipart([topic.encode(), body])

    def send_frames(self, frames: Sequence[bytes]) -> None:
        self.sock.send_multipart(list(frames))

    def publish_until(
        self,
        payload: Any,
        predicate: Callable[[], bool],
        timeout: float = 5.0,
        topic: str = "heartbeat/global",
    ) -> None:
        """Publish ``payload`` again and again until ``predicate`` holds.

        PUB drops what it sends before the subscription arrives, so a single
        send may vanish; repeating an idempotent heartbeat is harmless.
        """

        def sent_and_seen() -> bool:
            self.send(payload, topic)
            return predicate()

        poll_until(sent_and_seen, timeout, interval=0.02, what="a heartbeat to apply")

    def close(self) -> None:
        self.sock.close(linger=0)


# --------------------------------------------------------------------------
# The serve process.


@dataclass
class Serve:
    """A running ``rpcproxy serve`` and the endpoints it was given."""

    proc: subprocess.Popen[bytes]
    query: str
    heartbeat: str
    events: str
    stderr_path: Path
    argv: list[str]
    _client: RawClient | None = field(default=None, repr=False)

    @property
    def client(self) -> RawClient:
        """A REQ client shared by the test's thread."""
        if self._client is None:
            self._client = RawClient(self.query)
        return self._client

    def call(self, op: str, timeout: float = 5.0, **keys: Any) -> dict[str, Any]:
        return self.client.call(op, timeout, **keys)

    def state(self) -> dict[str, Any]:
        """``status`` without the ticking clocks, for before/after comparisons."""
        status = self.call("status")
        del status["next_rebalance_s"], status["heartbeat_age_s"]
        for publisher in status["publishers"]:
            del publisher["age_s"]
        return status

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"rpcproxy did not exit within {timeout} s; stderr:\n{self.stderr()}"
            ) from None

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Signal the process and return its exit code."""
        if self._client is not None:
            self._client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        code = self.wait(timeout)
        with contextlib.suppress(ValueError):
            _live.remove(self)
        return code


def run_rpcproxy(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run an ``rpcproxy`` command to completion."""
    return subprocess.run(
        [RPCPROXY, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(env),
        check=False,
    )


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPCPROXY_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def wait_ready(serve: Serve, timeout: float = START_TIMEOUT_S) -> None:
    """Poll ``ping`` until it answers; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    client = RawClient(serve.query)
    try:
        while time.monotonic() < deadline:
            if serve.proc.poll() is not None:
                raise ProcessExitedError(serve.proc.returncode, serve.stderr())
            try:
                reply = client.request({"op": "ping"}, timeout=0.1)
            except NoReplyError:
                continue
            assert (reply["ok"], reply["pong"]) == (True, True), reply
            return
    finally:
        client.close()
    raise AssertionError(f"rpcproxy did not answer ping within {timeout} s:\n{serve.stderr()}")


class ProcessExitedError(AssertionError):
    def __init__(self, code: int, stderr: str) -> None:
        super().__init__(f"rpcproxy exited with {code} at start; stderr:\n{stderr}")
        self.code = code
        self.stderr = stderr


_serial = itertools.count()


def start_serve(
    directory: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    heartbeat_connect: str = "",
    events: bool = True,
    query_port: int | None = None,
    pass_query: bool = True,
    attempts: int = 5,
    command: Sequence[str] = (RPCPROXY,),
) -> Serve:
    """Start ``rpcproxy serve`` on fresh loopback ports and wait until it answers.

    Free ports can be taken between picking and binding, so a start that
    fails to bind is retried on new ports. ``command`` replaces the
    ``rpcproxy`` executable (a script that wraps the same ``cli.main.main``).
    """
    for attempt in range(attempts):
        query = tcp(query_port if query_port is not None else free_port())
        heartbeat = "" if heartbeat_connect else tcp(free_port())
        events_ep = tcp(free_port()) if events else ""
        argv = [*command, "serve", "--log-level", "debug"]
        if pass_query:
            argv += ["--query", query]
        if heartbeat_connect:
            argv += ["--heartbeat-bind", "", "--heartbeat-connect", heartbeat_connect]
        else:
            argv += ["--heartbeat-bind", heartbeat]
        argv += ["--events", events_ep, *args]
        stderr_path = directory / f"rpcproxy-{next(_serial)}.stderr"
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env=_env(env)
            )
        serve = Serve(proc, query, heartbeat, events_ep, stderr_path, argv)
        _live.append(serve)
        try:
            wait_ready(serve)
        except ProcessExitedError as exc:
            _live.remove(serve)
            in_use = "in use" in exc.stderr or "cannot bind" in exc.stderr
            if in_use and query_port is None and attempt + 1 < attempts:
                continue
            raise
        except BaseException:
            serve.proc.kill()
            serve.proc.wait()
            _live.remove(serve)
            raise
        return serve
    raise AssertionError("unreachable")


def stop_and_check(serve: Serve) -> None:
    """Teardown: SIGTERM must stop it cleanly with exit code 0."""
    if serve.proc.poll() is not None and serve not in _live:
        return  # The test stopped it itself and checked the exit code.
    code = serve.stop()
    assert code == 0, f"rpcproxy exited with {code}; stderr:\n{serve.stderr()}"
    assert_clean_log(serve)


def assert_clean_log(serve: Serve) -> None:
    """No tracebacks and no ERROR lines: bad input is logged as warnings at most."""
    text = serve.stderr()
    assert "Traceback" not in text, text
    assert not [line for line in text.splitlines() if " ERROR " in line], text


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    """Start serves for one test; each is stopped with SIGTERM and must exit 0."""
    started: list[Serve] = []

    def factory(*args: str, **kwargs: Any) -> Serve:
        serve = start_serve(tmp_path, *args, **kwargs)
        started.append(serve)
        return serve

    yield factory
    for serve in started:
        stop_and_check(serve)


@pytest.fixture
def standins() -> Iterator[Callable[[], ServerStandIn]]:
    """Start live ServerStandIns (servers that answer the default ping, Nomad's Status.Ping)."""
    running: list[ServerStandIn] = []

    def factory() -> ServerStandIn:
        standin = ServerStandIn("tcp://127.0.0.1:*", context=CTX)
        standin.start()
        running.append(standin)
        return standin

    yield factory
    for standin in running:
        standin.stop()


# --------------------------------------------------------------------------
# Show the proxies' stderr when a test fails.


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for serve in list(_live):
            text = serve.stderr()[-8000:]
            report.sections.append((f"rpcproxy stderr ({' '.join(serve.argv[1:])})", text))
    return report
