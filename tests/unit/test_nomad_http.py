"""The Nomad HTTP API bridge (docs/protocol.md section 7) against a local fixture.

The fixture is a tiny ``http.server`` on loopback serving the shapes of
Nomad's documented responses: ``/v1/agent/members`` with 0.x tags (``vsn``,
``mvn``, no ``rpc_addr``) and 1.x tags (``rpc_addr``, ``id``, ``raft_vsn``,
``build``...), ``/v1/status/leader`` and ``/v1/nodes``. Polls are called
one at a time (``poll_once``), so nothing waits on a clock. The fixture also
misbehaves (a body trickled a byte at a time, no answer at all, a gzip bomb),
which the bridge's fetches must survive with every bound of the HTTP fetch
they are made with (whose parts are tested on their own in test_http_fetch.py).
It also serves on a Unix socket requiring a token, as Nomad's Task API does.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rpcproxy.bus.service.nomad_http import (
    NomadApiError,
    NomadApiSettings,
    NomadFetcher,
    NomadPoller,
    make_client,
)
from rpcproxy.proxy import Heartbeat, HeartbeatServer
from tests.nomadapi import NomadFixture, gzip_of_zeros, member_0x, member_1x, nomad_api
from tests.nomadpeer import TLSFiles, make_tls_files
from tests.waiting import poll_until


@pytest.fixture
def nomad() -> Iterator[tuple[NomadFixture, str]]:
    with nomad_api() as served:
        yield served


def poller(
    addr: str, *, token: str = "", clock: list[float] | None = None, **kw: Any
) -> tuple[NomadPoller, list[Heartbeat]]:
    settings = NomadApiSettings.from_env({}, addr=addr, token=token)
    seen: list[Heartbeat] = []
    now = clock if clock is not None else [0.0]
    fetcher = NomadFetcher(make_client(settings, timeout_s=5.0), settings, **kw)
    return NomadPoller(fetcher, seen.append, clock=lambda: now[0]), seen


def test_maps_0x_and_1x_members_exactly(nomad: tuple[NomadFixture, str]) -> None:
    state, addr = nomad
    state.members.append(member_0x("old", "10.0.0.3", status="left"))
    state.members.append(member_1x("other", "10.1.0.1:4647", region="eu"))
    client = {"Name": "c1", "Addr": "10.0.0.7", "Status": "alive", "Tags": {"role": "node"}}
    state.members.append(client)
    p, seen = poller(addr)
    heartbeat = p.poll_once()
    assert heartbeat is not None and seen == [heartbeat]
    assert heartbeat.servers == (
        HeartbeatServer("10.0.0.1:4647", 1, 1, "dc1"),
        HeartbeatServer("10.0.0.2:4647", 1, 1, "dc2"),
    )
    assert heartbeat.leader_rpc_addr == "10.0.0.1:4647"
    assert heartbeat.num_nodes == 3
    assert heartbeat.publisher == "a.global"
    assert heartbeat.seq == 1


def test_missing_version_tags_are_one(nomad: tuple[NomadFixture, str]) -> None:
    state, addr = nomad
    member = member_0x("a", "10.0.0.1")
    del member["Tags"]["vsn"], member["Tags"]["mvn"]
    state.members = [member]
    heartbeat = poller(addr)[0].poll_once()
    assert heartbeat is not None
    assert heartbeat.servers == (HeartbeatServer("10.0.0.1:4647", 1, 1, "dc1"),)


def test_membership_change_publishes_and_seq_grows(nomad: tuple[NomadFixture, str]) -> None:
    state, addr = nomad
    p, seen = poller(addr)
    p.poll_once()
    state.members = [member_0x("c", "10.0.0.5")]
    p.poll_once()
    assert [h.seq for h in seen] == [1, 2]
    assert [s.rpc_advertise_addr for s in seen[1].servers] == ["10.0.0.5:4647"]


@pytest.mark.parametrize(
    "fault",
    ["status500", "garbage", "wrong_shape", "too_many", "refused"],
)
def test_failed_fetch_publishes_nothing_and_retries(
    nomad: tuple[NomadFixture, str], fault: str
) -> None:
    state, addr = nomad
    if fault == "status500":
        state.status = 500
    elif fault == "garbage":
        state.raw = b"{not json"
    elif fault == "wrong_shape":
        state.raw = b'{"Members": "nope"}'
    elif fault == "too_many":
        state.members = [member_0x(f"s{i}", f"10.0.1.{i}") for i in range(5)]
    elif fault == "refused":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            addr = f"http://127.0.0.1:{s.getsockname()[1]}"
    p, seen = poller(addr, max_members=4)
    assert p.poll_once() is None and seen == []
    first, second = p.next_delay(), (p.poll_once(), p.next_delay())[1]
    assert 10.0 <= first < second <= 60.0  # backed off, capped
    # The API recovers: the next poll publishes, and the pace is back to normal.
    state.status, state.raw = 200, None
    state.members = state.members[:2]
    if fault != "refused":
        assert p.poll_once() is not None and p.next_delay() == 10.0


def test_backoff_is_capped(nomad: tuple[NomadFixture, str]) -> None:
    state, addr = nomad
    state.status = 500
    p, _ = poller(addr)
    for _ in range(30):
        p.poll_once()
    assert p.next_delay() == 60.0


def test_empty_membership_publishes_nothing(nomad: tuple[NomadFixture, str]) -> None:
    state, addr = nomad
    state.members = [member_0x("a", "10.0.0.1", status="failed")]
    p, seen = poller(addr)
    assert p.poll_once() is None and seen == []


@pytest.mark.parametrize("status", [401, 403])
def test_refused_token_logged_once_naming_it(
    nomad: tuple[NomadFixture, str], status: int, caplog: pytest.LogCaptureFixture
) -> None:
    state, addr = nomad
    state.status = status
    p, seen = poller(addr, token="s3cr3t-value")
    with caplog.at_level(logging.WARNING, logger="rpcproxy.bus.service.nomad_http"):
        for _ in range(3):
            assert p.poll_once() is None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "token" in errors[0].getMessage()
    assert all("s3cr3t-value" not in r.getMessage() for r in caplog.records)
    assert seen == []


def test_token_header_sent_only_when_set(nomad: tuple[NomadFixture, str]) -> None:
    state, addr = nomad
    poller(addr, token="tok-1")[0].poll_once()
    assert state.tokens and set(state.tokens) == {"tok-1"}
    state.tokens.clear()
    poller(addr)[0].poll_once()
    assert state.tokens and set(state.tokens) == {None}


def test_nodes_fetched_at_most_every_refresh(nomad: tuple[NomadFixture, str]) -> None:
    state, addr = nomad
    clock = [0.0]
    p, seen = poller(addr, clock=clock)
    p.poll_once()
    state.nodes = 7
    clock[0] = 299.0
    p.poll_once()
    clock[0] = 300.0
    p.poll_once()
    assert [h.num_nodes for h in seen] == [3, 3, 7]
    assert sum(path.startswith("/v1/nodes?stale=true") for path in state.paths) == 2


def test_env_vars_read_and_flags_override() -> None:
    env = {
        "NOMAD_ADDR": "https://nomad.example:4646",
        "NOMAD_TOKEN": "SECRET-TOKEN",
        "NOMAD_REGION": "eu",
        "NOMAD_CACERT": "/ca.pem",
        "NOMAD_CLIENT_CERT": "/c.pem",
        "NOMAD_CLIENT_KEY": "/k.pem",
        "NOMAD_TLS_SERVER_NAME": "server.eu.nomad",
        "NOMAD_SKIP_VERIFY": "true",
    }
    settings = NomadApiSettings.from_env(env, region="us", token=None)
    assert settings == NomadApiSettings(
        addr="https://nomad.example:4646",
        token="SECRET-TOKEN",
        region="us",
        ca_cert="/ca.pem",
        client_cert="/c.pem",
        client_key="/k.pem",
        tls_server_name="server.eu.nomad",
        skip_verify=True,
    )
    assert "SECRET-TOKEN" not in repr(settings)


def test_run_stops_via_injected_wait(nomad: tuple[NomadFixture, str]) -> None:
    _, addr = nomad
    settings = NomadApiSettings.from_env({}, addr=addr)
    seen: list[Heartbeat] = []
    delays: list[float] = []

    def wait(delay: float) -> bool:
        delays.append(delay)
        return len(delays) >= 3

    fetcher = NomadFetcher(make_client(settings), settings)
    NomadPoller(fetcher, seen.append, interval_s=10.0, wait=wait).run()
    assert [h.seq for h in seen] == [1, 2, 3] and delays == [10.0, 10.0, 10.0]


# --- TLS to the API ----------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("nomad-api-tls"))


def https_poll(tls: TLSFiles, *, require_client: bool, **settings: Any) -> Heartbeat | None:
    """One poll of an HTTPS fixture serving ``tls.server`` with these client settings."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.server.cert, tls.server.key)
    if require_client:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(tls.ca)
    with nomad_api(context) as (_, addr):
        config = NomadApiSettings.from_env({}, addr=addr, **settings)
        fetcher = NomadFetcher(make_client(config, timeout_s=5.0), config)
        return NomadPoller(fetcher, lambda _: None).poll_once()


