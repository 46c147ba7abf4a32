"""PingerActor: runs the injected pinger and tells the answers back."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from rpcproxy.actors import PingerActor
from rpcproxy.actors.messages import PingCandidates, PingResults
from rpcproxy.bus.probes.engine import TcpPinger, WindowedPinger, ZmqPinger
from rpcproxy.proxy import Address
from tests.waiting import poll_until

from ._fakes import TIMEOUT, A, B, C, FakePinger, received, start_recorder


def test_answers_are_told_back_with_the_token() -> None:
    target, inbox = start_recorder()
    pinger = FakePinger((B,))
    actor = PingerActor.start(pinger, target)

    actor.tell(PingCandidates(7, (A, B, C)))

    assert inbox.wait_count(1, TIMEOUT)
    assert received(target, inbox) == [PingResults(7, {A: False, B: True, C: False})]
    assert pinger.calls == [(A, B, C)]


def test_a_raising_pinger_reports_nobody_answered_and_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    target, inbox = start_recorder()
    pinger = FakePinger((A,), error=OSError("network unreachable"))
    actor = PingerActor.start(pinger, target)

    actor.tell(PingCandidates(1, (A, B)))
    assert inbox.wait_count(1, TIMEOUT)
    pinger.error = None
    actor.tell(PingCandidates(2, (A, B)))
    assert inbox.wait_count(2, TIMEOUT)

    assert received(target, inbox) == [
        PingResults(1, {}),
        PingResults(2, {A: True, B: False}),
    ]
    assert actor.is_alive()
    assert any(r.exc_info and isinstance(r.exc_info[1], OSError) for r in caplog.records)


def test_unexpected_messages_are_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    target, inbox = start_recorder()
    actor = PingerActor.start(FakePinger((A,)), target)

    assert actor.ask("hello?", timeout=TIMEOUT) is None
    actor.tell(42)
    actor.tell(PingCandidates(3, (A,)))
    assert inbox.wait_count(1, TIMEOUT)

    assert actor.is_alive()
    assert received(target, inbox) == [PingResults(3, {A: True})]
    unexpected = [r for r in caplog.records if "Unexpected message received by" in r.getMessage()]
    assert len(unexpected) == 2


class ClosablePinger(FakePinger):
    """A FakePinger with the ``close()`` that bus/probes/engine.py's pingers have."""

    def __init__(self, live: tuple[Address, ...] = ()) -> None:
        super().__init__(live)
        self.closes = 0

    def close(self) -> None:
        self.closes += 1


def test_stopping_the_actor_closes_its_pinger() -> None:
    target, _ = start_recorder()
    pinger = ClosablePinger((A,))
    actor = PingerActor.start(pinger, target)
    actor.stop(timeout=TIMEOUT)
    assert pinger.closes == 1
    # A pinger without close() (a plain function) is fine too.
    plain = PingerActor.start(FakePinger((A,)), target)
    plain.stop(timeout=TIMEOUT)


@pytest.fixture
def hung_server() -> Iterator[Address]:
    """A server that never completes a ping of either kind.

    Its accept queue (backlog 0) is full with one connection nobody accepts:
    Linux drops further SYNs, so a TCP connect hangs, and so does ZeroMQ's.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        with socket.create_connection(listener.getsockname(), timeout=2):
            yield Address("127.0.0.1", listener.getsockname()[1])


@pytest.mark.parametrize("kind", ["zmq", "tcp"])
def test_close_frees_the_actor_from_a_ping_in_flight(kind: str, hung_server: Address) -> None:
    """Shutdown's order: close the pinger, then the actor's stop is handled at once."""
    target, inbox = start_recorder()
    timeout = 60.0
    pinger: WindowedPinger = (
        ZmqPinger(region="global", rpc_major_version=1, timeout_s=timeout)
        if kind == "zmq"
        else TcpPinger(timeout_s=timeout)
    )
    actor = PingerActor.start(pinger, target)
    actor.tell(PingCandidates(5, (hung_server,)))
    poll_until(lambda: pinger.in_flight, TIMEOUT * 5, what="the ping to start")

    pinger.close()
    actor.stop(timeout=timeout / 4)

    assert inbox.wait_count(1, TIMEOUT)
    assert received(target, inbox) == [PingResults(5, {hung_server: False})]
    assert pinger.closed
