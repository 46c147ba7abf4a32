"""The fleet simulation: N clients, S servers, virtual time, the real proxy code.

Every client holds its own :class:`~proxy.ProxyState` and one pending timer.
When a timer fires, the client rebalances exactly as the service does
(``plan_rebalance`` -> ping outcomes -> ``choose_head`` -> ``reconcile``) and
restarts its timer with ``RebalanceTiming.rebalance_interval``. Nothing here
re-derives the interval formula: the simulator measures what the domain code
does, so a regression in ``proxy/`` shows up as a wrong fleet figure.

The module is pure: one seeded :class:`random.Random` supplies all randomness
and time is a float that only the event heap advances, so a seed fully
determines the result and tests can assert on exact values.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rpcproxy.proxy import (
    Address,
    ProxyState,
    RebalanceTiming,
    add_primary,
    choose_head,
    plan_rebalance,
    reconcile,
)

BUCKET_S = 60.0
"""Width of the rate buckets: the reference's figures are per-minute averages."""

_PROGRESS_EVERY = 8192
"""Events between progress reports; a power of two so the check is a mask."""

ProgressCallback = Callable[[float], None]
"""Receives the fraction of virtual time simulated so far, in [0, 1]."""


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """One scenario.

    Attributes:
        clients: fleet size; also the ``num_nodes`` every client's interval uses,
            as if every heartbeat reported the true cluster size.
        servers: number of servers, named ``server-1`` .. ``server-S``.
        minutes: virtual duration of the run.
        timing: the interval constants under test.
        dead: the last ``dead`` servers never answer a ping for the whole run.
        partition: every client starts knowing only ``server-1`` with a timer
            computed for one server, then learns all servers at time 0 (as a
            heartbeat would) without its timer being reset.
        cold_start: every client starts at time 0 with a fresh first timer,
            instead of a steady state with timers spread over one interval.
        reference_first_timer: with ``cold_start``, the first timer is exactly
            ``min_reuse_s`` (the reference's behaviour) instead of jittered.
        seed: seeds the single random generator.
    """

    clients: int = 10_000
    servers: int = 5
    minutes: int = 60
    timing: RebalanceTiming = field(default_factory=RebalanceTiming)
    dead: int = 0
    partition: bool = False
    cold_start: bool = False
    reference_first_timer: bool = False
    seed: int = 0

    @property
    def mode_names(self) -> list[str]:
        """The scenario switches that are on, for titles and summaries."""
        switches = (
            ("partition", self.partition),
            ("cold start", self.cold_start),
            ("reference first timer", self.reference_first_timer),
        )
        return [name for name, on in switches if on]

    def validate(self) -> None:
        """Raise ValueError naming the first setting that makes no sense."""
        if self.clients < 1:
            raise ValueError("clients must be at least 1")
        if self.servers < 1:
            raise ValueError("servers must be at least 1")
        if self.minutes < 1:
            raise ValueError("minutes must be at least 1")
        if not 0 <= self.dead < self.servers:
            # With every server dead no head can ever be chosen, and the
            # scenario says nothing about rebalancing.
            raise ValueError("dead must be between 0 and servers - 1")
        if self.timing.min_reuse_s <= 0:
            raise ValueError("min_reuse_s must be positive")
        if self.timing.jitter_fraction <= 0:
            raise ValueError("jitter_fraction must be positive")
        if self.timing.conns_per_sec_per_server <= 0:
            raise ValueError("conns_per_sec_per_server must be positive")
        if self.reference_first_timer and not self.cold_start:
            raise ValueError("reference_first_timer only applies with cold_start")

    def parameters(self) -> dict[str, Any]:
        """The scenario as plain JSON values, echoed in every report."""
        return {
            "clients": self.clients,
            "servers": self.servers,
            "minutes": self.minutes,
            "min_reuse_s": self.timing.min_reuse_s,
            "jitter_fraction": self.timing.jitter_fraction,
            "conns_per_sec_per_server": self.timing.conns_per_sec_per_server,
            "dead": self.dead,
            "partition": self.partition,
            "cold_start": self.cold_start,
            "reference_first_timer": self.reference_first_timer,
            "seed": self.seed,
        }


