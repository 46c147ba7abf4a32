"""ProberActor: runs the injected prober and tells the answers back."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping, Sequence

import pytest

from rpcproxy.actors import ProberActor
from rpcproxy.actors.messages import ProbeCandidates, ProbeResults
from rpcproxy.bus.probes import TcpProber, WindowedProber, ZmqProber
from rpcproxy.proxy import Address
from tests.waiting import poll_until

from ._fakes import TIMEOUT, A, B, C, FakeProber, received, start_recorder


def test_answers_are_told_back_with_the_token() -> None:
    target, inbox = start_recorder()
    prober = FakeProber((B,))
    actor = ProberActor.start(prober, target)

    actor.tell(ProbeCandidates(7, (A, B, C)))

    assert inbox.wait_count(1, TIMEOUT)
    assert received(target, inbox) == [ProbeResults(7, {A: False, B: True, C: False})]
    assert prober.calls == [(A, B, C)]


class EveryProber(FakeProber):
    """A prober with ``every``, as the transport's are: records which question was asked."""

    def __init__(self, live: tuple[Address, ...]) -> None:
        super().__init__(live)
        self.every_calls: list[tuple[Address, ...]] = []

    def every(self, candidates: Sequence[Address]) -> Mapping[Address, bool]:
        self.every_calls.append(tuple(candidates))
        return {c: c in (B, C) for c in candidates}


def test_a_probe_of_every_candidate_asks_every_once() -> None:
    target, inbox = start_recorder()
    prober = EveryProber((B, C))
    actor = ProberActor.start(prober, target)

    actor.tell(ProbeCandidates(8, (A, B, C), every=True))

    assert inbox.wait_count(1, TIMEOUT)
    assert received(target, inbox) == [ProbeResults(8, {A: False, B: True, C: True})]
    assert prober.every_calls == [(A, B, C)]
    assert prober.calls == []


def test_a_prober_without_every_is_asked_one_candidate_at_a_time() -> None:
    target, inbox = start_recorder()
    prober = FakeProber((A, C))
    actor = ProberActor.start(prober, target)

    actor.tell(ProbeCandidates(9, (A, B, C), every=True))

    assert inbox.wait_count(1, TIMEOUT)
    assert received(target, inbox) == [ProbeResults(9, {A: True, B: False, C: True})]
    assert prober.calls == [(A,), (B,), (C,)]


def test_a_raising_prober_reports_nobody_answered_and_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    target, inbox = start_recorder()
    prober = FakeProber((A,), error=OSError("network unreachable"))
    actor = ProberActor.start(prober, target)

    actor.tell(ProbeCandidates(1, (A, B)))
    assert inbox.wait_count(1, TIMEOUT)
    prober.error = None
    actor.tell(ProbeCandidates(2, (A, B)))
    assert inbox.wait_count(2, TIMEOUT)

    assert received(target, inbox) == [
        ProbeResults(1, {}),
        ProbeResults(2, {A: True, B: False}),
    ]
    assert actor.is_alive()
    assert any(r.exc_info and isinstance(r.exc_info[1], OSError) for r in caplog.records)


def test_unexpected_messages_are_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    target, inbox = start_recorder()
    actor = ProberActor.start(FakeProber((A,)), target)

    assert actor.ask("hello?", timeout=TIMEOUT) is None
    actor.tell(42)
    actor.tell(ProbeCandidates(3, (A,)))
    assert inbox.wait_count(1, TIMEOUT)

    assert actor.is_alive()
    assert received(target, inbox) == [ProbeResults(3, {A: True})]
    unexpected = [r for r in caplog.records if "Unexpected message received by" in r.getMessage()]
    assert len(unexpected) == 2


class ClosableProber(FakeProber):
    """A FakeProber with the ``close()`` that bus/probes/engine.py's probers have."""

    def __init__(self, live: tuple[Address, ...] = ()) -> None:
        super().__init__(live)
        self.closes = 0

    def close(self) -> None:
        self.closes += 1


def test_stopping_the_actor_closes_its_prober() -> None:
    target, _ = start_recorder()
    prober = ClosableProber((A,))
    actor = ProberActor.start(prober, target)
    actor.stop(timeout=TIMEOUT)
    assert prober.closes == 1
    # A prober without close() (a plain function) is fine too.
    plain = ProberActor.start(FakeProber((A,)), target)
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
    """Shutdown's order: close the prober, then the actor's stop is handled at once."""
    target, inbox = start_recorder()
    timeout = 60.0
    prober: WindowedProber = (
        ZmqProber(region="global", rpc_major_version=1, timeout_s=timeout)
        if kind == "zmq"
        else TcpProber(timeout_s=timeout)
    )
    actor = ProberActor.start(prober, target)
    actor.tell(ProbeCandidates(5, (hung_server,)))
    poll_until(lambda: prober.in_flight, TIMEOUT * 5, what="the ping to start")

    prober.close()
    actor.stop(timeout=timeout / 4)

    assert inbox.wait_count(1, TIMEOUT)
    assert received(target, inbox) == [ProbeResults(5, {hung_server: False})]
    assert prober.closed
