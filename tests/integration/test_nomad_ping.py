"""``rpcproxy serve`` with its default ping rebalances over Go Nomad peers (sections 3, 4, 4.1).

The peers (tests/nomad_peer/, :mod:`tests.nomadpeer`) are built on the
libraries a Nomad server is built on: Go's ``net/rpc`` with the msgpackrpc
codec, and Go's ``crypto/tls`` requiring client certificates. So every
rebalance here is our ping against Nomad's real codec and TLS stack: plain;
TLS with a client certificate; TLS without one (refused); a peer whose
certificate comes from another CA (refused); hung peers (accept, never
read); dead ones (nobody listening). The head is always a live peer, and
k dead or hung peers ahead of it cost about one ping timeout, not k.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, tcp
from tests.integration.serving import Serve, addrs, run_rpcproxy
from tests.nomadpeer import CertPair, Mode, NomadPeer, TLSFiles, make_tls_files

pytestmark = pytest.mark.integration

PING_TIMEOUT_S = 1.0
K = 10
"""Dead and hung peers of each kind ahead of the live one."""
PARALLEL_BOUND = 5
"""Ping timeouts a rebalance past K hung peers stays under on the slowest
machine (section 3: about one, not K; one after another they would take K).
The tight figure is bench/'s."""
NEVER_S = 30.0
"""A ping timeout no test waits out: a rebalance that ends in under half of it
did not wait for it."""


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("nomad-tls"))


@pytest.fixture(scope="module")
def peers(tls_files: TLSFiles) -> Iterator[Callable[..., str]]:
    """Start Go peers for the module; each call returns a new peer's address."""
    running: list[NomadPeer] = []

    def start(mode: Mode = "plain", identity: CertPair | None = None) -> str:
        peer = NomadPeer(mode, tls_files if mode == "tls" else None, identity=identity)
        peer.start()
        running.append(peer)
        return peer.address

    yield start
    for peer in running:
        peer.close()


@pytest.fixture(scope="module")
def hung(peers: Callable[..., str]) -> list[str]:
    """K hung peers (accept, never read), shared by the module's tests: they keep no state."""
    return [peers("hang") for _ in range(K)]


def dead(count: int) -> list[str]:
    return [f"127.0.0.1:{free_port()}" for _ in range(count)]


def tls_flags(files: TLSFiles, *, client_cert: bool = True) -> list[str]:
    flags = ["--nomad-tls-ca-file", str(files.ca)]
    if client_cert:
        flags += ["--nomad-tls-cert-file", str(files.client.cert)]
        flags += ["--nomad-tls-key-file", str(files.client.key)]
    return flags


def rebalance(
    proxy: Serve, timeout: float = 2 * K * PING_TIMEOUT_S + 10
) -> tuple[dict[str, object], float]:
    started = time.monotonic()
    reply = proxy.call("rebalance", timeout=timeout)
    return reply, time.monotonic() - started


def assert_live_head_every_time(proxy: Serve, live: list[str], rounds: int = 3) -> None:
    """Each round: a rebalance picks a live peer in about one timeout; then that
    peer is reported failed, so the next round starts with the dead and hung first."""
    for attempt in range(rounds):
        reply, elapsed = rebalance(proxy)
        assert reply["healthy"] is True, (attempt, reply)
        head = addrs(proxy.call("servers")["servers"])[0]
        assert head in live, (attempt, head)
        assert reply["server"] == {"addr": head}
        assert elapsed < PARALLEL_BOUND * PING_TIMEOUT_S, f"round {attempt}: {elapsed:.2f} s"
        for addr in live:
            proxy.call("notify_failed_server", addr=addr)


def test_plain_peers_with_the_default_config(
    serve_factory: Callable[..., Serve], peers: Callable[..., str], hung: list[str]
) -> None:
    """No --ping-method: the default is nomad. Dead and hung peers first."""
    live = peers()
    servers = [*dead(K), *hung, live]
    proxy = serve_factory(
        "--ping-timeout-s", str(PING_TIMEOUT_S), "--primary-servers", ",".join(servers)
    )
    assert sorted(addrs(proxy.call("servers")["servers"])) == sorted(servers)
    assert_live_head_every_time(proxy, [live])


def test_the_first_live_peer_in_candidate_order_wins(
    serve_factory: Callable[..., Serve], peers: Callable[..., str]
) -> None:
    """Two live peers behind hung ones: whichever the shuffle puts first is the head."""
    live = [peers(), peers()]
    proxy = serve_factory(
        "--ping-timeout-s",
        str(PING_TIMEOUT_S),
        "--primary-servers",
        ",".join([peers("hang"), *live, *dead(2)]),
    )
    assert_live_head_every_time(proxy, live)


