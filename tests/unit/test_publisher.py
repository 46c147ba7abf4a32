"""The heartbeat publisher over real loopback sockets (bus/standins/publisher.py)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from rpcproxy.bus.net.keys import CurveClient, KeyPair
from rpcproxy.bus.service.codec import decode_heartbeat
from rpcproxy.bus.standins.publisher import HeartbeatPublisher
from rpcproxy.proxy import Heartbeat, HeartbeatServer
from tests.helpers import free_port, port_is_free, tcp
from tests.waiting import poll_until

SERVERS = (HeartbeatServer("10.0.0.1:4647", 1, 1, "dc1"),)
Subscriber = Callable[..., tuple[zmq.Socket[bytes], str]]


@pytest.fixture
def publishers() -> Iterator[Callable[..., HeartbeatPublisher]]:
    """Publishers on a short interval, stopped after the test."""
    made: list[HeartbeatPublisher] = []

    def make(context: zmq.Context[Any], **kwargs: Any) -> HeartbeatPublisher:
        kwargs.setdefault("servers", lambda: SERVERS)
        kwargs.setdefault("interval_s", 0.02)
        publisher = HeartbeatPublisher(context, **kwargs)
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        publisher.stop()


@pytest.fixture
def subscriber(ctx: zmq.Context[Any]) -> Iterator[Subscriber]:
    """SUB sockets subscribed to every topic, closed after the test."""
    opened: list[zmq.Socket[bytes]] = []

    def make(*, bind: str = "", connect: str = "", curve: KeyPair | None = None) -> Any:
        sub: zmq.Socket[bytes] = ctx.socket(zmq.SUB)
        opened.append(sub)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        if curve is not None:
            sub.curve_secretkey = curve.secret
            sub.curve_publickey = curve.public
            sub.curve_server = True
        if bind:
            sub.bind(bind)
            return sub, sub.getsockopt_string(zmq.LAST_ENDPOINT)
        sub.connect(connect)
        return sub, connect

    yield make
    for sub in opened:
        sub.close()


def receive(sub: zmq.Socket[bytes], timeout_s: float = 5.0) -> tuple[bytes, Heartbeat]:
    """The next (topic, heartbeat) on ``sub``; fails the test after ``timeout_s``."""
    assert sub.poll(int(timeout_s * 1000)), "no heartbeat arrived"
    topic, payload = sub.recv_multipart()
    return topic, decode_heartbeat(payload)


def test_publishes_increasing_seq_to_a_bound_subscriber(
    ctx: zmq.Context[Any], subscriber: Subscriber, publishers: Callable[..., HeartbeatPublisher]
) -> None:
    sub, endpoint = subscriber(bind="tcp://127.0.0.1:*")
    publisher = publishers(
        ctx,
        connect=[endpoint],
        num_nodes=lambda: 3,
        leader=lambda: "10.0.0.1:4647",
        publisher="p1",
    )
    publisher.start()
    beats = [receive(sub) for _ in range(3)]
    assert {topic for topic, _ in beats} == {b"heartbeat/global"}
    seqs = [beat.seq for _, beat in beats if beat.seq is not None]
    assert len(seqs) == 3, "every heartbeat carries a seq"
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    for _, beat in beats:
        assert (beat.publisher, beat.servers, beat.num_nodes) == ("p1", SERVERS, 3)
        assert beat.leader_rpc_addr == "10.0.0.1:4647"


def test_binds_and_reports_its_endpoints(
    ctx: zmq.Context[Any], subscriber: Subscriber, publishers: Callable[..., HeartbeatPublisher]
) -> None:
    publisher = publishers(ctx, bind=["tcp://127.0.0.1:*"], region="eu")
    publisher.start()
    [endpoint] = publisher.bound_endpoints
    assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith(":*")
    sub, _ = subscriber(connect=endpoint)
    topic, beat = receive(sub)
    assert topic == b"heartbeat/eu"
    assert beat.publisher == publisher.publisher


def test_a_taken_port_makes_start_raise(
    ctx: zmq.Context[Any], publishers: Callable[..., HeartbeatPublisher]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        endpoint = tcp(taken.getsockname()[1])
        publisher = publishers(ctx, bind=[endpoint])
        with pytest.raises(OSError, match=r"cannot bind heartbeat publisher to .*in use") as err:
            publisher.start()
    assert endpoint in str(err.value)
    assert isinstance(err.value.__cause__, zmq.ZMQError)
    # start() returned only after the thread closed its socket and ended
    # (the ctx fixture checks that no socket is left open).
    assert not publisher.alive


def test_a_bad_connect_endpoint_makes_start_raise(
    ctx: zmq.Context[Any], publishers: Callable[..., HeartbeatPublisher]
) -> None:
    publisher = publishers(ctx, bind=["tcp://127.0.0.1:*"], connect=["tcp://no-port"])
    with pytest.raises(OSError, match="cannot connect heartbeat publisher to tcp://no-port"):
        publisher.start()
    assert not publisher.alive


def test_stop_closes_the_socket_and_frees_the_port(
    ctx: zmq.Context[Any], subscriber: Subscriber, publishers: Callable[..., HeartbeatPublisher]
) -> None:
    port = free_port()
    publisher = publishers(ctx, bind=[tcp(port)])
    publisher.start()
    sub, _ = subscriber(connect=tcp(port))
    receive(sub)
    publisher.stop()
    assert not publisher.alive
    # libzmq closes the listener on its I/O thread a moment after zmq_close.
    poll_until(lambda: port_is_free(port), what=f"port {port} to be free again")


def test_stop_is_idempotent_and_harmless_before_start(
    ctx: zmq.Context[Any], publishers: Callable[..., HeartbeatPublisher]
) -> None:
    publisher = publishers(ctx, bind=["tcp://127.0.0.1:*"])
    publisher.stop()
    publisher.start()
    publisher.stop()
    publisher.stop()
    assert not publisher.alive


def test_a_failing_server_list_skips_heartbeats_not_the_publisher(
    ctx: zmq.Context[Any],
    subscriber: Subscriber,
    publishers: Callable[..., HeartbeatPublisher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    def flaky() -> tuple[HeartbeatServer, ...]:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise ValueError("the list is being rewritten")
        return SERVERS

    sub, endpoint = subscriber(bind="tcp://127.0.0.1:*")
    publisher = publishers(ctx, connect=[endpoint], servers=flaky)
    with caplog.at_level(logging.WARNING, logger="rpcproxy.bus.standins.publisher"):
        publisher.start()
        _, beat = receive(sub)
    assert beat.servers == SERVERS
    assert publisher.alive
    # One report with the traceback for the run of failures, not one per beat.
    failures = [r for r in caplog.records if "could not build a heartbeat" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    poll_until(
        lambda: any("heartbeats again after 3 failures" in r.getMessage() for r in caplog.records),
        what="the recovery line",
    )


def test_curve_publisher_reaches_a_curve_subscriber(
    ctx: zmq.Context[Any], subscriber: Subscriber, publishers: Callable[..., HeartbeatPublisher]
) -> None:
    server = KeyPair(*zmq.curve_keypair())
    client = KeyPair(*zmq.curve_keypair())
    sub, endpoint = subscriber(bind="tcp://127.0.0.1:*", curve=server)
    publisher = publishers(ctx, connect=[endpoint], curve=CurveClient(server.public, client))
    publisher.start()
    _, beat = receive(sub)
    assert beat.servers == SERVERS


def test_a_curve_publisher_with_the_wrong_server_key_reaches_nobody(
    ctx: zmq.Context[Any], subscriber: Subscriber, publishers: Callable[..., HeartbeatPublisher]
) -> None:
    server = KeyPair(*zmq.curve_keypair())
    wrong = KeyPair(*zmq.curve_keypair())
    client = KeyPair(*zmq.curve_keypair())
    sub, endpoint = subscriber(bind="tcp://127.0.0.1:*", curve=server)
    monitor = sub.get_monitor_socket(
        zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    )
    handshakes: list[int] = []

    def refused() -> bool:
        while monitor.poll(0):
            handshakes.append(recv_monitor_message(monitor)["event"])
        return zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL in handshakes

    try:
        publisher = publishers(ctx, connect=[endpoint], curve=CurveClient(wrong.public, client))
        publisher.start()
        poll_until(lambda: publisher.seq >= 5, what="five heartbeats sent")
        # The marker: the subscriber refused the publisher's handshake, and
        # never accepted one, so no connection ever carried a heartbeat.
        poll_until(refused, what="the subscriber to refuse the handshake")
        assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in handshakes
        assert not sub.poll(0)
    finally:
        sub.disable_monitor()
        monitor.close(linger=0)


def test_run_forever_until_stopped_from_another_thread(
    ctx: zmq.Context[Any], subscriber: Subscriber, publishers: Callable[..., HeartbeatPublisher]
) -> None:
    sub, endpoint = subscriber(bind="tcp://127.0.0.1:*")
    publisher = publishers(ctx, connect=[endpoint])
    running = threading.Thread(target=publisher.run_forever, daemon=True)
    running.start()
    receive(sub)
    publisher.stop()
    running.join(5)
    assert not running.is_alive()
    assert not publisher.alive


def test_send_publishes_handed_heartbeats_as_they_are(
    ctx: zmq.Context[Any], subscriber: Subscriber, publishers: Callable[..., HeartbeatPublisher]
) -> None:
    # interval_s=None: the Nomad bridge's mode; nothing goes out but what send() hands over.
    sub, endpoint = subscriber(bind="tcp://127.0.0.1:*")
    publisher = publishers(ctx, connect=[endpoint], interval_s=None)
    early = Heartbeat(SERVERS, 2, "", publisher="nomad-a", seq=1)
    publisher.send(early)  # before start: goes out once the socket is up
    publisher.start()
    # PUB drops what it sends before the subscription arrives: hand over until one lands.
    later = Heartbeat(SERVERS, 3, "10.0.0.1:4647", publisher="nomad-a", seq=2)

    def hand_over() -> Heartbeat | None:
        publisher.send(later)
        return receive(sub)[1] if sub.poll(20) else None

    got = poll_until(hand_over, what="a handed heartbeat")
    assert got in (early, later)
    assert publisher.seq == 0  # it built none of its own


def test_a_source_with_nothing_to_send_skips_the_heartbeat_quietly(
    ctx: zmq.Context[Any],
    subscriber: Subscriber,
    publishers: Callable[..., HeartbeatPublisher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # None is `rpcproxy publish` whose list file is missing: sending
    # `servers: []` instead would drop every primary of the proxy.
    calls = 0

    def missing_then_back() -> tuple[HeartbeatServer, ...] | None:
        nonlocal calls
        calls += 1
        return None if calls <= 3 else SERVERS

    sub, endpoint = subscriber(bind="tcp://127.0.0.1:*")
    publisher = publishers(ctx, connect=[endpoint], servers=missing_then_back)
    with caplog.at_level(logging.DEBUG, logger="rpcproxy.bus.standins.publisher"):
        publisher.start()
        _, beat = receive(sub)
    assert beat.servers == SERVERS
    publisher.stop()
    # The skipped ones took no seq (seq counts the heartbeats built) and were no failure.
    assert calls >= 4 and publisher.seq == calls - 3
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
