"""Prometheus metrics: counters the parts update, and gauges read from the snapshot.

Every service has its own registry, so several proxies (in tests, in one
process) never share counts. Whatever the snapshot already says (list sizes,
the active server, heartbeat ages) is computed at scrape time by a collector,
so the hot paths pay nothing for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from actors.snapshot import SnapshotBox

REBALANCE_RESULTS = ("moved", "kept", "none_answered", "abandoned", "skipped")
"""``moved``: a new head; ``kept``: the same head answered first; ``none_answered``:
list kept; ``abandoned``: the chosen head was removed meanwhile; ``skipped``:
fewer than two servers."""


HEARTBEAT_REJECTIONS = ("payload", "frames", "topic", "curve")
"""Why a heartbeat never reached the state: it broke the payload table, was not
two frames, carried another region's topic, or came from a refused CURVE key."""


class Metrics:
    """The counters and histograms of one proxy."""

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
        self.heartbeats = Counter(
            "rpcproxy_heartbeats",
            "Heartbeats that reached the proxy's state, by result (applied or stale)",
            ["result"],
            registry=r,
        )
        self.heartbeats_rejected = Counter(
            "rpcproxy_heartbeats_rejected",
            "Heartbeats dropped before the state, by reason",
            ["reason"],
            registry=r,
        )
        for result in REBALANCE_RESULTS:
            self.rebalances.labels(result)
        for result in ("applied", "stale"):
            self.heartbeats.labels(result)
        for reason in HEARTBEAT_REJECTIONS:
            self.heartbeats_rejected.labels(reason)

    def watch(self, box: SnapshotBox, clock: Callable[[], float] = time.monotonic) -> None:
        """Export what ``box``'s snapshots say, computed at each scrape."""
        self.registry.register(SnapshotCollector(box, clock))


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
        age = GaugeMetricFamily(
            "rpcproxy_heartbeat_age_seconds",
            "Seconds since the last heartbeat applied from each publisher",
            labels=["publisher"],
        )
        for publisher in snapshot.publishers:
            if publisher.heard_at is not None:
                age.add_metric([publisher.name], max(0.0, now - publisher.heard_at))
        yield age