@dataclass(frozen=True, slots=True)
class FleetResult:
    """What one run measured.

    Attributes:
        config: the scenario.
        server_names: display names, index-aligned with every per-server figure.
        per_minute: ``per_minute[s][m]``: rebalances that put server ``s``
            first during minute ``m``; each one is a new connection to it.
        heads_by_minute: ``heads_by_minute[m][s]``: clients whose active server
            was ``s`` at time ``m * 60`` (``m`` from 0 to ``minutes``).
        time_to_full_rebalance_s: when the last client completed its first
            rebalance, or None if some client had not by the end.
        first_rebalance_window_s: earliest and latest first rebalance, or None
            if nobody rebalanced.
        rebalances: rebalances that chose a head.
        unanswered: rebalances where no candidate answered (list kept).
    """

    config: FleetConfig
    server_names: tuple[str, ...]
    per_minute: tuple[tuple[int, ...], ...]
    heads_by_minute: tuple[tuple[int, ...], ...]
    time_to_full_rebalance_s: float | None
    first_rebalance_window_s: tuple[float, float] | None
    rebalances: int
    unanswered: int

    @property
    def duration_s(self) -> float:
        """Virtual seconds simulated."""
        return self.config.minutes * BUCKET_S

    @property
    def dead_names(self) -> tuple[str, ...]:
        """The servers that never answered."""
        return self.server_names[len(self.server_names) - self.config.dead :]

    @property
    def rates_per_sec(self) -> tuple[float, ...]:
        """Mean new connections per second per server over the whole run."""
        return tuple(sum(counts) / self.duration_s for counts in self.per_minute)

    @property
    def mean_rate_per_sec(self) -> float:
        """Mean of :attr:`rates_per_sec` over every server, dead ones included."""
        return sum(self.rates_per_sec) / len(self.server_names)

    @property
    def mean_live_rate_per_sec(self) -> float:
        """Mean over the servers that answer: what each working server sees."""
        live = self.rates_per_sec[: len(self.server_names) - self.config.dead]
        return sum(live) / len(live)

    @property
    def max_rate_per_sec(self) -> tuple[float, int, int]:
        """Busiest one-minute bucket of any server: (per second, server, minute)."""
        best = (0.0, 0, 0)
        for server, counts in enumerate(self.per_minute):
            for minute, count in enumerate(counts):
                if count / BUCKET_S > best[0]:
                    best = (count / BUCKET_S, server, minute)
        return best

    @property
    def load_share(self) -> tuple[float, ...]:
        """Fraction of clients whose active server is each server, at the end."""
        return tuple(count / self.config.clients for count in self.heads_by_minute[-1])

    def to_json(self) -> dict[str, Any]:
        """The report printed by ``rpcproxy simulate --json``."""
        names = self.server_names
        peak, peak_server, peak_minute = self.max_rate_per_sec
        window = self.first_rebalance_window_s
        return {
            "parameters": {**self.config.parameters(), "dead_servers": list(self.dead_names)},
            "rebalances_per_sec_per_server": dict(zip(names, self.rates_per_sec, strict=True)),
            "rebalances_per_sec_per_server_mean": self.mean_rate_per_sec,
            "rebalances_per_sec_per_live_server_mean": self.mean_live_rate_per_sec,
            "max_rebalances_per_sec_per_server": peak,
            "max_rebalances_server": names[peak_server],
            "max_rebalances_minute": peak_minute,
            "time_to_full_rebalance_s": self.time_to_full_rebalance_s,
            "first_rebalance_window_s": list(window) if window is not None else None,
            "load_share": dict(zip(names, self.load_share, strict=True)),
            "rebalances": self.rebalances,
            "unanswered_rebalances": self.unanswered,
            "rebalances_per_minute": {
                name: list(counts) for name, counts in zip(names, self.per_minute, strict=True)
            },
        }


