"""The reference Nomad peer (tests/nomad_peer/), spoken to with raw sockets.

These pin what the Go peer, built on Nomad's own libraries, does on the wire,
so that the Python framing written against the same bytes is checked against
Nomad's codec and not against itself: the exact bytes of a ``Status.Ping``
reply, the ``Seq`` echo, an ``Error`` for an unknown method, a closed
connection on an undecodable request, the hang mode, mTLS and yamux.

The first test in a fresh machine's run builds the peer (build.sh installs Go
and the libraries with apt-get); every later one reuses the binary.
"""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

from tests.nomadpeer import BUILD_SCRIPT, NomadPeer, TLSFiles, build_peer, go_ping, make_tls_files

# The bytes issue 11 quotes, from Nomad's helper/pool and net-rpc-msgpackrpc.
PING_SEQ_1 = b"\x01\x82\xa3Seq\x01\xadServiceMethod\xabStatus.Ping\x80"
PING_REPLY_SEQ_1 = b"\x83\xa5Error\xa0\xa3Seq\x01\xadServiceMethod\xabStatus.Ping\x80"

READ_DEADLINE_S = 10.0
"""How long a read that must get an answer may wait: a deadline, never a pause."""
SILENCE_S = 0.5
"""How long a read that must get nothing waits before it calls it silence."""


@pytest.fixture(scope="module", autouse=True)
def _built() -> Path:
    return build_peer()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("nomad-tls"))


@pytest.fixture(scope="module")
def tls_peer(tls_files: TLSFiles) -> Iterator[NomadPeer]:
    with NomadPeer("tls", tls_files) as p:
        yield p


@pytest.fixture(scope="module")
def peer() -> Iterator[NomadPeer]:
    with NomadPeer(leader="10.0.0.1:4647", peers=["10.0.0.1:4647", "10.0.0.2:4647"]) as p:
        yield p


def request(method: str, seq: int, body: Any = None) -> bytes:
    """A msgpack-rpc request: header then body, back to back, strings as str."""
    header = msgpack.packb({"Seq": seq, "ServiceMethod": method}, use_bin_type=True)
    payload: bytes = header + msgpack.packb({} if body is None else body, use_bin_type=True)
    return payload


def connect(peer: NomadPeer) -> socket.socket:
    sock = socket.create_connection(peer.host_port, timeout=READ_DEADLINE_S)
    sock.settimeout(READ_DEADLINE_S)
    return sock


def read_values(sock: socket.socket, count: int, raw: bytearray | None = None) -> list[Any]:
    """Read until ``count`` MessagePack values arrived (no length prefix on this wire).

    Raises:
        ConnectionError: the peer closed the connection first.
    """
    unpacker = msgpack.Unpacker(raw=False)
    values: list[Any] = []
    while len(values) < count:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {len(values)} of {count} values")
        if raw is not None:
            raw += chunk
        unpacker.feed(chunk)
        values.extend(unpacker)
    return values


