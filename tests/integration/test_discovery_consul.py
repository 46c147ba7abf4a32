"""Consul's catalog as a discovery source (docs/protocol.md section 10), over real HTTP.

The source meets a Consul-agent-shaped HTTP API on loopback
(tests/consulapi.py: Consul itself cannot be installed here) through the
maintained client and every bound of the fetch layer: which requests it
makes and with which query and header, how it walks the datacenters, and
an agent that misbehaves (a refused token, bodies over the bounds, JSON of
the wrong shape, a trickled body, an answer held back), a ``close`` during
a slow fetch, and TLS. Waits are on events and deadlines, never sleeps;
times are asserted only against generous bounds.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rpcproxy.bus.service.discovery import DiscoveryError
from rpcproxy.bus.service.discovery.consul import ConsulSettings, ConsulSource
from rpcproxy.proxy import Address, parse_address
from tests.consulapi import HEALTH_PREFIX, ConsulFixture, consul_api, health_entry
from tests.nomadapi import gzip_of_zeros
from tests.nomadpeer import TLSFiles, make_tls_files

pytestmark = pytest.mark.integration

SECRET = "c0ffee00-5ec2-e7e0-0000-70c3e5ec2e70"


_OPENED: list[ConsulSource] = []
"""The sources the running test made; closed when it ends (their pools hold sockets)."""


@pytest.fixture(autouse=True)
def close_sources() -> Iterator[None]:
    yield
    while _OPENED:
        _OPENED.pop().close()


@pytest.fixture
def consul() -> Iterator[tuple[ConsulFixture, str]]:
    with consul_api() as served:
        yield served


def source(
    addr: str,
    environ: dict[str, str] | None = None,
    *,
    tag: str = "rpc",
    max_servers: int = 16,
    deadline_s: float = 10.0,
    **kw: Any,
) -> ConsulSource:
    settings = ConsulSettings.from_env(addr, tag=tag, environ=environ or {})
    made = ConsulSource(settings, max_servers=max_servers, deadline_s=deadline_s, **kw)
    _OPENED.append(made)
    return made


def addresses(*texts: str) -> tuple[Address, ...]:
    return tuple(parse_address(t) for t in texts)


def discover_in_thread(consul: ConsulSource) -> tuple[threading.Thread, list[Any]]:
    """``consul.discover()`` on a thread; the list gets its result or its exception."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(consul.discover())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


# --- What is asked, and what is found ---------------------------------------------------


def test_servers_come_from_the_first_datacenter_that_lists_any(
    consul: tuple[ConsulFixture, str],
) -> None:
    state, url = consul
    state.datacenters = ["dc1", "dc2", "dc3"]
    state.entries = {
        "dc1": [],
        "dc2": [
            health_entry("10.0.2.1"),
            health_entry("10.0.2.2", status="critical"),  # not passing: not listed
            health_entry("10.0.2.3", tags=("http",)),  # not the RPC entry
            health_entry("10.0.2.4", 14647),
            health_entry("10.0.2.1"),  # the first one again
        ],
        "dc3": [health_entry("10.0.3.1")],
    }
    assert source(url).discover() == addresses("10.0.2.1", "10.0.2.4:14647")
    assert [r.path for r in state.requests] == [
        "/v1/catalog/datacenters",
        f"{HEALTH_PREFIX}nomad",
        f"{HEALTH_PREFIX}nomad",
    ]
    want = {"dc": ["dc2"], "tag": ["rpc"], "passing": ["true"]}
    assert state.requests[2].query == want
    assert state.health_dcs() == ["dc1", "dc2"]  # dc3 never asked


def test_an_entry_without_a_service_address_is_at_its_node(
    consul: tuple[ConsulFixture, str],
) -> None:
    state, url = consul
    state.entries = {"dc1": [health_entry("", node_addr="10.0.0.7"), health_entry("10.0.0.8")]}
    assert source(url).discover() == addresses("10.0.0.7", "10.0.0.8")


def test_an_empty_tag_sends_no_tag_and_finds_every_entry(
    consul: tuple[ConsulFixture, str],
) -> None:
    state, url = consul
    state.entries = {"dc1": [health_entry("10.0.0.1", tags=("http",))]}
    assert source(url).discover() == ()  # tagged rpc: none
    assert source(url, tag="").discover() == addresses("10.0.0.1")
    assert state.requests[-1].query == {"dc": ["dc1"], "passing": ["true"]}


def test_the_token_is_sent_as_its_header_and_never_logged(
    consul: tuple[ConsulFixture, str], caplog: pytest.LogCaptureFixture
) -> None:
    state, url = consul
    state.token = SECRET
    state.datacenters = ["dc1", "dc2"]
    state.entries = {"dc2": [health_entry("10.0.0.1", 0)]}  # a skipped entry: a warning
    with caplog.at_level(logging.DEBUG, logger="rpcproxy"):
        assert source(url, {"CONSUL_HTTP_TOKEN": SECRET}).discover() == ()
    assert [r.token for r in state.requests] == [SECRET] * 3
    assert any("skipped" in r.getMessage() for r in caplog.records)
    assert all(SECRET not in r.getMessage() for r in caplog.records)
    state.token = None
    state.requests.clear()
    source(url).discover()
    assert state.requests and {r.token for r in state.requests} == {None}


