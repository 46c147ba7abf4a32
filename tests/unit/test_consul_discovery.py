"""Consul's catalog as a discovery source (docs/protocol.md section 10), without a network.

The settings from Consul's own variables; the two shapes read, validated
whole and bounded (bus/service/discovery/consul_catalog.py); how an entry
becomes a server; and the source's walk over the datacenters, through an
in-memory ``httpx.MockTransport`` and an injected clock, so the one
deadline of a whole discovery is checked without waiting on anything. The
same source against a real HTTP stand-in of the agent is in
tests/integration/test_discovery_consul.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from rpcproxy.bus.service.discovery import DiscoveryError
from rpcproxy.bus.service.discovery.consul import (
    MAX_DATACENTERS,
    ConsulSettings,
    ConsulSource,
    parse_verify,
)
from rpcproxy.bus.service.discovery.consul_catalog import (
    MAX_DATACENTER_NAME,
    HealthEntry,
    HealthNode,
    HealthService,
    datacenters_decoder,
    entries_decoder,
    entry_address,
    servers_in,
)
from rpcproxy.proxy import Address, parse_address
from tests.consulapi import health_entry

LOGGER = "rpcproxy.bus.service.discovery.consul"

# --- Settings ------------------------------------------------------------------------


def test_consul_s_variables_are_read_and_the_token_kept_out_of_repr() -> None:
    environ = {
        "CONSUL_HTTP_ADDR": "http://elsewhere:8500",
        "CONSUL_HTTP_TOKEN": "SECRET-TOKEN",
        "CONSUL_CACERT": "/ca.pem",
        "CONSUL_CLIENT_CERT": "/c.pem",
        "CONSUL_CLIENT_KEY": "/k.pem",
        "CONSUL_TLS_SERVER_NAME": "consul.example",
        "CONSUL_HTTP_SSL_VERIFY": "false",
    }
    settings = ConsulSettings.from_env(
        "https://consul:8501", service="nomad-srv", tag="", environ=environ
    )
    assert settings == ConsulSettings(
        addr="https://consul:8501",  # never CONSUL_HTTP_ADDR: only consul_addr turns Consul on
        token="SECRET-TOKEN",
        ca_cert="/ca.pem",
        client_cert="/c.pem",
        client_key="/k.pem",
        tls_server_name="consul.example",
        verify=False,
        service="nomad-srv",
        tag="",
    )
    assert "SECRET-TOKEN" not in repr(settings)
    tls = settings.client_tls()
    assert tls.skip_verify and tls.ca_cert == "/ca.pem"
    assert tls.named["ca_cert"] == "CONSUL_CACERT"


def test_defaults_and_empty_variables_count_as_unset() -> None:
    settings = ConsulSettings.from_env(
        "http://127.0.0.1:8500", environ={"CONSUL_HTTP_TOKEN": "", "CONSUL_HTTP_SSL_VERIFY": ""}
    )
    assert settings == ConsulSettings(addr="http://127.0.0.1:8500")
    assert (settings.service, settings.tag, settings.verify, settings.token) == (
        "nomad",
        "rpc",
        True,
        "",
    )


def test_the_environment_alone_never_turns_consul_on() -> None:
    environ = {"CONSUL_HTTP_ADDR": "http://127.0.0.1:8500", "CONSUL_HTTP_TOKEN": "t"}
    with pytest.raises(ValueError, match="consul_addr is empty"):
        ConsulSettings.from_env("", environ=environ)


@pytest.mark.parametrize("raw", ["1", "t", "T", "TRUE", "true", "True"])
def test_ssl_verify_true_as_go_reads_it(raw: str) -> None:
    assert parse_verify(raw) is True


@pytest.mark.parametrize("raw", ["0", "f", "F", "FALSE", "false", "False"])
def test_ssl_verify_false_as_go_reads_it_turns_verification_off(raw: str) -> None:
    assert parse_verify(raw) is False
    environ = {"CONSUL_HTTP_SSL_VERIFY": raw}
    assert ConsulSettings.from_env("https://c:8501", environ=environ).verify is False


@pytest.mark.parametrize("raw", ["no", "off", "yes", "tRuE", " true", "2"])
def test_an_unreadable_ssl_verify_is_an_error_not_verification_off(raw: str) -> None:
    # Consul's CLI warns and goes on unverified; a typo must not turn the check off here.
    with pytest.raises(ValueError, match="CONSUL_HTTP_SSL_VERIFY"):
        ConsulSettings.from_env("https://c:8501", environ={"CONSUL_HTTP_SSL_VERIFY": raw})


def test_an_unusable_ca_file_is_named_with_its_variable(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-ca.pem")
    settings = ConsulSettings.from_env("https://c:8501", environ={"CONSUL_CACERT": missing})
    with pytest.raises(ValueError, match=r"no-ca\.pem' \(CONSUL_CACERT\)"):
        ConsulSource(settings, max_servers=8, deadline_s=5.0)


def test_bounds_must_be_positive() -> None:
    settings = ConsulSettings("http://127.0.0.1:1")
    with pytest.raises(ValueError):
        ConsulSource(settings, max_servers=0, deadline_s=5.0)
    with pytest.raises(ValueError):
        ConsulSource(settings, max_servers=1, deadline_s=0.0)


# --- The shapes -----------------------------------------------------------------------


def entry(service: str = "", port: int = 4647, node: str = "") -> HealthEntry:
    return HealthEntry(Service=HealthService(Address=service, Port=port), Node=HealthNode(node))


def test_a_documented_entry_decodes_its_other_keys_ignored() -> None:
    body = json.dumps([health_entry("10.0.0.1", 4647, node_addr="10.9.9.9")]).encode()
    (decoded,) = entries_decoder(8).decode(body)
    assert decoded == entry("10.0.0.1", 4647, "10.9.9.9")


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"Service": {}}',  # not a list
        b"[{}]",  # an entry without its service
        b'[{"Service": {"Port": "4647"}}]',  # a port of the wrong type
        b'[{"Service": {"Address": 7, "Port": 4647}}]',
        b'[{"Service": {"Port": 1}, "Node": null}]',
    ],
)
def test_entries_of_the_wrong_shape_fail_whole(body: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        entries_decoder(8).decode(body)


def test_more_entries_than_the_bound_fail_whole() -> None:
    body = json.dumps([health_entry(f"10.0.0.{i}") for i in range(5)]).encode()
    assert len(entries_decoder(5).decode(body)) == 5
    with pytest.raises(msgspec.DecodeError, match="length <= 4"):
        entries_decoder(4).decode(body)


def test_datacenters_are_a_bounded_list_of_names() -> None:
    assert datacenters_decoder().decode(b'["dc1", "dc2"]') == ["dc1", "dc2"]
    for body in [b'{"dc": "dc1"}', b"[1]", json.dumps(["x" * (MAX_DATACENTER_NAME + 1)]).encode()]:
        with pytest.raises(msgspec.DecodeError):
            datacenters_decoder().decode(body)


@pytest.mark.parametrize(
    ("service", "port", "node", "want"),
    [
        ("10.0.0.1", 4647, "10.9.9.9", "10.0.0.1:4647"),
        ("", 4647, "10.9.9.9", "10.9.9.9:4647"),  # Node.Address when the service has none
        ("Nomad-1.Node.Consul", 14647, "", "nomad-1.node.consul:14647"),
        ("2001:db8::1", 4647, "", "[2001:db8::1]:4647"),  # Consul's IPv6 is unbracketed
        ("", 4647, "fd00::7", "[fd00::7]:4647"),
    ],
)
def test_an_entry_is_a_server(service: str, port: int, node: str, want: str) -> None:
    assert entry_address(entry(service, port, node)) == parse_address(want)


@pytest.mark.parametrize(
    ("service", "port", "node"),
    [
        ("", 4647, ""),  # no address at all
        ("10.0.0.1", 0, ""),  # Consul's port of a service registered without one
        ("10.0.0.1", 65536, ""),
        ("10.0.0.1", -1, ""),
        ("300.0.0.1", 4647, ""),
        ("bad host", 4647, ""),
        ("10.0.0.1:4647", 4647, ""),  # a port in the address
        ("x" * 400, 4647, ""),
    ],
)
def test_an_entry_naming_no_server_is_none(service: str, port: int, node: str) -> None:
    assert entry_address(entry(service, port, node)) is None


def test_servers_are_deduplicated_by_canonical_form_first_place_kept() -> None:
    entries = [
        entry("b.example"),
        entry("10.0.0.1"),
        entry("B.Example."),  # the same server as the first
        entry("", 4647, "10.0.0.1"),  # and as the second
        entry("10.0.0.2", 99999),
        entry("10.0.0.3"),
    ]
    found = servers_in(entries, max_servers=10)
    assert [a.canonical for a in found.servers] == [
        "b.example:4647",
        "10.0.0.1:4647",
        "10.0.0.3:4647",
    ]
    assert (found.skipped, found.first_skipped) == (1, "'10.0.0.2:99999'")


def test_servers_stop_at_the_bound() -> None:
    entries = [entry(f"10.0.0.{i}") for i in range(1, 9)]
    found = servers_in(entries, max_servers=3)
    assert [a.canonical for a in found.servers] == [
        "10.0.0.1:4647",
        "10.0.0.2:4647",
        "10.0.0.3:4647",
    ]


def test_a_skipped_entry_is_shown_cut_short_and_escaped() -> None:
    found = servers_in([entry("evil\n" + "x" * 500)], max_servers=3)
    assert found.servers == () and found.skipped == 1
    assert "\n" not in found.first_skipped and len(found.first_skipped) < 100


# --- The walk over the datacenters, in memory -------------------------------------------


class Streamed(httpx.SyncByteStream):
    """A body streamed as a network's is (a Response made with ``content=`` is read already)."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def __iter__(self) -> Iterator[bytes]:
        yield self._body


