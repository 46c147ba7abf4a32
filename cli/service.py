"""The composition root: the one place that knows proxy, actors and bus together.

:class:`ProxyService` starts the parts in dependency order, recording each
one that started (:mod:`rpcproxy.cli.parts`), and stops those in the order
:data:`STOP_ORDER` declares, also after a failed start, so that leaves nothing
running. Input stops first (heartbeats, then queries, which answer what is
still pending with ``unavailable``), then the actors, then the ZeroMQ context.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pykka
import zmq

from rpcproxy.actors import ProxyActor, ProxySettings, SnapshotBox
from rpcproxy.actors.persist import NotRegularFileError, PendingState, PersistActor, StateFile
from rpcproxy.bus.probes import (
    NomadProber,
    NomadTls,
    TcpProber,
    TlsSetupError,
    WindowedProber,
    ZmqProber,
    load_tls,
)
from rpcproxy.bus.service.codec import Decoder, new_instance_id
from rpcproxy.bus.service.counts import NO_COUNTS, ServiceCounts
from rpcproxy.bus.service.curve import (
    HEARTBEAT_DOMAIN,
    AllowList,
    CurveError,
    CurveServer,
    load_key_pair,
)
from rpcproxy.bus.service.events import EventPublisher
from rpcproxy.bus.service.health import health_routes
from rpcproxy.bus.service.heartbeats import HeartbeatListener
from rpcproxy.bus.service.query import QueryServer
from rpcproxy.cli.config import Config, ConfigError
from rpcproxy.cli.parts import (
    ActorPart,
    ChildActorPart,
    CurvePart,
    Parts,
    ThreadPart,
    Unwatched,
)
from rpcproxy.proxy import LocalIdentity, ProxyState, RebalanceTiming

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from rpcproxy.bus.service.discovery import DiscoverySource
    from rpcproxy.bus.service.nomad_http import NomadBridge

log = logging.getLogger(__name__)

_ACTOR_START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 6.0
"""How long :meth:`ProxyService.stop` waits for all its parts, together.

Under the 10 s docs/protocol.md section 8 allows from SIGTERM to exit, with room
for ``serve``'s last sweep of leftover actors."""


def settings_from(config: Config, restored: ProxyState | None = None) -> ProxySettings:
    return ProxySettings(
        local=LocalIdentity(
            datacenter=config.datacenter,
            rpc_major_version=config.rpc_major_version,
            rpc_minor_version=config.rpc_minor_version,
        ),
        timing=RebalanceTiming(
            min_reuse_s=config.min_reuse_s,
            jitter_fraction=config.jitter_fraction,
            conns_per_sec_per_server=config.conns_per_sec_per_server,
        ),
        api_mismatch_log_interval_s=config.api_mismatch_log_interval_s,
        primary_servers=tuple(config.primary_servers),
        backup_servers=tuple(config.backup_servers),
        restored=restored or ProxyState(),
        max_servers=config.max_servers,
    )


MIN_LIBZMQ = (4, 3, 3)


def libzmq_problem(version: tuple[int, int, int]) -> str | None:
    """Why this libzmq must not be used, or None.

    Before 4.3.3 a peer could make libzmq overflow its heap (CVE-2020-15166),
    and every socket of the proxy faces peers.
    """
    if tuple(version) < MIN_LIBZMQ:
        found = ".".join(map(str, version))
        needed = ".".join(map(str, MIN_LIBZMQ))
        return f"libzmq {found} is older than {needed} (CVE-2020-15166); refusing to start"
    return None


def curve_from(config: Config, metrics: ServiceCounts) -> CurveServer | None:
    """The CURVE server side, when configured; errors name the key at fault."""
    if not config.curve_secret_key_file:
        return None
    if not zmq.has("curve"):
        raise OSError("curve_secret_key_file: this libzmq was built without CURVE")
    try:
        keys = load_key_pair(config.curve_secret_key_file)
    except CurveError as exc:
        raise OSError(f"curve_secret_key_file: {exc}") from None
    try:
        allow = AllowList(
            config.curve_allowed_dir,
            on_refused=lambda domain: (
                metrics.rejected("curve") if domain == HEARTBEAT_DOMAIN else None
            ),
        )
    except CurveError as exc:
        raise OSError(f"curve_allowed_dir: {exc}") from None
    log.info("CURVE on: %d allowed keys in %s", len(allow.keys), config.curve_allowed_dir)
    return CurveServer(keys, allow)


