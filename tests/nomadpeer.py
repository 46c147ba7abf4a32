"""The reference Nomad peer (tests/nomad_peer/, Go) for tests and benchmarks.

The peer is built from Debian's packages of the libraries Nomad uses, by
``tests/nomad_peer/build.sh`` (which installs them with apt-get when the
binary is out of date), so a test that talks to it checks our side against
Nomad's real codec, multiplexer and TLS stack. This module builds it once per
process, runs it as a context manager, makes throwaway TLS material with the
``openssl`` command, and runs its ``CallWithCodec`` client for benchmarks.

Example::

    with NomadPeer() as peer:
        sock = socket.create_connection(peer.host_port)
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "tests" / "nomad_peer" / "build.sh"
BINARY = REPO / "build" / "nomad-peer"

BUILD_TIMEOUT_S = 900.0
"""A fresh machine runs apt-get update and installs Go first (about 30 s here)."""
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0

Mode = Literal["plain", "hang", "tls"]

_build_lock = threading.Lock()
_built: Path | None = None
_build_error: str | None = None


class PeerError(RuntimeError):
    """The peer could not be built, started or run; the message says why."""


def build_peer() -> Path:
    """Build the peer (once per process) and return the binary's path.

    A failure is remembered too, so a suite whose build failed reports it on
    every test at once instead of rerunning apt-get for each.

    Raises:
        PeerError: build.sh failed; the message carries its output.
    """
    global _built, _build_error  # noqa: PLW0603 - a per-process cache, by design
    with _build_lock:
        if _built is not None:
            return _built
        if _build_error is not None:
            raise PeerError(_build_error)
        try:
            done = subprocess.run(
                ["bash", str(BUILD_SCRIPT), str(BINARY)],
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            _build_error = f"{BUILD_SCRIPT} took more than {BUILD_TIMEOUT_S:g} s"
            raise PeerError(_build_error) from None
        if done.returncode != 0 or not BINARY.is_file():
            _build_error = (
                f"{BUILD_SCRIPT} failed (exit {done.returncode}); "
                f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            )
            raise PeerError(_build_error)
        _built = BINARY
        return _built


# --------------------------------------------------------------------------
# TLS material.


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its unencrypted PEM key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class TLSFiles:
    """Throwaway TLS material for one region, as Nomad's mTLS wants it.

    Attributes:
        ca: the CA that signed ``server`` and ``client``.
        server: named ``server.<region>.nomad`` (and localhost, 127.0.0.1).
        client: named ``client.<region>.nomad``.
        other_ca: a second, unrelated CA.
        other: signed by ``other_ca``, with the names of both ``server`` and
            ``client``: a peer serving it, or a client presenting it, is
            refused by anyone who trusts ``ca`` only.
        region: the region in the names.
    """

    ca: Path
    server: CertPair
    client: CertPair
    other_ca: Path
    other: CertPair
    region: str

    @property
    def server_name(self) -> str:
        """The name a Nomad client checks with verify_server_hostname."""
        return f"server.{self.region}.nomad"


_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[leaf_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = @names
[names]
{names}
"""


