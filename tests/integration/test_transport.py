"""Transport-level behaviour: frame limits, read-your-writes, shutdown with work pending."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from tests.helpers import pack, unpack
from tests.integration.serving import (
    CTX,
    NoReplyError,
    RawClient,
    Serve,
    addrs,
    assert_clean_log,
    without_view,
)
from tests.waiting import poll_until

pytestmark = pytest.mark.integration

MAX_MESSAGE_BYTES = 4096
EXIT_S = 10.0
"""docs/protocol.md section 8: serve exits within 10 s of SIGTERM, whatever it is doing."""


@pytest.fixture
def small_frames(serve_factory: Callable[..., Serve]) -> Serve:
    return serve_factory("--max-message-bytes", str(MAX_MESSAGE_BYTES), events=False)


@pytest.fixture
def monitored_req(small_frames: Serve) -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    """A REQ socket connected to the proxy and a monitor of its connection events."""
    req: zmq.Socket[bytes] = CTX.socket(zmq.REQ)
    req.linger = 0
    monitor = req.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
    req.connect(small_frames.query)
    yield req, monitor
    req.disable_monitor()
    monitor.close(linger=0)
    req.close(linger=0)


def wait_event(monitor: zmq.Socket[bytes], event: int, timeout: float = 5.0) -> None:
    def seen() -> bool:
        while monitor.poll(0):
            if recv_monitor_message(monitor)["event"] == event:
                return True
        return False

    poll_until(seen, timeout, what=f"socket event {event}")


def test_a_frame_over_max_message_bytes_disconnects_that_peer_only(
    small_frames: Serve, monitored_req: tuple[zmq.Socket[bytes], zmq.Socket[bytes]]
) -> None:
    req, monitor = monitored_req
    wait_event(monitor, zmq.EVENT_CONNECTED)
    # Under the limit: answered normally, even when large.
    req.send(pack({"op": "ping", "id": "x" * (MAX_MESSAGE_BYTES - 100)}))
    assert req.poll(5000)
    assert unpack(req.recv())["pong"] is True

    before = small_frames.state()
    req.send(pack({"op": "add_primary_server", "addr": "10.0.0.1", "pad": "x" * 5000}))
    wait_event(monitor, zmq.EVENT_DISCONNECTED)
    # Others are still served, and the oversized request changed nothing.
    with RawClient(small_frames.query) as other:
        assert other.call("ping")["pong"] is True
        assert other.call("status")["servers"] == before["servers"]
    assert small_frames.state() == before
    # The disconnected peer never got a reply. The disconnect is the marker:
    # a reply would have come on that connection before it closed, so it was
    # queued on req before the monitor reported the close; and a reply sent
    # later goes to a peer the proxy no longer has (req reconnects as a new one).
    assert req.poll(0) == 0


def test_oversized_frames_in_a_loop_do_not_hurt_the_service(small_frames: Serve) -> None:
    for _ in range(20):
        with RawClient(small_frames.query) as client, pytest.raises(NoReplyError):
            client.send_raw(b"\x00" * (MAX_MESSAGE_BYTES + 1), timeout=0.05)
    assert small_frames.call("add_primary_server", addr="10.0.0.1")["added"] is True
    assert addrs(small_frames.call("servers")["servers"]) == ["10.0.0.1:4647"]


def test_read_your_writes_across_clients(serve_factory: Callable[..., Serve]) -> None:
    proxy = serve_factory(events=False)
    with RawClient(proxy.query) as writer, RawClient(proxy.query) as reader:
        for i in range(150):
            addr = f"10.1.{i // 250}.{i % 250 + 1}:4647"
            assert writer.call("add_primary_server", addr=addr)["added"] is True
            assert addr in addrs(reader.call("servers")["servers"]), i
            assert reader.call("find_server")["server"] == {"addr": addr}
            backups = [f"10.2.0.{i % 200 + 1}:4647"]
            writer.call("set_backup_servers", addrs=backups)
            assert addrs(reader.call("status")["backup"]) == backups
            writer.call("set_backup_servers", addrs=[])
            assert reader.call("status")["backup"] == []
            assert writer.call("remove_server", addr=addr)["removed"] is True
            assert addr not in addrs(reader.call("servers")["servers"]), i
            writer.call("heartbeat", servers=[], num_nodes=i, leader_rpc_addr=f"l{i}")
            status = reader.call("status")
            assert (status["num_nodes"], status["leader_addr"]) == (i, f"l{i}")


def test_a_pending_rebalance_gets_unavailable_on_sigterm(
    serve_factory: Callable[..., Serve],
) -> None:
    # Servers that accept and never answer, so each ping waits its whole
    # timeout (a refused port fails at once): one no test waits out, so an
    # answer well inside it did not wait for the pings.
    ping_timeout_s = 60.0
    hung = [socket.create_server(("127.0.0.1", 0)) for _ in range(3)]
    dead = [f"127.0.0.1:{sock.getsockname()[1]}" for sock in hung]
    proxy = serve_factory(
        "--ping-timeout-s", str(ping_timeout_s), "--primary-servers", ",".join(dead), events=False
    )
    dealer: zmq.Socket[bytes] = CTX.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(proxy.query)
    try:
        dealer.send_multipart([b"", pack({"op": "rebalance", "id": "slow"})])
        # One connection is read in order: once the ping behind it is answered,
        # the rebalance has been read and is waiting on the pings' timeout.
        dealer.send_multipart([b"", pack({"op": "ping", "id": "after"})])
        assert dealer.poll(5000)
        empty, body = dealer.recv_multipart()
        assert empty == b"" and without_view(unpack(body)) == {
            "ok": True,
            "pong": True,
            "id": "after",
        }

        # The actor is not blocked by the pings: writes are answered (well
        # inside the pings' timeout), and (rule 4) win over the rebalance's result.
        with RawClient(proxy.query) as other:
            wait_s = ping_timeout_s / 2
            assert other.call("add_primary_server", addr="10.0.0.1", timeout=wait_s)["added"]
            assert other.call("remove_server", addr=dead[0], timeout=wait_s)["removed"] is True

        proxy.send_signal(signal.SIGTERM)
        # Section 8: within 10 s of SIGTERM, long before the pings could end.
        assert dealer.poll(int(EXIT_S * 1000)), "the pending rebalance got no reply on SIGTERM"
        empty, body = dealer.recv_multipart()
        reply: dict[str, Any] = unpack(body)
        assert reply["ok"] is False and reply["id"] == "slow", reply
        assert reply["error"]["code"] == "unavailable", reply
        assert proxy.wait(EXIT_S) == 0, proxy.stderr()
        # The rebalance's own result, arriving after the query socket closed,
        # must not break anything on the way out.
        assert_clean_log(proxy)
    finally:
        dealer.close(linger=0)
        for sock in hung:
            sock.close()
