"""The demo's Consul stand-in (bus/standins/consul.py): its routes over real loopback HTTP.

What the proxy's Consul source makes of these answers is tested in
test_consul_discovery.py and tests/integration/test_discovery_consul.py
(through tests/consulapi.py, which shares this catalog); here, only that
the stand-in answers each read as a Consul agent would.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from rpcproxy.bus.standins.consul import ConsulCatalog, ConsulStandIn, health_entry
from tests.helpers import free_port, port_is_free

TIMEOUT_S = 5.0
# No proxy from the environment: the stand-in is on loopback, asked directly.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str) -> tuple[int, Any]:
    """The status and decoded JSON body (or text, when not JSON) of a GET."""
    try:
        with OPENER.open(url, timeout=TIMEOUT_S) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


def addrs(entries: list[Any]) -> list[str]:
    return [f"{e['Service']['Address']}:{e['Service']['Port']}" for e in entries]


@pytest.fixture
def consul() -> Iterator[ConsulStandIn]:
    catalog = ConsulCatalog(
        ["dc1", "dc2"],
        {
            "dc1": [
                health_entry("127.0.0.1", 5001),
                health_entry("127.0.0.1", 5002, status="critical"),
                health_entry("127.0.0.1", 5003, tags=("http",)),
            ],
            "dc2": [health_entry("127.0.0.1", 5004)],
        },
    )
    with ConsulStandIn(catalog) as standin:
        yield standin


def test_datacenters_are_listed_the_agents_own_first(consul: ConsulStandIn) -> None:
    assert get(f"{consul.url}/v1/catalog/datacenters") == (200, ["dc1", "dc2"])


def test_health_without_dc_is_the_agents_own_datacenter(consul: ConsulStandIn) -> None:
    status, entries = get(f"{consul.url}/v1/health/service/nomad")
    assert status == 200
    assert addrs(entries) == ["127.0.0.1:5001", "127.0.0.1:5002", "127.0.0.1:5003"]


def test_health_honours_dc(consul: ConsulStandIn) -> None:
    status, entries = get(f"{consul.url}/v1/health/service/nomad?dc=dc2")
    assert (status, addrs(entries)) == (200, ["127.0.0.1:5004"])


def test_health_honours_tag_and_passing_as_the_source_asks(consul: ConsulStandIn) -> None:
    url = f"{consul.url}/v1/health/service/nomad?dc=dc1&tag=rpc&passing=true"
    status, entries = get(url)
    assert (status, addrs(entries)) == (200, ["127.0.0.1:5001"])
    # Each filter alone.
    _, tagged = get(f"{consul.url}/v1/health/service/nomad?dc=dc1&tag=rpc")
    assert addrs(tagged) == ["127.0.0.1:5001", "127.0.0.1:5002"]
    _, passing = get(f"{consul.url}/v1/health/service/nomad?dc=dc1&passing=1")
    assert addrs(passing) == ["127.0.0.1:5001", "127.0.0.1:5003"]


def test_an_entry_has_consuls_shape(consul: ConsulStandIn) -> None:
    _, entries = get(f"{consul.url}/v1/health/service/nomad?dc=dc2")
    (entry,) = entries
    assert set(entry) == {"Node", "Service", "Checks"}
    assert entry["Service"]["Service"] == "nomad"
    assert entry["Node"]["Address"] == "127.0.0.1"  # loopback unless told otherwise
    assert {c["Status"] for c in entry["Checks"]} == {"passing"}


def test_an_unknown_datacenter_is_a_500_as_consul_answers(consul: ConsulStandIn) -> None:
    assert get(f"{consul.url}/v1/health/service/nomad?dc=dc9") == (500, "No path to datacenter")


def test_another_service_and_another_path(consul: ConsulStandIn) -> None:
    assert get(f"{consul.url}/v1/health/service/vault?dc=dc1") == (200, [])
    assert get(f"{consul.url}/v1/agent/self")[0] == 404


def test_entries_set_at_run_time_are_served_at_once(consul: ConsulStandIn) -> None:
    consul.catalog.update({"dc1": [health_entry("127.0.0.1", 6001, node="s5")]})
    _, entries = get(f"{consul.url}/v1/health/service/nomad?dc=dc1&tag=rpc&passing=true")
    assert addrs(entries) == ["127.0.0.1:6001"]
    assert get(f"{consul.url}/v1/health/service/nomad?dc=dc2") == (200, [])  # dc2 emptied
    consul.catalog.update({"dc3": [health_entry("127.0.0.1", 6002)]}, datacenters=["dc3"])
    assert get(f"{consul.url}/v1/catalog/datacenters") == (200, ["dc3"])
    _, entries = get(f"{consul.url}/v1/health/service/nomad")
    assert addrs(entries) == ["127.0.0.1:6002"]


def test_life_cycle_on_a_given_port() -> None:
    port = free_port()
    standin = ConsulStandIn(port=port)
    with pytest.raises(RuntimeError, match="not been started"):
        _ = standin.url
    standin.start()
    try:
        assert standin.url == f"http://127.0.0.1:{port}"
        with pytest.raises(RuntimeError, match="already running"):
            standin.start()
        # The default catalog: an agent in dc1 that lists no server.
        assert get(f"{standin.url}/v1/catalog/datacenters") == (200, ["dc1"])
        assert get(f"{standin.url}/v1/health/service/nomad") == (200, [])
    finally:
        standin.stop()
    assert port_is_free(port)
    standin.stop()  # a no-op once stopped