def make_tls_files(directory: Path, region: str = "global") -> TLSFiles:
    """Write a CA, a server and a client certificate, and a foreign pair.

    Keys are P-256, valid for two days: nothing here outlives a test run.

    Raises:
        PeerError: the ``openssl`` command is missing or failed.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise PeerError("the openssl command is needed for TLS tests (apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    server_names = [f"server.{region}.nomad", "localhost"]
    client_names = [f"client.{region}.nomad"]

    def run(*args: str) -> None:
        done = subprocess.run(
            [openssl, *args], capture_output=True, text=True, check=False, timeout=60
        )
        if done.returncode != 0:
            raise PeerError(f"openssl {' '.join(args)} failed:\n{done.stderr}")

    def config(names: list[str]) -> Path:
        lines = [f"DNS.{i} = {name}" for i, name in enumerate(names, 1)]
        lines.append("IP.1 = 127.0.0.1")
        path = directory / f"openssl-{names[0]}.cnf"
        path.write_text(_OPENSSL_CONFIG.format(names="\n".join(lines)))
        return path

    serial = iter(range(1000, 2000))

    def ca(name: str) -> tuple[Path, Path]:
        cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
        run(
            *("req", "-x509", "-new", "-nodes", "-days", "2"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-subj", f"/CN={name}", "-config", str(config([name])), "-extensions", "ca_ext"),
            *("-keyout", str(key), "-out", str(cert)),
        )
        return cert, key

    def leaf(name: str, names: list[str], signer: tuple[Path, Path]) -> CertPair:
        cert, key, csr = (directory / f"{name}{suffix}" for suffix in (".pem", "-key.pem", ".csr"))
        cnf = config(names)
        run(
            *("req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-subj", f"/CN={names[0]}", "-config", str(cnf)),
            *("-keyout", str(key), "-out", str(csr)),
        )
        run(
            *("x509", "-req", "-days", "2", "-in", str(csr), "-set_serial", str(next(serial))),
            *("-CA", str(signer[0]), "-CAkey", str(signer[1])),
            *("-extfile", str(cnf), "-extensions", "leaf_ext", "-out", str(cert)),
        )
        return CertPair(cert, key)

    main_ca = ca("ca")
    other_ca = ca("other-ca")
    return TLSFiles(
        ca=main_ca[0],
        server=leaf("server", server_names, main_ca),
        client=leaf("client", client_names, main_ca),
        other_ca=other_ca[0],
        other=leaf("other", server_names + client_names, other_ca),
        region=region,
    )


# --------------------------------------------------------------------------
# The peer as a process.


class NomadPeer:
    """One running peer, started on entry and stopped (SIGTERM) on exit.

    Args:
        mode: ``"plain"`` answers Nomad RPC; ``"hang"`` accepts connections
            and never reads or answers them; ``"tls"`` requires byte 0x04 and
            a TLS handshake with a client certificate (a plain 0x01 is
            refused, as Nomad with ``tls { rpc = true }`` refuses it).
        tls: the material for ``"tls"``.
        identity: the certificate the peer serves (default ``tls.server``);
            ``tls.other`` makes a peer whose certificate comes from another CA.
        client_ca: the CA client certificates must come from (default ``tls.ca``).
        leader: what ``Status.Leader`` returns (default: the peer's address).
        peers: what ``Status.Peers`` returns (default: the peer's address).
        handshake_timeout_s: the deadline for the first byte and the TLS
            handshake (the peer's default, Nomad's, is 5 s).
        tls_upgrade: with TLS, accept plain connections too (Nomad's
            ``rpc_upgrade_mode``).
        report_resumption: log whether each TLS handshake resumed a session,
            read back with :meth:`tls_handshakes`.
        listen: the address to listen on (default ``127.0.0.1:0``, a free
            port); a test restarts a peer on the port it had with it.

    Attributes:
        address: ``"127.0.0.1:port"``, known once entered.
    """

    def __init__(
        self,
        mode: Mode = "plain",
        tls: TLSFiles | None = None,
        *,
        identity: CertPair | None = None,
        client_ca: Path | None = None,
        leader: str | None = None,
        peers: list[str] | None = None,
        handshake_timeout_s: float | None = None,
        tls_upgrade: bool = False,
        report_resumption: bool = False,
        listen: str = "127.0.0.1:0",
    ) -> None:
        if mode == "tls" and tls is None:
            raise ValueError('mode "tls" needs tls=make_tls_files(...)')
        args = ["-listen", listen]
        if mode == "hang":
            args.append("-hang")
        if mode == "tls":
            assert tls is not None
            pair = identity or tls.server
            ca = client_ca or tls.ca
            args += ["-tls-cert", str(pair.cert), "-tls-key", str(pair.key), "-tls-ca", str(ca)]
            if tls_upgrade:
                args.append("-tls-upgrade")
            if report_resumption:
                args.append("-report-resumption")
        if leader is not None:
            args += ["-leader", leader]
        if peers is not None:
            args += ["-peers", ",".join(peers)]
        if handshake_timeout_s is not None:
            args += ["-handshake-timeout", f"{handshake_timeout_s}s"]
        self.mode = mode
        self._args = args
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self.address = ""

    @property
    def host_port(self) -> tuple[str, int]:
        """The address as ``socket.create_connection`` wants it."""
        host, port = self.address.rsplit(":", 1)
        return host, int(port)

    def start(self) -> NomadPeer:
        """Build if needed, start, and wait for the ``listening`` line.

        Raises:
            PeerError: the peer exited or printed nothing in time.
        """
        binary = build_peer()
        # stderr goes to a file, not a pipe nobody drains: a peer that logs
        # a lot (one line per refused connection) must never block on it.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the peer
        self._proc = subprocess.Popen(
            [str(binary), *self._args], stdout=subprocess.PIPE, stderr=self._stderr
        )
        try:
            line = self._read_line(START_TIMEOUT_S)
        except PeerError:
            self.close()
            raise
        word, _, address = line.partition(" ")
        if word != "listening" or not address:
            self.close()
            raise PeerError(f"unexpected first line from the peer: {line!r}")
        self.address = address
        return self

    def _read_line(self, timeout: float) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        data = b""
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerError(f"no listening line within {timeout:g} s; {self.stderr()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    self._proc.wait(STOP_TIMEOUT_S)
                    raise PeerError(
                        f"the peer exited ({self._proc.returncode}) before listening; "
                        f"{self.stderr()}"
                    )
                data += chunk
        return data.split(b"\n", 1)[0].decode()

    def stderr(self) -> str:
        """What the peer logged so far (for a failing test's message)."""
        if self._stderr is None:
            return "stderr: (not started)"
        self._stderr.seek(0)
        return "stderr:\n" + self._stderr.read().decode(errors="replace")

    def tls_handshakes(self) -> list[bool]:
        """Whether each completed TLS handshake so far resumed a session, in
        the order the peer logged them (needs ``report_resumption``)."""
        if self._stderr is None:
            return []
        self._stderr.seek(0)
        found: list[bool] = []
        for line in self._stderr.read().decode(errors="replace").splitlines():
            _, marker, verdict = line.partition("tls handshake resumed=")
            if marker:
                found.append(verdict.strip() == "true")
        return found

    def stop(self) -> int | None:
        """SIGTERM, wait, and return the exit code (killed if it would not go).

        Returns:
            The exit code, or None if the peer was never started.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def close(self) -> None:
        """Stop the peer and let go of its log."""
        self.stop()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> NomadPeer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def go_ping(
    address: str,
    count: int,
    *,
    conn_per_call: bool = False,
    tls: TLSFiles | None = None,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Ping ``address`` ``count`` times with the peer's Go client.

    The client calls ``Status.Ping`` with ``msgpackrpc.CallWithCodec`` on the
    Nomad handle, as a Nomad client does: the benchmark's baseline.

    Returns:
        ``{"calls", "elapsed_s", "per_call_us", "conn_per_call"}``.

    Raises:
        PeerError: a call failed.
    """
    args = [str(build_peer()), "-call", address, "-n", str(count)]
    if conn_per_call:
        args.append("-conn-per-call")
    if tls is not None:
        args += ["-tls-cert", str(tls.client.cert), "-tls-key", str(tls.client.key)]
        args += ["-tls-ca", str(tls.ca), "-server-name", tls.server_name]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise PeerError(f"the Go client failed (exit {done.returncode}): {done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result
