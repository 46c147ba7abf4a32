"""The fleet simulation: N clients, S servers, virtual time, the proxy's rules.

Every client has one pending timer and an active server. When a timer fires,
the client rebalances as the service does (``plan_rebalance`` -> ping
outcomes -> ``choose_head`` -> ``reconcile``) and restarts its timer with
``RebalanceTiming.rebalance_interval``. The fleet is held as arrays
(:mod:`rpcproxy.sim.arrays`), not an object per client, so ten million
clients fit; that module says why its vectorised step is exactly what the
proxy functions do in these scenarios, and the tests check it against them.

The module is pure: one seeded numpy generator supplies all randomness and
time only advances a minute bucket at a time, so a seed fully determines the
result and tests can assert on exact values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rpcproxy.proxy import RebalanceTiming

if TYPE_CHECKING:
    import numpy as np

    from rpcproxy.sim.arrays import Fleet

BUCKET_S = 60.0
"""Width of the rate buckets: the reference's figures are per-minute averages."""

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


def server_names(count: int) -> tuple[str, ...]:
    """``server-1`` .. ``server-N``: stable names for reports."""
    return tuple(f"server-{i + 1}" for i in range(count))


def simulate(config: FleetConfig, progress: ProgressCallback | None = None) -> FleetResult:
    """Run one scenario to its end and return what it measured.

    ``progress``, if given, is called now and then with the fraction of
    virtual time done; it is the only side effect and the result does not
    depend on it.
    """
    config.validate()
    if progress is not None:
        progress(0.0)
    # Imported here, not at the top: cli.main imports this module for every
    # command, and only a simulation needs numpy.
    import numpy as np  # noqa: PLC0415

    from rpcproxy.sim.arrays import run_minutes  # noqa: PLC0415

    gen = np.random.default_rng(config.seed)
    fleet = _initial_fleet(config, gen)
    tallies = run_minutes(
        fleet,
        timing=config.timing,
        servers=config.servers,
        live=config.servers - config.dead,
        minutes=config.minutes,
        bucket_s=BUCKET_S,
        gen=gen,
        progress=progress,
    )
    if progress is not None:
        progress(1.0)
    done = tallies.first_done
    return FleetResult(
        config=config,
        server_names=server_names(config.servers),
        per_minute=tuple(tuple(column) for column in tallies.minute_counts.T.tolist()),
        heads_by_minute=tuple(tallies.snapshots),
        time_to_full_rebalance_s=tallies.first_latest if done == config.clients else None,
        first_rebalance_window_s=(tallies.first_earliest, tallies.first_latest) if done else None,
        rebalances=tallies.rebalances,
        # Every client knows every server and at least one answers (validate
        # refuses dead >= servers), so some candidate always answers.
        unanswered=0,
    )


def _initial_fleet(config: FleetConfig, gen: np.random.Generator) -> Fleet:
    """Every client's starting head and first timer.

    * partition: every client armed its timer knowing only ``server-1`` (the
      one-server interval, rate-limited for the whole fleet), then a
      heartbeat brought every server without touching the timer; its head
      is still ``server-1``.
    * cold start: every client starts at 0 on ``server-1`` (every client
      receives the same list) with a first timer: ours jittered, or the
      reference's fixed ``min_reuse_s``.
    * steady state: each client has already rebalanced once (uncounted), so
      its head is a random live server, and its next rebalance is spread
      uniformly over one interval.
    """
    import numpy as np  # noqa: PLC0415

    from rpcproxy.sim.arrays import Fleet, first_intervals, head_dtype, intervals  # noqa: PLC0415

    n = config.clients
    timing = config.timing
    dtype = head_dtype(config.servers)
    head = np.zeros(n, dtype=dtype)
    if config.cold_start:
        if config.reference_first_timer:
            due = np.full(n, timing.min_reuse_s)
        else:
            due = first_intervals(timing, gen.random(n))
    else:
        known = 1 if config.partition else config.servers
        # Uniform over one interval: where in it the client stands, times
        # the interval itself (with its own jitter draw).
        position = gen.random(n)
        due = intervals(timing, n, known, gen.random(n))
        due *= position
        del position
        if not config.partition and config.servers >= 2:
            head = gen.integers(0, config.servers - config.dead, size=n, dtype=dtype)
    return Fleet(due=due, head=head, rebalanced=np.zeros(n, dtype=bool))
