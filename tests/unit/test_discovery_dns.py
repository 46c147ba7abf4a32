"""DnsSource without a network: SRV order, dedup and bounds, what construction refuses.

Its queries against real name servers are in
tests/integration/test_discovery_dns.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpcproxy.bus.service.discovery import (
    DiscoveryError,
    DiscoverySource,
    DnsName,
    Nameserver,
    parse_dns_name,
)
from rpcproxy.bus.service.discovery.dns import MAX_NAMES, DnsSource, SrvTarget, keep, order_srv
from rpcproxy.proxy import Address

NS = [Nameserver("127.0.0.1", 5353)]


def names(count: int) -> list[DnsName]:
    return [parse_dns_name(f"n{i}.test") for i in range(count)]


def test_srv_order_is_priority_up_then_weight_down_then_target() -> None:
    records = [
        SrvTarget(priority=1, weight=50, port=1, target="a.test"),
        SrvTarget(priority=0, weight=10, port=2, target="b.test"),
        SrvTarget(priority=0, weight=30, port=3, target="z.test"),
        SrvTarget(priority=0, weight=10, port=4, target="a.test"),
        SrvTarget(priority=0, weight=10, port=1, target="a.test"),
    ]

    assert [(r.target, r.port) for r in order_srv(records)] == [
        ("z.test", 3),
        ("a.test", 1),
        ("a.test", 4),
        ("b.test", 2),
        ("a.test", 1),
    ]


def test_srv_order_does_not_depend_on_the_order_records_came_in() -> None:
    records = [SrvTarget(i % 3, i % 5, 1000 + i, f"t{i % 7}.test") for i in range(30)]

    assert order_srv(records) == order_srv(reversed(records))


def test_keep_drops_repeats_keeping_the_first_place() -> None:
    a, b, c = Address("10.0.0.1", 1), Address("::1", 1), Address("10.0.0.1", 2)

    assert keep([[a, b], [b, a, c], [c]], limit=10) == (a, b, c)


def test_keep_stops_at_its_limit_without_reading_further() -> None:
    def endless() -> Iterator[Address]:
        port = 1
        while True:
            yield Address("10.0.0.1", port)
            port += 1

    assert keep([endless()], limit=3) == tuple(Address("10.0.0.1", p) for p in (1, 2, 3))


ADDRESSES = st.builds(Address, st.sampled_from(["10.0.0.1", "10.0.0.2", "::1"]), st.integers(1, 4))


@given(st.lists(st.lists(ADDRESSES, max_size=8), max_size=5), st.integers(1, 6))
def test_keep_is_the_first_distinct_addresses_up_to_the_limit(
    groups: list[list[Address]], limit: int
) -> None:
    everything = list(dict.fromkeys(a for group in groups for a in group))

    assert keep(groups, limit) == tuple(everything[:limit])


def test_at_most_64_names() -> None:
    DnsSource(names(MAX_NAMES), NS, 1.0, 8)
    with pytest.raises(ValueError, match="1 to 64 names, got 65"):
        DnsSource(names(MAX_NAMES + 1), NS, 1.0, 8)


def test_no_names_is_refused() -> None:
    with pytest.raises(ValueError, match="got 0"):
        DnsSource([], NS, 1.0, 8)


@pytest.mark.parametrize("timeout_s", [0.0, -1.0, float("nan"), float("inf")])
def test_a_timeout_must_be_positive_and_finite(timeout_s: float) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        DnsSource(names(1), NS, timeout_s, 8)


def test_max_servers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_servers"):
        DnsSource(names(1), NS, 1.0, 0)


def test_a_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError, match="deadline_s"):
        DnsSource(names(1), NS, 1.0, 8, deadline_s=0.0)


def test_a_name_dnspython_cannot_read_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="not a DNS name"):
        DnsSource([DnsName("a..test")], NS, 1.0, 8)


def test_it_is_a_discovery_source_named_dns() -> None:
    source: DiscoverySource = DnsSource(names(1), NS, 1.0, 8)

    assert source.name == "dns"


def test_after_close_discover_raises_without_asking() -> None:
    source = DnsSource(names(1), NS, 1.0, 8)
    source.close()

    with pytest.raises(DiscoveryError, match=r"^closed$"):
        source.discover()
