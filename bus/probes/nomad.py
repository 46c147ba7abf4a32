"""Nomad's own ``Status.Ping``, with or without TLS (docs/protocol.md sections 4, 4.1).

A Nomad client checks a server the way it calls it: a TCP connection whose
first byte says what follows, then Go ``net/rpc`` in msgpack-rpc framing
(:mod:`bus.service.msgpackrpc`). Here that is one more :class:`Attempt` for
the windowed engine of :mod:`bus.service.ping`, so a Nomad ping shares the
zmq ping's window, deadlines, off-thread name resolution and prompt close:

1. connect (:class:`TcpConnect`);
2. with TLS: send ``0x04``, then run the TLS handshake on the same socket,
   non-blocking, each ``SSLWantReadError``/``SSLWantWriteError`` a wait for
   the socket to be readable/writable;
3. send ``0x01`` and the ``Status.Ping`` request (header ``{"Seq": n,
   "ServiceMethod": "Status.Ping"}``, body ``{}``), inside TLS when on;
4. read the reply through a bounded :class:`ValueSplitter`: the header, which
   must echo ``Seq`` with an empty ``Error``, then the body.

With TLS the prober keeps the last TLS session of each server (a bounded
:class:`TlsSessions`) and offers it on the next handshake with that server:
every ping is a new connection, and a resumed handshake (TLS 1.3's PSK, or a
TLS 1.2 ticket) skips the certificate exchange and signature checks that
make a full one cost what it does. A session is taken out of the cache when
offered and put back (the newest one the server sent) only after a ping
succeeded, so a failed or timed-out handshake drops it.

Every step is in the candidate's one deadline (the engine's), so a server
that accepts and says nothing, or trickles a byte a second, costs one timeout.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, cast

import zmq

from rpcproxy.bus.net.resolve import Endpoint, Resolver
from rpcproxy.bus.probes.engine import MakeAttempt, Step, TcpConnect, WindowedProber
from rpcproxy.bus.probes.msgpackrpc import (
    RPC_NOMAD,
    RPC_TLS,
    FramingError,
    ValueSplitter,
    decode_response_header,
    encode_request,
)

if TYPE_CHECKING:
    # Loaded at run time by TLS pings only (load_tls): ssl is 4.6 MiB of a
    # proxy that pings in plain, which never needs it (issue 20's idle RSS).
    import ssl

__all__ = [
    "MAX_REPLY_BYTES",
    "NomadProber",
    "NomadTls",
    "ReplyCheck",
    "TlsSessions",
    "TlsSetupError",
    "load_tls",
    "server_name",
]

MAX_REPLY_BYTES: Final = 64 * 1024
"""Largest header or body a ping reply may have. Nomad's is about 40 bytes
(and an error string); the bound is what a hostile server can make us hold."""

_RECV_BYTES: Final = 4096

MAX_TLS_SESSIONS: Final = 256
"""Servers whose TLS session is kept: a cluster has 3 to 7 servers, and a
list fed by a peer that controls names must not grow the cache without end."""

TLS_SESSION_REFRESH_S: Final = 600.0
"""How long a session that keeps resuming is offered again as it is. Taking
the new session the server sent after every ping costs about 0.2 ms (the
``session`` getter copies it, certificates and all), an eighth of a resumed
ping here; a session older than this is replaced by the newest, so one
whose ticket key the server retired (Go rotates them daily) is gone soon.
A server that stops resuming it gets a full handshake, and that one's
session is kept instead."""


def server_name(region: str) -> str:
    """The name a Nomad server's certificate carries: ``server.<region>.nomad``."""
    return f"server.{region}.nomad"


# -- TLS ---------------------------------------------------------------------------


class TlsSetupError(ValueError):
    """A TLS file that cannot be used; ``which`` is ``ca_file``, ``cert_file``
    or ``key_file``, so the caller can name its own configuration key."""

    def __init__(self, which: Literal["ca_file", "cert_file", "key_file"], message: str) -> None:
        super().__init__(which, message)
        self.which = which
        self.message = message

    def __str__(self) -> str:
        return f"{self.which}: {self.message}"


@dataclass(frozen=True)
class NomadTls:
    """What a TLS ping needs: the client context and the name to send and check.

    Attributes:
        context: verifies the server's chain (and its name when
            ``context.check_hostname``) and presents the client certificate.
        server_hostname: sent as SNI; checked when ``context.check_hostname``.
    """

    context: ssl.SSLContext
    server_hostname: str


