"""DnsSource against real name servers (docs/protocol.md sections 8 and 10).

dnsmasq (tests/dnsserver.py) serves the zone: A and AAAA records, SRV
records with their additional section, NXDOMAIN, REFUSED, CNAME chains and
an answer too big for UDP. The hostile servers are a socket that never
answers and one that answers garbage. Time is asserted as "it ends", with a
deadline far above what is expected, never as "it is fast".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import dns.flags
import dns.message
import dns.query
import pytest

from rpcproxy.bus.service.discovery import (
    DiscoveryError,
    Nameserver,
    parse_dns_name,
)
from rpcproxy.bus.service.discovery.dns import MAX_NAMES, DnsSource
from rpcproxy.proxy import Address, parse_address
from tests.dnsserver import Dnsmasq, Reply, Srv, echo, garbage_server, raw, silent_server

LOGGER = "rpcproxy.bus.service.discovery.dns"
TIMEOUT_S = 1.0
"""Each query's time in the tests whose server never answers."""
ENDS_WITHIN_S = 15.0
"""How long a test waits for a discovery that must end: far above its expected time."""

BIG = [f"10.{i // 250}.{i % 250}.1" for i in range(3000)]
"""3,000 A records: about 48 KiB, so the answer comes over TCP after a truncated UDP one."""
CHAIN = [(f"c{i}.test", f"c{i + 1}.test") for i in range(1, 21)]
"""c1 -> c2 -> ... -> c21: 20 links, more than a resolver follows in one answer."""
MANY_SRV = [Srv("_many._tcp.test", f"t{i}.test", 5000 + i, priority=i % 4) for i in range(40)]


@pytest.fixture(scope="module")
def zone() -> Iterator[Dnsmasq]:
    hosts = {
        "a.test": ["127.0.0.5", "::5"],
        "b.test": ["127.0.0.6"],
        "c.test": ["127.0.0.7", "127.0.0.3"],
        "same.test": ["127.0.0.5"],
        "c21.test": ["127.0.0.9"],
        "zero.test": ["0.0.0.0", "127.0.0.8"],
        "big.test": BIG,
        **{f"t{i}.test": [f"127.1.0.{i}"] for i in range(40)},
    }
    srv = [
        Srv("_nomad._rpc.test", "a.test", 4650, priority=1, weight=10),
        Srv("_nomad._rpc.test", "b.test", 4651, priority=0, weight=10),
        Srv("_nomad._rpc.test", "c.test", 4652, priority=0, weight=20),
        Srv("_same._rpc.test", "same.test", 4647),
        Srv("_same._rpc.test", "a.test", 4647),
        *MANY_SRV,
    ]
    with Dnsmasq(hosts=hosts, srv=srv, cnames=CHAIN, log_queries=True) as server:
        yield server


def source(
    names: list[str],
    nameservers: list[Nameserver],
    max_servers: int = 16,
    timeout_s: float = 2.0,
    deadline_s: float | None = None,
) -> DnsSource:
    return DnsSource(
        [parse_dns_name(n) for n in names],
        nameservers,
        timeout_s,
        max_servers,
        deadline_s=deadline_s,
    )


def addresses(*texts: str) -> tuple[Address, ...]:
    return tuple(parse_address(t) for t in texts)


def run_in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    """``call`` on a thread of its own, as serve's discovery runs; the list gets what it raised."""
    raised: list[BaseException] = []

    def body() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, raised


def test_a_and_aaaa_records_are_servers_at_the_names_port(zone: Dnsmasq) -> None:
    found = source(["a.test:4650"], [zone.nameserver]).discover()

    assert found == addresses("127.0.0.5:4650", "[::5]:4650")
    assert [a.canonical for a in found] == ["127.0.0.5:4650", "[::5]:4650"]


def test_a_name_without_a_port_is_at_nomads_rpc_port(zone: Dnsmasq) -> None:
    assert source(["b.test"], [zone.nameserver]).discover() == addresses("127.0.0.6:4647")


def test_addresses_of_one_name_come_sorted(zone: Dnsmasq) -> None:
    assert source(["c.test:1"], [zone.nameserver]).discover() == addresses(
        "127.0.0.3:1", "127.0.0.7:1"
    )