def test_https_with_the_ca_and_a_client_certificate(tls_files: TLSFiles) -> None:
    client = {"client_cert": str(tls_files.client.cert), "client_key": str(tls_files.client.key)}
    assert https_poll(tls_files, require_client=True, ca_cert=str(tls_files.ca), **client)
    # Without the client certificate the API refuses: nothing is published.
    assert https_poll(tls_files, require_client=True, ca_cert=str(tls_files.ca)) is None


def test_https_from_another_ca_fails_unless_skip_verify(tls_files: TLSFiles) -> None:
    other = str(tls_files.other_ca)
    assert https_poll(tls_files, require_client=False, ca_cert=other) is None
    assert https_poll(tls_files, require_client=False, ca_cert=other, skip_verify=True)


def test_tls_server_name_is_the_name_checked(tls_files: TLSFiles) -> None:
    ca = str(tls_files.ca)
    name = tls_files.server_name
    assert https_poll(tls_files, require_client=False, ca_cert=ca, tls_server_name=name)
    assert (
        https_poll(tls_files, require_client=False, ca_cert=ca, tls_server_name="wrong.nomad")
        is None
    )


# --- Fetches from an agent that misbehaves -----------------------------------------


def fetcher_for(addr: str, **kw: Any) -> NomadFetcher:
    settings = NomadApiSettings.from_env({}, addr=addr)
    # A per-read timeout far above the deadlines: the deadline must be what ends a fetch.
    return NomadFetcher(make_client(settings, timeout_s=30.0), settings, **kw)


