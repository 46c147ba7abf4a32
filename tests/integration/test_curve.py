"""CURVE: only allowed keys can query, publish heartbeats or subscribe to events."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from rpcproxy.bus.client import ProxyClient, ProxyTimeoutError
from rpcproxy.bus.net.keys import CurveClient, create_key_pair
from rpcproxy.bus.standins.publisher import HeartbeatPublisher
from rpcproxy.proxy import HeartbeatServer
from tests.helpers import free_port, tcp
from tests.integration.serving import CTX, RPCPROXY
from tests.waiting import poll_until

pytestmark = pytest.mark.integration


@dataclass
class CurveProxy:
    proc: subprocess.Popen[bytes]
    query: str
    heartbeat: str
    events: str
    stderr: Path
    keys: Path

    def client(self, name: str, timeout_s: float = 5.0) -> ProxyClient:
        return ProxyClient(self.query, timeout_s=timeout_s, retries=1, curve=self.curve(name))

    def curve(self, name: str) -> CurveClient:
        return CurveClient.from_files(self.keys / "proxy.key", self.keys / f"{name}.key_secret")

    def log(self) -> str:
        return self.stderr.read_text()


@pytest.fixture
def curve_proxy(tmp_path: Path) -> Iterator[CurveProxy]:
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    allowed.mkdir()
    for name in ("proxy", "publisher", "client", "stranger"):
        create_key_pair(keys, name)
    for name in ("publisher", "client"):
        (allowed / f"{name}.key").write_bytes((keys / f"{name}.key").read_bytes())
    query, heartbeat, events = (tcp(free_port()) for _ in range(3))
    stderr = tmp_path / "serve.stderr"
    with stderr.open("wb") as out:
        proc = subprocess.Popen(
            [
                RPCPROXY, "serve", "--query", query, "--heartbeat-bind", heartbeat,
                "--events", events,
                "--curve-secret-key-file", str(keys / "proxy.key_secret"),
                "--curve-allowed-dir", str(allowed),
            ],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    proxy = CurveProxy(proc, query, heartbeat, events, stderr, keys)

    def answers() -> bool:
        try:
            with proxy.client("client", timeout_s=0.3) as client:
                return client.ping()
        except ProxyTimeoutError:
            return proc.poll() is not None  # Stop waiting if it died; asserted below.

    poll_until(answers, timeout=15, what="the CURVE proxy to answer")
    assert proc.poll() is None, proxy.log()
    yield proxy
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0, proxy.log()


def publish(proxy: CurveProxy, name: str, addr: str) -> HeartbeatPublisher:
    publisher = HeartbeatPublisher(
        CTX,
        connect=[proxy.heartbeat],
        servers=lambda: (HeartbeatServer(addr, 1, 1, "dc1"),),
        interval_s=0.05,
        curve=proxy.curve(name),
    )
    publisher.start()
    return publisher


def test_queries_need_an_allowed_key(curve_proxy: CurveProxy) -> None:
    with curve_proxy.client("client") as client:
        assert client.ping() is True
    with (
        ProxyClient(curve_proxy.query, timeout_s=0.5, retries=1) as plain,
        pytest.raises(ProxyTimeoutError),
    ):
        plain.ping()
    with (
        curve_proxy.client("stranger", timeout_s=0.5) as stranger,
        pytest.raises(ProxyTimeoutError),
    ):
        stranger.ping()
    poll_until(
        lambda: "refused a query peer" in curve_proxy.log(), timeout=5, what="the refusal log"
    )


def test_a_strangers_heartbeats_are_never_applied(curve_proxy: CurveProxy) -> None:
    stranger = publish(curve_proxy, "stranger", "10.66.6.6")
    try:
        poll_until(
            lambda: "refused a heartbeat peer" in curve_proxy.log(),
            timeout=5,
            what="the stranger to be refused",
        )
    finally:
        stranger.stop()
    with curve_proxy.client("client") as client:
        assert client.servers() == []
        allowed = publish(curve_proxy, "publisher", "10.1.1.1")
        try:
            poll_until(
                lambda: [s.addr for s in client.servers()] == ["10.1.1.1:4647"],
                timeout=5,
                what="the allowed publisher's heartbeat",
            )
        finally:
            allowed.stop()
        status = client.status()
    assert status.heartbeat_age_s is not None
    assert all(s.addr != "10.66.6.6:4647" for s in status.servers)


HANDSHAKE_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL


def test_events_need_an_allowed_key(curve_proxy: CurveProxy) -> None:
    def subscriber(name: str | None) -> zmq.Socket[bytes]:
        sub: zmq.Socket[bytes] = CTX.socket(zmq.SUB)
        sub.linger = 0
        if name is not None:
            curve_proxy.curve(name).secure(sub)
        sub.subscribe(b"event/")
        return sub

    allowed, plain = subscriber("client"), subscriber(None)
    # The plain subscriber's handshakes are watched from before it connects.
    plain_monitor = plain.get_monitor_socket(HANDSHAKE_EVENTS)
    allowed.connect(curve_proxy.events)
    plain.connect(curve_proxy.events)
    handshakes: list[int] = []

    def plain_refused() -> bool:
        while plain_monitor.poll(0):
            handshakes.append(recv_monitor_message(plain_monitor)["event"])
        return zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL in handshakes

    try:
        with curve_proxy.client("client") as client:
            # Add and remove until the allowed subscriber hears an event
            # (PUB drops what it sends before a subscription arrives).
            def heard() -> bool:
                client.add_primary_server("10.2.2.2")
                client.remove_server("10.2.2.2")
                return bool(allowed.poll(50))

            poll_until(heard, timeout=5, what="an event on the CURVE subscriber")
        # The plain subscriber heard nothing, and never can: its handshake
        # (the marker) was refused, and a connection that never completed one
        # carries no message.
        poll_until(plain_refused, timeout=10, what="the plain subscriber's handshake to fail")
        assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in handshakes
        assert plain.poll(0) == 0
    finally:
        allowed.close()
        plain.disable_monitor()
        plain_monitor.close(linger=0)
        plain.close()