class _SimAddress(Address):
    """An :class:`~proxy.Address` whose hash is computed once.

    The generated dataclass hash rebuilds ``(host, port)`` on every call, and
    the proxy functions hash each server a few dozen times per rebalance
    (frozensets, dict look-ups): a fifth of the simulator's time. The servers
    of a run are a handful of singletons, so caching the (identical) hash
    changes nothing but the speed. (Like any dataclass, it compares unequal to
    a plain ``Address`` of the same name; the simulator never mixes the two.)
    """

    __slots__ = ("_hash",)
    _hash: int

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        object.__setattr__(self, "_hash", hash((host, port)))

    def __hash__(self) -> int:
        return self._hash


def server_addresses(count: int) -> tuple[Address, ...]:
    """``server-1:4647`` .. ``server-N:4647``: stable names for reports."""
    return tuple(_SimAddress(f"server-{i + 1}", 4647) for i in range(count))


def _all_known(servers: tuple[Address, ...], num_nodes: int) -> ProxyState:
    """A state with every server as a primary, in index order.

    That is also what a freshly started client holds after its first
    heartbeat: every client receives the same list, so they all start on the
    same head.
    """
    state = ProxyState(num_nodes=num_nodes)
    for addr in servers:
        state, _ = add_primary(state, addr)
    return state


def _initial_fleet(
    config: FleetConfig,
    servers: tuple[Address, ...],
    alive: dict[Address, bool],
    rng: random.Random,
) -> tuple[list[ProxyState], list[float]]:
    """Every client's starting state and first timer.

    States are immutable, so clients that start alike share one object: the
    partition and cold-start fleets cost nothing to build.
    """
    n = config.clients
    timing = config.timing
    rand = rng.random
    if config.partition:
        # Every client knows only server-1 (never a dead one: those are the
        # last K) and armed its timer then, so the interval is the one-server
        # interval, rate-limited for the whole fleet. The heartbeat that then
        # brings every server adds them as primaries without touching the
        # timer; being the same for every client, it is computed once.
        alone, _ = add_primary(ProxyState(num_nodes=n), servers[0])
        learned = alone
        for addr in servers[1:]:
            learned, _ = add_primary(learned, addr)
        states = [learned] * n
        if config.cold_start:
            return states, _cold_timers(config, rng)
        return states, [rand() * timing.rebalance_interval(n, 1, rand()) for _ in range(n)]
    base = _all_known(servers, n)
    if config.cold_start:
        return [base] * n, _cold_timers(config, rng)
    # Steady state: each client has already rebalanced once (uncounted), with
    # the real functions, so its head is a random live server, and its next
    # rebalance is spread uniformly over one interval.
    states = []
    for _ in range(n):
        plan = plan_rebalance(base, rng)
        index = None if plan is None else choose_head(plan.candidates, alive)
        if plan is None or index is None:
            states.append(base)
        else:
            states.append(reconcile(base, plan, index).state)
    timers = [rand() * timing.rebalance_interval(n, len(state.active), rand()) for state in states]
    return states, timers


def _cold_timers(config: FleetConfig, rng: random.Random) -> list[float]:
    """First timers of a fleet started together: ours jittered, or the reference's fixed one."""
    timing = config.timing
    if config.reference_first_timer:
        return [timing.min_reuse_s] * config.clients
    rand = rng.random
    return [timing.first_interval(rand()) for _ in range(config.clients)]


@dataclass(slots=True)
class _Tally:
    """What the event loop accumulates; mutable, private to one run."""

    minute_counts: list[list[int]]
    heads: list[int]
    snapshots: list[tuple[int, ...]] = field(default_factory=list)
    first_done: int = 0
    first_earliest: float = 0.0
    first_latest: float = 0.0
    full_at: float | None = None
    rebalances: int = 0
    unanswered: int = 0

    def first_rebalance(self, t: float, clients: int) -> None:
        """Note a client's first rebalance; once per client, so off the hot path."""
        self.first_done += 1
        if self.first_done == 1:
            self.first_earliest = t
        self.first_latest = t
        if self.first_done == clients:
            self.full_at = t


