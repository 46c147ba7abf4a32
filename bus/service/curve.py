"""CURVE encryption and authentication for the proxy's sockets.

Whoever can publish a heartbeat decides which servers every client talks to,
so with CURVE on, the heartbeat SUB, the query ROUTER and the events PUB are
CURVE servers, and a ZAP handler (pyzmq's thread authenticator) accepts only
client keys found in ``curve_allowed_dir``. A refused peer never completes its
handshake, so nothing it sends reaches the proxy; refusals are counted per
socket (ZAP domain) and logged, rate-limited per domain: a stranger can try
a fresh key every time, so a limit per key would bound nothing.

Keys are ``zmq.auth`` certificate files, as ``rpcproxy keygen`` writes them:
``NAME.key`` (public) and ``NAME.key_secret`` (public and secret). Reading
them is shared with the client library (:mod:`rpcproxy.bus.net.keys`,
which also holds the client's side, ``CurveClient``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
import zmq.auth

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

from rpcproxy.bus.net.keys import CurveError, KeyPair, load_key_pair
from rpcproxy.log_gate import LogGate, PeerLog

__all__ = [
    "EVENTS_DOMAIN",
    "HEARTBEAT_DOMAIN",
    "QUERY_DOMAIN",
    "AllowList",
    "CurveError",
    "CurveServer",
    "KeyPair",
    "load_key_pair",
]

log = logging.getLogger(__name__)

HEARTBEAT_DOMAIN = "heartbeat"
QUERY_DOMAIN = "query"
EVENTS_DOMAIN = "events"


class AllowList:
    """The ZAP credentials provider: a key is allowed iff it is in the directory.

    Called on the authenticator's thread, once per handshake.

    Args:
        directory: the allowed public certificates.
        warn_interval_s: once a burst of refusal warnings is spent, at most
            one per this many seconds per domain (each says how many it held back).
        on_refused: called with the ZAP domain of each refusal (to count it).
        clock: monotonic seconds, for the warnings' rate limit.
    """

    def __init__(
        self,
        directory: str | Path,
        warn_interval_s: float = 60.0,
        on_refused: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        path = Path(directory)
        if not path.is_dir():
            raise CurveError(f"{path} is not a directory of public certificates")
        try:
            certificates = zmq.auth.load_certificates(str(path))
        except (OSError, ValueError) as exc:
            raise CurveError(f"cannot read the certificates in {path}: {exc}") from None
        self.keys = frozenset(certificates)
        self.refused: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._peer_log = PeerLog(log, LogGate(warn_interval_s), clock)
        self.on_refused = on_refused

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        with self._lock:
            self.refused[domain] += 1
            count = self.refused[domain]
        if self.on_refused is not None:
            self.on_refused(domain)
        self._peer_log.warning(
            f"refused {domain}",
            "refused a %s peer: CURVE key %s is not allowed (%d refused so far)",
            domain,
            key.decode(errors="replace")[:64],
            count,
        )
        return False


class CurveServer:
    """The proxy's side of CURVE: its key pair and the ZAP authenticator thread."""

    def __init__(self, keys: KeyPair, allow: AllowList) -> None:
        self.keys = keys
        self.allow = allow
        self._auth: ThreadAuthenticator | None = None

    def start(self, context: zmq.Context[Any]) -> None:
        """Start answering ZAP requests; must run before any server socket binds."""
        # Here, not at the top: zmq.auth.thread imports asyncio (7 MiB), which
        # a proxy without CURVE never needs.
        from zmq.auth.thread import ThreadAuthenticator  # noqa: PLC0415

        auth = ThreadAuthenticator(context, log=logging.getLogger("rpcproxy.zap"))
        auth.start()
        # pyzmq looks providers up by the socket's exact ZAP domain ("*" only
        # stands in for an empty one), so each of ours is registered.
        for domain in (HEARTBEAT_DOMAIN, QUERY_DOMAIN, EVENTS_DOMAIN):
            auth.configure_curve_callback(domain, credentials_provider=self.allow)
        self._auth = auth

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    @property
    def alive(self) -> bool:
        return self._auth is not None and self._auth.is_alive()

    def secure(self, sock: zmq.Socket[Any], domain: str) -> None:
        """Make ``sock`` a CURVE server whose peers ZAP checks under ``domain``."""
        sock.zap_domain = domain.encode()
        sock.curve_secretkey = self.keys.secret
        sock.curve_publickey = self.keys.public
        sock.curve_server = True
