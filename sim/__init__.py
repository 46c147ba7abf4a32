"""A fleet simulator for the rebalancing rules of docs/protocol.md section 3.

Up to tens of millions of clients and a handful of servers run in virtual
time by the ``proxy`` rules (``RebalanceTiming``'s interval, and the head
that ``plan_rebalance`` and ``choose_head`` pick), held as arrays
(``sim/arrays.py``), so the fleet-wide figures the reference quotes in its
comments (connections per server per second, time to recover from a
partition, the cold-start burst) can be checked in seconds.
"""

from rpcproxy.sim.fleet import FleetConfig, FleetResult, simulate

__all__ = ["FleetConfig", "FleetResult", "simulate"]
