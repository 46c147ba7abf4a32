"""The per-key warning throttle (the reference's never-created rpcAPIMismatchThrottle)."""

from __future__ import annotations

from rpcproxy.proxy import Throttle


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


def test_throttle_forgets_the_window_that_ends_first_after_a_restart() -> None:
    throttle = Throttle(interval=10.0, max_keys=2)
    assert throttle.allow("a", now=0.0)
    assert throttle.allow("b", now=1.0)
    assert throttle.allow("a", now=10.0)  # a new window for "a": it now ends after "b"'s
    assert throttle.allow("c", now=10.5)  # full: "b" (ends at 11) goes, not "a" (ends at 20)
    assert not throttle.allow("a", now=11.0)
    assert throttle.allow("b", now=11.0)  # forgotten, so allowed; "a" (ends at 20) goes now
    assert not throttle.allow("c", now=12.0)
    assert throttle.allow("a", now=12.0)
    assert len(throttle) == 2


class _CountedKey(str):
    """A key that counts how often the table hashes it: a measure of work, not of time."""

    hashes = 0

    def __hash__(self) -> int:
        _CountedKey.hashes += 1
        return str.__hash__(self)


def test_throttle_costs_o1_per_key_when_every_key_is_fresh() -> None:
    # Issue 9 row 6: a heartbeat naming thousands of fresh newer-API servers
    # evicts on every call; a scan for the earliest window made each call
    # O(max_keys) (here ~500 hashes a call instead of a handful).
    max_keys = 512
    throttle = Throttle(interval=100.0, max_keys=max_keys)
    keys = [_CountedKey(f"10.0.{i // 256}.{i % 256}:4647") for i in range(2 * max_keys)]
    _CountedKey.hashes = 0
    for i, key in enumerate(keys):
        assert throttle.allow(key, now=i * 1e-3)
        assert len(throttle) <= max_keys
    assert _CountedKey.hashes <= 4 * len(keys)
    # The newest keys are remembered (inside their windows), the oldest forgotten.
    assert not throttle.allow(keys[-1], now=2.0)
    assert throttle.allow(keys[0], now=2.0)