@pytest.mark.parametrize("token", ["", "a-wrong-token"])
def test_a_refused_token_fails_and_is_one_error_across_discoveries(
    consul: tuple[ConsulFixture, str], caplog: pytest.LogCaptureFixture, token: str
) -> None:
    state, url = consul
    state.token = SECRET
    consul_source = source(url, {"CONSUL_HTTP_TOKEN": token})
    with caplog.at_level(logging.DEBUG, logger="rpcproxy"):
        for _ in range(4):
            with pytest.raises(DiscoveryError, match="status 403") as caught:
                consul_source.discover()
            assert SECRET not in str(caught.value)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "CONSUL_HTTP_TOKEN" in errors[0], errors
    assert not token or all(token not in r.getMessage() for r in caplog.records)
    assert len(state.requests) == 4  # each discovery ends at the datacenters' refusal


@pytest.mark.parametrize("status", [401, 500, 503])
def test_a_failing_agent_is_an_error(consul: tuple[ConsulFixture, str], status: int) -> None:
    state, url = consul
    state.status = status
    with pytest.raises(DiscoveryError, match=f"/v1/catalog/datacenters: status {status}"):
        source(url).discover()


def test_a_failing_datacenter_is_passed_over_and_remembered(
    consul: tuple[ConsulFixture, str],
) -> None:
    state, url = consul
    state.datacenters = ["dc1", "dc2", "dc3"]
    state.entries = {"dc3": [health_entry("10.0.3.1")]}
    state.dc_status = {"dc1": 500}
    assert source(url).discover() == addresses("10.0.3.1")
    state.entries = {}
    with pytest.raises(DiscoveryError, match=r"1 of 3 failed, the first: .*status 500.*'dc1'"):
        source(url).discover()


def test_more_than_ten_datacenters_only_ten_are_asked(consul: tuple[ConsulFixture, str]) -> None:
    state, url = consul
    state.datacenters = [f"dc{i}" for i in range(1, 14)]
    state.entries = {"dc11": [health_entry("10.0.11.1")]}
    assert source(url).discover() == ()
    assert state.health_dcs() == state.datacenters[:10]


# --- Bounds ---------------------------------------------------------------------


def test_a_body_over_the_bound_fails(consul: tuple[ConsulFixture, str]) -> None:
    state, url = consul
    state.entries = {"dc1": [health_entry(f"10.0.{i // 250}.{i % 250}") for i in range(40)]}
    with pytest.raises(DiscoveryError, match=r"over 8192"):
        source(url, max_servers=64, max_body_bytes=8192).discover()
    assert len(source(url, max_servers=64, max_body_bytes=1 << 20).discover()) == 40


def test_a_gzip_bomb_fails_at_the_decoded_bound(consul: tuple[ConsulFixture, str]) -> None:
    state, url = consul
    state.dc_raw = {"dc1": gzip_of_zeros(64 << 20)}
    state.encoding = "gzip"
    with pytest.raises(DiscoveryError, match="once decoded"):
        source(url, max_body_bytes=1 << 20).discover()


def test_more_entries_than_max_servers_fail_that_datacenter(
    consul: tuple[ConsulFixture, str],
) -> None:
    state, url = consul
    state.entries = {"dc1": [health_entry(f"10.0.0.{i}") for i in range(1, 7)]}
    with pytest.raises(DiscoveryError, match="length <= 5"):
        source(url, max_servers=5).discover()
    assert len(source(url, max_servers=6).discover()) == 6


@pytest.mark.parametrize(
    "body", [b"[{not json", b'{"Service": {"Port": 4647}}', b'[{"Service": {"Port": "x"}}]']
)
def test_json_of_the_wrong_shape_fails(consul: tuple[ConsulFixture, str], body: bytes) -> None:
    state, url = consul
    state.dc_raw = {"dc1": body}
    with pytest.raises(DiscoveryError, match=f"GET {HEALTH_PREFIX}nomad: "):
        source(url).discover()
    state.dc_raw, state.raw = {}, b'"dc1"'  # the datacenters not a list
    with pytest.raises(DiscoveryError, match="GET /v1/catalog/datacenters: Expected `array`"):
        source(url).discover()


def test_a_trickled_body_ends_at_the_discovery_s_deadline(
    consul: tuple[ConsulFixture, str],
) -> None:
    state, url = consul
    state.trickle_s = 0.05  # every read well within the 30 s per read: only the deadline ends it
    begin = time.monotonic()
    with pytest.raises(DiscoveryError, match=r"longer than its 0\.5 s"):
        source(url, deadline_s=0.5, timeout_s=30.0).discover()
    elapsed = time.monotonic() - begin
    assert 0.5 <= elapsed < 5.0, elapsed


