"""Servers from Consul's catalog: the ``consul_addr`` source (docs/protocol.md section 10).

The reference's client found its servers in Consul when it knew none, and
Nomad users ask for it again (nomad#17872): a Nomad server registers the
service ``nomad`` tagged ``rpc`` at its RPC address. :class:`ConsulSource`
asks the agent for its datacenters (its own first, then the nearest) and
then, datacenter by datacenter, for the service's passing entries, stopping
at the first datacenter that lists a server, as Nomad's own client does.

Every fetch is :mod:`..http_fetch`'s, with every bound the Nomad API bridge
has (section 8): a body bounded on the wire and decoded, at most
``max_servers`` entries decoded, and one deadline for the whole discovery,
however many datacenters it asks; :meth:`ConsulSource.close` ends a fetch
in flight at once. Only ``consul_addr`` turns the source on: Consul's
variables (:data:`ENV_KEYS`) say how to talk to the agent once it is on,
never that there is one (``CONSUL_HTTP_ADDR`` is not read).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from rpcproxy.bus.service.discovery.consul_catalog import (
    datacenters_decoder,
    entries_decoder,
    servers_in,
)
from rpcproxy.bus.service.discovery.source import DiscoveryError, SourceName
from rpcproxy.bus.service.http_fetch import (
    DEFAULT_MAX_BODY_BYTES,
    ClientTls,
    FetchError,
    HttpFetcher,
    TokenRefusals,
    make_fetch_client,
)
from rpcproxy.log_gate import PeerLog
from rpcproxy.proxy import Address

__all__ = [
    "DEFAULT_SERVICE",
    "DEFAULT_TAG",
    "ENV_KEYS",
    "MAX_DATACENTERS",
    "ConsulSettings",
    "ConsulSource",
]

log = logging.getLogger(__name__)

DEFAULT_SERVICE = "nomad"
"""The service Nomad servers register in Consul."""

DEFAULT_TAG = "rpc"
"""The tag of its entries at the servers' RPC address (``http`` and ``serf`` are the others)."""

MAX_DATACENTERS = 10
"""The most datacenters one discovery asks, the agent's own and the nearest first:
a server of a datacenter further away than that is a poor backup anyway, and
every request counts against the one deadline."""

ENV_KEYS = {
    "token": "CONSUL_HTTP_TOKEN",
    "ca_cert": "CONSUL_CACERT",
    "client_cert": "CONSUL_CLIENT_CERT",
    "client_key": "CONSUL_CLIENT_KEY",
    "tls_server_name": "CONSUL_TLS_SERVER_NAME",
    "verify": "CONSUL_HTTP_SSL_VERIFY",
}
"""Consul's own environment variables, by the setting each one fills."""

_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
"""What Go's strconv.ParseBool reads, with which Consul reads CONSUL_HTTP_SSL_VERIFY."""


def parse_verify(raw: str) -> bool:
    """``CONSUL_HTTP_SSL_VERIFY`` as Consul's CLI reads it (Go's ``strconv.ParseBool``).

    Consul turns verification off for a value it cannot read (it warns, and
    goes on unverified); here such a value is an error instead, so a typo
    never turns a certificate check off silently.

    Raises:
        ValueError: a value ParseBool refuses; the message names the variable.
    """
    if raw in _GO_TRUE:
        return True
    if raw in _GO_FALSE:
        return False
    shown = repr(raw[:40])
    raise ValueError(f"CONSUL_HTTP_SSL_VERIFY must be true or false (as Go reads it), got {shown}")