def test_a_trickled_body_fails_at_the_fetch_deadline(nomad: tuple[NomadFixture, str]) -> None:
    state, addr = nomad
    state.trickle_s = 0.05  # every read answered well within any per-read timeout
    fetcher = fetcher_for(addr)
    begin = time.monotonic()
    with pytest.raises(NomadApiError, match=r"a whole fetch may take 0\.5 s") as caught:
        fetcher.get("/v1/agent/members", deadline_s=0.5)
    elapsed = time.monotonic() - begin
    assert caught.value.kind == "timeout"
    assert 0.5 <= elapsed < 5.0, elapsed


def test_an_agent_that_never_answers_fails_at_the_fetch_deadline(
    nomad: tuple[NomadFixture, str],
) -> None:
    state, addr = nomad
    state.silent = True
    begin = time.monotonic()
    with pytest.raises(NomadApiError) as caught:
        fetcher_for(addr).get("/v1/status/leader", deadline_s=0.5)
    assert caught.value.kind == "timeout"
    assert time.monotonic() - begin < 5.0


def test_a_trickling_agent_is_warned_about_and_retried(
    nomad: tuple[NomadFixture, str], caplog: pytest.LogCaptureFixture
) -> None:
    state, addr = nomad
    state.trickle_s = 0.05
    seen: list[Heartbeat] = []
    p = NomadPoller(fetcher_for(addr), seen.append, interval_s=10.0, fetch_deadline_s=0.3)
    with caplog.at_level(logging.WARNING, logger="rpcproxy.bus.service.nomad_http"):
        assert p.poll_once() is None
        assert p.poll_once() is None  # the retry: a second request
        assert p.next_delay() == 20.0  # backing off
    assert len(state.paths) == 2 and seen == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "a whole fetch may take 0.3 s" in warnings[0] and "retrying in 10 s" in warnings[0]
    assert "retrying in 20 s" in warnings[1]
    # The agent is well again: the next poll publishes.
    state.trickle_s = None
    assert p.poll_once() is not None and len(seen) == 1


