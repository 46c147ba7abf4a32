"""Heartbeats from a Nomad cluster's HTTP API (docs/protocol.md section 7).

:class:`NomadPoller` asks a Nomad agent for ``/v1/agent/members``,
``/v1/status/leader`` and (at most every ``nodes_refresh_s``) ``/v1/nodes``,
and turns the answers into a :class:`~rpcproxy.proxy.Heartbeat`. One
implementation serves both ``rpcproxy publish --nomad-addr`` (which puts the
heartbeats on the bus) and ``serve`` with ``nomad_addr`` (which hands them to
the proxy in process: :class:`NomadBridge`).

Every response is validated whole with msgspec before anything is taken from
it, and bounded (bytes read, members decoded): a broken or hostile API gets
a logged failure and publishes nothing, and a fetch that finds no server
publishes nothing either, so a broken API never empties a proxy's list.

The fetches themselves are :mod:`.http_fetch`'s, with every bound it has:
each completes or fails within its own deadline (:func:`~.http_fetch.fetch_deadline`
of the poll interval), a body is bounded on the wire and after decoding as
it streams, and :meth:`NomadPoller.stop` ends a fetch in flight at once.
What is Nomad's is here: the settings from Nomad's environment variables,
the three endpoints and their shapes, the poller and the bridge. The agent
may be on a Unix socket (``unix:///path``: the Task API of Nomad 1.5+, on
``${NOMAD_SECRETS_DIR}/api.sock``), with the same bounds: no TLS applies
there, and a token always does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import httpx
import msgspec
import zmq
from msgspec import Meta

from rpcproxy.bus.service.agent_address import UNIX_PREFIX, AgentAddress, parse_agent_address
from rpcproxy.bus.service.codec import encode_heartbeat
from rpcproxy.bus.service.http_fetch import (
    DEFAULT_MAX_BODY_BYTES,
    MAX_FETCH_DEADLINE_S,
    ClientTls,
    FetchClient,
    FetchError,
    HttpFetcher,
    TokenRefusals,
    fetch_deadline,
    make_fetch_client,
)
from rpcproxy.bus.wire import heartbeat_topic
from rpcproxy.log_gate import PeerLog
from rpcproxy.proxy import Heartbeat, HeartbeatServer

log = logging.getLogger(__name__)

DEFAULT_NODES_REFRESH_S = 300.0
"""How often ``/v1/nodes`` is fetched at most: it costs the server O(nodes)."""

DEFAULT_MAX_MEMBERS = 1024
"""The most members (and nodes, counted) decoded from one response."""

MAX_BACKOFF_S = 60.0
"""The longest wait between retries of a failing API."""

ENV_KEYS = {
    "addr": "NOMAD_ADDR",
    "token": "NOMAD_TOKEN",
    "region": "NOMAD_REGION",
    "ca_cert": "NOMAD_CACERT",
    "client_cert": "NOMAD_CLIENT_CERT",
    "client_key": "NOMAD_CLIENT_KEY",
    "tls_server_name": "NOMAD_TLS_SERVER_NAME",
    "skip_verify": "NOMAD_SKIP_VERIFY",
}
"""Nomad's own environment variables, by the setting each one fills."""

TOKEN_SOURCE = "NOMAD_TOKEN / --token"
"""Where the token is set, as a refusal's error line names it."""

_TLS_KEYS = ("ca_cert", "client_cert", "client_key", "tls_server_name", "skip_verify")

_TASK_API_HINT = (
    "; a unix:// agent (Nomad's Task API) always requires one: a task gets its"
    " workload identity as NOMAD_TOKEN with identity { env = true }"
)


class NomadApiError(FetchError):
    """A fetch from the Nomad API failed (no answer, a bad status or shape).

    ``status`` and ``kind`` as :class:`~.http_fetch.FetchError`'s; the
    poller's warnings are rate-limited per kind.
    """