def test_one_deadline_bounds_every_request_of_a_discovery(
    consul: tuple[ConsulFixture, str],
) -> None:
    state, url = consul
    state.datacenters = ["dc1", "dc2", "dc3"]
    state.entries = {"dc3": [health_entry("10.0.3.1")]}
    # Each answer is held back 0.4 s: each request fits a 1 s deadline of its
    # own, four of them do not; the third is still waiting when the whole ends.
    state.delay_s = 0.4
    begin = time.monotonic()
    with pytest.raises(DiscoveryError, match=r"longer than its 1 s"):
        source(url, deadline_s=1.0, timeout_s=30.0).discover()
    assert time.monotonic() - begin < 5.0
    assert "dc3" not in state.health_dcs()


def test_close_ends_a_slow_fetch_at_once_and_every_later_discovery(
    consul: tuple[ConsulFixture, str], caplog: pytest.LogCaptureFixture
) -> None:
    state, url = consul
    state.trickle_s = 1.0  # a byte a second, a 60 s deadline: only close() ends it soon
    consul_source = source(url, deadline_s=60.0, timeout_s=30.0)
    with caplog.at_level(logging.WARNING, logger="rpcproxy"):
        thread, outcome = discover_in_thread(consul_source)
        assert state.trickling.wait(10), "the discovery never fetched"
        begin = time.monotonic()
        consul_source.close()
        thread.join(10)
        elapsed = time.monotonic() - begin
    assert not thread.is_alive(), "close() did not end the discovery"
    assert elapsed < 3.0, f"the discovery ended {elapsed:.2f} s after close()"
    (result,) = outcome
    assert isinstance(result, DiscoveryError) and "closed" in str(result)
    assert not caplog.records  # a close is no fault of the agent's
    asked = len(state.requests)
    with pytest.raises(DiscoveryError, match="closed"):
        consul_source.discover()
    assert len(state.requests) == asked


def test_close_with_no_discovery_in_flight(consul: tuple[ConsulFixture, str]) -> None:
    _, url = consul
    consul_source = source(url)
    assert consul_source.discover() == addresses("10.0.0.1")
    consul_source.close()
    consul_source.close()  # twice is harmless
    with pytest.raises(DiscoveryError, match="closed"):
        consul_source.discover()


# --- TLS to the agent ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("consul-tls"))


def https_discover(tls: TLSFiles, environ: dict[str, str], *, require_client: bool) -> Any:
    """One discovery from an HTTPS stand-in serving ``tls.server``: servers or the error."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.server.cert, tls.server.key)
    if require_client:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(tls.ca)
    with consul_api(context) as (_, url):
        try:
            return source(url, environ, deadline_s=10.0).discover()
        except DiscoveryError as exc:
            return exc


FOUND = addresses("10.0.0.1")


def test_https_with_the_ca_from_consul_cacert(tls_files: TLSFiles) -> None:
    ca = {"CONSUL_CACERT": str(tls_files.ca)}
    assert https_discover(tls_files, ca, require_client=False) == FOUND
    failed = https_discover(tls_files, {}, require_client=False)  # the system's CAs
    assert isinstance(failed, DiscoveryError) and "CERTIFICATE_VERIFY_FAILED" in str(failed)


def test_https_with_a_client_certificate(tls_files: TLSFiles) -> None:
    environ = {
        "CONSUL_CACERT": str(tls_files.ca),
        "CONSUL_CLIENT_CERT": str(tls_files.client.cert),
        "CONSUL_CLIENT_KEY": str(tls_files.client.key),
    }
    assert https_discover(tls_files, environ, require_client=True) == FOUND
    without = {"CONSUL_CACERT": str(tls_files.ca)}
    assert isinstance(https_discover(tls_files, without, require_client=True), DiscoveryError)


def test_https_from_another_ca_fails_unless_ssl_verify_is_off(tls_files: TLSFiles) -> None:
    other = {"CONSUL_CACERT": str(tls_files.other_ca)}
    assert isinstance(https_discover(tls_files, other, require_client=False), DiscoveryError)
    off = {**other, "CONSUL_HTTP_SSL_VERIFY": "false"}
    assert https_discover(tls_files, off, require_client=False) == FOUND


def test_consul_tls_server_name_is_the_name_checked(tls_files: TLSFiles) -> None:
    ca = {"CONSUL_CACERT": str(tls_files.ca)}
    named = {**ca, "CONSUL_TLS_SERVER_NAME": tls_files.server_name}
    assert https_discover(tls_files, named, require_client=False) == FOUND
    wrong = {**ca, "CONSUL_TLS_SERVER_NAME": "consul.wrong.example"}
    assert isinstance(https_discover(tls_files, wrong, require_client=False), DiscoveryError)