def test_warnings_of_a_failing_agent_are_rate_limited(
    nomad: tuple[NomadFixture, str], caplog: pytest.LogCaptureFixture
) -> None:
    state, addr = nomad
    state.status = 500
    p, _ = poller(addr)
    with caplog.at_level(logging.WARNING, logger="rpcproxy.bus.service.nomad_http"):
        for _ in range(20):
            assert p.poll_once() is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert 1 <= len(warnings) <= 5, [r.getMessage() for r in warnings]


def test_stop_ends_a_trickled_fetch_at_once(
    nomad: tuple[NomadFixture, str], caplog: pytest.LogCaptureFixture
) -> None:
    state, addr = nomad
    state.trickle_s = 1.0
    p = NomadPoller(fetcher_for(addr), lambda _: None, interval_s=10.0, fetch_deadline_s=60.0)
    with caplog.at_level(logging.WARNING, logger="rpcproxy.bus.service.nomad_http"):
        p.start()
        assert state.trickling.wait(10), "the fetch never started"
        begin = time.monotonic()
        p.stop(timeout_s=10.0)
        elapsed = time.monotonic() - begin
    assert elapsed < 2.0, elapsed  # the deadline was 60 s, the trickle 1 s a byte
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_gzip_bomb_fails_as_too_large_and_the_next_poll_recovers(
    nomad: tuple[NomadFixture, str], caplog: pytest.LogCaptureFixture
) -> None:
    state, addr = nomad
    state.raw, state.encoding = gzip_of_zeros(1 << 30), "gzip"
    p, seen = poller(addr)
    with caplog.at_level(logging.WARNING, logger="rpcproxy.bus.service.nomad_http"):
        assert p.poll_once() is None
    assert any("once decoded" in r.getMessage() for r in caplog.records)
    state.raw, state.encoding = None, None
    state.compress = True  # and an honest gzip body is read
    assert p.poll_once() is not None and len(seen) == 1


def test_gzip_is_asked_for_and_decoded(nomad: tuple[NomadFixture, str]) -> None:
    state, addr = nomad
    state.compress = True
    heartbeat = poller(addr)[0].poll_once()
    assert heartbeat is not None and heartbeat.num_nodes == 3


def test_a_host_name_is_resolved_and_each_address_tried(nomad: tuple[NomadFixture, str]) -> None:
    # localhost may come first as ::1, where nothing listens: the next address is tried.
    _, addr = nomad
    by_name = addr.replace("127.0.0.1", "localhost")
    assert poller(by_name)[0].poll_once() is not None


# --- Nomad's Task API: the agent on a Unix socket ----------------------------------


@pytest.fixture
def task_api() -> Iterator[tuple[NomadFixture, str]]:
    """The fixture on a Unix socket, requiring a token as the Task API always does."""
    with nomad_api(unix=True) as (state, addr):
        state.required_token = "workload-identity-jwt"
        yield state, addr


def test_the_task_api_is_polled_on_its_socket(task_api: tuple[NomadFixture, str]) -> None:
    state, addr = task_api
    assert addr.startswith("unix:///")
    p, seen = poller(addr, token="workload-identity-jwt")
    heartbeat = p.poll_once()
    assert heartbeat is not None and seen == [heartbeat]
    assert [s.rpc_advertise_addr for s in heartbeat.servers] == ["10.0.0.1:4647", "10.0.0.2:4647"]
    assert set(state.tokens) == {"workload-identity-jwt"}
    # The Host header Nomad's own client sends over the socket.
    assert set(state.hosts) == {"127.0.0.1"}


