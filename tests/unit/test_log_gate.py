"""The rate limit on peer-caused warnings: a burst, then one per interval, with a count."""

from __future__ import annotations

import logging

import pytest

from rpcproxy.log_gate import LogGate, PeerLog


def test_a_burst_passes_then_lines_are_held_back() -> None:
    gate = LogGate(interval_s=10.0, burst=3)

    assert [gate.admit("garbage", 0.0) for _ in range(3)] == [0, 0, 0]
    assert [gate.admit("garbage", 0.0) for _ in range(1000)] == [None] * 1000


def test_the_next_line_let_through_reports_how_many_were_held_back() -> None:
    gate = LogGate(interval_s=10.0, burst=1)
    assert gate.admit("garbage", 0.0) == 0
    for _ in range(1234):
        assert gate.admit("garbage", 1.0) is None

    assert gate.admit("garbage", 10.0) == 1234
    # The count starts again from zero after it was reported.
    assert gate.admit("garbage", 10.5) is None
    assert gate.admit("garbage", 20.0) == 1


def test_tokens_refill_at_one_per_interval_up_to_the_burst() -> None:
    gate = LogGate(interval_s=2.0, burst=2)
    assert gate.admit("k", 0.0) == 0
    assert gate.admit("k", 0.0) == 0
    assert gate.admit("k", 1.0) is None
    assert gate.admit("k", 2.0) == 1  # one token back after 2 s
    assert gate.admit("k", 2.0) is None
    # A long silence refills the burst, not more.
    assert [gate.admit("k", 1000.0) for _ in range(3)] == [1, 0, None]


def test_kinds_are_limited_separately() -> None:
    gate = LogGate(interval_s=10.0, burst=1)
    assert gate.admit("frames", 0.0) == 0
    assert gate.admit("frames", 0.0) is None
    assert gate.admit("payload", 0.0) == 0


def test_a_clock_that_goes_back_never_adds_tokens() -> None:
    gate = LogGate(interval_s=10.0, burst=1)
    assert gate.admit("k", 100.0) == 0
    assert gate.admit("k", 0.0) is None
    assert gate.admit("k", 5.0) is None


def test_the_table_of_kinds_is_bounded() -> None:
    gate = LogGate(interval_s=10.0, burst=1, max_kinds=2)
    for kind in ("a", "b", "c"):
        assert gate.admit(kind, 0.0) == 0
    # "a" was forgotten (least recently used), so it starts with a fresh burst.
    assert gate.admit("a", 0.0) == 0
    assert gate.admit("c", 0.0) is None


@pytest.mark.parametrize(
    "kwargs", [{"interval_s": 0.0}, {"burst": 0}, {"max_kinds": 0}, {"interval_s": -1.0}]
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LogGate(**kwargs)  # type: ignore[arg-type]


def test_peer_log_writes_the_suppressed_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    now = [0.0]
    peer_log = PeerLog(logging.getLogger("test.peer"), LogGate(10.0, burst=1), lambda: now[0])

    written = [peer_log.warning("bad", "dropped a heartbeat: %s", f"#{i}") for i in range(50)]
    now[0] = 10.0
    assert peer_log.warning("bad", "dropped a heartbeat: %s", "last")

    assert written == [True] + [False] * 49
    assert [r.getMessage() for r in caplog.records] == [
        "dropped a heartbeat: #0",
        "dropped a heartbeat: last (49 similar messages suppressed)",
    ]
