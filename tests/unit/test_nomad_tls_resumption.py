"""TLS session resumption of Nomad pings, against the Go reference peer.

Every ping is a new connection, so :class:`NomadProber` keeps each server's
last TLS session and offers it on the next handshake (docs/protocol.md 4.1).
The peer (tests/nomad_peer/, Go's ``crypto/tls``, which issues TLS 1.3
tickets by default) logs ``ConnectionState().DidResume`` for every handshake
with ``-report-resumption``, so these check on the server's side that the
second and later pings of one peer really resume, and that a kept session
never lets a changed CA, server certificate or client certificate through.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rpcproxy.bus.probes import NomadProber, NomadTls, load_tls, nomad
from rpcproxy.bus.probes.nomad import TlsSessions
from rpcproxy.proxy import Address
from tests.nomadpeer import CertPair, NomadPeer, TLSFiles, build_peer, make_tls_files

TIMEOUT_S = 5.0
"""Far above a ping to a local peer: a timeout here is a failure, not a figure."""


@pytest.fixture(scope="module", autouse=True)
def _built() -> Path:
    return build_peer()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("nomad-tls-resume"))


@pytest.fixture
def peer(tls_files: TLSFiles) -> Iterator[NomadPeer]:
    with NomadPeer("tls", tls_files, report_resumption=True) as p:
        yield p


def client_tls(
    files: TLSFiles, *, ca: Path | None = None, identity: CertPair | None = None
) -> NomadTls:
    pair = identity or files.client
    return load_tls(
        ca_file=str(ca or files.ca),
        cert_file=str(pair.cert),
        key_file=str(pair.key),
        region=files.region,
    )


def address(peer: NomadPeer) -> Address:
    host, port = peer.host_port
    return Address(host, port)


def ping(prober: NomadProber, addr: Address) -> bool:
    return prober([addr]).get(addr, False)


def test_the_second_and_later_pings_of_a_peer_resume(peer: NomadPeer, tls_files: TLSFiles) -> None:
    addr = address(peer)
    with NomadProber(timeout_s=TIMEOUT_S, tls=client_tls(tls_files)) as prober:
        assert [ping(prober, addr) for _ in range(5)] == [True] * 5
        assert len(prober.tls_sessions) == 1
    assert peer.tls_handshakes() == [False, True, True, True, True], peer.stderr()


def test_no_session_is_kept_when_resumption_is_off(peer: NomadPeer, tls_files: TLSFiles) -> None:
    addr = address(peer)
    with NomadProber(timeout_s=TIMEOUT_S, tls=client_tls(tls_files), max_tls_sessions=0) as prober:
        assert [ping(prober, addr) for _ in range(3)] == [True] * 3
        assert len(prober.tls_sessions) == 0
    assert peer.tls_handshakes() == [False, False, False], peer.stderr()


def test_a_different_ca_fails_even_after_a_resumed_ping(
    peer: NomadPeer, tls_files: TLSFiles
) -> None:
    """New TLS files drop every session: the peer's certificate is checked
    against the new CA in a full handshake, and fails."""
    addr = address(peer)
    with NomadProber(timeout_s=TIMEOUT_S, tls=client_tls(tls_files)) as prober:
        assert ping(prober, addr) and ping(prober, addr)
        prober.tls = client_tls(tls_files, ca=tls_files.other_ca)
        assert len(prober.tls_sessions) == 0
        assert ping(prober, addr) is False
        # The same files loaded again are a new configuration too: a full
        # handshake, then resumption again.
        prober.tls = client_tls(tls_files)
        assert ping(prober, addr) and ping(prober, addr)
    assert peer.tls_handshakes() == [False, True, False, True], peer.stderr()


def test_a_client_certificate_from_another_ca_fails_after_a_resumed_ping(
    peer: NomadPeer, tls_files: TLSFiles
) -> None:
    addr = address(peer)
    with NomadProber(timeout_s=TIMEOUT_S, tls=client_tls(tls_files)) as prober:
        assert ping(prober, addr) and ping(prober, addr)
        # The peer requires a client certificate from its CA; the session
        # made with the good one must not stand in for the foreign one.
        prober.tls = client_tls(tls_files, identity=tls_files.other)
        assert ping(prober, addr) is False
    assert peer.tls_handshakes() == [False, True], peer.stderr()


def test_a_server_with_a_changed_certificate_fails_and_its_session_is_dropped(
    tls_files: TLSFiles,
) -> None:
    """The same address, restarted with a certificate from another CA: the
    kept session is offered, not resumed (new ticket keys), and the full
    handshake's verification fails; the session is gone, and the server
    restarted with its right certificate is pinged with a full handshake."""
    with NomadProber(timeout_s=TIMEOUT_S, tls=client_tls(tls_files)) as prober:
        with NomadPeer("tls", tls_files, report_resumption=True) as first:
            listen = first.address
            addr = address(first)
            assert ping(prober, addr) and ping(prober, addr)
            assert first.tls_handshakes() == [False, True]
        assert len(prober.tls_sessions) == 1
        with NomadPeer("tls", tls_files, identity=tls_files.other, listen=listen):
            assert ping(prober, addr) is False
        assert len(prober.tls_sessions) == 0
        with NomadPeer("tls", tls_files, report_resumption=True, listen=listen) as again:
            assert ping(prober, addr) and ping(prober, addr)
            assert again.tls_handshakes() == [False, True], again.stderr()


def test_the_cache_is_bounded_and_evicts_the_oldest(peer: NomadPeer, tls_files: TLSFiles) -> None:
    tls = client_tls(tls_files)
    addr = address(peer)
    with NomadProber(timeout_s=TIMEOUT_S, tls=tls) as prober:
        assert ping(prober, addr)
        [(endpoint, session)] = list(prober.tls_sessions._sessions.items())
    sessions = TlsSessions(max_entries=2)
    sessions.bind(tls)
    family, (host, port, *_) = endpoint
    endpoints = [(family, (host, port + n)) for n in range(3)]
    for each in endpoints:
        sessions.keep(tls, each, session)
    assert len(sessions) == 2
    assert sessions.take(tls, endpoints[0]) is None
    assert sessions.take(tls, endpoints[2]) is session
    # Taken out: a handshake that fails leaves nothing behind.
    assert sessions.take(tls, endpoints[2]) is None
    # Another configuration sees nothing, and binding it drops the rest.
    other = client_tls(tls_files)
    assert sessions.take(other, endpoints[1]) is None
    sessions.bind(other)
    assert len(sessions) == 0
    sessions.keep(tls, endpoints[1], session)
    assert len(sessions) == 0


def test_a_resumed_session_is_offered_again_until_it_is_old(
    peer: NomadPeer, tls_files: TLSFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session that resumed is kept as it is (reading the new one costs);
    past TLS_SESSION_REFRESH_S the newest one the server sent replaces it."""
    addr = address(peer)
    with NomadProber(timeout_s=TIMEOUT_S, tls=client_tls(tls_files)) as prober:
        assert ping(prober, addr)
        [first] = prober.tls_sessions._sessions.values()
        assert ping(prober, addr) and ping(prober, addr)
        assert list(prober.tls_sessions._sessions.values()) == [first]
        monkeypatch.setattr(nomad, "TLS_SESSION_REFRESH_S", 0.0)
        assert ping(prober, addr)
        [newer] = prober.tls_sessions._sessions.values()
        assert newer is not first
        assert ping(prober, addr)
    assert peer.tls_handshakes() == [False, True, True, True, True], peer.stderr()