def test_tls_settings_are_ignored_on_a_socket_with_one_warning(
    task_api: tuple[NomadFixture, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, addr = task_api
    env = {"NOMAD_CACERT": "/no/such/ca.pem", "NOMAD_SKIP_VERIFY": "true"}
    settings = NomadApiSettings.from_env(env, addr=addr, token="workload-identity-jwt")
    with caplog.at_level(logging.WARNING, logger="rpcproxy.bus.service.nomad_http"):
        client = make_client(settings)  # the missing CA file is never read
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "NOMAD_CACERT, NOMAD_SKIP_VERIFY ignored" in warning and "Unix socket" in warning
    assert NomadPoller(NomadFetcher(client, settings), lambda _: None).poll_once() is not None


@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("", "none is set (NOMAD_TOKEN / --token); a unix:// agent (Nomad's Task API)"),
        ("wrong", "refused the ACL token (NOMAD_TOKEN / --token)"),
    ],
)
def test_a_missing_or_wrong_token_is_one_error_line(
    task_api: tuple[NomadFixture, str], token: str, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    state, addr = task_api
    p, seen = poller(addr, token=token)
    with caplog.at_level(logging.WARNING, logger="rpcproxy.bus.service.nomad_http"):
        for _ in range(3):
            assert p.poll_once() is None
    assert len(state.paths) == 3 and seen == []
    (error,) = [r.getMessage() for r in caplog.records]  # no warning besides it
    assert says in error and "status 403" in error, error
    assert ("identity { env = true }" in error) == (token == "")


def test_without_a_token_a_tcp_agents_refusal_says_none_is_set(
    nomad: tuple[NomadFixture, str], caplog: pytest.LogCaptureFixture
) -> None:
    state, addr = nomad
    state.status = 401
    p, _ = poller(addr)
    with caplog.at_level(logging.WARNING, logger="rpcproxy.bus.service.nomad_http"):
        for _ in range(2):
            assert p.poll_once() is None
    (error,) = [r.getMessage() for r in caplog.records]
    assert "none is set (NOMAD_TOKEN / --token): GET /v1/agent/members: status 401" in error


def test_stop_ends_a_fetch_hanging_on_the_socket(
    task_api: tuple[NomadFixture, str], caplog: pytest.LogCaptureFixture
) -> None:
    state, addr = task_api
    state.silent = True  # the request is read, never answered
    settings = NomadApiSettings.from_env({}, addr=addr, token="workload-identity-jwt")
    fetcher = NomadFetcher(make_client(settings, timeout_s=30.0), settings)
    p = NomadPoller(fetcher, lambda _: None, interval_s=10.0, fetch_deadline_s=60.0)
    with caplog.at_level(logging.WARNING, logger="rpcproxy.bus.service.nomad_http"):
        p.start()
        poll_until(lambda: state.arrivals, 10, 0.01, what="the fetch on the socket")
        begin = time.monotonic()
        p.stop(timeout_s=10.0)
        elapsed = time.monotonic() - begin
    assert elapsed < 2.0, elapsed  # the deadline was 60 s
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_hanging_socket_fails_at_the_fetch_deadline(task_api: tuple[NomadFixture, str]) -> None:
    state, addr = task_api
    state.silent = True
    settings = NomadApiSettings.from_env({}, addr=addr, token="workload-identity-jwt")
    fetcher = NomadFetcher(make_client(settings, timeout_s=30.0), settings)
    begin = time.monotonic()
    with pytest.raises(NomadApiError) as caught:
        fetcher.get("/v1/status/leader", deadline_s=0.5)
    assert caught.value.kind == "timeout"
    assert time.monotonic() - begin < 5.0


@pytest.mark.parametrize("addr", ["unix://secrets/api.sock", "unix://", "127.0.0.1:4646"])
def test_an_address_of_no_form_is_refused_naming_nomad_addr(addr: str) -> None:
    with pytest.raises(ValueError, match="NOMAD_ADDR"):
        make_client(NomadApiSettings.from_env({}, addr=addr))