@dataclass(frozen=True, slots=True)
class NomadApiSettings:
    """Where the Nomad API is and how to talk to it.

    Attributes:
        addr: the agent's URL (``http://127.0.0.1:4646`` by default, as
            Nomad's), or ``unix:///abs/path`` for its Task API.
        token: the ACL token sent as ``X-Nomad-Token``; empty sends none.
        region: the region whose servers are kept.
        ca_cert: a CA bundle to verify the API's certificate with.
        client_cert: a client certificate (PEM) for mTLS.
        client_key: its key (PEM).
        tls_server_name: the name the API's certificate must carry.
        skip_verify: do not verify the API's certificate at all.
    """

    addr: str = "http://127.0.0.1:4646"
    token: str = field(default="", repr=False)
    region: str = "global"
    ca_cert: str = ""
    client_cert: str = ""
    client_key: str = ""
    tls_server_name: str = ""
    skip_verify: bool = False

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, **overrides: str | bool | None
    ) -> NomadApiSettings:
        """Nomad's environment variables, each overridden by a non-None keyword.

        Args:
            env: the environment (``os.environ`` by default).
            overrides: settings by attribute name (flags); None leaves the variable's.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for key, var in ENV_KEYS.items():
            if var in env and env[var] != "":
                raw = env[var]
                values[key] = _truthy(raw) if key == "skip_verify" else raw
        for key, value in overrides.items():
            if key not in ENV_KEYS:
                raise TypeError(f"unknown Nomad API setting {key!r}")
            if value is not None:
                values[key] = value
        return replace(cls(), **values)

    def address(self) -> AgentAddress:
        """Where requests go: :attr:`addr` as a URL, or a Unix socket.

        Raises:
            ValueError: :attr:`addr` is neither form (a relative socket path, say).
        """
        try:
            return parse_agent_address(self.addr)
        except ValueError as exc:
            raise ValueError(
                f"the Nomad agent's address (NOMAD_ADDR / --nomad-addr): {exc}"
            ) from None

    @property
    def on_unix_socket(self) -> bool:
        """Whether the agent is on a Unix socket (``unix://``: no TLS, a token required)."""
        return self.addr.startswith(UNIX_PREFIX)

    def tls_set(self) -> tuple[str, ...]:
        """The variables of the TLS settings given (``NOMAD_CACERT``...)."""
        return tuple(ENV_KEYS[key] for key in _TLS_KEYS if getattr(self, key))


def _truthy(raw: str) -> bool:
    # Nomad parses NOMAD_SKIP_VERIFY with strconv.ParseBool.
    return raw.strip().lower() in {"1", "t", "true"}


class _Member(msgspec.Struct):
    # Only what section 7 reads; msgspec ignores the other keys.
    Addr: str = ""
    Status: str = ""
    Tags: dict[str, str] = {}


def _members_type(max_members: int) -> type[msgspec.Struct]:
    # Built at run time (defstruct), since the bound is a setting; a class
    # statement would see the annotation as a string under future annotations.
    members = Annotated[list[_Member], Meta(max_length=max_members)]
    return msgspec.defstruct("_Members", [("Members", members), ("ServerName", str, "")])


def member_server(member: Any, region: str) -> HeartbeatServer | None:
    """The server a member is, under section 7's mapping, or None.

    Args:
        member: one decoded entry of ``Members``.
        region: the proxy's region.
    """
    tags: dict[str, str] = member.Tags
    if member.Status != "alive" or tags.get("role") != "nomad":
        return None
    if tags.get("region") != region or "port" not in tags:
        return None
    host = tags.get("rpc_addr") or member.Addr
    if not host:
        return None
    try:
        port = int(tags["port"])
        major = int(tags.get("vsn", "1"))
        minor = int(tags.get("mvn", "1"))
    except ValueError:
        return None
    if not 0 < port < 65536:
        return None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address, bracketed as Nomad does
    return HeartbeatServer(
        rpc_advertise_addr=f"{host}:{port}",
        rpc_major_version=major,
        rpc_minor_version=minor,
        datacenter=tags.get("dc", ""),
    )


def make_client(settings: NomadApiSettings, *, timeout_s: float = 5.0) -> FetchClient:
    """An HTTP client for the Nomad API: TLS as configured, the token as ``X-Nomad-Token``.

    A :func:`~.http_fetch.make_fetch_client`, so :class:`NomadFetcher`
    bounds each fetch as a whole and can end one in flight, over TCP or on
    a Unix socket alike. On a socket no TLS applies (Nomad's own client
    sends plain HTTP there too): TLS settings given are ignored, with one
    warning naming them, rather than refused, so an environment set up for
    a TCP agent still works pointed at the socket.

    Args:
        settings: the API's address and credentials.
        timeout_s: the bound on each socket operation (connect, read, write);
            a whole fetch has its own (:func:`~.http_fetch.fetch_deadline`).

    Raises:
        ValueError: the address is not one, or a certificate file is missing
            or unusable; it names the file and its variable.
    """
    address = settings.address()
    headers = {"X-Nomad-Token": settings.token} if settings.token else {}
    if address.unix_socket:
        ignored = settings.tls_set()
        if ignored:
            log.warning(
                "nomad API: %s ignored: %s is a Unix socket, where no TLS applies",
                ", ".join(ignored),
                settings.addr,
            )
        return make_fetch_client(
            address.url, headers=headers, timeout_s=timeout_s, unix_socket=address.unix_socket
        )
    tls = ClientTls(
        ca_cert=settings.ca_cert,
        client_cert=settings.client_cert,
        client_key=settings.client_key,
        skip_verify=settings.skip_verify,
        named=ENV_KEYS,
    )
    return make_fetch_client(address.url, tls=tls, headers=headers, timeout_s=timeout_s)


class NomadFetcher:
    """Fetches and validates the three endpoints section 7 reads.

    Each fetch is an :class:`~.http_fetch.HttpFetcher`'s: it completes or
    fails within its deadline (``deadline_s``, or the one its caller
    passes), and its body is bounded on the wire and decoded. With a client
    from :func:`make_client` the deadline holds on every socket operation
    and :meth:`abort` ends a fetch in flight; with another client only
    between the body's chunks.

    Args:
        client: the httpx client (:func:`make_client`).
        settings: for the region and the server name.
        max_members: the most members decoded from ``/v1/agent/members``.
        max_body_bytes: the largest body read from any endpoint, on the wire
            and decoded.
        deadline_s: the bound on one whole fetch when the caller gives none.
        clock: monotonic seconds (injected by tests).
    """

    def __init__(
        self,
        client: httpx.Client,
        settings: NomadApiSettings,
        *,
        max_members: int = DEFAULT_MAX_MEMBERS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        deadline_s: float = MAX_FETCH_DEADLINE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = HttpFetcher(
            client,
            # No TLS on a Unix socket, so no name to check.
            tls_server_name="" if settings.on_unix_socket else settings.tls_server_name,
            max_body_bytes=max_body_bytes,
            deadline_s=deadline_s,
            clock=clock,
        )
        self._settings = settings
        self._members_decoder = msgspec.json.Decoder(_members_type(max_members))
        self._leader_decoder = msgspec.json.Decoder(str)
        # Nodes are only counted: each one's content is left unchecked.
        nodes = Annotated[list[msgspec.Raw], Meta(max_length=max(max_members, 100_000))]
        self._nodes_decoder = msgspec.json.Decoder(nodes)

    @property
    def settings(self) -> NomadApiSettings:
        return self._settings

    def abort(self) -> None:
        """End a fetch in flight now and fail every later one (for stop)."""
        self._http.abort()

    def get(
        self, path: str, params: Mapping[str, str] | None = None, *, deadline_s: float | None = None
    ) -> bytes:
        """The body of a 200 answer to ``GET path``, bounded in bytes and in time.

        Args:
            path: the endpoint.
            params: its query.
            deadline_s: the bound on the whole fetch (the fetcher's by default).

        Raises:
            NomadApiError: no answer, a status other than 200, a body too
                long, badly encoded or not all in by the deadline.
        """
        with _as_nomad_api_error():
            return self._http.get(path, params, deadline_s=deadline_s)

    def members(
        self, *, deadline_s: float | None = None
    ) -> tuple[tuple[HeartbeatServer, ...], str]:
        """The region's servers and the agent's ``ServerName``."""
        with _as_nomad_api_error():
            decoded: Any = self._http.get_decoded(
                "/v1/agent/members", self._members_decoder, deadline_s=deadline_s
            )
        servers = []
        seen: set[str] = set()
        for member in decoded.Members:
            server = member_server(member, self._settings.region)
            if server is not None and server.rpc_advertise_addr not in seen:
                seen.add(server.rpc_advertise_addr)
                servers.append(server)
        return tuple(servers), decoded.ServerName

    def leader(self, *, deadline_s: float | None = None) -> str:
        """``/v1/status/leader``: the leader's RPC address, a JSON string."""
        with _as_nomad_api_error():
            return self._http.get_decoded(
                "/v1/status/leader", self._leader_decoder, deadline_s=deadline_s
            )

    def num_nodes(self, *, deadline_s: float | None = None) -> int:
        """The length of ``/v1/nodes?stale=true``."""
        with _as_nomad_api_error():
            nodes = self._http.get_decoded(
                "/v1/nodes", self._nodes_decoder, {"stale": "true"}, deadline_s=deadline_s
            )
        return len(nodes)


@contextlib.contextmanager
def _as_nomad_api_error() -> Iterator[None]:
    """A fetch's :class:`~.http_fetch.FetchError` as a :class:`NomadApiError`."""
    try:
        yield
    except FetchError as exc:
        # Raised from what the fetch's error was raised from (the httpx
        # error, the msgspec one, or nothing for a bound crossed): the same
        # chain as a NomadApiError raised in the fetch itself.
        raise NomadApiError(str(exc), status=exc.status, kind=exc.kind) from exc.__cause__


class NomadPoller:
    """Polls the API and hands a :class:`Heartbeat` to ``emit`` for each good poll.

    A poll that fails, or finds no server, emits nothing and is retried with
    a doubling backoff (``interval_s`` up to :data:`MAX_BACKOFF_S`); its
    warning is rate-limited per kind of failure (the agent decides how often
    it fails). A 401 or 403 is logged once as an error naming the token
    (never its value). Each fetch has a deadline of its own
    (``fetch_deadline_s``), and :meth:`stop` ends one in flight.
    ``seq`` grows with every heartbeat emitted. Polling every ``interval_s``
    and emitting each good poll covers both section 7's rules: one heartbeat
    per interval, and the members' changes within one.

    Args:
        fetcher: the validated fetches.
        emit: called with each heartbeat (on the poller's thread).
        interval_s: seconds between polls.
        nodes_refresh_s: seconds between two fetches of ``/v1/nodes`` at least.
        publisher: the heartbeats' ``publisher``; the agent's ``ServerName`` by default.
        fetch_deadline_s: the bound on each fetch; :func:`fetch_deadline` of
            ``interval_s`` by default.
        clock: monotonic seconds (injected by tests).
        wait: waits up to its argument in seconds, True when stopped (injected
            by tests; an Event's ``wait`` by default).
    """

    def __init__(
        self,
        fetcher: NomadFetcher,
        emit: Callable[[Heartbeat], None],
        *,
        interval_s: float = 10.0,
        nodes_refresh_s: float = DEFAULT_NODES_REFRESH_S,
        publisher: str | None = None,
        fetch_deadline_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self._fetcher = fetcher
        self._emit = emit
        self._interval_s = interval_s
        self._fetch_deadline_s = (
            fetch_deadline(interval_s) if fetch_deadline_s is None else fetch_deadline_s
        )
        self._peer_log = PeerLog(log, clock=clock)
        self._nodes_refresh_s = nodes_refresh_s
        self._publisher = publisher
        self._clock = clock
        self._stop = threading.Event()
        self._wait = wait if wait is not None else self._stop.wait
        self._nodes: int | None = None
        self._nodes_at: float | None = None
        self._failures = 0
        self._refusals = _token_refusals(fetcher.settings)
        self._thread: threading.Thread | None = None
        self.seq = 0

    def poll_once(self) -> Heartbeat | None:
        """One poll: the heartbeat emitted, or None when nothing was."""
        deadline_s = self._fetch_deadline_s
        try:
            servers, server_name = self._fetcher.members(deadline_s=deadline_s)
            leader = self._fetcher.leader(deadline_s=deadline_s)
            num_nodes = self._refresh_nodes()
        except NomadApiError as exc:
            self._failed(exc)
            return None
        if not servers:
            self._failures += 1
            self._peer_log.warning(
                "empty",
                "nomad API: no alive server in the region; publishing nothing, retrying in %.3g s",
                self.next_delay(),
            )
            return None
        self._failures = 0
        self.seq += 1
        heartbeat = Heartbeat(
            servers=servers,
            num_nodes=num_nodes,
            leader_rpc_addr=leader,
            publisher=self._publisher or server_name or "nomad",
            seq=self.seq,
        )
        self._emit(heartbeat)
        return heartbeat

    def _refresh_nodes(self) -> int:
        now = self._clock()
        due = self._nodes_at is None or now - self._nodes_at >= self._nodes_refresh_s
        if due or self._nodes is None:
            self._nodes = self._fetcher.num_nodes(deadline_s=self._fetch_deadline_s)
            self._nodes_at = now
        return self._nodes

    def _failed(self, exc: NomadApiError) -> None:
        self._failures += 1
        if self._stop.is_set():
            # stop() ended the fetch: nothing went wrong with the agent.
            log.debug("nomad API: %s (stopping)", exc)
            return
        if self._refusals.check(exc):
            return
        self._peer_log.warning(
            exc.kind,
            "nomad API: %s; publishing nothing, retrying in %.3g s",
            exc,
            self.next_delay(),
        )

    def next_delay(self) -> float:
        """Seconds until the next poll: the interval, doubled per failure, capped."""
        if self._failures == 0:
            return self._interval_s
        factor = 2.0 ** min(self._failures - 1, 16)
        return min(self._interval_s * factor, max(MAX_BACKOFF_S, self._interval_s))

    def run(self) -> None:
        """Polls until :meth:`stop` (or the injected ``wait`` says stopped)."""
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # a bug must not end the bridge silently
                self._failures += 1
                log.exception("nomad poller: unexpected error")
            if self._wait(self.next_delay()):
                return

    def start(self) -> None:
        """Runs :meth:`run` on a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="rpcproxy-nomad", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stops polling, ends a fetch in flight at once, and joins the thread."""
        self._stop.set()
        self._fetcher.abort()
        if self._thread is not None:
            self._thread.join(timeout_s)


def _token_refusals(settings: NomadApiSettings) -> TokenRefusals:
    """How a refused token is logged: naming the token, or saying none is set (and,
    for the Task API, which requires one whatever the ACLs, where a task gets it)."""
    if settings.token:
        return TokenRefusals(log, "nomad API", TOKEN_SOURCE)
    hint = _TASK_API_HINT if settings.on_unix_socket else ""
    return TokenRefusals(log, "nomad API", TOKEN_SOURCE, token_set=False, hint=hint)


class NomadBridge:
    """``serve`` with ``nomad_addr``: the poller on a thread of its own, in process.

    Its heartbeats take the heartbeat socket's own path: they are published
    on an inproc PUB socket that the heartbeat SUB socket connects to, so the
    same validation, conflation and bounded batches apply
    (bus/service/heartbeats.py), and nothing else reaches the proxy.

    Args:
        context: the process's ZeroMQ context.
        endpoint: the inproc endpoint the PUB socket binds.
        fetcher: the validated fetches.
        region: heartbeats go out on ``heartbeat/<region>``.
        interval_s: seconds between polls.
        nodes_refresh_s: seconds between two ``/v1/nodes`` fetches at least.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        endpoint: str,
        fetcher: NomadFetcher,
        *,
        region: str,
        interval_s: float,
        nodes_refresh_s: float = DEFAULT_NODES_REFRESH_S,
    ) -> None:
        self._context = context
        self._endpoint = endpoint
        self._topic = heartbeat_topic(region)
        self._poller = NomadPoller(
            fetcher, self._send, interval_s=interval_s, nodes_refresh_s=nodes_refresh_s
        )
        self._pub: zmq.Socket[bytes] | None = None
        self._thread = threading.Thread(target=self._run, name="rpcproxy-nomad", daemon=True)

    def start(self) -> None:
        """Binds the PUB socket (here, before the thread uses it) and starts polling."""
        pub: zmq.Socket[bytes] = self._context.socket(zmq.PUB)
        pub.linger = 0
        try:
            pub.bind(self._endpoint)
        except zmq.ZMQError:
            pub.close()
            raise
        self._pub = pub
        # From Thread.start() on, only the thread uses (and closes) the socket.
        self._thread.start()

    def _run(self) -> None:
        try:
            self._poller.run()
        finally:
            if self._pub is not None:
                self._pub.close()

    def _send(self, heartbeat: Heartbeat) -> None:
        assert self._pub is not None
        self._pub.send_multipart([self._topic, encode_heartbeat(heartbeat)])

    def stop(self, timeout_s: float) -> None:
        """Stops polling; a fetch in flight ends at once (its sockets are shut down)."""
        self._poller.stop()
        if self._thread.ident is not None:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