def test_tls_with_a_client_certificate(
    serve_factory: Callable[..., Serve],
    peers: Callable[..., str],
    tls_files: TLSFiles,
    hung: list[str],
) -> None:
    """Only the TLS peer that trusts our client certificate and is named
    server.global.nomad by our CA answers: the plain peer hangs up on 0x04,
    the foreign-CA peer fails verification, hung and dead ones time out."""
    live = peers("tls")
    foreign = peers("tls", identity=tls_files.other)
    plain = peers()
    servers = [foreign, plain, *hung, *dead(K), live]
    proxy = serve_factory(
        "--ping-timeout-s",
        str(PING_TIMEOUT_S),
        *tls_flags(tls_files),
        "--primary-servers",
        ",".join(servers),
    )
    assert_live_head_every_time(proxy, [live])


def test_tls_without_a_client_certificate_is_refused(
    serve_factory: Callable[..., Serve], peers: Callable[..., str], tls_files: TLSFiles
) -> None:
    """The peers require a client certificate, as Nomad with tls { rpc = true }:
    none answers, the rebalance is unhealthy and keeps the list."""
    servers = [peers("tls"), peers("tls")]
    proxy = serve_factory(
        "--ping-timeout-s",
        str(PING_TIMEOUT_S),
        *tls_flags(tls_files, client_cert=False),
        "--primary-servers",
        ",".join(servers),
    )
    before = addrs(proxy.call("servers")["servers"])
    reply, _ = rebalance(proxy)
    assert reply["healthy"] is False
    assert addrs(proxy.call("servers")["servers"]) == before
    # A peer that asks for no client certificate is not what Nomad runs; the
    # refusal above is the client certificate's, not the chain's: with the
    # certificate, the same peers answer.
    again = serve_factory(
        "--ping-timeout-s",
        str(PING_TIMEOUT_S),
        *tls_flags(tls_files),
        "--primary-servers",
        ",".join(servers),
    )
    assert rebalance(again)[0]["healthy"] is True


def test_a_peer_certificate_from_another_ca_is_refused(
    serve_factory: Callable[..., Serve], peers: Callable[..., str], tls_files: TLSFiles
) -> None:
    servers = [peers("tls", identity=tls_files.other), peers("tls", identity=tls_files.other)]
    proxy = serve_factory(
        "--ping-timeout-s",
        str(NEVER_S),
        *tls_flags(tls_files),
        "--primary-servers",
        ",".join(servers),
    )
    reply, elapsed = rebalance(proxy, timeout=2 * NEVER_S)
    assert reply["healthy"] is False
    # Refused during the handshake, not left to time out.
    assert elapsed < NEVER_S / 2


def test_plain_pings_to_tls_peers_fail(
    serve_factory: Callable[..., Serve], peers: Callable[..., str]
) -> None:
    """Without nomad_tls_ca_file the ping is plain 0x01, which a TLS peer refuses."""
    proxy = serve_factory(
        "--ping-timeout-s",
        str(PING_TIMEOUT_S),
        "--primary-servers",
        ",".join([peers("tls"), peers("tls")]),
    )
    assert rebalance(proxy)[0]["healthy"] is False


def test_a_hung_tls_peer_costs_one_timeout(
    serve_factory: Callable[..., Serve],
    peers: Callable[..., str],
    tls_files: TLSFiles,
    hung: list[str],
) -> None:
    """Hung peers never answer the TLS handshake; the live one still wins in time."""
    live = peers("tls")
    servers = [*hung, live]
    proxy = serve_factory(
        "--ping-timeout-s",
        str(PING_TIMEOUT_S),
        *tls_flags(tls_files),
        "--primary-servers",
        ",".join(servers),
    )
    assert_live_head_every_time(proxy, [live])


# -- start-up checks ------------------------------------------------------------------


def _serve_args() -> list[str]:
    return [
        "serve",
        "--query",
        tcp(free_port()),
        "--heartbeat-bind",
        tcp(free_port()),
        "--events",
        "",
    ]


@pytest.mark.parametrize("which", ["ca", "cert", "key"])
def test_a_missing_tls_file_exits_2_naming_the_key(
    tls_files: TLSFiles, tmp_path: Path, which: str
) -> None:
    files = {
        "ca": str(tls_files.ca),
        "cert": str(tls_files.client.cert),
        "key": str(tls_files.client.key),
    }
    files[which] = str(tmp_path / "missing.pem")
    result = run_rpcproxy(
        *_serve_args(),
        "--nomad-tls-ca-file",
        files["ca"],
        "--nomad-tls-cert-file",
        files["cert"],
        "--nomad-tls-key-file",
        files["key"],
    )
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"nomad_tls_{which}_file" in lines[0] and "missing.pem" in lines[0]


def test_an_unreadable_ca_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    result = run_rpcproxy(*_serve_args(), env={"RPCPROXY_NOMAD_TLS_CA_FILE": str(bad)})
    assert result.returncode == 2, result
    assert "nomad_tls_ca_file" in result.stderr


def test_a_client_certificate_without_its_key_exits_2(tls_files: TLSFiles) -> None:
    result = run_rpcproxy(
        *_serve_args(),
        "--nomad-tls-ca-file",
        str(tls_files.ca),
        "--nomad-tls-cert-file",
        str(tls_files.client.cert),
    )
    assert result.returncode == 2, result
    assert "nomad_tls_key_file" in result.stderr
