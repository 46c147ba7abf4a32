"""Prometheus metrics: counters the parts update, and gauges read from the snapshot.

Every service has its own registry, so several proxies (in tests, in one
process) never share counts. Whatever the snapshot already says (list sizes,
the active server, heartbeat ages) is computed at scrape time by a collector,
so the hot paths pay nothing for it.

The transport counts its own events here (request durations by op, heartbeat
rejections, heartbeats superseded while pending); the actors count theirs
through :class:`~rpcproxy.actors.counters.ActorCounters`, which
:class:`Metrics` implements, so the actors never see a registry.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, get_args

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from rpcproxy.actors.messages import (
    HEARTBEAT_KINDS,
    REBALANCE_KINDS,
    HeartbeatKind,
    RebalanceKind,
)
from rpcproxy.actors.snapshot import SnapshotBox

if TYPE_CHECKING:
    from rpcproxy.actors.counters import ActorCounters

__all__ = [
    "HEARTBEAT_REJECTIONS",
    "HEARTBEAT_RESULTS",
    "HeartbeatRejection",
    "HeartbeatResultLabel",
    "Metrics",
    "MetricsServer",
    "SnapshotCollector",
]

log = logging.getLogger(__name__)

HeartbeatRejection: TypeAlias = Literal["payload", "frames", "topic", "curve", "overflow"]
"""Why a heartbeat never reached the state: it broke the payload table, was not
two frames, carried another region's topic, came from a refused CURVE key, or
was evicted from the pending table by more publishers (or bytes) than it holds."""

HEARTBEAT_REJECTIONS: tuple[HeartbeatRejection, ...] = get_args(HeartbeatRejection)

HeartbeatResultLabel: TypeAlias = HeartbeatKind | Literal["superseded"]
"""The actor's results and the transport's own: ``superseded``, a newer
heartbeat of the same publisher came before it was applied."""

HEARTBEAT_RESULTS: tuple[HeartbeatResultLabel, ...] = (*HEARTBEAT_KINDS, "superseded")


class Metrics:
    """The counters and histograms of one proxy; the actors' :class:`ActorCounters`.

    Label children are bound once here: heartbeats can come thousands a
    second, and ``labels()`` is a dictionary lookup under a lock.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.failovers = Counter(
            "rpcproxy_failovers",
            "notify_failed_server calls that moved the active server to the end",
            registry=r,
        )
        self.rebalances = Counter(
            "rpcproxy_rebalances", "Rebalances by result", ["result"], registry=r
        )
        self.ping_duration = Histogram(
            "rpcproxy_ping_duration_seconds",
            "Time a rebalance's parallel ping took to decide",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.request_duration = Histogram(
            "rpcproxy_request_duration_seconds",
            "Time from receiving a query to sending its reply, by op",
            ["op"],
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.01, 0.1, 1.0, 5.0),
            registry=r,
        )
        self.heartbeat_results = Counter(
            "rpcproxy_heartbeats",
            "Heartbeats by result: applied, stale, or superseded while pending",
            ["result"],
            registry=r,
        )
        self.heartbeats_rejected = Counter(
            "rpcproxy_heartbeats_rejected",
            "Heartbeats dropped before the state, by reason",
            ["reason"],
            registry=r,
        )
        # Every label exists from the start, so a scrape shows zeros, not gaps.
        self._rebalances = {result: self.rebalances.labels(result) for result in REBALANCE_KINDS}
        self._heartbeats = {
            result: self.heartbeat_results.labels(result) for result in HEARTBEAT_RESULTS
        }
        self._rejected = {
            reason: self.heartbeats_rejected.labels(reason) for reason in HEARTBEAT_REJECTIONS
        }

    # ActorCounters -------------------------------------------------------------

    def failover(self) -> None:
        self.failovers.inc()

    def rebalanced(self, result: RebalanceKind) -> None:
        self._rebalances[result].inc()

    def heartbeats(self, result: HeartbeatResultLabel, count: int = 1) -> None:
        """Also the transport's ``superseded`` heartbeats (of the same label)."""
        self._heartbeats[result].inc(count)

    def pinged(self, seconds: float) -> None:
        self.ping_duration.observe(seconds)

    # The transport's own -------------------------------------------------------

    def rejected(self, reason: HeartbeatRejection, count: int = 1) -> None:
        """``count`` heartbeats were dropped before the state, for ``reason``."""
        self._rejected[reason].inc(count)

    def watch(self, box: SnapshotBox, clock: Callable[[], float] = time.monotonic) -> None:
        """Export what ``box``'s snapshots say, computed at each scrape."""
        self.registry.register(SnapshotCollector(box, clock))


if TYPE_CHECKING:

    def _counts_for_the_actors(metrics: Metrics) -> ActorCounters:
        """Holds Metrics to the actors' seam (mypy only: pykka's start() takes Any)."""
        return metrics


