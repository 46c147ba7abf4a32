"""A message an actor does not handle gets pykka's own warning, and the actor carries on.

Every actor of the service falls back to ``super().on_receive(message)``,
so there is one wording of that warning (pykka's, on the ``pykka`` logger)
instead of hand-written copies, and no actor drops a stray message silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka
import pytest
import zmq

from rpcproxy.actors import ActiveServerChanged, AddOutcome, AddPrimary, ProberActor, TimerActor
from rpcproxy.actors.messages import ProbeCandidates, ProbeResults, RebalanceTick, ScheduleTick
from rpcproxy.actors.persist import PendingState, PersistActor, StateFile
from rpcproxy.bus.service.events import EventPublisher
from rpcproxy.proxy import ProxyState
from tests.waiting import poll_until

from ._fakes import TIMEOUT, A, B, FakeProber, start_recorder
from .conftest import StartProxy


@dataclass(frozen=True, slots=True)
class Stray:
    """A message none of the service's actors handles."""

    what: str = "lost"


@dataclass
class Subject:
    """An actor under test, and a check that it still does its work."""

    ref: pykka.ActorRef[Any]
    still_works: Callable[[], None]


def _proxy(start_proxy: StartProxy, tmp_path: Path, ctx: zmq.Context[Any]) -> Subject:
    h = start_proxy(primaries=(A,))

    def still_works() -> None:
        assert h.request(lambda r: AddPrimary(B, r)) == AddOutcome(B, True)

    return Subject(h.ref, still_works)


def _timer(start_proxy: StartProxy, tmp_path: Path, ctx: zmq.Context[Any]) -> Subject:
    target, inbox = start_recorder()
    ref = TimerActor.start(target)

    def still_works() -> None:
        ref.tell(ScheduleTick(0.0))
        assert inbox.wait_count(1, TIMEOUT)
        assert inbox.items() == [RebalanceTick()]

    return Subject(ref, still_works)


def _prober(start_proxy: StartProxy, tmp_path: Path, ctx: zmq.Context[Any]) -> Subject:
    target, inbox = start_recorder()
    ref = ProberActor.start(FakeProber((A,)), target)

    def still_works() -> None:
        ref.tell(ProbeCandidates(7, (A,)))
        assert inbox.wait_count(1, TIMEOUT)
        assert inbox.items() == [ProbeResults(7, {A: True})]

    return Subject(ref, still_works)


def _persist(start_proxy: StartProxy, tmp_path: Path, ctx: zmq.Context[Any]) -> Subject:
    store = StateFile(tmp_path / "state.json")
    pending = PendingState()
    ref = PersistActor.start(store, pending)

    def still_works() -> None:
        pending.offer(ProxyState(primaries=(A,), active=(A,)))
        # The offer's wake-up is in the mailbox before this ask: FIFO.
        assert ref.proxy().writes.get(timeout=TIMEOUT) == 1
        assert store.load() == ProxyState(primaries=(A,), active=(A,))

    return Subject(ref, still_works)


def _events(start_proxy: StartProxy, tmp_path: Path, ctx: zmq.Context[Any]) -> Subject:
    ref = EventPublisher.start(ctx, "tcp://127.0.0.1:0")
    endpoint = ref.proxy().endpoint().get(timeout=TIMEOUT)

    def still_works() -> None:
        sub: zmq.Socket[bytes] = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.subscribe(b"")
        sub.connect(endpoint)
        try:
            # A SUB misses what was published before it joined: publish until one arrives.
            def heard() -> list[bytes] | None:
                ref.tell(ActiveServerChanged(A, "added", 1))
                return sub.recv_multipart() if sub.poll(20) else None

            topic, _ = poll_until(heard, timeout=TIMEOUT * 2, what="an event after the stray")
            assert topic == b"event/active_server"
        finally:
            sub.close()

    return Subject(ref, still_works)


SUBJECTS = {
    "ProxyActor": _proxy,
    "TimerActor": _timer,
    "ProberActor": _prober,
    "PersistActor": _persist,
    "EventPublisher": _events,
}


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    pykka.ActorRegistry.stop_all(timeout=10.0)  # EventPublisher's socket first
    context.term()


@pytest.mark.parametrize("name", list(SUBJECTS))
def test_a_stray_message_gets_pykkas_warning_and_the_actor_carries_on(
    name: str,
    start_proxy: StartProxy,
    tmp_path: Path,
    ctx: zmq.Context[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    subject = SUBJECTS[name](start_proxy, tmp_path, ctx)

    subject.ref.tell(Stray("told"))
    # Asked after the tell, so the tell has been handled when the answer comes.
    assert subject.ref.ask(Stray("asked"), timeout=TIMEOUT) is None

    assert subject.ref.is_alive()
    subject.still_works()
    warned = [
        r.getMessage()
        for r in caplog.records
        if r.name == "pykka" and "Unexpected message received by" in r.getMessage()
    ]
    assert len(warned) == 2, warned
    assert all(name in text for text in warned), warned
    assert "Stray(what='told')" in warned[0]
    assert "Stray(what='asked')" in warned[1]
    # Only pykka's line: no hand-written copy of it beside.
    ours = [r for r in caplog.records if r.name != "pykka" and "Stray" in r.getMessage()]
    assert ours == []
