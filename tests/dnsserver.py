"""Name servers for the DNS discovery tests: dnsmasq (a real one) and two hostile ones.

dnsmasq is Debian's ``dnsmasq-base``, installed by ``tests/debian/install.sh``
(with apt-get, only when the binary is missing), so the tests check
discovery against a real server's answers: truncation and the retry over
TCP, SRV additional records, NXDOMAIN, REFUSED, CNAME chains. A machine
where it cannot be installed fails these tests with the script's output;
it never skips them.

Example::

    with Dnsmasq(hosts={"a.test": ["127.0.0.5"]}) as server:
        DnsSource([parse_dns_name("a.test")], [server.nameserver], 2.0, 16).discover()
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query
import dns.rcode

from rpcproxy.bus.service.discovery import Nameserver
from tests.debian_packages import DNSMASQ
from tests.helpers import free_port
from tests.waiting import poll_until

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0

DOMAIN = "test"
"""dnsmasq answers for this domain alone: NXDOMAIN for a name it does not
know there, REFUSED for any name outside it (it has no upstream)."""
READY_NAME = f"ready.{DOMAIN}"


class DnsmasqError(RuntimeError):
    """dnsmasq could not be started; the message says why."""


def install_dnsmasq() -> Path:
    """Install dnsmasq if missing (once per process) and return the binary's path.

    Raises:
        ToolMissingError: it could not be installed; the message says why.
    """
    return DNSMASQ.ensure()


@dataclass(frozen=True)
class Srv:
    """One ``--srv-host`` record."""

    name: str
    target: str
    port: int
    priority: int = 0
    weight: int = 0

    def option(self) -> str:
        return f"--srv-host={self.name},{self.target},{self.port},{self.priority},{self.weight}"


class Dnsmasq:
    """dnsmasq in the foreground on 127.0.0.1 and a port of its own, for one test.

    Args:
        hosts: name -> addresses (IPv4 or IPv6), written to an ``--addn-hosts``
            file (so a name may have thousands).
        srv: SRV records.
        cnames: (alias, target) pairs; dnsmasq follows them itself.
        log_queries: log every query, for :meth:`queries`.
    """

    def __init__(
        self,
        hosts: Mapping[str, Sequence[str]] | None = None,
        srv: Sequence[Srv] = (),
        cnames: Sequence[tuple[str, str]] = (),
        log_queries: bool = False,
    ) -> None:
        self._hosts = dict(hosts or {})
        self._srv = list(srv)
        self._cnames = list(cnames)
        self._log_queries = log_queries
        self.port = 0
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> Nameserver:
        return Nameserver("127.0.0.1", self.port)

    def __enter__(self) -> Dnsmasq:
        binary = install_dnsmasq()
        self._dir = Path(tempfile.mkdtemp(prefix="rpcproxy-dnsmasq-"))
        hosts_file = self._dir / "hosts"
        lines = [f"127.0.0.1 {READY_NAME}"]
        lines += [f"{ip} {name}" for name, ips in self._hosts.items() for ip in ips]
        hosts_file.write_text("\n".join(lines) + "\n", encoding="ascii")
        self.port = free_port()
        args = [
            str(binary),
            "--no-resolv",
            "--no-hosts",
            "--no-daemon",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            f"--port={self.port}",
            "--conf-file=/dev/null",  # never /etc/dnsmasq.conf
            "--pid-file=",  # no pid file
            # In --no-daemon mode dnsmasq keeps the user it was started as.
            f"--local=/{DOMAIN}/",
            f"--addn-hosts={hosts_file}",
            *(s.option() for s in self._srv),
            *(f"--cname={alias},{target}" for alias, target in self._cnames),
            *(["--log-queries"] if self._log_queries else []),
        ]
        log = (self._dir / "dnsmasq.log").open("wb")
        try:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()
        try:
            poll_until(self._ready, timeout=START_TIMEOUT_S, what="dnsmasq to answer")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise DnsmasqError(f"dnsmasq exited {self._proc.returncode}: {self.log()}")
        query = dns.message.make_query(READY_NAME, "A")
        try:
            reply = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.2)
        except (OSError, dns.exception.DNSException):
            return False
        return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)

    def log(self) -> str:
        """What dnsmasq wrote so far."""
        if self._dir is None:
            return ""
        try:
            return (self._dir / "dnsmasq.log").read_text(errors="replace")
        except OSError:
            return ""

    def queries(self, rdtype: str) -> list[str]:
        """The names asked for ``rdtype`` so far, in order (with ``log_queries``)."""
        marker = f"query[{rdtype}] "
        return [
            line.split(marker, 1)[1].split(" ", 1)[0]
            for line in self.log().splitlines()
            if marker in line
        ]

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(STOP_TIMEOUT_S)
        self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class Silent:
    """A name server that never answers, and a way to see that it was asked."""

    nameserver: Nameserver
    sock: socket.socket

    def asked(self) -> bool:
        """Whether a query is waiting (peeked at, never read)."""
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            return False


@contextlib.contextmanager
def silent_server() -> Iterator[Silent]:
    """A UDP socket on a port of its own that never reads: a name server that never answers."""
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))
        yield Silent(Nameserver("127.0.0.1", port), sock)


Reply = Callable[[bytes], bytes]
"""What a hostile server sends back for a query (the query's bytes)."""


def raw(body: bytes) -> Reply:
    """``body`` after the query's id, so the client takes it for the answer to its query."""
    return lambda query: query[:2] + body


def echo(flags: int, answers: int = 0, tail: bytes = b"") -> Reply:
    """The query's id and question back, with ``flags`` and ``answers`` claimed, then ``tail``."""
    return lambda query: (
        query[:2]
        + flags.to_bytes(2, "big")
        + query[4:6]
        + answers.to_bytes(2, "big")
        + bytes(4)
        + query[12:]
        + tail
    )


@contextlib.contextmanager
def garbage_server(replies: Sequence[Reply], tcp: bool = False) -> Iterator[Nameserver]:
    """A UDP name server that answers each query with the next of ``replies`` (cycled).

    With ``tcp``, a TCP listener on the same port too, which takes the
    connection a truncated reply calls for and never answers on it.
    """
    port = free_port()
    stop = threading.Event()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.settimeout(0.05)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if tcp:
        listener.bind(("127.0.0.1", port))
        listener.listen(8)  # the kernel accepts; nobody ever reads

    def serve() -> None:
        sent = 0
        while not stop.is_set():
            try:
                query, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = replies[sent % len(replies)](query)
            sent += 1
            with contextlib.suppress(OSError):
                sock.sendto(reply, peer)

    thread = threading.Thread(target=serve, name="garbage-dns", daemon=True)
    thread.start()
    try:
        yield Nameserver("127.0.0.1", port)
    finally:
        stop.set()
        thread.join(5)
        sock.close()
        listener.close()
