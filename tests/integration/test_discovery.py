"""A real ``serve`` finds its servers by itself (docs/protocol.md section 10).

Consul is the stand-in of tests/consulapi.py (no Consul binary can be
installed here); DNS is a real name server, dnsmasq; the servers found are
Go peers built on Nomad's own RPC libraries, answering Status.Ping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from rpcproxy import ProxyClient
from tests.consulapi import consul_api, health_entry
from tests.dnsserver import DOMAIN, Dnsmasq, Srv
from tests.helpers import free_port
from tests.integration.serving import HeartbeatPub, Serve, hb_payload, hb_server, run_rpcproxy
from tests.nomadpeer import NomadPeer
from tests.waiting import poll_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def peers() -> Iterator[Callable[[], str]]:
    """Go Nomad peers for the module; each call starts one and returns its address."""
    running: list[NomadPeer] = []

    def start() -> str:
        peer = NomadPeer("plain").start()
        running.append(peer)
        return peer.address

    yield start
    for peer in running:
        peer.close()


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def test_a_proxy_with_no_server_finds_them_in_consul_and_uses_a_live_one(
    serve_factory: Callable[..., Serve], peers: Callable[[], str]
) -> None:
    live = peers()
    host, port = host_port(live)
    with consul_api() as (consul, url):
        consul.datacenters = ["dc1", "dc2"]
        consul.entries = {"dc1": [], "dc2": [health_entry(host, port)]}
        proxy = serve_factory("--consul-addr", url, "--ping-timeout-s", "0.5")
        # No server at start: it asks at once, and rebalances onto what it found.
        with ProxyClient(proxy.query, timeout_s=5.0) as client:
            poll_until(lambda: client.find_server() is not None, what="a discovered server")
            status = client.status()
        assert [s.addr for s in status.backup] == [live]
        assert [s.addr for s in status.servers] == [live]
        assert status.discovery is not None
        assert (status.discovery.source, status.discovery.found) == ("consul", 1)
        assert consul.health_dcs() == ["dc1", "dc2"]


def test_stale_heartbeats_turn_to_dns_and_an_offline_proxy_moves_at_once(
    serve_factory: Callable[..., Serve], peers: Callable[[], str]
) -> None:
    live = peers()
    _, port = host_port(live)
    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    name = f"_nomad._rpc.{DOMAIN}"
    with Dnsmasq(
        hosts={f"server-1.{DOMAIN}": ["127.0.0.1"]}, srv=[Srv(name, f"server-1.{DOMAIN}", port)]
    ) as dnsmasq:
        proxy = serve_factory(
            "--discover-dns", name,
            "--discover-dns-nameservers", str(dnsmasq.nameserver),
            "--heartbeat-stale-s", "1",
            "--discover-interval-s", "0.2",
            "--ping-timeout-s", "0.5",
        )  # fmt: skip
        pub = HeartbeatPub(connect=proxy.heartbeat)
        try:
            beat = hb_payload([hb_server(addr) for addr in dead], leader_rpc_addr=dead[0])
            pub.publish_until(
                beat, lambda: proxy.call("status")["primary"] == [{"addr": addr} for addr in dead]
            )
        finally:
            pub.close()
        # The publisher is gone, and its servers are dead: the proxy goes offline.
        assert proxy.call("rebalance")["healthy"] is False
        # Within heartbeat_stale_s it asks DNS; the SRV target answers, and
        # the proxy, offline, rebalances onto it at once.
        poll_until(
            lambda: proxy.call("find_server")["server"] == {"addr": live},
            timeout=10.0,
            what="the proxy to move to the server DNS names",
        )
        status = proxy.call("status")
        assert status["discovery"]["source"] == "dns"
        assert status["offline"] is False


def test_a_failing_catalog_changes_nothing(serve_factory: Callable[..., Serve]) -> None:
    with consul_api() as (consul, url):
        consul.status = 500
        proxy = serve_factory(
            "--consul-addr", url,
            "--discover-interval-s", "0.2",
            "--heartbeat-stale-s", "0.2",  # no heartbeat ever: stale at once
            "--backup-servers", "10.0.0.9",
        )  # fmt: skip
        poll_until(lambda: len(consul.requests) >= 3, what="a few discoveries")
        status = proxy.call("status")
        assert [s["addr"] for s in status["backup"]] == ["10.0.0.9:4647"]
        assert status["discovery"] is None


def test_a_consul_tls_file_that_cannot_be_read_stops_serve_at_start(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    missing = tmp_path_factory.mktemp("consul") / "missing-ca.pem"
    result = run_rpcproxy(
        "serve", "--consul-addr", "https://127.0.0.1:8501",
        "--query", f"tcp://127.0.0.1:{free_port()}",
        "--heartbeat-bind", f"tcp://127.0.0.1:{free_port()}",
        "--events", "",
        env={"CONSUL_CACERT": str(missing)},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "consul_addr" in result.stderr


def test_heartbeats_naming_no_leader_nor_server_turn_to_consul(
    serve_factory: Callable[..., Serve], peers: Callable[[], str]
) -> None:
    """The cluster lost its servers: heartbeats still come, listing nobody, naming no leader."""
    live = peers()
    host, port = host_port(live)
    dead = f"127.0.0.1:{free_port()}"
    with consul_api() as (consul, url):
        consul.entries = {"dc1": []}
        proxy = serve_factory(
            "--consul-addr", url,
            "--discover-interval-s", "0.2",
            "--ping-timeout-s", "0.5",
            "--backup-servers", dead,
        )  # fmt: skip
        pub = HeartbeatPub(connect=proxy.heartbeat)
        try:
            # Heartbeats flow (never stale): the trigger is their empty leader.
            empty = hb_payload([], leader_rpc_addr="", publisher="p", seq=1)
            pub.publish_until(empty, lambda: proxy.call("status")["heartbeat_age_s"] is not None)
            consul.entries = {"dc1": [health_entry(host, port)]}
            # No primaries: the found backup is rebalanced onto at once.
            poll_until(
                lambda: proxy.call("find_server")["server"] == {"addr": live},
                timeout=10.0,
                what="the server Consul lists",
            )
            assert proxy.call("status")["backup"] == [{"addr": live}]

            # A heartbeat that lists servers again drops the discovered backups (rule 2.4).
            named = hb_payload([hb_server(dead)], leader_rpc_addr=dead, publisher="p", seq=2)
            pub.publish_until(named, lambda: proxy.call("status")["backup"] == [])
            assert proxy.call("servers")["servers"] == [{"addr": dead}]
        finally:
            pub.close()


def test_sigterm_during_a_discovery_that_hangs_exits_promptly(
    serve_factory: Callable[..., Serve],
) -> None:
    with consul_api() as (consul, url):
        consul.silent = True  # requests are read and never answered
        proxy = serve_factory("--consul-addr", url, "--discover-interval-s", "60")
        poll_until(lambda: consul.requests, what="the discovery's first request")
        started = time.monotonic()
        assert proxy.stop() == 0
        elapsed = time.monotonic() - started
    # Closing the source aborts the fetch: well within the 10 s stop budget
    # (section 8), where waiting for the discovery's deadline would take 10 s.
    assert elapsed < 5.0, f"serve took {elapsed:.2f} s to exit"


def test_more_dns_names_than_a_discovery_asks_stops_serve_at_start() -> None:
    names = ",".join(f"n{i}.example" for i in range(65))
    result = run_rpcproxy(
        "serve", "--discover-dns", names,
        "--query", f"tcp://127.0.0.1:{free_port()}",
        "--heartbeat-bind", f"tcp://127.0.0.1:{free_port()}",
        "--events", "",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "discover_dns: DNS discovery asks 1 to 64 names, got 65" in result.stderr


def test_going_offline_turns_to_consul_while_heartbeats_are_fresh(
    serve_factory: Callable[..., Serve], peers: Callable[[], str]
) -> None:
    live = peers()
    host, port = host_port(live)
    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    with consul_api() as (consul, url):
        consul.entries = {"dc1": [health_entry(host, port)]}
        proxy = serve_factory(
            "--consul-addr", url,
            "--discover-interval-s", "0.2",
            "--ping-timeout-s", "0.5",
        )  # fmt: skip
        poll_until(lambda: proxy.call("status")["discovery"], what="the discovery at start")
        pub = HeartbeatPub(connect=proxy.heartbeat)
        try:
            # One heartbeat, with a leader: fresh for heartbeat_stale_s (60 s).
            beat = hb_payload([hb_server(addr) for addr in dead], leader_rpc_addr=dead[0])
            pub.publish_until(beat, lambda: proxy.call("status")["backup"] == [])
        finally:
            pub.close()
        # The heartbeat's servers replaced the found one; both are dead.
        assert proxy.call("rebalance")["healthy"] is False  # offline
        poll_until(
            lambda: proxy.call("find_server")["server"] == {"addr": live},
            timeout=10.0,
            what="the proxy to move to the server Consul lists",
        )
        assert proxy.call("status")["offline"] is False
