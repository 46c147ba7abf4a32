"""A fleet simulator for the rebalancing rules of docs/protocol.md section 3.

Thousands of clients and a handful of servers run in virtual time, each
client driven by the real ``proxy`` functions, so the fleet-wide figures the
reference quotes in its comments (connections per server per second, time to
recover from a partition, the cold-start burst) can be checked in seconds.
"""

from rpcproxy.sim.fleet import FleetConfig, FleetResult, simulate

__all__ = ["FleetConfig", "FleetResult", "simulate"]