def nomad_tls_from(config: Config) -> NomadTls | None:
    """The TLS of nomad pings, when ``nomad_tls_ca_file`` is set (section 4.1).

    Raises:
        ConfigError: a file is missing, unreadable or not a certificate or
            key; it names the key, and ``serve`` exits 2.
    """
    if not config.nomad_tls_ca_file:
        return None
    try:
        return load_tls(
            ca_file=config.nomad_tls_ca_file,
            cert_file=config.nomad_tls_cert_file,
            key_file=config.nomad_tls_key_file,
            region=config.region,
            verify_server_hostname=config.nomad_tls_verify_server_hostname,
        )
    except TlsSetupError as exc:
        raise ConfigError(f"nomad_tls_{exc.which}", exc.message) from None


NOMAD_BRIDGE_ENDPOINT = "inproc://rpcproxy-nomad-bridge"
"""Where ``nomad_addr``'s bridge publishes and the heartbeat socket listens."""


def nomad_bridge_from(config: Config, context: zmq.Context[Any]) -> NomadBridge | None:
    """The section 7 bridge, when ``nomad_addr`` is set; credentials from Nomad's env vars.

    Raises:
        ConfigError: a NOMAD_CACERT / NOMAD_CLIENT_CERT / NOMAD_CLIENT_KEY file
            cannot be used; ``serve`` exits 2 naming ``nomad_addr``.
    """
    if not config.nomad_addr:
        return None
    # Imported only when configured: the HTTP client is a few MiB of an idle proxy.
    from rpcproxy.bus.service.nomad_http import (  # noqa: PLC0415
        NomadApiSettings,
        NomadBridge,
        NomadFetcher,
        make_client,
    )

    settings = NomadApiSettings.from_env(addr=config.nomad_addr, region=config.region)
    try:
        # Not for stop(): NomadBridge.stop() aborts a fetch in flight at once
        # (its sockets are shut down). Within each whole fetch's deadline
        # (fetch_deadline(nomad_interval_s): 2 to 10 s), 2 s per socket step
        # (connect, TLS handshake, one read or write) fails a poll of an agent
        # gone silent after 2 s, not at the end of a 10 s deadline.
        client = make_client(settings, timeout_s=2.0)
    except (OSError, ValueError) as exc:
        raise ConfigError("nomad_addr", f"Nomad API TLS: {exc}") from None
    return NomadBridge(
        context,
        NOMAD_BRIDGE_ENDPOINT,
        NomadFetcher(client, settings, max_members=config.max_servers),
        region=config.region,
        interval_s=config.nomad_interval_s,
        nodes_refresh_s=config.nomad_nodes_refresh_s,
    )


def _discovery_sources(config: Config) -> list[DiscoverySource]:
    """The configured discovery sources; their clients are imported only when configured."""
    if not (config.consul_addr or config.discover_dns):
        return []
    from rpcproxy.cli.discovery import sources_from  # noqa: PLC0415 - see docstring

    return sources_from(config)


def prober_from(config: Config) -> WindowedProber:
    """The configured prober. It owns what it pings with (a ZeroMQ prober its
    own context), so a slow server never touches the service's sockets;
    ``close()`` it at stop to end a ping in flight.

    Raises:
        ConfigError: the TLS files of a nomad prober cannot be used.
    """
    if config.ping_method == "tcp":
        return TcpProber(timeout_s=config.ping_timeout_s)
    if config.ping_method == "nomad":
        return NomadProber(timeout_s=config.ping_timeout_s, tls=nomad_tls_from(config))
    return ZmqProber(
        region=config.region,
        rpc_major_version=config.rpc_major_version,
        timeout_s=config.ping_timeout_s,
        max_message_bytes=config.max_message_bytes,
    )


