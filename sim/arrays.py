"""The fleet held as arrays: one next-rebalance time and one head per client.

A Python object per client (a ``ProxyState``, a heap entry) costs about
390 bytes and a microsecond per event, which caps the simulator near a
million clients. Here the fleet is a float64 array of due times, a small
integer array of heads and a byte per client for "has rebalanced", so ten
million clients take about 100 MB and an hour of virtual time is processed a
minute-bucket at a time with array operations.

Two facts of the scenarios make this exact rather than an approximation:

* every client knows every server as a primary (no backups) and nothing
  changes the membership during a run, so ``plan_rebalance`` is a uniform
  shuffle of the same servers and ``choose_head`` takes the first live one:
  the new head is uniform over the live servers, whatever the old one was
  (tests/unit/test_sim.py checks this against the proxy functions);
* ``len(state.active)`` is the number of servers for every client, so the
  interval is ``RebalanceTiming.rebalance_interval(n, servers, u)``,
  vectorised in :func:`intervals` (and checked against it bit for bit).

numpy is imported here only: ``sim.fleet`` loads this module when a run
starts, so the other ``rpcproxy`` commands (``serve`` above all) never pay
for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rpcproxy.proxy import RebalanceTiming

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


def intervals(timing: RebalanceTiming, num_nodes: int, num_servers: int, u: Floats) -> Floats:
    """``timing.rebalance_interval(num_nodes, num_servers, u[i])`` for every ``u[i]``.

    The same float operations in the same order as the scalar formula, so
    each element is bit-identical to it (tests/unit/test_sim.py checks the
    edges: u = 0 and the largest float below 1).
    """
    span = timing.min_reuse_s / timing.jitter_fraction
    value = timing.min_reuse_s + u * span
    if span > 0:
        # The scalar formula moves a value that rounded onto the excluded
        # upper bound to the float just below it; every other value already
        # lies below, so a minimum with that float is the same clamp.
        np.minimum(value, math.nextafter(timing.min_reuse_s + span, timing.min_reuse_s), out=value)
    cluster_rate = num_servers * timing.conns_per_sec_per_server
    if cluster_rate > 0:
        np.maximum(value, num_nodes / cluster_rate, out=value)
    return value


def first_intervals(timing: RebalanceTiming, u: Floats) -> Floats:
    """``timing.first_interval(u[i])``: the jittered minimum, with no rate term."""
    return intervals(timing, 0, 0, u)


@dataclass(slots=True)
class Fleet:
    """The mutable per-client arrays of one run.

    Attributes:
        due: when each client's timer fires next (virtual seconds).
        head: index of each client's active server.
        rebalanced: 1 once a client has completed a rebalance.
    """

    due: Floats
    head: npt.NDArray[np.integer]
    rebalanced: npt.NDArray[np.bool_]


@dataclass(slots=True)
class Tallies:
    """What a run accumulates, as plain Python values at the end."""

    minute_counts: Ints
    snapshots: list[tuple[int, ...]]
    first_done: int = 0
    first_earliest: float = math.inf
    first_latest: float = -math.inf
    rebalances: int = 0


def head_dtype(servers: int) -> np.dtype[np.integer]:
    """The smallest unsigned integer that indexes every server: a byte for up to 256."""
    return np.dtype(np.min_scalar_type(max(servers - 1, 0)))


def run_minutes(
    fleet: Fleet,
    *,
    timing: RebalanceTiming,
    servers: int,
    live: int,
    minutes: int,
    bucket_s: float,
    gen: np.random.Generator,
    progress: Callable[[float], None] | None,
) -> Tallies:
    """Fire every timer due before ``minutes * bucket_s``, a minute bucket at a time.

    Within a bucket the order of events does not matter: each one depends
    only on its own client (the new head is drawn independently of the old
    one) and every figure is a count per bucket, a minimum or a maximum. So
    one pass takes every client due in the bucket, and further passes take
    only those just re-armed that are due again in it (intervals shorter
    than the bucket).
    """
    n = len(fleet.due)
    heads = np.bincount(fleet.head, minlength=servers).astype(np.int64)
    tallies = Tallies(minute_counts=np.zeros((minutes, servers), dtype=np.int64), snapshots=[])
    # Fewer than two servers: plan_rebalance returns None, nothing moves, but
    # every timer still restarts, as in the service.
    can_rebalance = servers >= 2
    dtype = fleet.head.dtype
    for minute in range(minutes):
        if progress is not None:
            progress(minute / minutes)
        tallies.snapshots.append(tuple(heads.tolist()))
        bound = (minute + 1) * bucket_s
        due_now = np.flatnonzero(fleet.due < bound)
        while due_now.size:
            t = fleet.due[due_now]
            if can_rebalance:
                new = gen.integers(0, live, size=due_now.size, dtype=dtype)
                heads -= np.bincount(fleet.head[due_now], minlength=servers)
                added = np.bincount(new, minlength=servers)
                heads += added
                tallies.minute_counts[minute] += added
                fleet.head[due_now] = new
                tallies.rebalances += int(due_now.size)
                _note_first(fleet, tallies, due_now, t)
            fleet.due[due_now] = t + intervals(timing, n, servers, gen.random(due_now.size))
            due_now = due_now[fleet.due[due_now] < bound]
    tallies.snapshots.append(tuple(heads.tolist()))
    return tallies


def _note_first(fleet: Fleet, tallies: Tallies, due_now: Ints, t: Floats) -> None:
    """Count the clients rebalancing for the first time and widen the window."""
    fresh = ~fleet.rebalanced[due_now]
    if not fresh.any():
        return
    first_t = t[fresh]
    tallies.first_done += int(first_t.size)
    tallies.first_earliest = min(tallies.first_earliest, float(first_t.min()))
    tallies.first_latest = max(tallies.first_latest, float(first_t.max()))
    fleet.rebalanced[due_now] = True