def closed_without_reply(sock: socket.socket) -> bool:
    """Whether the peer closes ``sock`` without sending a byte."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


# --------------------------------------------------------------------------
# Plain RPC (0x01).


def test_ping_reply_is_the_bytes_nomad_sends(peer: NomadPeer) -> None:
    with connect(peer) as sock:
        sock.sendall(PING_SEQ_1)
        raw = bytearray()
        header, body = read_values(sock, 2, raw)
    assert bytes(raw) == PING_REPLY_SEQ_1
    assert header == {"ServiceMethod": "Status.Ping", "Seq": 1, "Error": ""}
    assert body == {}


def test_seq_is_echoed_on_one_connection(peer: NomadPeer) -> None:
    with connect(peer) as sock:
        sock.sendall(b"\x01" + request("Status.Ping", 7))
        first = read_values(sock, 2)
        sock.sendall(request("Status.Ping", 2**40))
        second = read_values(sock, 2)
    assert first[0]["Seq"] == 7
    assert second[0]["Seq"] == 2**40
    assert first[0]["Error"] == second[0]["Error"] == ""


def test_leader_and_peers_return_the_configured_values(peer: NomadPeer) -> None:
    with connect(peer) as sock:
        sock.sendall(b"\x01" + request("Status.Leader", 1, {"Region": "global"}))
        leader = read_values(sock, 2)
        sock.sendall(request("Status.Peers", 2, {"Region": "global", "AllowStale": True}))
        peers = read_values(sock, 2)
    assert leader == [{"ServiceMethod": "Status.Leader", "Seq": 1, "Error": ""}, "10.0.0.1:4647"]
    assert peers[1] == ["10.0.0.1:4647", "10.0.0.2:4647"]


def test_leader_defaults_to_the_peers_own_address() -> None:
    with NomadPeer() as peer, connect(peer) as sock:
        sock.sendall(b"\x01" + request("Status.Leader", 1))
        assert read_values(sock, 2)[1] == peer.address


@pytest.mark.parametrize("method", ["Status.Nope", "Nope.Ping", ""])
def test_an_unknown_method_gets_an_error_then_the_connection_closes(
    peer: NomadPeer, method: str
) -> None:
    # net/rpc's ServeRequest answers, then reports the error, and Nomad's
    # serving loop (and the peer's) ends the connection on it.
    with connect(peer) as sock:
        sock.sendall(b"\x01" + request(method, 3))
        header, _ = read_values(sock, 2)
        assert closed_without_reply(sock)
    assert header["Seq"] == 3
    assert isinstance(header["Error"], str)
    assert header["Error"]


@pytest.mark.parametrize(
    "payload",
    [
        # bin (0xc4) where the header's string is: go-msgpack does not take it.
        b"\x82\xa3Seq\x01\xadServiceMethod\xc4\x0bStatus.Ping\x80",
        # 0xc1 is no MessagePack type at all.
        b"\xc1\xc1",
        # A header that is not a map.
        b"\x93\x01\x02\x03\x80",
    ],
    ids=["bin-method", "never-used-byte", "array-header"],
)
def test_an_undecodable_request_closes_the_connection(peer: NomadPeer, payload: bytes) -> None:
    with connect(peer) as sock:
        sock.sendall(b"\x01" + payload)
        assert closed_without_reply(sock)


def test_an_unknown_first_byte_closes_the_connection(peer: NomadPeer) -> None:
    with connect(peer) as sock:
        sock.sendall(b"\x09" + PING_SEQ_1[1:])
        assert closed_without_reply(sock)


def test_no_first_byte_within_the_handshake_timeout_closes_the_connection() -> None:
    with NomadPeer(handshake_timeout_s=0.2) as peer, connect(peer) as sock:
        # The read's own timeout is READ_DEADLINE_S: the peer must close first.
        assert closed_without_reply(sock)


# --------------------------------------------------------------------------
# Hang mode, exit.


def test_hang_mode_accepts_and_never_answers() -> None:
    with NomadPeer("hang") as peer, connect(peer) as sock:
        sock.sendall(PING_SEQ_1)
        sock.settimeout(SILENCE_S)
        with pytest.raises(TimeoutError):
            sock.recv(4096)


def test_sigterm_exits_cleanly_with_connections_open() -> None:
    peer = NomadPeer("hang").start()
    try:
        with connect(peer):
            assert peer.stop() == 0
    finally:
        peer.close()


def test_the_binary_is_static(_built: Path) -> None:
    # A static binary has no PT_INTERP program header: it runs in any image.
    data = _built.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2  # 64-bit
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    pt_interp = 3
    assert pt_interp not in types


def test_a_second_build_leaves_the_binary_alone(_built: Path) -> None:
    before = _built.stat().st_mtime_ns
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT), str(_built)], capture_output=True, text=True, check=True
    )
    assert "up to date" in done.stdout
    assert _built.stat().st_mtime_ns == before


# --------------------------------------------------------------------------
# mTLS (0x04).


def client_context(
    tls: TLSFiles, *, ca: Path | None = None, cert: bool = True, foreign_cert: bool = False
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(ca or tls.ca))
    if foreign_cert:
        context.load_cert_chain(str(tls.other.cert), str(tls.other.key))
    elif cert:
        context.load_cert_chain(str(tls.client.cert), str(tls.client.key))
    return context


def tls_ping(peer: NomadPeer, context: ssl.SSLContext, server_name: str) -> list[Any]:
    """0x04, the handshake, then 0x01 and a ping inside TLS."""
    with connect(peer) as raw:
        raw.sendall(b"\x04")
        with context.wrap_socket(raw, server_hostname=server_name) as sock:
            sock.sendall(PING_SEQ_1)
            return read_values(sock, 2)


def test_tls_with_a_client_certificate_answers(tls_peer: NomadPeer, tls_files: TLSFiles) -> None:
    header, body = tls_ping(tls_peer, client_context(tls_files), tls_files.server_name)
    assert header == {"ServiceMethod": "Status.Ping", "Seq": 1, "Error": ""}
    assert body == {}


@pytest.mark.parametrize("which", ["no-certificate", "certificate-from-another-ca"])
def test_tls_refuses_a_client_without_a_good_certificate(
    tls_peer: NomadPeer, tls_files: TLSFiles, which: str
) -> None:
    context = client_context(
        tls_files, cert=False, foreign_cert=which == "certificate-from-another-ca"
    )
    # In TLS 1.3 the client's side of the handshake may finish before the
    # server has judged its certificate; the refusal then arrives as an alert
    # on the first read. Either way no reply comes.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_ping(tls_peer, context, tls_files.server_name)


def test_a_peer_with_a_certificate_from_another_ca_is_refused_by_the_client(
    tls_files: TLSFiles,
) -> None:
    with NomadPeer("tls", tls_files, identity=tls_files.other) as peer:
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_ping(peer, client_context(tls_files), tls_files.server_name)
        # Trusting the other CA, the same peer answers: its certificate is sound.
        header, _ = tls_ping(
            peer, client_context(tls_files, ca=tls_files.other_ca), tls_files.server_name
        )
    assert header["Error"] == ""


def test_tls_peer_refuses_plain_rpc(tls_peer: NomadPeer) -> None:
    with connect(tls_peer) as sock:
        sock.sendall(PING_SEQ_1)
        assert closed_without_reply(sock)


def test_a_plain_peer_refuses_tls(peer: NomadPeer) -> None:
    with connect(peer) as sock:
        sock.sendall(b"\x04")
        assert closed_without_reply(sock)


def test_the_server_certificate_carries_nomads_server_name(
    tls_peer: NomadPeer, tls_files: TLSFiles
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_ping(tls_peer, client_context(tls_files), "server.other-region.nomad")


# --------------------------------------------------------------------------
# yamux (0x03, 0x06): a minimal client, enough for one stream.

_YAMUX_HEADER = struct.Struct(">BBHII")  # version, type, flags, stream id, length
_DATA, _WINDOW_UPDATE, _PING, _GO_AWAY = 0, 1, 2, 3
_SYN = 1


def yamux_stream_call(sock: socket.socket, stream_id: int, payload: bytes) -> list[Any]:
    """Open ``stream_id`` with ``payload`` as its first data; read 2 values back."""
    sock.sendall(_YAMUX_HEADER.pack(0, _DATA, _SYN, stream_id, len(payload)) + payload)
    unpacker = msgpack.Unpacker(raw=False)
    values: list[Any] = []
    buffer = b""
    while len(values) < 2:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("yamux session closed")
        buffer += chunk
        while len(buffer) >= _YAMUX_HEADER.size:
            _, kind, _, sid, length = _YAMUX_HEADER.unpack_from(buffer)
            body_len = length if kind == _DATA else 0
            if len(buffer) < _YAMUX_HEADER.size + body_len:
                break
            body = buffer[_YAMUX_HEADER.size : _YAMUX_HEADER.size + body_len]
            buffer = buffer[_YAMUX_HEADER.size + body_len :]
            if kind == _DATA and sid == stream_id:
                unpacker.feed(body)
                values.extend(unpacker)
    return values


@pytest.mark.parametrize(
    ("first_byte", "stream_prefix"), [(b"\x03", b""), (b"\x06", b"\x01")], ids=["v1", "v2"]
)
def test_yamux_streams_speak_rpc(peer: NomadPeer, first_byte: bytes, stream_prefix: bytes) -> None:
    # 0x03: every stream is plain RPC; 0x06 (what Nomad's pool dials): every
    # stream opens with its own type byte, 0x01 for RPC.
    with connect(peer) as sock:
        sock.sendall(first_byte)
        one = yamux_stream_call(sock, 1, stream_prefix + request("Status.Ping", 11))
        three = yamux_stream_call(sock, 3, stream_prefix + request("Status.Leader", 12))
    assert one == [{"ServiceMethod": "Status.Ping", "Seq": 11, "Error": ""}, {}]
    assert three[0]["Seq"] == 12 and three[1] == "10.0.0.1:4647"


# --------------------------------------------------------------------------
# The Go client (the benchmark's baseline).


def test_go_client_pings_plain_and_tls(
    peer: NomadPeer, tls_peer: NomadPeer, tls_files: TLSFiles
) -> None:
    result = go_ping(peer.address, 3)
    assert result["calls"] == 3 and result["elapsed_s"] > 0
    fresh = go_ping(tls_peer.address, 2, conn_per_call=True, tls=tls_files)
    assert fresh["calls"] == 2 and fresh["conn_per_call"] is True
