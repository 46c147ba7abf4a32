"""DNS finds the servers again after they moved, with real containers.

docker-compose.discovery.yml adds a name server, ``dns`` (dnsmasq): its SRV
name ``_nomad._rpc.nomad.test`` lists ``nomad1..3.nomad.test``, A records of
the three server stand-ins' addresses. The proxy asks it (discovery on,
docs/protocol.md section 10): heartbeats count as stale after 3 s, a
discovery runs at most every second, and the proxy rebalances every 3 to
4.5 s. CURVE is on, and the client is a host-side one with the ``client``
certificate, as in the other compose tests.

The test stops the heartbeats for good, then moves the servers: three new
stand-ins at other addresses, the old ones stopped. It points the records at
the new ones only once the proxy is offline (its own timed rebalance found
nobody), so what brings the client back is section 10's rule: a discovery
that changes the backups while the proxy is offline rebalances at once. The
compose ``client`` is stopped first: its failure notices would rotate the
list under the test, and the host-side client is the one whose answers count.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import pytest

from rpcproxy.bus.client import ProxyClient
from rpcproxy.bus.probes import NomadProber
from rpcproxy.bus.service.discovery import DiscoveryError, Nameserver, parse_dns_name
from rpcproxy.bus.service.discovery.dns import DnsSource
from rpcproxy.proxy import parse_address
from tests.compose.compose import (
    DNS_PORT,
    DNS_SERVICE,
    DNS_SRV_NAME,
    MOVED_SERVICES,
    SERVER_SERVICES,
    ComposeProject,
    hold_for,
    wait_for,
)

pytestmark = pytest.mark.compose

NOMAD_RPC_PORT = 4647
STALE_DISCOVERY_TIMEOUT_S = 20.0
"""From the publisher's stop to the old servers' addresses as the backups:
heartbeats stale after 3 s, then a discovery within a second (a deadline for
a loaded host, not a timing check)."""
OFFLINE_TIMEOUT_S = 20.0
"""From the old servers' stop to ``offline``: the next timed rebalance comes
within 4.5 s and its pings end within 0.5 s."""
RECORDS_TIMEOUT_S = 5.0
"""dnsmasq reads the rewritten records by itself (inotify), in milliseconds."""
MOVE_TIMEOUT_S = 20.0
"""From the rewritten records to the client's first new server: a discovery
within about a second, then one rebalance's pings (a deadline, not a timing)."""
LIVE_WINDOW_S = 5.0
"""How long every answer must then be a live new server (a timed rebalance or
more falls in it)."""


def rpc_addresses(project: ComposeProject, services: Iterable[str]) -> set[str]:
    """Each service's address on the project's network, at the Nomad RPC port."""
    found: set[str] = set()
    for service in services:
        ip = project.ip_address(service)
        assert ip is not None, f"{service} has no address on {project.network}"
        found.add(f"{ip}:{NOMAD_RPC_PORT}")
    return found


def dns_names(dns_ip: str) -> set[str] | None:
    """The servers the records name now, asked from the host as the proxy asks
    (the same DnsSource, the same name server); None when it does not answer."""
    source = DnsSource(
        [parse_dns_name(DNS_SRV_NAME)],
        [Nameserver(dns_ip, DNS_PORT)],
        timeout_s=1.0,
        max_servers=16,
    )
    try:
        return {str(addr) for addr in source.discover()}
    except DiscoveryError:
        return None
    finally:
        source.close()


def backups(proxy: ProxyClient) -> set[str]:
    return {server.addr for server in proxy.status().backup}


def handed(proxy: ProxyClient) -> str | None:
    """The server a lookup hands out now (None: none known)."""
    server = proxy.find_server()
    return None if server is None else server.addr


def answers(prober: NomadProber, addr: str) -> bool:
    """Whether ``addr`` answers Nomad's Status.Ping from the host now."""
    target = parse_address(addr)
    return bool(prober([target]).get(target))


