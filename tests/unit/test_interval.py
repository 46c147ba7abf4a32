"""The rebalance interval formula (docs/protocol.md section 3, rule 5)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpcproxy.proxy import RebalanceTiming

T = RebalanceTiming()
ALMOST_ONE = math.nextafter(1.0, 0.0)


def test_defaults() -> None:
    assert (T.min_reuse_s, T.jitter_fraction, T.conns_per_sec_per_server) == (600.0, 2.0, 64.0)


@pytest.mark.parametrize("u", [0.0, 0.25, 0.5, 0.99, ALMOST_ONE])
@pytest.mark.parametrize(("servers", "expected"), [(5, 3125.0), (1, 15625.0)])
def test_big_cluster_interval_is_rate_limited(servers: int, expected: float, u: float) -> None:
    assert T.rebalance_interval(1_000_000, servers, u) == expected


@pytest.mark.parametrize("u", [0.0, 0.25, 0.5, 0.74])
def test_nineteen_servers_figure(u: float) -> None:
    interval = T.rebalance_interval(1_000_000, 19, u)
    assert interval == pytest.approx(822.368, abs=1e-3)
    assert round(interval, 1) == 822.4


def test_nineteen_servers_jitter_can_exceed_rate_floor() -> None:
    # 822.37 s lies inside [600, 900): a large enough draw wins the max().
    assert T.rebalance_interval(1_000_000, 19, 0.75) == 825.0
    assert 899.99 < T.rebalance_interval(1_000_000, 19, ALMOST_ONE) < 900.0


def test_small_cluster_interval_is_jittered_minimum_bounds() -> None:
    assert T.rebalance_interval(10_000, 5, 0.0) == 600.0
    assert T.rebalance_interval(10_000, 5, 0.5) == 750.0
    top = T.rebalance_interval(10_000, 5, ALMOST_ONE)
    assert 899.99 < top < 900.0


def test_regression_jitter_upper_bound_excluded_despite_rounding() -> None:
    # 600 + 300 * (1 - 2**-53) rounds to exactly 900.0 in floating point.
    assert 600.0 + 300.0 * ALMOST_ONE == 900.0
    assert T.jittered_minimum(ALMOST_ONE) < 900.0
    assert T.first_interval(ALMOST_ONE) < 900.0
    assert RebalanceTiming(min_reuse_s=0.0).jittered_minimum(ALMOST_ONE) == 0.0


def test_small_cluster_interval_samples_spread_over_range() -> None:
    rng = random.Random(2024)
    samples = [T.rebalance_interval(10_000, 5, rng.random()) for _ in range(2000)]
    assert all(600.0 <= s < 900.0 for s in samples)
    assert min(samples) < 610.0
    assert max(samples) > 890.0
    buckets = [0] * 6
    for s in samples:
        buckets[int((s - 600.0) // 50)] += 1
    assert all(200 < b < 470 for b in buckets), buckets


def test_reset_interval() -> None:
    assert T.reset_interval() == 600.0
    assert RebalanceTiming(min_reuse_s=30.0).reset_interval() == 30.0


@pytest.mark.parametrize("u", [0.0, 0.3, ALMOST_ONE])
def test_first_interval_in_range(u: float) -> None:
    first = T.first_interval(u)
    assert 600.0 <= first < 900.0
    assert first == pytest.approx(600.0 + 300.0 * u)


def test_first_interval_is_jittered_not_fixed() -> None:
    rng = random.Random(7)
    firsts = {round(T.first_interval(rng.random()), 3) for _ in range(100)}
    assert len(firsts) > 90


def test_custom_constants() -> None:
    timing = RebalanceTiming(min_reuse_s=100.0, jitter_fraction=4.0, conns_per_sec_per_server=10.0)
    assert timing.jittered_minimum(0.0) == 100.0
    assert timing.jittered_minimum(0.5) == 112.5
    assert timing.rebalance_interval(50_000, 5, 0.0) == 1000.0
    assert timing.rebalance_interval(100, 5, 0.0) == 100.0


def test_no_servers_uses_jittered_minimum() -> None:
    assert T.rebalance_interval(1_000_000, 0, 0.0) == 600.0
    assert T.rebalance_interval(0, 0, 0.5) == 750.0


# (nodes, servers) table in the spirit of the reference's refreshServerRebalanceTimer test:
# the interval is never under the 10-minute minimum reuse time, and big clusters wait longer.
CLUSTERS = [
    (0, 3),
    (1, 0),
    (1, 3),
    (2, 3),
    (100, 0),
    (100, 1),
    (100, 3),
    (1024, 1),
    (1024, 3),
    (1024, 5),
    (16384, 1),
    (16384, 2),
    (16384, 3),
    (16384, 5),
    (65535, 0),
    (65535, 1),
    (65535, 2),
    (65535, 3),
    (65535, 5),
    (100_000, 0),
    (100_000, 1),
    (100_000, 2),
    (100_000, 3),
    (100_000, 5),
    (1_000_000, 1),
    (1_000_000, 2),
    (1_000_000, 3),
    (1_000_000, 5),
    (1_000_000, 11),
    (1_000_000, 19),
]


@pytest.mark.parametrize(("nodes", "servers"), CLUSTERS)
def test_interval_at_least_ten_minutes(nodes: int, servers: int) -> None:
    rate_floor = nodes / (servers * 64) if servers else 0.0
    for u in (0.0, 0.5, ALMOST_ONE):
        interval = T.rebalance_interval(nodes, servers, u)
        assert interval >= 600.0
        assert interval >= rate_floor
        assert interval == pytest.approx(max(600.0 + 300.0 * u, rate_floor))


@settings(max_examples=200, deadline=None)
@given(
    nodes=st.integers(min_value=0, max_value=10_000_000),
    servers=st.integers(min_value=0, max_value=1000),
    u=st.floats(min_value=0.0, max_value=ALMOST_ONE),
)
def test_interval_formula(nodes: int, servers: int, u: float) -> None:
    interval = T.rebalance_interval(nodes, servers, u)
    jittered = T.jittered_minimum(u)
    assert 600.0 <= jittered < 900.0
    assert jittered == pytest.approx(600.0 + u * 300.0, rel=1e-12)
    expected = max(jittered, nodes / (servers * 64.0)) if servers else jittered
    assert interval == expected
    # Monotone in cluster size, anti-monotone in servers.
    assert T.rebalance_interval(nodes + 64_000, servers, u) >= interval
    if servers:
        assert T.rebalance_interval(nodes, servers + 1, u) <= interval
