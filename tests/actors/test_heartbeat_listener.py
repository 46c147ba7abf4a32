"""HeartbeatListener conflates: one batch in the mailbox at a time, the latest per publisher.

docs/protocol.md section 2, "Heartbeats are state": the actor here is a recorder
that never says it is done with a batch; the test does, so "the proxy is
behind" is exact. Real PUB/SUB sockets carry the heartbeats.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pykka
import pytest
import zmq

from rpcproxy.bus.service.heartbeats import HeartbeatListener
from tests.waiting import poll_until

from ._fakes import TIMEOUT, Inbox, Recorder, received, start_recorder

CTX: zmq.Context[Any] = zmq.Context.instance()
TOPIC = b"heartbeat/global"


def payload(publisher: str | None, seq: int | None, num_nodes: int) -> bytes:
    body: dict[str, Any] = {"servers": [], "num_nodes": num_nodes, "leader_rpc_addr": ""}
    if publisher is not None:
        body |= {"publisher": publisher, "seq": seq}
    data: bytes = msgpack.packb(body)
    return data


@pytest.fixture
def recorder() -> Iterator[tuple[pykka.ActorRef[Recorder], Inbox]]:
    """A stand-in proxy: it records each batch and never calls its ``done`` itself."""
    ref, inbox = start_recorder()
    yield ref, inbox
    ref.stop()


def test_a_flood_costs_the_mailbox_one_batch_of_the_latest(
    recorder: tuple[pykka.ActorRef[Recorder], Inbox],
) -> None:
    ref, inbox = recorder
    listener = HeartbeatListener(
        CTX, ref, region="global", bind=["tcp://127.0.0.1:*"], rest_factor=0.0
    )
    listener.start()
    pub: zmq.Socket[bytes] = CTX.socket(zmq.PUB)
    pub.linger = 0
    # Nothing may be dropped in transport: at the high-water mark, send waits.
    pub.setsockopt(zmq.XPUB_NODROP, 1)
    pub.sndhwm = 10_000
    pub.connect(listener.bound_endpoints[0])
    try:
        # PUB drops what it sends before the subscription is up: send until one arrives.
        seq = iter(range(1, 10**6))
        poll_until(
            lambda: pub.send_multipart([TOPIC, payload("sync", next(seq), 0)]) or inbox.items(),
            TIMEOUT,
            what="the first batch",
        )
        (first,) = inbox.items()

        # The proxy is busy with that batch; meanwhile a publisher floods.
        for i in range(1, 501):
            pub.send_multipart([TOPIC, payload("p", i, i)])
            pub.send_multipart([TOPIC, payload(None, None, 10_000 + i)])
        poll_until(
            lambda: listener.dropped["superseded"] >= 2 * 500 - 2,
            TIMEOUT,
            what="the listener to read the flood",
        )
        assert len(received(ref, inbox)) == 1  # nothing more was queued for the actor

        first.done()
        assert inbox.wait_count(2)
        (_, second) = inbox.items()
        # (The last sync heartbeats may have come after the first batch left.)
        flood = [(h.publisher, h.seq, h.num_nodes) for h in second.heartbeats]
        assert [h for h in flood if h[0] != "sync"] == [("p", 500, 500), (None, None, 10_500)]
        assert len(flood) <= 3
        second.done()
        assert len(received(ref, inbox)) == 2  # and nothing was left behind
    finally:
        pub.close()
        listener.stop()