def _no_password() -> bytes:
    # An encrypted key would otherwise make OpenSSL prompt on the terminal
    # of a service; refusing it makes it an error at start instead.
    return b""


def load_tls(
    *,
    ca_file: str,
    cert_file: str = "",
    key_file: str = "",
    region: str,
    verify_server_hostname: bool = True,
) -> NomadTls:
    """The client side of Nomad's RPC TLS, as Nomad's ``tls`` block configures it.

    The chain is always verified against ``ca_file`` (and only it: a server's
    certificate from a public CA is not a cluster member). With
    ``verify_server_hostname`` the certificate must also name
    ``server.<region>.nomad``, which a client certificate of the same CA does
    not, so a client cannot pose as a server.

    Raises:
        TlsSetupError: a file is missing, unreadable or not what it should be.
    """
    import ssl  # noqa: PLC0415 -- only a TLS configuration needs it (see the imports)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = verify_server_hostname
    _check_regular("ca_file", ca_file)
    try:
        context.load_verify_locations(cafile=ca_file)
    except OSError as exc:  # ssl.SSLError is one too: not PEM, no certificate.
        raise TlsSetupError("ca_file", f"cannot use {ca_file}: {_reason(exc)}") from None
    if cert_file or key_file:
        if not cert_file or not key_file:
            missing: Literal["cert_file", "key_file"] = "key_file" if cert_file else "cert_file"
            raise TlsSetupError(missing, "cert_file and key_file go together")
        _check_regular("cert_file", cert_file)
        _check_regular("key_file", key_file)
        try:
            # Read alone first, so a bad certificate is not blamed on the key.
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert_file)
        except OSError as exc:
            raise TlsSetupError("cert_file", f"cannot use {cert_file}: {_reason(exc)}") from None
        try:
            context.load_cert_chain(cert_file, key_file, password=_no_password)
        except OSError as exc:
            raise TlsSetupError(
                "key_file", f"{key_file} is not the key of {cert_file}: {_reason(exc)}"
            ) from None
    return NomadTls(context, server_name(region))


