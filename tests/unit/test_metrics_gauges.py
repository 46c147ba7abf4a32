"""The gauges the alerting rules need (deploy/prometheus/), read from a registry.

``rpcproxy_heartbeat_silence_seconds`` counts as ``heartbeat_stale_s`` does:
from the last applied heartbeat, and from start before the first, so a
proxy that never heard one is not silent for zero seconds. The process
metrics are there for the restart alert.
"""

from __future__ import annotations

from rpcproxy.actors import Snapshot, SnapshotBox
from rpcproxy.bus.service.metrics import Metrics
from rpcproxy.proxy import ProxyState


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def silence(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("rpcproxy_heartbeat_silence_seconds")


def test_before_the_first_heartbeat_silence_counts_from_start() -> None:
    clock = Clock(1000.0)
    metrics = Metrics()
    metrics.watch(SnapshotBox(), clock, started_at=990.0)

    assert silence(metrics) == 10.0
    clock.now = 1100.0
    assert silence(metrics) == 110.0


def test_silence_counts_from_the_last_applied_heartbeat() -> None:
    clock = Clock(1000.0)
    box = SnapshotBox()
    metrics = Metrics()
    metrics.watch(box, clock, started_at=100.0)

    box.publish(Snapshot(ProxyState(), float("inf"), 1, last_heartbeat_at=995.0))
    assert silence(metrics) == 5.0
    clock.now = 1060.0
    assert silence(metrics) == 65.0


def test_without_a_start_silence_counts_from_when_it_was_watched() -> None:
    clock = Clock(50.0)
    metrics = Metrics()
    metrics.watch(SnapshotBox(), clock)
    clock.now = 80.0

    assert silence(metrics) == 30.0


def test_the_registry_has_the_process_start_time() -> None:
    start = Metrics().registry.get_sample_value("process_start_time_seconds")

    assert start is not None and start > 0
