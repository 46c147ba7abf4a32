"""What the actors count, as a seam the service's metrics plug into.

The actors know what happened (a failover, how a rebalance ended, what a
heartbeat did, how long a ping took) but not how it is exported: the
Prometheus registry and its names belong to the transport
(:mod:`rpcproxy.bus.service.metrics`), which implements
:class:`ActorCounters`. The layers point one way, transport -> actors ->
proxy, so the actors only ever see this Protocol, and run without any
metrics at all on :data:`NO_COUNTERS`.
"""

from __future__ import annotations

from typing import Final, Protocol

from rpcproxy.actors.messages import HeartbeatKind, RebalanceKind

__all__ = ["NO_COUNTERS", "ActorCounters", "NoCounters"]


class ActorCounters(Protocol):
    """Counts what the actors do; called on the actors' threads, must not block."""

    def failover(self) -> None:
        """``notify_failed_server`` moved the active server to the end."""

    def rebalanced(self, result: RebalanceKind) -> None:
        """A rebalance ended with ``result``."""

    def heartbeats(self, result: HeartbeatKind, count: int = 1) -> None:
        """``count`` heartbeats were ``applied`` or ``stale``."""

    def probed(self, seconds: float) -> None:
        """A rebalance's parallel ping took ``seconds`` to decide."""


class NoCounters:
    """Counts nothing: the actors' default when the service exports no metrics."""

    def failover(self) -> None:
        pass

    def rebalanced(self, result: RebalanceKind) -> None:
        pass

    def heartbeats(self, result: HeartbeatKind, count: int = 1) -> None:
        pass

    def probed(self, seconds: float) -> None:
        pass


NO_COUNTERS: Final[ActorCounters] = NoCounters()
"""The shared :class:`NoCounters` (it holds no state)."""