def test_srv_targets_by_priority_then_weight_at_their_records_ports(zone: Dnsmasq) -> None:
    found = source(["_nomad._rpc.test"], [zone.nameserver]).discover()

    # Priority 0 first (c weighs 20, b 10), then a at priority 1.
    assert found == addresses(
        "127.0.0.3:4652", "127.0.0.7:4652", "127.0.0.6:4651", "127.0.0.5:4650", "[::5]:4650"
    )


def test_the_same_server_under_several_names_is_listed_once(zone: Dnsmasq) -> None:
    found = source(
        ["same.test", "a.test:4647", "_same._rpc.test", "b.test", "b.test"], [zone.nameserver]
    ).discover()

    assert found == addresses("127.0.0.5:4647", "[::5]:4647", "127.0.0.6:4647")


def test_a_name_that_does_not_exist_gives_nothing_beside_a_good_one(
    zone: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        found = source(["nope.test", "_nope._tcp.test", "b.test"], [zone.nameserver]).discover()

    assert found == addresses("127.0.0.6:4647")
    assert not caplog.records, "NXDOMAIN is an answer, not a failure"


def test_names_that_exist_nowhere_give_an_empty_list_not_an_error(zone: Dnsmasq) -> None:
    assert source(["nope.test", "_nope._tcp.test"], [zone.nameserver]).discover() == ()


def test_unusable_addresses_are_left_out(zone: Dnsmasq) -> None:
    assert source(["zero.test"], [zone.nameserver]).discover() == addresses("127.0.0.8:4647")


def test_a_huge_answer_keeps_max_servers_and_logs_one_line(
    zone: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    truncated = dns.query.udp(dns.message.make_query("big.test", "A"), "127.0.0.1", 2.0, zone.port)
    assert truncated.flags & dns.flags.TC, "the answer should need TCP"

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        found = source(["big.test", "b.test"], [zone.nameserver], max_servers=16).discover()

    # The 16 lowest of 3,000 (sorted), and b.test not asked: the bound is reached.
    assert found == tuple(Address(f"10.0.{i}.1", 4647) for i in range(16))
    assert len(caplog.records) == 1
    assert "big.test" in caplog.records[0].getMessage()


def test_srv_follows_at_most_max_servers_targets(zone: Dnsmasq) -> None:
    found = source(["_many._tcp.test"], [zone.nameserver], max_servers=5).discover()

    # Priority 0 holds t0, t4, t8, ..., t36; equal weights go by name: t0, t12, t16, ...
    assert found == addresses(
        "127.1.0.0:5000", "127.1.0.12:5012", "127.1.0.16:5016", "127.1.0.20:5020", "127.1.0.24:5024"
    )
    asked = [name for name in zone.queries("AAAA") if name.startswith("t")]
    assert len(asked) <= 5, asked


def test_a_cname_chain_too_long_fails_that_name_only(
    zone: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    assert source(["c18.test"], [zone.nameserver]).discover() == addresses("127.0.0.9:4647")

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        found = source(["c1.test", "b.test"], [zone.nameserver]).discover()

    assert found == addresses("127.0.0.6:4647")
    assert len(caplog.records) == 1
    assert "c1.test" in caplog.records[0].getMessage()


def test_a_refused_name_alone_is_a_discovery_error(zone: Dnsmasq) -> None:
    with pytest.raises(DiscoveryError, match=r"1 of 1 names failed \(outside\.example:4647\)"):
        source(["outside.example"], [zone.nameserver]).discover()


def test_a_refused_name_beside_a_good_one_is_a_warning(
    zone: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        found = source(["outside.example", "b.test"], [zone.nameserver]).discover()

    assert found == addresses("127.0.0.6:4647")
    assert "outside.example" in caplog.records[0].getMessage()


def test_a_server_that_never_answers_is_a_discovery_error_that_ends() -> None:
    with silent_server() as silent:
        dns_source = source(
            ["a.test", "_nomad._rpc.test"], [silent.nameserver], timeout_s=TIMEOUT_S
        )
        started = time.monotonic()
        with pytest.raises(DiscoveryError) as caught:
            dns_source.discover()

    assert time.monotonic() - started < ENDS_WITHIN_S
    message = str(caught.value)
    assert "\n" not in message
    assert "2 of 2 names failed (a.test:4647, _nomad._rpc.test)" in message


def test_close_ends_a_discovery_in_flight() -> None:
    names = [f"n{i}.test" for i in range(MAX_NAMES)]  # 64 s if each waited out its timeout
    with silent_server() as silent:
        dns_source = source(names, [silent.nameserver], timeout_s=TIMEOUT_S)
        thread, raised = run_in_thread(dns_source.discover)
        deadline = time.monotonic() + ENDS_WITHIN_S
        while not silent.asked() and time.monotonic() < deadline:
            thread.join(0.01)
        assert silent.asked(), "the discovery never sent a query"

        dns_source.close()
        thread.join(ENDS_WITHIN_S)

    assert not thread.is_alive(), "close() did not end the discovery"
    assert len(raised) == 1 and isinstance(raised[0], DiscoveryError)
    assert str(raised[0]) == "closed"
    with pytest.raises(DiscoveryError, match=r"^closed$"):
        dns_source.discover()


def test_the_deadline_ends_a_discovery_and_its_message_stays_short() -> None:
    names = [f"{'x' * 60}.n{i}.test" for i in range(MAX_NAMES)]
    with silent_server() as silent:
        dns_source = source(names, [silent.nameserver], timeout_s=TIMEOUT_S, deadline_s=0.5)
        started = time.monotonic()
        with pytest.raises(DiscoveryError) as caught:
            dns_source.discover()

    assert time.monotonic() - started < ENDS_WITHIN_S
    message = str(caught.value)
    assert "64 of 64 names failed" in message
    assert "\n" not in message and len(message) < 600


def test_a_dead_first_name_server_leaves_time_for_the_next(zone: Dnsmasq) -> None:
    with silent_server() as silent:
        found = source(["b.test"], [silent.nameserver, zone.nameserver]).discover()

    assert found == addresses("127.0.0.6:4647")


def pointer_to_itself(query: bytes) -> bytes:
    """An answer whose owner name is a compression pointer to itself."""
    owner = (0xC000 | len(query)).to_bytes(2, "big")
    return echo(0x8180, answers=1, tail=owner + bytes.fromhex("0001 0001 0000003c 0004 7f000001"))(
        query
    )


GARBAGE: dict[str, Reply] = {
    "random bytes": raw(bytes(range(2, 60))),
    "a header and nothing else": raw(bytes.fromhex("8180 0001 0001 0000 0000")),
    "65535 answers claimed": echo(0x8180, answers=0xFFFF),
    "truncated, and no TCP listener": echo(0x8380),
    "SERVFAIL": echo(0x8182),
    "REFUSED": echo(0x8185),
    "a name pointing at itself": pointer_to_itself,
}


@pytest.mark.parametrize("reply", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_replies_are_a_discovery_error(reply: Reply) -> None:
    with garbage_server([reply]) as server:
        dns_source = source(["_nomad._rpc.test"], [server], timeout_s=TIMEOUT_S)
        thread, raised = run_in_thread(dns_source.discover)
        thread.join(ENDS_WITHIN_S)

    assert not thread.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], DiscoveryError), raised


def test_a_truncated_reply_whose_tcp_retry_is_never_answered_ends() -> None:
    with garbage_server([echo(0x8380)], tcp=True) as server:
        dns_source = source(["_nomad._rpc.test"], [server], timeout_s=TIMEOUT_S)
        thread, raised = run_in_thread(dns_source.discover)
        thread.join(ENDS_WITHIN_S)

    assert not thread.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], DiscoveryError), raised


def test_a_garbage_name_server_beside_a_good_one_is_passed_over(zone: Dnsmasq) -> None:
    with garbage_server(list(GARBAGE.values())) as server:
        found = source(["b.test"], [server, zone.nameserver]).discover()

    assert found == addresses("127.0.0.6:4647")
