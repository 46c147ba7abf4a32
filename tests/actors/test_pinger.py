"""PingerActor: runs the injected pinger and tells the answers back."""

from __future__ import annotations

import pytest

from actors import PingerActor
from actors.messages import PingCandidates, PingResults

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
    unexpected = [r for r in caplog.records if "unexpected message" in r.getMessage()]
    assert len(unexpected) == 2