@dataclass(frozen=True, slots=True)
class ConsulSettings:
    """Where the Consul agent is, how to talk to it, and what to ask it for.

    Attributes:
        addr: the agent's URL (``consul_addr``); required, since only it
            turns Consul discovery on.
        token: the ACL token sent as ``X-Consul-Token``; empty sends none.
            Kept out of ``repr``, so a logged settings object never shows it.
        ca_cert: a CA bundle to verify the agent's certificate with.
        client_cert: a client certificate (PEM) for mTLS.
        client_key: its key (PEM).
        tls_server_name: the name the agent's certificate must carry (the
            URL's host when empty).
        verify: verify the agent's certificate (off only when asked).
        service: the service asked for (``consul_service``).
        tag: the tag its entries must carry (``consul_tag``); empty asks
            for every entry of the service.
    """

    addr: str
    token: str = field(default="", repr=False)
    ca_cert: str = ""
    client_cert: str = ""
    client_key: str = ""
    tls_server_name: str = ""
    verify: bool = True
    service: str = DEFAULT_SERVICE
    tag: str = DEFAULT_TAG

    def __post_init__(self) -> None:
        if not self.addr:
            raise ValueError("consul_addr is empty: Consul discovery is off")
        if not self.service:
            raise ValueError("consul_service must not be empty")

    @classmethod
    def from_env(
        cls,
        addr: str,
        *,
        service: str = DEFAULT_SERVICE,
        tag: str = DEFAULT_TAG,
        environ: Mapping[str, str] | None = None,
    ) -> ConsulSettings:
        """The settings for ``consul_addr``, with Consul's variables (:data:`ENV_KEYS`).

        An empty variable counts as unset, as Consul's CLI has it.

        Args:
            addr: ``consul_addr``.
            service: ``consul_service``.
            tag: ``consul_tag``.
            environ: the environment (``os.environ`` by default).

        Raises:
            ValueError: ``addr`` is empty, or ``CONSUL_HTTP_SSL_VERIFY`` is
                not a boolean.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for key, var in ENV_KEYS.items():
            raw = environ.get(var, "")
            if raw:
                values[key] = parse_verify(raw) if key == "verify" else raw
        return cls(addr=addr, service=service, tag=tag, **values)

    def client_tls(self) -> ClientTls:
        """The TLS settings, each file named by its variable in an error."""
        return ClientTls(
            ca_cert=self.ca_cert,
            client_cert=self.client_cert,
            client_key=self.client_key,
            skip_verify=not self.verify,
            named=ENV_KEYS,
        )


class ConsulSource:
    """Consul's catalog as a :class:`~.source.DiscoverySource`.

    ``discover`` asks ``/v1/catalog/datacenters``, then for at most
    :data:`MAX_DATACENTERS` of them, in the agent's order,
    ``/v1/health/service/<service>?dc=<dc>&tag=<tag>&passing=true``, and
    returns the servers of the first datacenter that lists any.

    A datacenter whose request fails (no answer, a bad status, a reply out
    of bounds or of a bad shape) is remembered and the next one asked, as
    Nomad's client does: one broken datacenter must not hide the servers of
    the next (and a token local to its own datacenter is refused by the
    others). A discovery in which no datacenter listed a server and one
    failed raises :class:`DiscoveryError`, so a broken catalog is never read
    as an empty one; one in which every datacenter answered and none listed
    a server returns ``()``. The datacenters' request failing, the deadline
    passing or :meth:`close` raise at once.

    An entry that names no server (an address that does not parse, a port
    outside 1-65535) is skipped, and counted in one rate-limited warning
    per discovery; a datacenter whose entries are all skipped lists none.
    A 401 or 403 is logged once, as an error naming ``CONSUL_HTTP_TOKEN``.

    One ``discover`` at a time (the discovery's own thread); ``close`` may
    be called from any thread.

    Args:
        settings: the agent and what to ask it.
        max_servers: the most entries decoded from one reply, and servers returned.
        deadline_s: the bound on one whole discovery, every request included.
        max_body_bytes: the largest reply read, on the wire and decoded.
        timeout_s: the bound on each socket operation (each waits no longer
            than what is left of the deadline, too).
        client: the HTTP client (tests); one from
            :func:`~..http_fetch.make_fetch_client` by default, without
            which neither the deadline on every socket operation nor
            :meth:`close` ending a fetch in flight hold.
        clock: monotonic seconds (tests).

    Raises:
        ValueError: a bound is not positive, or a certificate file is
            missing or unusable (named with its variable).
    """

    def __init__(
        self,
        settings: ConsulSettings,
        *,
        max_servers: int,
        deadline_s: float,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        timeout_s: float = 5.0,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_servers < 1 or deadline_s <= 0 or max_body_bytes < 1:
            raise ValueError("max_servers, deadline_s and max_body_bytes must be positive")
        if client is None:
            headers = {"X-Consul-Token": settings.token} if settings.token else {}
            client = make_fetch_client(
                settings.addr, tls=settings.client_tls(), headers=headers, timeout_s=timeout_s
            )
        self._client = client
        self._http = HttpFetcher(
            client,
            tls_server_name=settings.tls_server_name,
            max_body_bytes=max_body_bytes,
            deadline_s=deadline_s,
            clock=clock,
        )
        self._settings = settings
        self._health_path = "/v1/health/service/" + quote(settings.service, safe="")
        self._datacenters = datacenters_decoder()
        self._entries = entries_decoder(max_servers)
        self._max_servers = max_servers
        self._deadline_s = deadline_s
        self._clock = clock
        self._closed = threading.Event()
        self._busy = threading.Lock()
        self._refusals = TokenRefusals(log, "consul", ENV_KEYS["token"])
        self._peer_log = PeerLog(log, clock=clock)

    @property
    def name(self) -> SourceName:
        return "consul"

    def close(self) -> None:
        """End a ``discover`` in flight at once; every later one raises DiscoveryError.

        The fetch in flight ends when its sockets are shut down (the fetch
        client's abort); then the client's pool is closed, by whichever of
        this call and that ``discover`` is last, since closing it under a
        fetch could race with it. This call waits at most a second for that.
        """
        self._closed.set()
        self._http.abort()
        if self._busy.acquire(timeout=1.0):
            try:
                self._client.close()
            finally:
                self._busy.release()

    def discover(self) -> tuple[Address, ...]:
        """The servers of the first datacenter that lists any; ``()`` when none does.

        Raises:
            DiscoveryError: closed; the datacenters could not be had; the
                deadline passed; or no datacenter listed a server and one
                failed.
        """
        with self._busy:
            try:
                if self._closed.is_set():
                    raise DiscoveryError("consul: closed")
                return self._discover(self._clock() + self._deadline_s)
            finally:
                if self._closed.is_set():
                    self._client.close()

    def _discover(self, deadline_at: float) -> tuple[Address, ...]:
        try:
            datacenters: list[str] = self._get(
                "/v1/catalog/datacenters", None, self._datacenters, deadline_at
            )
        except FetchError as exc:
            self._refusals.check(exc)
            raise DiscoveryError(f"consul: {exc}") from None
        failures: list[FetchError] = []
        for dc in datacenters[:MAX_DATACENTERS]:
            params = {"dc": dc, "passing": "true"}
            if self._settings.tag:
                params["tag"] = self._settings.tag
            try:
                entries = self._get(self._health_path, params, self._entries, deadline_at)
            except FetchError as exc:
                where = f"{exc} (datacenter {dc[:64]!r})"
                failed = FetchError(where, status=exc.status, kind=exc.kind)
                self._refusals.check(failed)
                failures.append(failed)
                continue
            found = servers_in(entries, self._max_servers)
            if found.skipped:
                self._peer_log.warning(
                    "skipped",
                    "consul: datacenter %r: skipped %d of %d entries of %r naming no server"
                    " (an address that does not parse or a port outside 1-65535), the first: %s",
                    dc[:64],
                    found.skipped,
                    len(entries),
                    self._settings.service,
                    found.first_skipped,
                )
            if found.servers:
                if failures:
                    self._peer_log.warning(
                        "datacenter_failed",
                        "consul: found servers in datacenter %r after %d failed, the first: %s",
                        dc[:64],
                        len(failures),
                        failures[0],
                    )
                return found.servers
        if failures:
            raise DiscoveryError(
                f"consul: no datacenter listed a server of {self._settings.service!r};"
                f" {len(failures)} of {min(len(datacenters), MAX_DATACENTERS)} failed,"
                f" the first: {failures[0]}"
            )
        return ()

    def _get(
        self,
        path: str,
        params: Mapping[str, str] | None,
        decoder: msgspec.json.Decoder[Any],
        deadline_at: float,
    ) -> Any:
        """One decoded fetch within what is left of the discovery's deadline.

        Raises:
            DiscoveryError: closed, or the deadline has passed (before the
                fetch or during it): the discovery ends, and no further
                datacenter is asked.
            FetchError: the fetch failed otherwise.
        """
        left = deadline_at - self._clock()
        if left <= 0:
            raise self._late(path)
        try:
            return self._http.get_decoded(path, decoder, params, deadline_s=left)
        except FetchError:
            if self._closed.is_set():
                raise DiscoveryError("consul: closed") from None
            if self._clock() >= deadline_at:
                raise self._late(path) from None
            raise

    def _late(self, path: str) -> DiscoveryError:
        return DiscoveryError(
            f"consul: GET {path}: the discovery took longer than its {self._deadline_s:g} s"
        )
