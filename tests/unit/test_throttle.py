"""The per-key warning throttle (the reference's never-created rpcAPIMismatchThrottle)."""

from __future__ import annotations

from proxy import Throttle


def test_defect_api_mismatch_throttle_once_per_key_per_interval() -> None:
    throttle = Throttle(interval=10_800.0)
    assert throttle.allow("10.0.0.1:4647", now=0.0)
    assert not throttle.allow("10.0.0.1:4647", now=1.0)
    assert not throttle.allow("10.0.0.1:4647", now=10_799.9)
    # Other keys are independent.
    assert throttle.allow("10.0.0.2:4647", now=5.0)
    assert not throttle.allow("10.0.0.2:4647", now=6.0)
    # The window ends after the interval and a new one starts.
    assert throttle.allow("10.0.0.1:4647", now=10_800.0)
    assert not throttle.allow("10.0.0.1:4647", now=20_000.0)
    assert throttle.allow("10.0.0.1:4647", now=21_600.0)


def test_throttle_blocked_calls_do_not_extend_window() -> None:
    throttle = Throttle(interval=10.0)
    assert throttle.allow("k", now=0.0)
    for t in range(1, 10):
        assert not throttle.allow("k", now=float(t))
    assert throttle.allow("k", now=10.0)


def test_throttle_counts_allowed_events() -> None:
    throttle = Throttle(interval=3.0)
    allowed = [t for t in range(30) if throttle.allow("k", now=float(t))]
    assert allowed == list(range(0, 30, 3))


def test_throttle_table_is_bounded() -> None:
    throttle = Throttle(interval=100.0, max_keys=3)
    for i, key in enumerate("abc"):
        assert throttle.allow(key, now=float(i))
    assert throttle.allow("d", now=3.0)  # table full: "a" (window ends first) forgotten
    assert len(throttle._until) == 3
    assert throttle.allow("a", now=4.0)  # forgotten, so allowed again; "b" evicted
    assert not throttle.allow("c", now=5.0)
    assert not throttle.allow("d", now=5.0)
    assert throttle.allow("b", now=6.0)
    assert len(throttle._until) == 3


def test_throttle_many_keys_stay_bounded() -> None:
    throttle = Throttle(interval=1.0, max_keys=100)
    for i in range(10_000):
        assert throttle.allow(f"10.0.{i // 256}.{i % 256}:4647", now=float(i) * 1e-3)
    assert len(throttle._until) == 100