STOP_ORDER = (
    # Input first, so nothing new reaches the actors while they stop.
    "discovery",
    "nomad API bridge",
    "heartbeat socket",
    # Answers what is still pending with ``unavailable``.
    "query socket",
    # Ends a ping in flight at once, so the prober actor is free to stop.
    "probe engine",
    # Stops its own children; a child it gave up on is still running, and
    # still needs the ZeroMQ context.
    "proxy actor",
    # After the proxy, so its last change is the one written.
    "state persister",
    "events publisher",
    # Late: /healthz and /readyz answer "stopping" while the rest stops.
    "metrics HTTP front",
    "CURVE authenticator",
    # Stopped by the proxy actor, which logged any it gave up on.
    "rebalance timer",
    "prober",
)
"""Every part of a running service, in the order :meth:`ProxyService.stop` stops them."""


class ProxyService:
    """A running rpcproxy: actors, query socket, heartbeat socket, events socket."""

    def __init__(self, config: Config, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.box = SnapshotBox()
        self._started_at = time.monotonic()
        self._registry: CollectorRegistry | None = None
        self.metrics: ServiceCounts = NO_COUNTS
        if config.metrics:
            # Imported only when metrics are served: prometheus_client and the
            # HTTP modules it brings are about 9 MiB of an idle proxy.
            from rpcproxy.bus.service.metrics import Metrics  # noqa: PLC0415

            metrics = Metrics()
            metrics.watch(self.box, started_at=self._started_at)
            self.metrics, self._registry = metrics, metrics.registry
        self._rng = rng
        self._parts = Parts(STOP_ORDER, logged_by_owner=("rebalance timer", "prober"), log=log)
        self._context: zmq.Context[Any] | None = None
        # Handles the root wires parts with (and tests reach in through);
        # stopping and watching go through self._parts alone.
        self._events: pykka.ActorRef[EventPublisher] | None = None
        self._persist: pykka.ActorRef[PersistActor] | None = None
        self._proxy: pykka.ActorRef[ProxyActor] | None = None
        self._children: list[tuple[str, pykka.ActorRef[Any]]] = []
        self._query: QueryServer | None = None
        self._heartbeats: HeartbeatListener | None = None
        self._stale_warned = False
        self._stopping = False
        self.events_endpoint = ""

    def start(self) -> None:
        """Start every part; on any failure stop what started and re-raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        config = self.config
        # Before anything binds: a bad state_file, or TLS files that cannot
        # be used, are configuration errors.
        store = self._open_state_file()
        sources = _discovery_sources(config)
        prober = prober_from(config)
        self._parts.add(Unwatched("probe engine", lambda _budget_s: prober.close()))
        self._context = context = zmq.Context()
        curve = curve_from(config, self.metrics)
        if curve is not None:
            # ZAP must answer before the first CURVE socket binds.
            curve.start(context)
            self._parts.add(CurvePart(curve))
        # One id for this run, in every reply and every event (docs/protocol.md 1, 5).
        instance = new_instance_id()
        listeners = self._start_events(context, curve, instance)
        restored, on_change = self._start_persistence(store)
        proxy = self._start_proxy(prober, listeners, restored, on_change)
        # One decoder, built once: its wire types carry the max_servers bound.
        decoder = Decoder(config.max_servers)
        self._query = query = self._query_server(context, proxy, curve, decoder, instance)
        self._heartbeats = heartbeats = self._start_heartbeats(context, proxy, curve, decoder)
        if sources:
            from rpcproxy.cli.discovery import discoverer_from  # noqa: PLC0415 - as above

            discoverer = discoverer_from(config, sources, self.box, proxy, self.metrics)
            if discoverer is not None:
                discoverer.start()
                self._parts.add(ThreadPart("discovery", discoverer))
        if config.metrics:
            self._start_metrics_server(config.metrics)
        # The query socket opens last: a proxy that answers ping has every
        # other endpoint up too (a scrape right after it is never refused).
        query.start()
        self._parts.add(ThreadPart("query socket", query))
        log.info(
            "rpcproxy serving queries on %s, heartbeats on %s, events on %s",
            query.bound_endpoint,
            ", ".join(heartbeats.bound_endpoints + list(config.heartbeat_connect)),
            config.events or "(off)",
        )

    def _start_events(
        self, context: zmq.Context[Any], curve: CurveServer | None, instance: str
    ) -> list[pykka.ActorRef[Any]]:
        """The events publisher, when configured: the proxy actor's one listener."""
        config = self.config
        if not config.events:
            return []
        self._events = events = EventPublisher.start(
            context,
            config.events,
            curve=curve,
            instance=instance,
            refresh_s=config.events_refresh_s,
        )
        self._parts.add(ActorPart("events publisher", events))
        # Asking surfaces an on_start failure (a bind error) here, at start.
        self.events_endpoint = events.proxy().endpoint().get(timeout=_ACTOR_START_TIMEOUT_S)
        return [events]

    def _start_proxy(
        self,
        prober: WindowedProber,
        listeners: list[pykka.ActorRef[Any]],
        restored: ProxyState | None,
        on_change: Callable[[ProxyState], None] | None,
    ) -> pykka.ActorRef[ProxyActor]:
        """The proxy actor, once its on_start has run, and its children."""
        self._proxy = proxy = ProxyActor.start(
            settings_from(self.config, restored),
            prober,
            self.box,
            listeners=listeners,
            rng=self._rng,
            on_change=on_change,
            counters=self.metrics,
        )
        self._parts.add(ActorPart("proxy actor", proxy))
        # Mailboxes are FIFO, so an answered started() means on_start ran; a failed
        # on_start raises ActorDeadError here instead of running half-started.
        proxy.proxy().started().get(timeout=_ACTOR_START_TIMEOUT_S)
        self._children = proxy.proxy().children().get(timeout=_ACTOR_START_TIMEOUT_S)
        for name, ref in self._children:
            self._parts.add(ChildActorPart(name, ref))
        return proxy

    def _query_server(
        self,
        context: zmq.Context[Any],
        proxy: pykka.ActorRef[ProxyActor],
        curve: CurveServer | None,
        decoder: Decoder,
        instance: str,
    ) -> QueryServer:
        """The query socket, built now and started last (see :meth:`_start`)."""
        config = self.config
        return QueryServer(
            context,
            config.query,
            proxy,
            self.box,
            max_message_bytes=config.max_message_bytes,
            # Rebalance replies can wait one ping timeout behind a running rebalance.
            op_timeout_s=max(5.0, 2 * config.ping_timeout_s + 2.0),
            curve=curve,
            metrics=self.metrics,
            decoder=decoder,
            instance=instance,
            # Room for a few of the largest writes the configured bound allows.
            max_write_entries=4 * (1 + config.max_servers),
        )

    def _start_heartbeats(
        self,
        context: zmq.Context[Any],
        proxy: pykka.ActorRef[ProxyActor],
        curve: CurveServer | None,
        decoder: Decoder,
    ) -> HeartbeatListener:
        """The Nomad bridge, when configured, then the heartbeat socket it publishes to."""
        config = self.config
        nomad = nomad_bridge_from(config, context)
        if nomad is not None:
            nomad.start()
            self._parts.add(ThreadPart("nomad API bridge", nomad))
        heartbeats = HeartbeatListener(
            context,
            proxy,
            region=config.region,
            bind=config.heartbeat_bind,
            connect=config.heartbeat_connect
            + ((NOMAD_BRIDGE_ENDPOINT,) if nomad is not None else ()),
            max_message_bytes=config.max_message_bytes,
            curve=curve,
            metrics=self.metrics,
            decoder=decoder,
        )
        heartbeats.start()
        self._parts.add(ThreadPart("heartbeat socket", heartbeats))
        return heartbeats

    def _start_metrics_server(self, listen: str) -> None:
        from rpcproxy.bus.service.metrics import MetricsServer  # noqa: PLC0415 - as Metrics

        host, _, port = listen.rpartition(":")
        assert self._registry is not None  # made with Metrics when metrics is set
        try:
            server = MetricsServer(
                self._registry,
                host,
                int(port),
                routes=health_routes(self.box, self.stopping),
            )
        except OSError as exc:
            raise OSError(f"metrics: cannot listen on {listen}: {exc}") from exc
        server.start()
        self._parts.add(Unwatched("metrics HTTP front", server.stop))
        self.metrics_port = server.port

    def _open_state_file(self) -> StateFile | None:
        """The configured state file, checked, with a crashed save's leftovers removed.

        Raises:
            ConfigError: ``state_file`` names a FIFO, a directory or a device
                (reading it would hang or never end); ``serve`` exits 2.
            OSError: its directory is missing or not writable.
        """
        if not self.config.state_file:
            return None
        store = StateFile(self.config.state_file)
        directory = store.path.parent
        if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
            raise OSError(f"state_file: directory {directory} does not exist or is not writable")
        try:
            store.check()
        except NotRegularFileError as exc:
            raise ConfigError("state_file", str(exc)) from None
        for path in store.remove_leftovers():
            log.info("removed %s, left by a save that was interrupted", path)
        return store

    def _start_persistence(
        self, store: StateFile | None
    ) -> tuple[ProxyState | None, Callable[[ProxyState], None] | None]:
        """Load the saved state and start saving changes, when ``state_file`` is set."""
        if store is None:
            return None, None
        try:
            restored = store.load(max_servers=self.config.max_servers)
        except NotRegularFileError as exc:  # swapped for a FIFO since the check
            raise ConfigError("state_file", str(exc)) from None
        if restored is not None:
            log.info(
                "restored %d servers from %s (active %s)",
                len(restored.active),
                store.path,
                restored.head,
            )
        pending = PendingState()
        self._persist = PersistActor.start(store, pending)
        self._parts.add(ActorPart("state persister", self._persist))
        return restored, pending.offer

    def watch(self, now: float) -> list[str]:
        """Check on the running service: log heartbeat staleness, return dead parts.

        The serve loop calls this twice a second. A heartbeat older than
        ``heartbeat_stale_s`` gives one warning, and one info line when
        heartbeats come back.
        """
        last = self.box.current.last_heartbeat_at
        # Before the first heartbeat, count from start: silence is silence.
        age = now - (last if last is not None else self._started_at)
        stale = age > self.config.heartbeat_stale_s
        if stale and not self._stale_warned:
            log.warning(
                "no heartbeat applied for %.0f s (heartbeat_stale_s = %g); "
                "the server list may be out of date",
                age,
                self.config.heartbeat_stale_s,
            )
        elif not stale and self._stale_warned:
            log.info("heartbeats are arriving again")
        self._stale_warned = stale
        return self.dead_parts()

    def stopping(self) -> bool:
        """Whether it is stopping, or about to (a part died): what ``/healthz`` reports."""
        return self._stopping or bool(self.dead_parts())

    def dead_parts(self) -> list[str]:
        """Names of parts that should be running but are not, in start order."""
        return self._parts.dead()

    @property
    def query_endpoint(self) -> str:
        return self._query.bound_endpoint if self._query else self.config.query

    @property
    def heartbeat_endpoints(self) -> list[str]:
        return self._heartbeats.bound_endpoints if self._heartbeats else []

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
        """Stop the started parts in :data:`STOP_ORDER` within about ``timeout_s``,
        then the ZeroMQ context; safe to call again.

        Returns:
            The parts that had not stopped in time.
        """
        self._stopping = True
        late = self._parts.stop(timeout_s)
        if self._context is not None:
            if late:
                # Destroying the context would close sockets under a thread
                # still using them (ZMQError tracebacks on the way out); the
                # process's exit releases them instead.
                log.debug("ZeroMQ context left open: %s still running", ", ".join(late))
            else:
                # Every socket is closed by now; destroy() only guards against
                # a socket left open, which term() would wait on forever.
                self._context.destroy(linger=0)
            self._context = None
        return late
