"""Nomad's Status.Ping over loopback sockets (bus/probes/nomad.py).

Servers here are small Python socket servers that read the request with the
independent ``msgpack`` package and then do what the test says: answer,
answer wrongly, trickle, flood, hang up. TLS servers are Python's ``ssl`` over
throwaway certificates from :func:`tests.nomadpeer.make_tls_files`; the Go
peer (Nomad's own codec and TLS stack) is met in
tests/integration/test_nomad_ping.py.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

from rpcproxy.bus.probes import NomadProber, TlsSetupError, load_tls
from rpcproxy.bus.probes.nomad import server_name
from rpcproxy.bus.standins.standin import ServerStandIn
from rpcproxy.proxy import Address, parse_address
from tests.helpers import free_port
from tests.nomadpeer import TLSFiles, make_tls_files
from tests.waiting import poll_until

PARALLEL_BOUND = 5
"""Ping timeouts that many hung servers probed in parallel stay under on the
slowest machine (docs/protocol.md section 3: about one, not k); every test that
uses it has at least twice as many, so serial pings would exceed it. The tight
figure is bench/'s."""

PING_REQUEST_SEQ_1 = b"\x01\x82\xa3Seq\x01\xadServiceMethod\xabStatus.Ping\x80"

Script = Callable[[socket.socket, int, threading.Event], None]
"""What a scripted server does once it has read a request: (connection, Seq,
the test's stop event)."""


def reply(seq: int, error: str = "") -> bytes:
    header: bytes = msgpack.packb({"ServiceMethod": "Status.Ping", "Seq": seq, "Error": error})
    body: bytes = msgpack.packb({})
    return header + body


