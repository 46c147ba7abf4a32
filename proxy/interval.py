"""When the next rebalance fires (docs/protocol.md section 3, rule 5).

A client keeps its server for at least ``min_reuse_s`` plus jitter, and for
longer in big clusters so that the fleet as a whole opens at most
``conns_per_sec_per_server`` new connections per server per second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RebalanceTiming:
    """The three constants of the interval formula."""

    min_reuse_s: float = 600.0
    jitter_fraction: float = 2.0
    conns_per_sec_per_server: float = 64.0

    def jittered_minimum(self, u: float) -> float:
        """``min_reuse_s + U[0, min_reuse_s / jitter_fraction)`` for ``u`` in [0, 1)."""
        span = self.min_reuse_s / self.jitter_fraction
        value = self.min_reuse_s + u * span
        upper = self.min_reuse_s + span
        if span > 0 and value >= upper:
            # Rounding can carry u just below 1 onto the excluded upper bound
            # (600 + 300 * (1 - 2**-53) == 900.0): stay inside the half-open range.
            value = math.nextafter(upper, self.min_reuse_s)
        return value

    def rebalance_interval(self, num_nodes: int, num_servers: int, u: float) -> float:
        """Seconds until the next rebalance after one has run.

        With no servers, the rate limit has nothing to spread over and the
        jittered minimum applies.
        """
        minimum = self.jittered_minimum(u)
        cluster_rate = num_servers * self.conns_per_sec_per_server
        if cluster_rate <= 0:
            return minimum
        return max(minimum, num_nodes / cluster_rate)

    def first_interval(self, u: float) -> float:
        """Seconds until the first rebalance after start.

        Jittered, unlike the reference's fixed ``min_reuse_s``, so a fleet
        started together does not rebalance in one burst.
        """
        return self.jittered_minimum(u)

    def reset_interval(self) -> float:
        """What ``reset_rebalance_timer`` restarts the timer at."""
        return self.min_reuse_s