def test_dns_finds_servers_that_moved_and_the_client_follows(
    discovery_project: ComposeProject, measure: list[str]
) -> None:
    project = discovery_project
    dns_ip = project.ip_address(DNS_SERVICE)
    assert dns_ip is not None, f"the name server has no address on {project.network}"
    # The proxy under test really discovers, and asks this name server.
    assert project.proxy_setting("discover_dns") == DNS_SRV_NAME
    assert project.proxy_setting("discover_dns_nameservers") == f"{dns_ip}:{DNS_PORT}"
    old = rpc_addresses(project, SERVER_SERVICES)
    assert dns_names(dns_ip) == old, "the records do not name the three servers at start"

    project.stop("client")
    with project.proxy() as proxy:
        # Heartbeats stop for good. Once stale, the proxy asks DNS: the old
        # servers' addresses become the backups beside the primaries. (A
        # heartbeat drops backups, so while they come there are none.)
        wait_for(
            lambda: backups(proxy) == set(),
            STALE_DISCOVERY_TIMEOUT_S,
            "no backups while heartbeats come",
            interval_s=0.1,
        )
        project.stop("publisher")
        heartbeats_stopped = time.monotonic()
        wait_for(
            lambda: backups(proxy) == old,
            STALE_DISCOVERY_TIMEOUT_S,
            "stale heartbeats to make the proxy find the old servers in DNS",
            interval_s=0.1,
        )
        stale_found = time.monotonic() - heartbeats_stopped
        discovery = proxy.status().discovery
        assert discovery is not None
        assert (discovery.source, discovery.found) == ("dns", len(old))
        assert discovery.age_s < time.monotonic() - heartbeats_stopped, "not a discovery since"

        # The servers move: three new stand-ins at other addresses, then the
        # old ones stop. The records still name the old ones.
        project.start_later(*MOVED_SERVICES)
        new = rpc_addresses(project, MOVED_SERVICES)
        assert not new & old, f"a new server took an old one's address: {new & old}"
        project.docker("stop", "-t", "1", *(project.container(s) for s in SERVER_SERVICES))
        moved = time.monotonic()
        wait_for(
            lambda: proxy.status().offline,
            OFFLINE_TIMEOUT_S,
            "the proxy to go offline when no server answers its rebalance",
            interval_s=0.1,
        )
        offline_after = time.monotonic() - moved
        assert handed(proxy) not in new, "a new server was handed out before DNS named it"

        # The records follow the move.
        renamed_wall = time.time()
        new_ips = sorted(addr.rpartition(":")[0] for addr in new)
        project.exec(DNS_SERVICE, "nomad-dns", "records", *new_ips)
        renamed = time.monotonic()
        wait_for(
            lambda: dns_names(dns_ip) == new,
            RECORDS_TIMEOUT_S,
            "the name server to answer with the new servers",
            interval_s=0.05,
        )

        # Offline, the proxy's next discovery finds them and rebalances at
        # once: the host-side client is handed a new server.
        first = wait_for(
            lambda: addr if (addr := handed(proxy)) in new else None,
            MOVE_TIMEOUT_S,
            "the client to be handed one of the new servers",
            interval_s=0.05,
        )
        followed = time.monotonic()
        checked = 0

        with NomadProber(timeout_s=1.0) as prober:
            assert answers(prober, first), f"the client was handed {first}, which does not answer"

            def live_and_new() -> bool:
                nonlocal checked
                addr = handed(proxy)
                checked += 1
                return addr in new and answers(prober, addr)

            hold_for(
                live_and_new,
                LIVE_WINDOW_S,
                "every lookup hands out a live new server",
            )

        status = proxy.status()
        assert status.offline is False, status
        assert {server.addr for server in status.backup} == new, status
        assert status.discovery is not None
        assert (status.discovery.source, status.discovery.found) == ("dns", len(new))

    logs = project.logs("proxy", since=renamed_wall)
    assert "discovery (dns) changed the backups: rebalancing now" in logs, logs
    assert "back online" in logs, logs

    measure.append(
        f"heartbeats stopped -> old servers found in DNS {stale_found:.2f} s; "
        f"old servers stopped -> offline {offline_after:.2f} s; "
        f"records moved -> client's first live new server {followed - renamed:.2f} s "
        f"({followed - moved:.2f} s after the old servers stopped); "
        f"then {checked} lookups over {LIVE_WINDOW_S:g} s all live new servers"
    )