class SnapshotCollector(Collector):
    """Gauges derived from the current snapshot at scrape time."""

    def __init__(self, box: SnapshotBox, clock: Callable[[], float]) -> None:
        self._box = box
        self._clock = clock

    def describe(self) -> Iterator[GaugeMetricFamily | InfoMetricFamily]:
        return iter(())  # Unchecked collector: families depend on the state.

    def collect(self) -> Iterator[GaugeMetricFamily | InfoMetricFamily]:
        snapshot = self._box.current
        state = snapshot.state
        now = self._clock()
        servers = GaugeMetricFamily("rpcproxy_servers", "Servers per list", labels=["list"])
        for name, members in (
            ("active", state.active),
            ("primary", state.primaries),
            ("backup", state.backups),
        ):
            servers.add_metric([name], len(members))
        yield servers
        active = InfoMetricFamily(
            "rpcproxy_active_server", "The server queries are sent to", labels=[]
        )
        active.add_metric([], {"addr": state.head.canonical if state.head else ""})
        yield active
        nodes = GaugeMetricFamily("rpcproxy_num_nodes", "Cluster size from the last heartbeat")
        nodes.add_metric([], state.num_nodes)
        yield nodes
        next_rebalance = GaugeMetricFamily(
            "rpcproxy_next_rebalance_seconds", "Time until the next rebalance"
        )
        next_rebalance.add_metric([], max(0.0, snapshot.rebalance_deadline - now))
        yield next_rebalance
        offline = GaugeMetricFamily(
            "rpcproxy_offline", "1 when no server answered the last rebalance's pings"
        )
        offline.add_metric([], 1.0 if snapshot.offline else 0.0)
        yield offline
        age = GaugeMetricFamily(
            "rpcproxy_heartbeat_age_seconds",
            "Seconds since the last heartbeat applied from each publisher",
            labels=["publisher"],
        )
        for publisher in snapshot.publishers:
            if publisher.heard_at is not None:
                age.add_metric([publisher.name], max(0.0, now - publisher.heard_at))
        yield age


class MetricsServer:
    """Serves a registry over HTTP (any path, like prometheus_client's server), bounded.

    prometheus_client's ``start_http_server`` gives every connection a thread
    of its own for as long as the peer keeps it open: 300 idle connections
    hold 300 threads for ever. Here at most ``max_connections`` are served at
    once, each on its own daemon thread; one more is closed as soon as it is
    accepted. A connection is closed after one request (HTTP/1.0), after
    ``idle_timeout_s`` without a byte, and after ``request_deadline_s`` in
    all, so a peer that trickles bytes cannot keep a slot either.

    Args:
        registry: what a scrape shows (``generate_latest`` of it).
        host: address to listen on; an IPv6 literal may be in brackets.
        port: port to listen on; 0 picks a free one (see :attr:`port`).
        max_connections: connections (and threads) served at once.
        idle_timeout_s: how long a connection may stay silent.
        request_deadline_s: how long one connection may last.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        *,
        max_connections: int = 16,
        idle_timeout_s: float = 3.0,
        request_deadline_s: float = 10.0,
    ) -> None:
        family, sockaddr = _listen_address(host.strip("[]"), port)

        class Handler(_MetricsHandler):
            timeout = idle_timeout_s

        class Server(_BoundedHTTPServer):
            address_family = family

        self._server = Server(sockaddr, Handler, registry, max_connections, request_deadline_s)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _ACCEPT_POLL_S},
            name="rpcproxy-metrics",
            daemon=True,
        )

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    @property
    def refused(self) -> int:
        """Connections closed at once because every slot was taken."""
        return self._server.refused

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop accepting and close the listener; connections in progress end on their own."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout_s)
        self._server.server_close()


_ACCEPT_POLL_S = 0.25
"""How often the accept loop looks at deadlines (and at a request to shut down)."""


def _listen_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


class _BoundedHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # server_close must not wait on a peer
    # The accept loop drains the backlog at once (refusing what has no slot);
    # socketserver's 5 would leave a burst of connects to SYN-ACK retries.
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[Any, ...],
        handler: type[BaseHTTPRequestHandler],
        registry: CollectorRegistry,
        max_connections: int,
        deadline_s: float,
    ) -> None:
        self.registry = registry
        self.refused = 0
        self._slots = threading.BoundedSemaphore(max_connections)
        self._deadline_s = deadline_s
        self._lock = threading.Lock()
        self._deadlines: dict[socket.socket, float] = {}
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        with self._lock:
            self._deadlines[request] = time.monotonic() + self._deadline_s
        try:
            super().process_request(request, client_address)  # starts its thread
        except BaseException:
            self._done(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(request)

    def _done(self, request: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(request, None)
        self._slots.release()

    def service_actions(self) -> None:
        """On the accept loop, between polls: end connections past their deadline."""
        now = time.monotonic()
        with self._lock:
            late = [sock for sock, deadline in self._deadlines.items() if deadline <= now]
        for sock in late:
            # The handler's blocked read returns end-of-file; its thread closes it.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A peer that went away mid-reply is its own problem, not a traceback.
        log.debug("metrics request from %s failed", client_address, exc_info=True)


class _MetricsHandler(BaseHTTPRequestHandler):
    server: _BoundedHTTPServer

    def do_GET(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        output = encoder(self.server.registry)
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(output)))
        self.end_headers()
        self.wfile.write(output)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes come every few seconds: no line each."""
