"""Writes from the query socket are admitted only while the actor keeps up.

docs/protocol.md section 8: when the proxy is behind, a write is answered
``unavailable`` rather than queued without end. The actor here is a stand-in
that holds every write until the test releases it, so "behind" is exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pykka
import pytest
import zmq

from rpcproxy.actors import AddOutcome, AddPrimary, ApplyHeartbeat, HeartbeatResult, SnapshotBox
from rpcproxy.bus.service.query import QueryServer
from tests.waiting import poll_until

from ._fakes import TIMEOUT

CTX: zmq.Context[Any] = zmq.Context.instance()
HEAVY = [
    {
        "rpc_advertise_addr": f"10.{i >> 8}.{i & 255}.1:4647",
        "rpc_major_version": 1,
        "rpc_minor_version": 1,
        "datacenter": "dc1",
    }
    for i in range(4096)
]


class HeldProxy(pykka.ThreadingActor):
    """Keeps every write unanswered until :meth:`release`; answers at once after."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Any] = []
        self.released = False

    def on_receive(self, message: Any) -> Any:
        self.held.append(message)
        if self.released:
            self._answer_held()
        return None

    def release(self) -> int:
        self.released = True
        return self._answer_held()

    def count(self) -> int:
        return len(self.held)

    def _answer_held(self) -> int:
        held, self.held = self.held, []
        for message in held:
            match message:
                case AddPrimary(addr, reply):
                    reply(AddOutcome(addr, True))
                case ApplyHeartbeat(_, reply):
                    reply(HeartbeatResult(changed=True, stale=False))
        return len(held)


class Dealer:
    """A DEALER with the empty delimiter: many requests in flight, replies by ``id``."""

    def __init__(self, endpoint: str) -> None:
        self.sock: zmq.Socket[bytes] = CTX.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)

    def send(self, request_id: int, op: str, **keys: Any) -> None:
        body = msgpack.packb({"op": op, "id": request_id, **keys}, use_bin_type=True)
        self.sock.send_multipart([b"", body])

    def replies(self, count: int, timeout: float = TIMEOUT) -> dict[int, dict[str, Any]]:
        """The next ``count`` replies by id; fails if they do not all come in time."""
        got: dict[int, dict[str, Any]] = {}
        while len(got) < count:
            if not self.sock.poll(int(timeout * 1000)):
                raise AssertionError(f"{len(got)} of {count} replies within {timeout} s")
            delimiter, body = self.sock.recv_multipart()
            assert delimiter == b""
            reply = msgpack.unpackb(body)
            got[reply["id"]] = reply
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def held() -> Iterator[pykka.ActorRef[HeldProxy]]:
    ref = HeldProxy.start()
    yield ref
    ref.stop()


def start_query(proxy: pykka.ActorRef[HeldProxy], **kwargs: Any) -> QueryServer:
    server = QueryServer(CTX, "tcp://127.0.0.1:*", proxy, SnapshotBox(), **kwargs)
    server.start()
    return server


def unavailable(reply: dict[str, Any]) -> bool:
    return reply["ok"] is False and reply["error"]["code"] == "unavailable"


def test_writes_beyond_the_bound_are_refused_at_once(held: pykka.ActorRef[HeldProxy]) -> None:
    server = start_query(held, op_timeout_s=60.0)
    client = Dealer(server.bound_endpoint)
    try:
        for i in range(200):
            client.send(i, "add_primary_server", addr=f"10.1.{i}.1")

        # The proxy is behind: what it cannot take is answered now, not in 60 s.
        refused = client.replies(200 - 128)
        assert sorted(refused) == list(range(128, 200))
        assert all(unavailable(r) for r in refused.values())
        assert "behind" in refused[128]["error"]["message"]
        assert held.proxy().count().get(timeout=TIMEOUT) == 128

        assert held.proxy().release().get(timeout=TIMEOUT) == 128
        answered = client.replies(128)
        assert all(r["ok"] is True for r in answered.values())
        # Caught up: writes are admitted again.
        client.send(1000, "add_primary_server", addr="10.2.0.1")
        assert client.replies(1)[1000]["ok"] is True
    finally:
        client.close()
        server.stop()


def test_heavy_writes_are_bounded_by_what_they_carry(held: pykka.ActorRef[HeldProxy]) -> None:
    server = start_query(held, op_timeout_s=60.0)
    client = Dealer(server.bound_endpoint)
    try:
        for i in range(10):
            client.send(i, "heartbeat", servers=HEAVY, num_nodes=i, leader_rpc_addr="")

        refused = client.replies(6)
        assert sorted(refused) == list(range(4, 10))
        assert all(unavailable(r) for r in refused.values())
        assert held.proxy().count().get(timeout=TIMEOUT) == 4

        assert held.proxy().release().get(timeout=TIMEOUT) == 4
        assert all(r["ok"] is True for r in client.replies(4).values())
        client.send(100, "heartbeat", servers=HEAVY, num_nodes=100, leader_rpc_addr="")
        assert client.replies(1)[100]["ok"] is True
    finally:
        client.close()
        server.stop()


def test_a_write_that_timed_out_counts_until_the_actor_gets_to_it(
    held: pykka.ActorRef[HeldProxy],
) -> None:
    server = start_query(held, op_timeout_s=0.2, max_writes=2)
    client = Dealer(server.bound_endpoint)
    try:
        client.send(1, "add_primary_server", addr="10.4.0.1")
        client.send(2, "add_primary_server", addr="10.4.0.2")
        timed_out = client.replies(2)
        assert all(unavailable(r) for r in timed_out.values())
        assert "in time" in timed_out[1]["error"]["message"]

        # Both are still in the actor's mailbox: a third is refused at once.
        client.send(3, "add_primary_server", addr="10.4.0.3")
        assert "behind" in client.replies(1)[3]["error"]["message"]

        held.proxy().release().get(timeout=TIMEOUT)
        # Their answers go nowhere (the clients had theirs), but they free the places.
        poll_until(lambda: server.writes_waiting == 0, TIMEOUT, what="the late answers")
        client.send(4, "add_primary_server", addr="10.4.0.4")
        assert client.replies(1)[4]["ok"] is True
    finally:
        client.close()
        server.stop()
