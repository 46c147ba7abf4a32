"""What the service counts, as a seam: Prometheus metrics, or nothing.

The actors count through :class:`~rpcproxy.actors.counters.ActorCounters`;
the service's own parts (the query socket, the heartbeat socket, CURVE,
discovery) count a few things more. :class:`ServiceCounts` is all of it.
:class:`~rpcproxy.bus.service.metrics.Metrics` exports it to Prometheus when
``metrics`` is set; otherwise ``serve`` counts nothing, with
:data:`NO_COUNTS`, and never imports prometheus_client (about 9 MiB of an
idle proxy's memory, with the HTTP server modules it brings).
"""

from __future__ import annotations

from typing import Final, Literal, Protocol, TypeAlias, get_args

from rpcproxy.actors import HEARTBEAT_KINDS, HeartbeatKind, RebalanceKind
from rpcproxy.bus.service.discovery import DiscoveryResult, SourceName

__all__ = [
    "HEARTBEAT_REJECTIONS",
    "HEARTBEAT_RESULTS",
    "NO_COUNTS",
    "HeartbeatRejection",
    "HeartbeatResultLabel",
    "NoCounts",
    "ServiceCounts",
]

HeartbeatRejection: TypeAlias = Literal["payload", "frames", "topic", "curve", "overflow"]
"""Why a heartbeat never reached the state: it broke the payload table, was not
two frames, carried another region's topic, came from a refused CURVE key, or
was evicted from the pending table by more publishers (or bytes) than it holds."""

HEARTBEAT_REJECTIONS: tuple[HeartbeatRejection, ...] = get_args(HeartbeatRejection)

HeartbeatResultLabel: TypeAlias = HeartbeatKind | Literal["superseded"]
"""The actor's results and the transport's own: ``superseded``, a newer
heartbeat of the same publisher came before it was applied."""

HEARTBEAT_RESULTS: tuple[HeartbeatResultLabel, ...] = (*HEARTBEAT_KINDS, "superseded")


class ServiceCounts(Protocol):
    """Everything ``serve`` counts; called from any of its threads, must not block."""

    def failover(self) -> None: ...

    def rebalanced(self, result: RebalanceKind) -> None: ...

    def heartbeats(self, result: HeartbeatResultLabel, count: int = 1) -> None: ...

    def probed(self, seconds: float) -> None: ...

    def rejected(self, reason: HeartbeatRejection, count: int = 1) -> None:
        """``count`` heartbeats were dropped before the state, for ``reason``."""

    def discovered(self, source: SourceName, result: DiscoveryResult) -> None:
        """One source asked by a discovery, and how it ended."""

    def answered(self, op: str, seconds: float) -> None:
        """A query (``op``, or the error code it was answered with) took ``seconds``."""


class NoCounts:
    """Counts nothing: ``serve`` without ``metrics``."""

    def failover(self) -> None:
        pass

    def rebalanced(self, result: RebalanceKind) -> None:
        pass

    def heartbeats(self, result: HeartbeatResultLabel, count: int = 1) -> None:
        pass

    def probed(self, seconds: float) -> None:
        pass

    def rejected(self, reason: HeartbeatRejection, count: int = 1) -> None:
        pass

    def discovered(self, source: SourceName, result: DiscoveryResult) -> None:
        pass

    def answered(self, op: str, seconds: float) -> None:
        pass


NO_COUNTS: Final[ServiceCounts] = NoCounts()
"""The shared :class:`NoCounts` (it holds no state)."""