def answer(status: int, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.Response(status, stream=Streamed(content))


class Agent:
    """An in-memory agent: datacenters and entries, a clock each request advances."""

    def __init__(self, datacenters: list[str], entries: dict[str, Any]) -> None:
        self.datacenters = datacenters
        self.entries = entries  # dc -> list of entries, or an int status, or raw bytes
        self.now = 0.0
        self.request_s = 0.0
        self.requests: list[httpx.Request] = []
        self.status: int | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.now += self.request_s
        if self.status is not None:
            return answer(self.status, b"denied")
        if request.url.path == "/v1/catalog/datacenters":
            return answer(200, self.datacenters)
        entries = self.entries.get(request.url.params.get("dc", ""), [])
        if isinstance(entries, int):
            return answer(entries, b"failing")
        return answer(200, entries)

    def asked(self) -> list[str]:
        return [r.url.params.get("dc", "") for r in self.requests if "health" in r.url.path]

    def source(self, *, token: str = "", **kw: Any) -> ConsulSource:
        settings = ConsulSettings("http://consul.test:8500", token=token)
        # The header as the source's own client sends it (tests/integration checks that one).
        headers = {"X-Consul-Token": token} if token else {}
        client = httpx.Client(
            base_url=settings.addr, headers=headers, transport=httpx.MockTransport(self)
        )
        kw.setdefault("max_servers", 16)
        kw.setdefault("deadline_s", 10.0)
        return ConsulSource(settings, client=client, clock=lambda: self.now, **kw)


def addresses(*texts: str) -> tuple[Address, ...]:
    return tuple(parse_address(t) for t in texts)


def test_the_first_datacenter_with_servers_is_the_answer() -> None:
    agent = Agent(["dc1", "dc2", "dc3"], {"dc2": [health_entry("10.0.2.1")], "dc3": [1]})
    assert agent.source().discover() == addresses("10.0.2.1")
    assert agent.asked() == ["dc1", "dc2"]
    query = dict(agent.requests[1].url.params)
    assert query == {"dc": "dc1", "tag": "rpc", "passing": "true"}


def test_all_answered_empty_is_no_server_and_no_error() -> None:
    agent = Agent(["dc1", "dc2"], {})
    assert agent.source().discover() == ()
    assert agent.asked() == ["dc1", "dc2"]


def test_a_datacenter_whose_entries_are_all_skipped_lists_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = [health_entry("10.0.1.1", 0), health_entry("not valid")]
    agent = Agent(["dc1", "dc2"], {"dc1": bad, "dc2": [health_entry("10.0.2.1")]})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert agent.source().discover() == addresses("10.0.2.1")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "skipped 2 of 2 entries" in line and "'10.0.1.1:0'" in line


def test_a_failed_datacenter_is_remembered_and_the_next_one_asked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent = Agent(["dc1", "dc2", "dc3"], {"dc1": 500, "dc2": [health_entry("10.0.2.1")]})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert agent.source().discover() == addresses("10.0.2.1")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "after 1 failed" in line and "status 500" in line and "'dc1'" in line


@pytest.mark.parametrize(
    "failing", [500, b"{not json", json.dumps([health_entry("10.0.0.1")] * 20).encode()]
)
def test_no_servers_and_a_failure_is_an_error_not_an_empty_catalog(failing: Any) -> None:
    agent = Agent(["dc1", "dc2"], {"dc2": failing})
    with pytest.raises(DiscoveryError, match=r"1 of 2 failed, the first: .*'dc2'"):
        agent.source(max_servers=16).discover()


def test_a_failed_datacenters_request_is_an_error_and_no_datacenter_is_asked() -> None:
    agent = Agent(["dc1"], {})
    agent.datacenters = {"not": "a list"}  # type: ignore[assignment]
    with pytest.raises(DiscoveryError, match="/v1/catalog/datacenters"):
        agent.source().discover()
    assert agent.asked() == []


def test_at_most_ten_datacenters_are_asked() -> None:
    names = [f"dc{i}" for i in range(1, 16)]
    agent = Agent(names, {"dc15": [health_entry("10.0.15.1")]})
    assert agent.source().discover() == ()
    assert agent.asked() == names[:MAX_DATACENTERS]


def test_the_deadline_bounds_the_whole_discovery_not_each_request() -> None:
    # Each request takes 1 s of the agent's clock: each would fit a 2.5 s
    # deadline of its own, but the third (dc2's) ends past the whole
    # discovery's, which ends there: dc3 is never asked.
    agent = Agent(["dc1", "dc2", "dc3"], {"dc3": [health_entry("10.0.3.1")]})
    agent.request_s = 1.0
    with pytest.raises(DiscoveryError, match=r"longer than its 2\.5 s"):
        agent.source(deadline_s=2.5).discover()
    assert agent.asked() == ["dc1", "dc2"]
    # The next discovery has a deadline of its own.
    agent.request_s = 0.0
    assert agent.source(deadline_s=2.5).discover() == addresses("10.0.3.1")


def test_no_tag_asks_for_every_entry_and_the_service_name_is_encoded() -> None:
    agent = Agent(["dc 1&x"], {"dc 1&x": [health_entry("10.0.0.1", tags=())]})
    settings = ConsulSettings("http://consul.test:8500", service="nomad/x y", tag="")
    client = httpx.Client(base_url=settings.addr, transport=httpx.MockTransport(agent))
    source = ConsulSource(settings, client=client, max_servers=4, deadline_s=5.0)
    assert source.discover() == addresses("10.0.0.1")
    asked = agent.requests[1].url
    assert asked.raw_path.startswith(b"/v1/health/service/nomad%2Fx%20y?")
    assert dict(asked.params) == {"dc": "dc 1&x", "passing": "true"}


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_is_one_error_naming_its_variable_never_its_value(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    agent = Agent(["dc1"], {})
    agent.status = status
    source = agent.source(token="s3cr3t-value")
    with caplog.at_level(logging.DEBUG, logger="rpcproxy"):
        for _ in range(3):
            with pytest.raises(DiscoveryError) as caught:
                source.discover()
            assert "s3cr3t-value" not in str(caught.value)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "CONSUL_HTTP_TOKEN" in errors[0], errors
    assert all("s3cr3t-value" not in r.getMessage() for r in caplog.records)


def test_a_remote_datacenter_refusing_a_local_token_is_one_failed_datacenter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent = Agent(["dc1", "dc2", "dc3"], {"dc2": 403, "dc3": [health_entry("10.0.3.1")]})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert agent.source(token="local").discover() == addresses("10.0.3.1")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "CONSUL_HTTP_TOKEN" in errors[0] and "'dc2'" in errors[0]


def test_a_closed_source_raises_and_asks_nothing() -> None:
    agent = Agent(["dc1"], {"dc1": [health_entry("10.0.0.1")]})
    source = agent.source()
    assert source.name == "consul"
    source.close()
    with pytest.raises(DiscoveryError, match="closed"):
        source.discover()
    assert agent.requests == []