def _check_regular(which: Literal["ca_file", "cert_file", "key_file"], path: str) -> None:
    """Say which file is missing, not what OpenSSL made of the pair; and refuse
    a FIFO or a device, which OpenSSL would block on or read for ever."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise TlsSetupError(which, f"cannot read {path}: {_reason(exc)}") from None
    if not stat.S_ISREG(mode):
        raise TlsSetupError(which, f"{path} is not a regular file")


_SSL_REASONS: Final = {
    "NO_CERTIFICATE_OR_CRL_FOUND": "it holds no PEM certificate",
    "KEY_VALUES_MISMATCH": "the key does not match the certificate",
}


def _reason(exc: OSError) -> str:
    import ssl  # noqa: PLC0415 -- load_tls has loaded it (see the imports)

    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        return _SSL_REASONS.get(reason, reason or str(exc))
    return exc.strerror or str(exc)


class TlsSessions:
    """The last resumable TLS session of each server, bounded, oldest evicted.

    Keyed by the resolved endpoint; bound to one :class:`NomadTls`, so that
    a session is only ever offered with the context (CA, certificate, name
    checks) it was made under. :meth:`bind` to another configuration empties
    it. Thread-safe: the engine runs attempts on the calling thread, but
    a prober may be called from more than one.
    """

    def __init__(self, max_entries: int = MAX_TLS_SESSIONS) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self._tls: NomadTls | None = None
        self._sessions: OrderedDict[Endpoint, ssl.SSLSession] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def bind(self, tls: NomadTls | None) -> None:
        """Use ``tls`` from now on; a different one drops every session."""
        with self._lock:
            if tls is not self._tls:
                self._sessions.clear()
                self._tls = tls

    def take(self, tls: NomadTls, endpoint: Endpoint) -> ssl.SSLSession | None:
        """Remove and return the session kept for ``endpoint``, if any.

        Taken, not read: if the handshake that offers it fails (or never
        ends), there is nothing to drop, and the next ping starts afresh.
        """
        with self._lock:
            if tls is not self._tls:
                return None
            return self._sessions.pop(endpoint, None)

    def keep(self, tls: NomadTls, endpoint: Endpoint, session: ssl.SSLSession | None) -> None:
        """Remember ``session`` for ``endpoint`` if it can resume a handshake."""
        # Without a ticket (or a session id, for a TLS 1.2 server with a
        # cache) a session cannot resume anything; TLS 1.3 servers send
        # their ticket after the handshake, so it is here only once the
        # reply has been read past it.
        if session is None or not (session.has_ticket or session.id):
            return
        with self._lock:
            if tls is not self._tls or self.max_entries == 0:
                return
            self._sessions[endpoint] = session
            self._sessions.move_to_end(endpoint)
            while len(self._sessions) > self.max_entries:
                self._sessions.popitem(last=False)


# -- the reply -------------------------------------------------------------------------


class ReplyCheck:
    """Reads one ``Status.Ping`` reply from received bytes, bounded.

    :meth:`feed` returns None while undecided, then True (``Seq`` echoed,
    ``Error`` empty, body whole) or False (anything else). It never holds more
    than ``max_value_bytes`` of the reply.
    """

    def __init__(self, seq: int, *, max_value_bytes: int = MAX_REPLY_BYTES) -> None:
        self._seq = seq
        self._splitter = ValueSplitter(max_value_bytes)
        self._header_ok = False
        self.error = ""
        """Why the reply failed, for debugging."""

    def feed(self, data: bytes) -> bool | None:
        try:
            values = self._splitter.feed(data)
        except FramingError as exc:
            self.error = str(exc)
            return False
        for value in values:
            if self._header_ok:
                return True  # The body: what it holds does not matter.
            try:
                header = decode_response_header(value)
            except FramingError as exc:
                self.error = str(exc)
                return False
            if header.seq != self._seq:
                self.error = f"Seq {header.seq}, expected {self._seq}"
                return False
            if header.error:
                self.error = f"Error {header.error[:200]!r}"
                return False
            self._header_ok = True
        return None


def _tls_wait(exc: BaseException) -> int | None:
    """What a non-blocking TLS step waits for (POLLIN, POLLOUT), or None: it failed."""
    import ssl  # noqa: PLC0415 -- a TLS ping runs: load_tls has loaded it

    if isinstance(exc, ssl.SSLWantReadError):
        return zmq.POLLIN
    if isinstance(exc, ssl.SSLWantWriteError):
        return zmq.POLLOUT
    return None


# -- the attempt -----------------------------------------------------------------------

_SEND_TLS_BYTE, _HANDSHAKE, _SEND_REQUEST, _RECEIVE = range(4)


class _NomadPing(TcpConnect):
    """One ``Status.Ping`` to one resolved endpoint; ``self.sock`` becomes an
    :class:`ssl.SSLSocket` (same descriptor) once TLS starts."""

    def __init__(self, endpoint: Endpoint, prober: NomadProber) -> None:
        super().__init__(endpoint)
        self._tls = prober.tls
        self._sessions = prober.tls_sessions
        self._offered: ssl.SSLSession | None = None
        seq = prober.next_seq()
        self._request = RPC_NOMAD + encode_request(seq)
        self._reply = ReplyCheck(seq, max_value_bytes=prober.max_reply_bytes)
        self._phase: int | None = None  # None while connecting.
        self._out = bytearray()

    def connected(self) -> Step:
        assert self.sock is not None
        # Every message here is one small write the other side waits for
        # (0x04, each handshake flight, the request): Nagle would hold one
        # back until the previous one is acknowledged, and a delayed ACK
        # makes that 40 ms. A resumed TLS 1.3 handshake hits it on every
        # ping (our Finished, then the request). Go's net sets TCP_NODELAY
        # on every connection, Nomad's included.
        with contextlib.suppress(OSError):  # Only slower without it.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is None:
            self._phase, self._out = _SEND_REQUEST, bytearray(self._request)
        else:
            self._phase, self._out = _SEND_TLS_BYTE, bytearray(RPC_TLS)
        return self._go_on()

    def ready(self) -> Step:
        if self._phase is None:
            return super().ready()
        return self._go_on()

    def _go_on(self) -> Step:
        """Do what the phase allows now; what to wait for next, or the result."""
        assert self.sock is not None
        fd = self.sock.fileno()
        try:
            return self._advance()
        except BlockingIOError:
            # Plain sockets: sending waits for room, receiving for bytes.
            return fd, zmq.POLLIN if self._phase == _RECEIVE else zmq.POLLOUT
        except (OSError, ValueError) as exc:
            # With TLS, a step that must wait for the socket (SSLWantReadError
            # is an OSError, not a BlockingIOError). Otherwise refused or reset,
            # a TLS alert or a bad certificate, or an SSL object in a state it
            # should not be in. A plain ping never looks at ssl (see the imports).
            wanted = _tls_wait(exc) if self._tls is not None else None
            return False if wanted is None else (fd, wanted)

    def _advance(self) -> Step:
        assert self.sock is not None
        if self._phase in (_SEND_TLS_BYTE, _SEND_REQUEST):
            while self._out:
                del self._out[: self.sock.send(self._out)]
            if self._phase == _SEND_TLS_BYTE:
                self._start_tls()
            else:
                self._phase = _RECEIVE
        if self._phase == _HANDSHAKE:
            cast("ssl.SSLSocket", self.sock).do_handshake()
            self._phase, self._out = _SEND_REQUEST, bytearray(self._request)
            return self._advance()
        return self._receive()

    def _start_tls(self) -> None:
        assert self.sock is not None and self._tls is not None
        # wrap_socket takes over the descriptor (the plain socket is detached).
        # The offered session came from this very context and server name
        # (TlsSessions is bound to one NomadTls), so ssl accepts it; whether
        # the server resumes is the server's choice, and a full handshake
        # with full verification is what happens when it does not.
        self._offered = self._sessions.take(self._tls, self.endpoint)
        self.sock = self._tls.context.wrap_socket(
            self.sock,
            server_hostname=self._tls.server_hostname,
            do_handshake_on_connect=False,
            session=self._offered,
        )
        self._phase = _HANDSHAKE

    def _receive(self) -> Step:
        assert self.sock is not None
        # Read until the socket (or TLS) has nothing more: a TLS record may
        # hold more than one recv's worth, and poll() does not see what the
        # SSL object has already decrypted. The splitter's bound ends this.
        while True:
            data = self.sock.recv(_RECV_BYTES)
            if not data:
                return False  # Closed before the reply was whole.
            verdict = self._reply.feed(data)
            if verdict is not None:
                if verdict and self._tls is not None:
                    self._keep_session(cast("ssl.SSLSocket", self.sock))
                return verdict

    def _keep_session(self, sock: ssl.SSLSocket) -> None:
        assert self._tls is not None
        offered = self._offered
        if (
            offered is not None
            and sock.session_reused
            and time.time() - offered.time < TLS_SESSION_REFRESH_S
        ):
            session: ssl.SSLSession | None = offered
        else:
            # Read after the reply, so a TLS 1.3 ticket sent after the
            # handshake (before the reply) has been taken in.
            session = sock.session
        self._sessions.keep(self._tls, self.endpoint, session)


class NomadProber(WindowedProber):
    """Pings servers with Nomad's ``Status.Ping`` (``ping_method = "nomad"``).

    Args:
        timeout_s: the deadline of one candidate's whole ping, TLS included.
        tls: when given, every ping upgrades to TLS first (``0x04``).
            Assigning :attr:`tls` later drops every kept TLS session.
        max_reply_bytes: the largest reply header or body accepted.
        window: attempts open at once (:func:`bus.service.ping.window_for`).
        resolver: where names are resolved (the process's shared one if None).
        max_tls_sessions: servers whose TLS session is kept for resumption
            (0 turns resumption off).
    """

    fds_per_attempt = 1

    def __init__(
        self,
        *,
        timeout_s: float,
        tls: NomadTls | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        window: int | None = None,
        resolver: Resolver | None = None,
        max_tls_sessions: int = MAX_TLS_SESSIONS,
    ) -> None:
        super().__init__(timeout_s=timeout_s, window=window, resolver=resolver)
        self.tls_sessions = TlsSessions(max_tls_sessions)
        self.tls = tls
        self.max_reply_bytes = max_reply_bytes
        # Each attempt its own Seq: a reply meant for another is not taken.
        self._seqs = itertools.count(1)
        self._seq_lock = threading.Lock()

    @property
    def tls(self) -> NomadTls | None:
        """The TLS configuration of every ping (None: plain)."""
        return self._tls

    @tls.setter
    def tls(self, tls: NomadTls | None) -> None:
        # New CA or certificate files: no session made under the old ones
        # may be offered again.
        self._tls = tls
        self.tls_sessions.bind(tls)

    def next_seq(self) -> int:
        """The next request number (wraps inside Go's uint64)."""
        with self._seq_lock:
            return next(self._seqs) % (1 << 63) or 1

    def _prepare(self) -> MakeAttempt:
        return lambda endpoint: _NomadPing(endpoint, self)
