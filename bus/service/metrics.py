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

import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from rpcproxy.actors import RebalanceKind, SnapshotBox
from rpcproxy.actors.messages import REBALANCE_KINDS
from rpcproxy.bus.service.counts import (
    HEARTBEAT_REJECTIONS,
    HEARTBEAT_RESULTS,
    HeartbeatRejection,
    HeartbeatResultLabel,
)
from rpcproxy.bus.service.discovery import (
    DISCOVERY_RESULTS,
    SOURCE_NAMES,
    DiscoveryResult,
    SourceName,
)
from rpcproxy.bus.service.http_front import HttpFront
from rpcproxy.bus.service.http_wire import Request, Response, Route

if TYPE_CHECKING:
    from rpcproxy.actors.counters import ActorCounters

__all__ = [
    "Metrics",
    "MetricsServer",
    "SnapshotCollector",
    "metrics_route",
]


class Metrics:
    """The counters and histograms of one proxy; the actors' :class:`ActorCounters`.

    Label children are bound once here: heartbeats can come thousands a
    second, and ``labels()`` is a dictionary lookup under a lock.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        # process_start_time_seconds and the rest of process_*: the only way
        # an alert can tell a proxy that keeps restarting (deploy/prometheus/).
        # Read from /proc at scrape time; nothing on a system without it.
        ProcessCollector(registry=r)
        self.failovers = Counter(
            "rpcproxy_failovers",
            "notify_failed_server calls that moved the active server to the end",
            registry=r,
        )
        self.rebalances = Counter(
            "rpcproxy_rebalances", "Rebalances by result", ["result"], registry=r
        )
        probe_buckets = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
        self.probe_duration = Histogram(
            "rpcproxy_probe_duration_seconds",
            "Time a rebalance's parallel probe of candidate servers took to decide",
            buckets=probe_buckets,
            registry=r,
        )
        # The same figure under its name of release 0.2, kept for one release
        # so dashboards can move to the new name (README, "Metrics").
        self.ping_duration_deprecated = Histogram(
            "rpcproxy_ping_duration_seconds",
            "Deprecated: rpcproxy_probe_duration_seconds, under its old name",
            buckets=probe_buckets,
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
        self.discoveries = Counter(
            "rpcproxy_discoveries",
            "Discoveries of servers (section 10) by source and result: found, empty, failed",
            ["source", "result"],
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
        self._durations: dict[str, Any] = {}
        self._discoveries = {
            (source, result): self.discoveries.labels(source, result)
            for source in SOURCE_NAMES
            for result in DISCOVERY_RESULTS
        }

    # ActorCounters -------------------------------------------------------------

    def failover(self) -> None:
        self.failovers.inc()

    def rebalanced(self, result: RebalanceKind) -> None:
        self._rebalances[result].inc()

    def heartbeats(self, result: HeartbeatResultLabel, count: int = 1) -> None:
        """Also the transport's ``superseded`` heartbeats (of the same label)."""
        self._heartbeats[result].inc(count)

    def probed(self, seconds: float) -> None:
        self.probe_duration.observe(seconds)
        self.ping_duration_deprecated.observe(seconds)

    # The transport's own -------------------------------------------------------

    def rejected(self, reason: HeartbeatRejection, count: int = 1) -> None:
        """``count`` heartbeats were dropped before the state, for ``reason``."""
        self._rejected[reason].inc(count)

    def discovered(self, source: SourceName, result: DiscoveryResult) -> None:
        """One source asked by a discovery, and how it ended."""
        self._discoveries[source, result].inc()

    def answered(self, op: str, seconds: float) -> None:
        """A query (``op``, or the error code it was answered with) took ``seconds``."""
        histogram = self._durations.get(op)
        if histogram is None:
            # Label children are cached: op names are a fixed set (ops and error codes).
            histogram = self._durations[op] = self.request_duration.labels(op)
        histogram.observe(seconds)

    def watch(
        self,
        box: SnapshotBox,
        clock: Callable[[], float] = time.monotonic,
        started_at: float | None = None,
    ) -> None:
        """Export what ``box``'s snapshots say, computed at each scrape.

        ``started_at`` (``clock``'s value when the proxy started; now if not
        given) is where heartbeat silence counts from before the first one.
        """
        since = clock() if started_at is None else started_at
        self.registry.register(SnapshotCollector(box, clock, since))


if TYPE_CHECKING:

    def _counts_for_the_actors(metrics: Metrics) -> ActorCounters:
        """Holds Metrics to the actors' seam (mypy only: pykka's start() takes Any)."""
        return metrics


class SnapshotCollector(Collector):
    """Gauges derived from the current snapshot at scrape time."""

    def __init__(self, box: SnapshotBox, clock: Callable[[], float], started_at: float) -> None:
        self._box = box
        self._clock = clock
        self._started_at = started_at

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
            "rpcproxy_offline", "1 when no server answered the last rebalance's probes"
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
        # One series for the whole proxy, there from the first scrape: the
        # per-publisher ages above are absent before any heartbeat and stay
        # for a publisher that was retired, so neither can say "heartbeats
        # stopped". Counted like heartbeat_stale_s: from start before the first.
        heard = snapshot.last_heartbeat_at
        silence = GaugeMetricFamily(
            "rpcproxy_heartbeat_silence_seconds",
            "Seconds since the last heartbeat applied from any publisher; "
            "before the first, since the proxy started",
        )
        silence.add_metric([], max(0.0, now - (heard if heard is not None else self._started_at)))
        yield silence


class MetricsServer:
    """Serves ``GET /metrics`` (and HEAD) of a registry over HTTP, bounded.

    prometheus_client's ``start_http_server`` gives every connection a thread
    for as long as the peer keeps it open; a cap on those threads instead lets
    a few hundred idle connections lock Prometheus out. This endpoint runs on
    an :class:`~rpcproxy.bus.service.http_front.HttpFront`: one thread reads
    every connection without blocking and hands complete requests to two
    workers, so idle and slow peers cost a descriptor each (at most
    ``max_connections``, the oldest evicted first), never a thread, and never
    the scrape. Paths without a route are 404.

    Args:
        registry: what a scrape shows (``generate_latest`` of it, or
            OpenMetrics when the scraper asks for it).
        host: address to listen on; an IPv6 literal may be in brackets.
        port: port to listen on; 0 picks a free one (see :attr:`port`).
        max_connections: connections open at once.
        idle_timeout_s: how long a connection may stay silent before its request is in.
        request_deadline_s: how long one connection may last.
        routes: more paths to serve beside ``/metrics`` (``serve`` adds the
            health checks of :mod:`~rpcproxy.bus.service.health`).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        *,
        max_connections: int = 64,
        idle_timeout_s: float = 3.0,
        request_deadline_s: float = 10.0,
        routes: Mapping[str, Route] | None = None,
    ) -> None:
        self._front = HttpFront(
            host,
            port,
            {"/metrics": metrics_route(registry), **(routes or {})},
            max_connections=max_connections,
            idle_timeout_s=idle_timeout_s,
            request_deadline_s=request_deadline_s,
            name="rpcproxy-metrics",
        )

    @property
    def port(self) -> int:
        return self._front.port

    @property
    def evicted(self) -> int:
        """Connections closed to make room for a newer one (at ``max_connections``)."""
        return self._front.evicted

    def start(self) -> None:
        self._front.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Close the listener and every connection."""
        self._front.stop(timeout_s)


def metrics_route(registry: CollectorRegistry) -> Route:
    """The ``/metrics`` route: the registry in the format the scraper's Accept asks for."""

    def route(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(200, encoder(registry), content_type)

    return route
