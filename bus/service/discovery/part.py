"""The discovery part of ``serve``: when heartbeats stop, ask the sources (section 10).

A thread of its own looks at the published snapshot about twice a second
(never the actor's mailbox, so it costs queries nothing). When the proxy
needs servers it asks its sources in order, Consul's catalog first, DNS
next, and tells the actor the first non-empty answer, which replaces the
backups. A source that fails or finds nobody changes nothing: a broken
catalog or a bad DNS day never empties a list.

It asks at most once per ``interval_s``, whatever happens meanwhile, so a
flapping trigger or a source that always fails costs one round per interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pykka

from rpcproxy.actors import ApplyDiscovery, Snapshot, SnapshotBox
from rpcproxy.bus.service.counts import NO_COUNTS, ServiceCounts
from rpcproxy.bus.service.discovery.source import DiscoveryError, DiscoverySource
from rpcproxy.log_gate import PeerLog

__all__ = ["Discoverer", "why_discover"]

log = logging.getLogger(__name__)

LOOK_PERIOD_S = 0.5
"""How often the snapshot is looked at: the triggers' granularity, not the rate of asking."""


def why_discover(snapshot: Snapshot, now: float, since: float, stale_s: float) -> str | None:
    """Why the proxy needs a discovery now (docs/protocol.md section 10), or None.

    Args:
        snapshot: the proxy as last published.
        now: the monotonic clock's now.
        since: when the proxy started, for staleness before any heartbeat.
        stale_s: ``heartbeat_stale_s``.
    """
    state = snapshot.state
    if not state.active:
        return "no server known"
    if snapshot.offline:
        return "offline"
    heard = snapshot.last_heartbeat_at
    if now - (heard if heard is not None else since) >= stale_s:
        return f"no heartbeat for {stale_s:g} s"
    if heard is not None and not state.leader_addr:
        return "the last heartbeat named no leader"
    return None


class Discoverer:
    """Finds servers by itself when heartbeats stop; one thread, stopped within a budget.

    Args:
        sources: asked in order; the first with servers wins.
        box: the proxy's published snapshots (the triggers).
        proxy: the actor told :class:`~rpcproxy.actors.ApplyDiscovery`.
        interval_s: ``discover_interval_s``: the least time between two rounds.
        stale_s: ``heartbeat_stale_s``.
        metrics: counts each source's result.
        clock: monotonic seconds.
    """

    name = "discovery"

    def __init__(
        self,
        sources: Sequence[DiscoverySource],
        box: SnapshotBox,
        proxy: pykka.ActorRef[Any],
        *,
        interval_s: float,
        stale_s: float,
        metrics: ServiceCounts = NO_COUNTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not sources:
            raise ValueError("discovery needs at least one source")
        self._sources = tuple(sources)
        self._box = box
        self._proxy = proxy
        self._interval_s = interval_s
        self._stale_s = stale_s
        self._metrics = metrics
        self._clock = clock
        self._started_at = clock()
        self._last_round: float | None = None
        self._last_found: tuple[str, tuple[Any, ...]] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # What sources say comes from peers (an agent, a name server).
        self._peer_log = PeerLog(log, clock=clock)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rpcproxy-discovery", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Stop looking; end a source's call in flight; wait at most ``timeout_s``."""
        self._stopping.set()
        for source in self._sources:
            try:
                source.close()
            except Exception:
                log.exception("closing the %s discovery failed", source.name)
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.step()
            self._stopping.wait(min(LOOK_PERIOD_S, self._interval_s))

    def step(self) -> bool:
        """Look once; run a round if one is due. Whether servers were found and told."""
        now = self._clock()
        reason = why_discover(self._box.current, now, self._started_at, self._stale_s)
        if reason is None:
            return False
        if self._last_round is not None and now - self._last_round < self._interval_s:
            return False
        self._last_round = now
        return self._round(reason)

    def _round(self, reason: str) -> bool:
        for source in self._sources:
            if self._stopping.is_set():
                return False
            try:
                found = source.discover()
            except DiscoveryError as exc:
                self._metrics.discovered(source.name, "failed")
                self._peer_log.warning(
                    f"{source.name} failed", "discovery from %s failed: %s", source.name, exc
                )
                continue
            if not found:
                self._metrics.discovered(source.name, "empty")
                self._peer_log.warning(
                    f"{source.name} empty", "discovery from %s found no server", source.name
                )
                continue
            self._metrics.discovered(source.name, "found")
            if self._last_found != (source.name, found):
                # One line per new answer, not per round: rounds may repeat it.
                log.info(
                    "discovery (%s, because %s): %d servers become the backups",
                    source.name,
                    reason,
                    len(found),
                )
                self._last_found = (source.name, found)
            try:
                self._proxy.tell(ApplyDiscovery(source.name, found))
            except pykka.ActorDeadError:
                return False  # Stopping: the supervisor has noticed.
            return True
        return False
