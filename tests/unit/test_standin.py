"""The Nomad-server stand-in over real loopback sockets (bus/standin.py), zmq protocol.

The nomad protocol's stand-in is tested in test_nomad_standin.py.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type hints
import pytest
import zmq

from rpcproxy.bus.standins.standin import PingResponder, ServerStandIn
from tests.helpers import free_port, port_is_free, tcp
from tests.waiting import poll_until

PING = msgpack.packb({"op": "ping", "region": "global", "rpc_major_version": 1})
Client = Callable[[ServerStandIn], zmq.Socket[bytes]]


@pytest.fixture
def server(ctx: zmq.Context[Any]) -> Iterator[ServerStandIn]:
    standin = ServerStandIn(protocol="zmq", context=ctx, max_message_bytes=1024)
    standin.start()
    yield standin
    standin.stop()


@pytest.fixture
def client(ctx: zmq.Context[Any]) -> Iterator[Client]:
    """DEALERs connected to a stand-in, closed after the test."""
    opened: list[zmq.Socket[bytes]] = []

    def connect(standin: ServerStandIn) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(standin.endpoint)
        opened.append(sock)
        return sock

    yield connect
    for sock in opened:
        sock.close()


def request(sock: zmq.Socket[bytes], *frames: bytes, timeout_s: float = 5.0) -> Any:
    """Send ``frames`` after the empty delimiter; the decoded reply, or None."""
    sock.send_multipart([b"", *frames])
    if not sock.poll(int(timeout_s * 1000)):
        return None
    *_, payload = sock.recv_multipart()
    return msgpack.unpackb(payload)


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_answers_ping(server: ServerStandIn, client: Client) -> None:
    assert server.endpoint.startswith("tcp://127.0.0.1:")
    assert server.address == server.endpoint.removeprefix("tcp://")
    assert request(client(server), PING) == {"ok": True}
    assert server.pings == 1


def test_answers_a_req_client(ctx: zmq.Context[Any], server: ServerStandIn) -> None:
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    try:
        req.connect(server.endpoint)
        req.send(PING)
        assert req.poll(5000)
        assert msgpack.unpackb(req.recv()) == {"ok": True}
    finally:
        req.close()


def test_pause_and_resume(server: ServerStandIn, client: Client) -> None:
    sock = client(server)
    assert request(sock, PING) == {"ok": True}
    server.pause()
    assert request(sock, PING, timeout_s=0.3) is None
    # The stand-in's thread may not have read that ping yet on a busy
    # machine; resuming before it does would answer it. Wait until it was
    # read and dropped.
    poll_until(lambda: server.dropped == 1, timeout=10.0, what="the paused ping dropped")
    server.resume()
    # The ping sent while paused was dropped, not queued: only a fresh one
    # is answered, so exactly one reply comes back. A marker after it (a bad
    # request, whose reply differs) is answered next: the connection's
    # requests are answered in order, so no other reply was pending before it.
    assert request(sock, PING) == {"ok": True}
    assert request(sock, b"\xc1")["error"]["code"] == "bad_request"
    assert not sock.poll(0)
    assert server.pings == 2


def test_stop_frees_the_port_and_restart_binds_it_again(
    server: ServerStandIn, client: Client
) -> None:
    endpoint = server.endpoint
    port = int(endpoint.rpartition(":")[2])
    server.stop()
    assert not server.running
    assert refuses_connections(port)
    server.restart()
    assert server.endpoint == endpoint
    assert request(client(server), PING) == {"ok": True}


def test_stop_is_idempotent(ctx: zmq.Context[Any]) -> None:
    before = set(threading.enumerate())
    standin = ServerStandIn(protocol="zmq", context=ctx)
    standin.start()
    threads = set(threading.enumerate()) - before
    assert threads, "the stand-in runs no thread of its own"
    port = int(standin.endpoint.rpartition(":")[2])

    standin.stop()
    # The first stop ended the thread and closed the socket.
    assert not standin.running
    assert not [t for t in threads if t.is_alive()]
    assert port_is_free(port)

    # The second finds nothing to stop: it returns (rather than waits), raises
    # nothing and changes nothing.
    errors: list[BaseException] = []

    def stop_again() -> None:
        try:
            standin.stop()
        except BaseException as exc:  # reported below
            errors.append(exc)

    again = threading.Thread(target=stop_again)
    again.start()
    again.join(10)
    assert not again.is_alive(), "a second stop() hung"
    assert errors == []
    assert not standin.running
    assert port_is_free(port)


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ((b"\xc1",), "bad_request"),
        ((msgpack.packb([1, 2]),), "bad_request"),
        ((msgpack.packb({"no": "op"}),), "bad_request"),
        ((msgpack.packb({"op": 7}),), "bad_request"),
        ((msgpack.packb({"op": "find_server"}),), "unknown_op"),
        ((b"extra", b"frames", b"\x00"), "bad_request"),
    ],
    ids=["not-msgpack", "not-a-map", "no-op", "op-not-str", "unknown-op", "many-frames"],
)
def test_bad_requests_get_an_error_reply(
    server: ServerStandIn, client: Client, frames: tuple[bytes, ...], code: str
) -> None:
    sock = client(server)
    reply = request(sock, *frames)
    assert reply["ok"] is False
    assert reply["error"]["code"] == code
    assert isinstance(reply["error"]["message"], str)
    assert request(sock, PING) == {"ok": True}
    assert server.pings == 1


def test_oversized_frame_drops_the_peer_not_the_server(
    server: ServerStandIn, client: Client
) -> None:
    sock = client(server)
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        sock.send_multipart([b"", b"x" * 2048])
        assert monitor.poll(10_000), "the oversized frame did not drop the peer"
        # The disconnect is the marker: a reply would have come before it.
        assert not sock.poll(0)
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
    assert request(client(server), PING) == {"ok": True}


def test_start_twice_is_refused(server: ServerStandIn) -> None:
    with pytest.raises(RuntimeError):
        server.start()


def test_bind_failure_is_raised(ctx: zmq.Context[Any], server: ServerStandIn) -> None:
    clash = ServerStandIn(server.endpoint, protocol="zmq", context=ctx)
    with pytest.raises(zmq.ZMQError):
        clash.start()
    assert not clash.running


def test_pause_when_not_running_is_refused(ctx: zmq.Context[Any]) -> None:
    with pytest.raises(RuntimeError):
        ServerStandIn(protocol="zmq", context=ctx).pause()


def test_context_manager(ctx: zmq.Context[Any], client: Client) -> None:
    with ServerStandIn(protocol="zmq", context=ctx) as standin:
        assert request(client(standin), PING) == {"ok": True}
    assert not standin.running


def test_serve_forever_until_stopped_from_another_thread(ctx: zmq.Context[Any]) -> None:
    port = free_port()
    standin = ServerStandIn(tcp(port), protocol="zmq", context=ctx)
    serving = threading.Thread(target=standin.serve_forever, daemon=True)
    serving.start()
    deadline = time.monotonic() + 5
    reply = None
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    try:
        sock.linger = 0
        # Connected by port, not by standin.endpoint, which is known only
        # once the stand-in has bound; the DEALER reconnects by itself then.
        sock.connect(f"tcp://127.0.0.1:{port}")
        while reply is None and time.monotonic() < deadline:
            reply = request(sock, PING, timeout_s=0.2)
    finally:
        sock.close()
    assert reply == {"ok": True}
    standin.stop()
    serving.join(5)
    assert not serving.is_alive()
    assert refuses_connections(port)


def test_wildcard_bind_reports_a_loopback_address(ctx: zmq.Context[Any]) -> None:
    with ServerStandIn("tcp://*:*", protocol="zmq", context=ctx) as standin:
        host, _, port = standin.address.rpartition(":")
        assert host == "127.0.0.1"
        assert port.isdigit()


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs POSIX signals")
def test_stop_from_a_signal_handler_on_the_serving_thread(ctx: zmq.Context[Any]) -> None:
    """What a CLI does on SIGTERM: the handler runs on the serving thread."""
    standin = ServerStandIn(protocol="zmq", context=ctx)
    answered = threading.Event()

    def ping_then_signal() -> None:
        sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        sock.linger = 0
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    endpoint = standin.endpoint
                except RuntimeError:
                    # Not bound yet; wait on the socket rather than sleeping.
                    sock.poll(20)
                    continue
                sock.connect(endpoint)
                if request(sock, PING) == {"ok": True}:
                    answered.set()
                break
        finally:
            sock.close()
            os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, lambda *_: standin.stop())
    helper = threading.Thread(target=ping_then_signal, daemon=True)
    try:
        helper.start()
        standin.serve_forever()
    finally:
        signal.signal(signal.SIGUSR1, previous)
        helper.join(5)
    assert answered.is_set()
    assert not standin.running


def test_a_port_taken_by_another_program_makes_start_raise(
    ctx: zmq.Context[Any], client: Client
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        standin = ServerStandIn(tcp(port), protocol="zmq", context=ctx)
        with pytest.raises(zmq.ZMQError, match=f"in use.*{port}") as err:
            standin.start()
    assert err.value.errno == errno.EADDRINUSE
    assert not standin.running
    # Nothing was left half-open: once the port is free the same object binds it.
    standin.start()
    try:
        assert request(client(standin), PING) == {"ok": True}
    finally:
        standin.stop()


def test_a_bad_endpoint_makes_start_raise(ctx: zmq.Context[Any]) -> None:
    standin = ServerStandIn("tcp://no-port", protocol="zmq", context=ctx)
    with pytest.raises(zmq.ZMQError) as err:
        standin.start()
    assert err.value.errno == errno.EINVAL
    assert not standin.running


def test_serve_forever_raises_a_bind_failure(ctx: zmq.Context[Any], server: ServerStandIn) -> None:
    clash = ServerStandIn(server.endpoint, protocol="zmq", context=ctx)
    with pytest.raises(zmq.ZMQError):
        clash.serve_forever()
    assert not clash.running


def test_stop_frees_the_port_for_any_listener(server: ServerStandIn, client: Client) -> None:
    assert request(client(server), PING) == {"ok": True}
    port = int(server.endpoint.rpartition(":")[2])
    server.stop()
    poll_until(lambda: port_is_free(port), what=f"port {port} to be free again")


def test_restart_after_a_pause_answers(server: ServerStandIn, client: Client) -> None:
    server.pause()
    server.stop()
    server.restart()
    assert request(client(server), PING) == {"ok": True}


def test_the_responder_needs_no_socket() -> None:
    responder = PingResponder()
    assert msgpack.unpackb(responder(PING)) == {"ok": True}
    assert msgpack.unpackb(responder(b"\xc1"))["error"]["code"] == "bad_request"
    assert responder.pings == 1