class ScriptedServer:
    """A TCP listener whose connections read one request and run ``script``.

    Attributes:
        received: the raw bytes of each request read (first byte included).
    """

    def __init__(self, script: Script, *, read_request: bool = True) -> None:
        self._script = script
        self._read_request = read_request
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = Address("127.0.0.1", self._listener.getsockname()[1])
        self.stopping = threading.Event()
        self.received: list[bytes] = []
        self.ended: list[str] = []
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # Closed by stop().
            self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            seq = self._request(conn) if self._read_request else 0
            if seq is not None:
                self._script(conn, seq, self.stopping)
            self.ended.append("done")
        except OSError as exc:
            self.ended.append(type(exc).__name__)
        finally:
            conn.close()

    def _request(self, conn: socket.socket) -> int | None:
        raw = conn.recv(1)
        if raw != b"\x01":
            return None  # Not plain Nomad RPC (0x04 starts TLS): hang up, as Nomad does.
        unpacker = msgpack.Unpacker(raw=False)
        values: list[Any] = []
        while len(values) < 2:
            data = conn.recv(4096)
            if not data:
                return None
            raw += data
            unpacker.feed(data)
            values += list(unpacker)
        self.received.append(raw)
        seq: int = values[0]["Seq"]
        return seq

    def stop(self) -> None:
        self.stopping.set()
        # close() alone does not wake a thread blocked in accept(); shutdown does.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in [self._acceptor, *self._threads]:
            thread.join(5)


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    made: list[ScriptedServer] = []

    def make(script: Script, **kwargs: Any) -> ScriptedServer:
        server = ScriptedServer(script, **kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def probers() -> Iterator[Callable[..., NomadProber]]:
    made: list[NomadProber] = []

    def make(timeout_s: float, **kwargs: Any) -> NomadProber:
        prober = NomadProber(timeout_s=timeout_s, **kwargs)
        made.append(prober)
        return prober

    yield make
    for prober in made:
        prober.close()


def probe_one(prober: NomadProber, addr: Address) -> tuple[bool, float]:
    started = time.monotonic()
    result = prober([addr])
    return result.get(addr, False), time.monotonic() - started


# -- scripts -------------------------------------------------------------------------


def answer(conn: socket.socket, seq: int, _stop: threading.Event) -> None:
    conn.sendall(reply(seq))


def answer_in_pieces(conn: socket.socket, seq: int, stop: threading.Event) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for byte in reply(seq):
        conn.sendall(bytes([byte]))
        stop.wait(0.005)  # Spaced out, so the reply arrives in many reads.


def wrong_seq(conn: socket.socket, seq: int, _stop: threading.Event) -> None:
    conn.sendall(reply(seq + 1))


def an_error(conn: socket.socket, seq: int, _stop: threading.Event) -> None:
    conn.sendall(reply(seq, "rpc: can't find service Status.Ping"))


def hang_up(conn: socket.socket, seq: int, _stop: threading.Event) -> None:
    pass  # The connection is closed on return.


def hang_up_mid_reply(conn: socket.socket, seq: int, _stop: threading.Event) -> None:
    conn.sendall(reply(seq)[:10])


def say_nothing(conn: socket.socket, seq: int, stop: threading.Event) -> None:
    stop.wait(30)


def byte_a_second(conn: socket.socket, seq: int, stop: threading.Event) -> None:
    for byte in reply(seq):
        conn.sendall(bytes([byte]))
        if stop.wait(1.0):
            return


def flood(first: bytes) -> Script:
    """Send ``first``, then zeros (each a valid fixint item) until the peer goes."""

    def script(conn: socket.socket, seq: int, stop: threading.Event) -> None:
        conn.sendall(first)
        chunk = b"\x00" * 65536
        sent = 0
        while not stop.is_set() and sent < 256 << 20:
            conn.sendall(chunk)
            sent += len(chunk)

    return script


# -- one server ------------------------------------------------------------------------


def test_a_live_server_answers(
    probers: Callable[..., NomadProber], scripted: Callable[..., ScriptedServer]
) -> None:
    server = scripted(answer)
    assert probe_one(probers(5.0), server.address)[0] is True
    assert server.received == [PING_REQUEST_SEQ_1], "not the captured request bytes"


def test_each_ping_has_its_own_seq(
    probers: Callable[..., NomadProber], scripted: Callable[..., ScriptedServer]
) -> None:
    server = scripted(answer)
    prober = probers(5.0)
    for _ in range(3):
        assert probe_one(prober, server.address)[0] is True
    seqs = [msgpack.Unpacker(raw=False) for _ in server.received]
    for unpacker, raw in zip(seqs, server.received, strict=True):
        unpacker.feed(raw[1:])
    assert [next(u)["Seq"] for u in seqs] == [1, 2, 3]


def test_a_reply_in_many_pieces_is_read_whole(
    probers: Callable[..., NomadProber], scripted: Callable[..., ScriptedServer]
) -> None:
    assert probe_one(probers(5.0), scripted(answer_in_pieces).address)[0] is True


@pytest.mark.parametrize(
    "script",
    [wrong_seq, an_error, hang_up, hang_up_mid_reply],
    ids=["wrong-seq", "error", "closed", "closed-mid-reply"],
)
def test_a_wrong_or_broken_reply_fails_at_once(
    probers: Callable[..., NomadProber], scripted: Callable[..., ScriptedServer], script: Script
) -> None:
    # A long timeout: failing well inside it shows the reply decided, not the clock.
    ok, elapsed = probe_one(probers(30.0), scripted(script).address)
    assert ok is False
    assert elapsed < 15


@pytest.mark.parametrize(
    "garbage",
    [b"\xc1", b"HTTP/1.1 400 Bad Request\r\n\r\n", b"\x92\x01"],
    ids=["never-used-byte", "http", "array-header"],
)
def test_garbage_fails_at_once(
    probers: Callable[..., NomadProber], scripted: Callable[..., ScriptedServer], garbage: bytes
) -> None:
    def script(conn: socket.socket, seq: int, _stop: threading.Event) -> None:
        conn.sendall(garbage + reply(seq))

    ok, elapsed = probe_one(probers(30.0), scripted(script).address)
    assert ok is False
    assert elapsed < 15


@pytest.mark.parametrize(
    "first",
    [b"\xdb\xff\xff\xff\xff", b"\xdf\x7f\xff\xff\xff", b"\x81\xa1k\xc6\x00\x10\x00\x00"],
    ids=["str32-of-4GiB", "map32-of-2G-pairs", "bin32-of-1MiB-value"],
)
def test_a_huge_or_endless_reply_is_bounded(
    probers: Callable[..., NomadProber], scripted: Callable[..., ScriptedServer], first: bytes
) -> None:
    """Fails on the bound (64 KiB a value), not by reading until the deadline."""
    server = scripted(flood(first))
    ok, elapsed = probe_one(probers(30.0), server.address)
    assert ok is False
    assert elapsed < 15
    # The prober hung up: the flood ends with a reset or a broken pipe.
    poll_until(lambda: server.ended, timeout=10, what="the flooding server to notice")
    assert server.ended != ["done"]


def test_a_server_that_says_nothing_fails_at_the_deadline(
    probers: Callable[..., NomadProber], scripted: Callable[..., ScriptedServer]
) -> None:
    ok, elapsed = probe_one(probers(0.5), scripted(say_nothing).address)
    assert ok is False
    assert elapsed < 10, "the ping outlived its deadline"


def test_a_server_that_reads_nothing_fails_at_the_deadline(
    probers: Callable[..., NomadProber], scripted: Callable[..., ScriptedServer]
) -> None:
    ok, elapsed = probe_one(probers(0.5), scripted(say_nothing, read_request=False).address)
    assert ok is False
    assert elapsed < 10


def test_a_byte_a_second_fails_at_the_deadline_not_at_the_end(
    probers: Callable[..., NomadProber], scripted: Callable[..., ScriptedServer]
) -> None:
    """The whole reply would take 35 s; the ping gives up at its 0.5 s deadline."""
    ok, elapsed = probe_one(probers(0.5), scripted(byte_a_second).address)
    assert ok is False
    assert elapsed < 10


def test_nobody_listening_fails_at_once(probers: Callable[..., NomadProber]) -> None:
    ok, elapsed = probe_one(probers(30.0), Address("127.0.0.1", free_port()))
    assert ok is False
    assert elapsed < 15


# -- many servers ------------------------------------------------------------------------


def test_dead_and_hung_servers_cost_about_one_timeout(
    probers: Callable[..., NomadProber], scripted: Callable[..., ScriptedServer]
) -> None:
    """Pinged in parallel: 5 hung, 5 trickling and 5 dead ahead of a live one."""
    timeout = 1.0
    hung = [scripted(say_nothing).address for _ in range(5)]
    slow = [scripted(byte_a_second).address for _ in range(5)]
    dead = [Address("127.0.0.1", free_port()) for _ in range(5)]
    live = scripted(answer).address
    candidates = [*hung, *slow, *dead, live]
    started = time.monotonic()
    result = probers(timeout)(candidates)
    elapsed = time.monotonic() - started
    assert result == {**dict.fromkeys([*hung, *slow, *dead], False), live: True}
    assert elapsed < PARALLEL_BOUND * timeout, f"{elapsed:.2f} s: not in parallel"


def test_the_first_live_server_in_order_wins(
    probers: Callable[..., NomadProber], scripted: Callable[..., ScriptedServer]
) -> None:
    first, second = scripted(answer).address, scripted(answer).address
    broken = scripted(an_error).address
    assert probers(5.0)([broken, first, second]) == {broken: False, first: True}


def test_close_ends_a_ping_in_flight(
    probers: Callable[..., NomadProber], scripted: Callable[..., ScriptedServer]
) -> None:
    prober = probers(60.0)
    server = scripted(say_nothing)
    results: list[dict[Address, bool]] = []
    thread = threading.Thread(target=lambda: results.append(prober([server.address])))
    thread.start()
    poll_until(lambda: prober.in_flight, what="the ping to start")
    prober.close()
    thread.join(10)
    assert results == [{server.address: False}]


def test_the_stand_in_answers_and_its_pause_is_a_gray_failure(
    probers: Callable[..., NomadProber],
) -> None:
    with ServerStandIn() as standin:
        addr = parse_address(standin.address)
        prober = probers(0.5)
        assert probe_one(prober, addr)[0] is True
        standin.pause()
        assert probe_one(prober, addr)[0] is False
        standin.resume()
        assert probe_one(prober, addr)[0] is True
        assert standin.pings == 2


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def server_context(
    files: TLSFiles, *, identity: tuple[Path, Path] | None = None, require_client: bool = True
) -> ssl.SSLContext:
    """A Nomad server's side: its certificate, and client certificates of the CA required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert, key = identity or (files.server.cert, files.server.key)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(files.ca)
    context.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_NONE
    return context


@pytest.fixture
def tls_standin(tls_files: TLSFiles) -> Iterator[Callable[..., Address]]:
    running: list[ServerStandIn] = []

    def make(**kwargs: Any) -> Address:
        standin = ServerStandIn(tls=server_context(tls_files, **kwargs))
        standin.start()
        running.append(standin)
        return parse_address(standin.address)

    yield make
    for standin in running:
        standin.stop()


def client_tls(files: TLSFiles, *, with_cert: bool = True, **kwargs: Any) -> Any:
    return load_tls(
        ca_file=str(files.ca),
        cert_file=str(files.client.cert) if with_cert else "",
        key_file=str(files.client.key) if with_cert else "",
        **{"region": files.region, **kwargs},
    )


def test_tls_ping_with_a_client_certificate(
    probers: Callable[..., NomadProber],
    tls_standin: Callable[..., Address],
    tls_files: TLSFiles,
) -> None:
    addr = tls_standin()
    assert probe_one(probers(5.0, tls=client_tls(tls_files)), addr)[0] is True


def test_tls_ping_without_a_client_certificate_is_refused(
    probers: Callable[..., NomadProber],
    tls_standin: Callable[..., Address],
    tls_files: TLSFiles,
) -> None:
    addr = tls_standin()
    ok, elapsed = probe_one(probers(30.0, tls=client_tls(tls_files, with_cert=False)), addr)
    assert ok is False
    assert elapsed < 15


def test_tls_ping_without_a_client_certificate_where_none_is_required(
    probers: Callable[..., NomadProber],
    tls_standin: Callable[..., Address],
    tls_files: TLSFiles,
) -> None:
    addr = tls_standin(require_client=False)
    assert probe_one(probers(5.0, tls=client_tls(tls_files, with_cert=False)), addr)[0] is True


def test_a_server_certificate_from_another_ca_is_refused(
    probers: Callable[..., NomadProber],
    tls_standin: Callable[..., Address],
    tls_files: TLSFiles,
) -> None:
    addr = tls_standin(identity=(tls_files.other.cert, tls_files.other.key))
    ok, elapsed = probe_one(probers(30.0, tls=client_tls(tls_files)), addr)
    assert ok is False
    assert elapsed < 15


def test_the_server_name_is_checked_for_the_region(
    probers: Callable[..., NomadProber],
    tls_standin: Callable[..., Address],
    tls_files: TLSFiles,
) -> None:
    """The certificate names server.global.nomad: a proxy of region eu refuses it
    unless verify_server_hostname is off (then the chain alone is checked)."""
    addr = tls_standin()
    eu = client_tls(tls_files, region="eu")
    assert eu.server_hostname == server_name("eu") == "server.eu.nomad"
    assert probe_one(probers(5.0, tls=eu), addr)[0] is False
    lax = client_tls(tls_files, region="eu", verify_server_hostname=False)
    assert probe_one(probers(5.0, tls=lax), addr)[0] is True


def test_a_client_certificate_is_not_a_server_certificate(
    probers: Callable[..., NomadProber],
    tls_standin: Callable[..., Address],
    tls_files: TLSFiles,
) -> None:
    """Same CA, but it names client.global.nomad: verify_server_hostname refuses it."""
    addr = tls_standin(identity=(tls_files.client.cert, tls_files.client.key))
    assert probe_one(probers(5.0, tls=client_tls(tls_files)), addr)[0] is False


def test_a_plain_ping_to_a_tls_only_server_fails(
    probers: Callable[..., NomadProber],
    tls_files: TLSFiles,
    scripted: Callable[..., ScriptedServer],
) -> None:
    """And a TLS ping to a plain server that hangs up on 0x04 fails at once."""
    plain = scripted(answer)
    ok, elapsed = probe_one(probers(30.0, tls=client_tls(tls_files)), plain.address)
    assert ok is False
    assert elapsed < 15


def test_a_tls_server_that_never_handshakes_fails_at_the_deadline(
    probers: Callable[..., NomadProber],
    tls_files: TLSFiles,
    scripted: Callable[..., ScriptedServer],
) -> None:
    silent = scripted(say_nothing, read_request=False)
    ok, elapsed = probe_one(probers(0.5, tls=client_tls(tls_files)), silent.address)
    assert ok is False
    assert elapsed < 10


def test_tls_pings_in_parallel(
    probers: Callable[..., NomadProber],
    tls_standin: Callable[..., Address],
    tls_files: TLSFiles,
    scripted: Callable[..., ScriptedServer],
) -> None:
    timeout = 1.0
    hung = [scripted(say_nothing, read_request=False).address for _ in range(2 * PARALLEL_BOUND)]
    live = tls_standin()
    started = time.monotonic()
    result = probers(timeout, tls=client_tls(tls_files))([*hung, live])
    elapsed = time.monotonic() - started
    assert result == {**dict.fromkeys(hung, False), live: True}
    assert elapsed < PARALLEL_BOUND * timeout, f"{elapsed:.2f} s: not in parallel"


# -- TLS files --------------------------------------------------------------------------------


def test_load_tls_names_the_missing_ca(tmp_path: Path) -> None:
    with pytest.raises(TlsSetupError) as info:
        load_tls(ca_file=str(tmp_path / "nope.pem"), region="global")
    assert info.value.which == "ca_file"
    assert "nope.pem" in str(info.value)


def test_load_tls_refuses_a_ca_that_is_not_pem(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(TlsSetupError) as info:
        load_tls(ca_file=str(bad), region="global")
    assert info.value.which == "ca_file"


@pytest.mark.parametrize("which", ["cert_file", "key_file"])
def test_load_tls_names_a_missing_client_file(
    tls_files: TLSFiles, tmp_path: Path, which: str
) -> None:
    files = {"cert_file": str(tls_files.client.cert), "key_file": str(tls_files.client.key)}
    files[which] = str(tmp_path / "gone.pem")
    with pytest.raises(TlsSetupError) as info:
        load_tls(
            ca_file=str(tls_files.ca),
            cert_file=files["cert_file"],
            key_file=files["key_file"],
            region="global",
        )
    assert info.value.which == which


def test_load_tls_refuses_a_key_of_another_certificate(tls_files: TLSFiles) -> None:
    with pytest.raises(TlsSetupError) as info:
        load_tls(
            ca_file=str(tls_files.ca),
            cert_file=str(tls_files.client.cert),
            key_file=str(tls_files.server.key),
            region="global",
        )
    assert info.value.which == "key_file"


def test_load_tls_refuses_an_encrypted_key_without_asking(
    tls_files: TLSFiles, tmp_path: Path
) -> None:
    """OpenSSL would prompt for the pass phrase on the terminal; it must not."""
    encrypted = tmp_path / "encrypted-key.pem"
    subprocess.run(
        [
            *("openssl", "pkey", "-in", str(tls_files.client.key), "-out", str(encrypted)),
            *("-aes256", "-passout", "pass:secret"),
        ],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    with pytest.raises(TlsSetupError) as info:
        load_tls(
            ca_file=str(tls_files.ca),
            cert_file=str(tls_files.client.cert),
            key_file=str(encrypted),
            region="global",
        )
    assert info.value.which == "key_file"


def test_load_tls_names_a_client_certificate_that_is_not_pem(
    tls_files: TLSFiles, tmp_path: Path
) -> None:
    bad = tmp_path / "cert.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(TlsSetupError) as info:
        load_tls(
            ca_file=str(tls_files.ca),
            cert_file=str(bad),
            key_file=str(tls_files.client.key),
            region="global",
        )
    assert info.value.which == "cert_file"


@pytest.mark.parametrize("which", ["ca_file", "cert_file", "key_file"])
def test_load_tls_refuses_a_fifo_instead_of_blocking_on_it(
    tls_files: TLSFiles, tmp_path: Path, which: str
) -> None:
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)
    files = {
        "ca_file": str(tls_files.ca),
        "cert_file": str(tls_files.client.cert),
        "key_file": str(tls_files.client.key),
        which: str(fifo),
    }
    with pytest.raises(TlsSetupError, match="not a regular file") as info:
        load_tls(
            ca_file=files["ca_file"],
            cert_file=files["cert_file"],
            key_file=files["key_file"],
            region="global",
        )
    assert info.value.which == which
