"""EventPublisher's payloads and refreshes (docs/protocol.md section 5), on a real PUB socket.

The refresh period is driven by a :class:`ManualScheduler`, so nothing here
waits for a second to pass; the events are read from a real SUB socket.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pykka
import pytest
import zmq

from rpcproxy.actors import ActiveServerChanged
from rpcproxy.bus.service.events import EventPublisher
from tests.waiting import poll_until

from ._fakes import TIMEOUT, A, B, ManualScheduler


@dataclass
class Published:
    ref: pykka.ActorRef[EventPublisher]
    sub: zmq.Socket[bytes]
    scheduler: ManualScheduler

    def read(self) -> dict[str, Any]:
        assert self.sub.poll(int(TIMEOUT * 1000)), "no event"
        topic, payload = self.sub.recv_multipart()
        assert topic == b"event/active_server"
        event: dict[str, Any] = msgspec.msgpack.decode(payload)
        return event

    def refresh(self) -> dict[str, Any]:
        """Let one refresh period pass and read what it published.

        Returns once the actor has handled the refresh (an ask is answered
        after it: the mailbox is FIFO), so the next one is scheduled.
        """
        self.scheduler.advance(1.0)
        event = self.read()
        self.ref.proxy().endpoint().get(timeout=TIMEOUT)
        return event


@pytest.fixture
def published() -> Iterator[Published]:
    ctx: zmq.Context[Any] = zmq.Context()
    scheduler = ManualScheduler()
    ref = EventPublisher.start(
        ctx, "tcp://127.0.0.1:0", instance="feedc0de", refresh_s=1.0, scheduler=scheduler
    )
    sub: zmq.Socket[bytes] = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.subscribe(b"event/")
    sub.connect(ref.proxy().endpoint().get(timeout=TIMEOUT))
    it = Published(ref, sub, scheduler)
    _join(it)
    try:
        yield it
    finally:
        ref.stop(timeout=TIMEOUT)
        sub.close()
        ctx.term()


def _join(it: Published) -> None:
    """Return once the subscription is up and nothing sent before is still on its way.

    PUB/SUB joins late (slow joiner), so marker events are sent until one
    arrives; each has an epoch of its own (negative: never a real one), so
    a late copy cannot pass for a later marker. Then one last event puts the
    publisher back where it started (no server, epoch 0) and is read: events
    are delivered in order once joined, so nothing sent before it is left.
    No refresh fires meanwhile (the clock does not move).
    """
    markers = iter(range(-1, -1_000_000, -1))

    def joined() -> bool:
        it.ref.tell(ActiveServerChanged(None, "removed", next(markers)))
        return bool(it.sub.poll(20))

    poll_until(joined, TIMEOUT * 2, interval=0, what="the events subscription")
    it.ref.tell(ActiveServerChanged(None, "removed", 0))
    while (event := it.read())["epoch"] != 0:
        assert event["epoch"] < 0, event


def test_a_refresh_before_any_change_says_epoch_0_and_no_server(published: Published) -> None:
    assert published.refresh() == {
        "server": None,
        "reason": "refresh",
        "epoch": 0,
        "instance": "feedc0de",
    }


def test_a_change_then_refreshes_repeat_its_server_and_epoch(published: Published) -> None:
    published.ref.tell(ActiveServerChanged(A, "added", 1))
    assert published.read() == {
        "server": {"addr": A.canonical},
        "reason": "added",
        "epoch": 1,
        "instance": "feedc0de",
    }
    published.ref.tell(ActiveServerChanged(B, "failed", 2))
    assert published.read()["epoch"] == 2
    for _ in range(3):
        event = published.refresh()
        assert event == {
            "server": {"addr": B.canonical},
            "reason": "refresh",
            "epoch": 2,
            "instance": "feedc0de",
        }


def test_exactly_one_refresh_is_pending_and_stopping_cancels_it(published: Published) -> None:
    for _ in range(5):
        published.refresh()
        assert len(published.scheduler.pending) == 1
    published.ref.stop(timeout=TIMEOUT)
    assert published.scheduler.pending == []


def test_refresh_s_0_publishes_no_refresh() -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    scheduler = ManualScheduler()
    ref = EventPublisher.start(ctx, "tcp://127.0.0.1:0", refresh_s=0, scheduler=scheduler)
    try:
        ref.proxy().endpoint().get(timeout=TIMEOUT)
        assert scheduler.calls == []
        instance = ref.proxy().instance.get(timeout=TIMEOUT)
        assert len(instance) == 16  # a random id when none is given
    finally:
        ref.stop(timeout=TIMEOUT)
        ctx.term()