def simulate(config: FleetConfig, progress: ProgressCallback | None = None) -> FleetResult:
    """Run one scenario to its end and return what it measured.

    ``progress``, if given, is called now and then with the fraction of
    virtual time done; it is the only side effect and the result does not
    depend on it.
    """
    config.validate()
    if progress is not None:
        progress(0.0)
    rng = random.Random(config.seed)
    servers = server_addresses(config.servers)
    live_count = config.servers - config.dead
    # The ping outcomes are fixed for the whole run, so one shared mapping
    # serves every rebalance without allocating.
    alive = {addr: i < live_count for i, addr in enumerate(servers)}
    index_of = {addr: i for i, addr in enumerate(servers)}
    states, timers = _initial_fleet(config, servers, alive, rng)
    tally = _Tally(
        minute_counts=[[0] * config.servers for _ in range(config.minutes)],
        heads=[0] * config.servers,
    )
    for state in states:
        tally.heads[index_of[state.active[0]]] += 1

    _run_events(
        config,
        states=states,
        timers=timers,
        alive=alive,
        index_of=index_of,
        rng=rng,
        tally=tally,
        progress=progress,
    )

    while len(tally.snapshots) <= config.minutes:
        tally.snapshots.append(tuple(tally.heads))
    if progress is not None:
        progress(1.0)
    return FleetResult(
        config=config,
        server_names=tuple(addr.host for addr in servers),
        per_minute=tuple(zip(*tally.minute_counts, strict=True)),
        heads_by_minute=tuple(tally.snapshots),
        time_to_full_rebalance_s=tally.full_at,
        first_rebalance_window_s=(
            (tally.first_earliest, tally.first_latest) if tally.first_done else None
        ),
        rebalances=tally.rebalances,
        unanswered=tally.unanswered,
    )


def _run_events(
    config: FleetConfig,
    *,
    states: list[ProxyState],
    timers: list[float],
    alive: dict[Address, bool],
    index_of: dict[Address, int],
    rng: random.Random,
    tally: _Tally,
    progress: ProgressCallback | None,
) -> None:
    """Fire every timer due before the end, in time order, through the real proxy code.

    The heap holds one ``(time, client)`` entry per client, replaced in place
    when the client re-arms, so its size never changes; ties fire in client
    order, which keeps a seeded run exactly reproducible.
    """
    n = config.clients
    end = config.minutes * BUCKET_S
    heap = [(t, c) for c, t in enumerate(timers)]
    heapq.heapify(heap)
    rebalanced = bytearray(n)
    # Local names: the loop runs about half a million times for the
    # 100,000-client hour, and attribute look-ups are a good part of its cost.
    minute_counts = tally.minute_counts
    heads = tally.heads
    snapshots = tally.snapshots
    replace_top = heapq.heapreplace
    rand = rng.random
    interval = config.timing.rebalance_interval
    bucket_s = BUCKET_S
    next_boundary = 0.0
    rebalances = unanswered = events = 0

    while heap:
        t, c = heap[0]
        if t >= end:
            break
        while t >= next_boundary:
            snapshots.append(tuple(heads))
            next_boundary += bucket_s
        events += 1
        if progress is not None and not events & (_PROGRESS_EVERY - 1):
            progress(t / end)
        state = states[c]
        plan = plan_rebalance(state, rng)
        if plan is not None:
            index = choose_head(plan.candidates, alive)
            if index is None:
                unanswered += 1
            else:
                # Nothing changes the membership while a simulated ping is in
                # flight, so the outcome is never ``abandoned``.
                heads[index_of[state.active[0]]] -= 1
                state = reconcile(state, plan, index).state
                states[c] = state
                new_head = index_of[plan.candidates[index]]
                heads[new_head] += 1
                minute_counts[int(t // bucket_s)][new_head] += 1
                rebalances += 1
                if not rebalanced[c]:
                    rebalanced[c] = 1
                    tally.first_rebalance(t, n)
        # Every rebalance restarts the timer, even one that found nobody.
        replace_top(heap, (t + interval(n, len(state.active), rand()), c))

    tally.rebalances = rebalances
    tally.unanswered = unanswered
