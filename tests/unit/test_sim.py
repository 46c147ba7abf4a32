"""The fleet simulator (``sim/``) and ``rpcproxy simulate``.

Small fleets with a fixed seed, so the suite stays fast and exact; the
expected figures are the reference's, scaled down (docs/protocol.md section 3).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import subprocess
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from rpcproxy.cli.simulate import _duration, add_simulate_parser, run_simulate
from rpcproxy.proxy import (
    Address,
    ProxyState,
    RebalanceTiming,
    add_primary,
    choose_head,
    plan_rebalance,
    reconcile,
)
from rpcproxy.sim import FleetConfig, FleetResult, simulate
from rpcproxy.sim.arrays import first_intervals, intervals
from rpcproxy.sim.progress import ProgressBar, progress_bar

N = 2_000
SEED = 20240611


def run(**overrides: object) -> FleetResult:
    settings: dict[str, object] = {"clients": N, "servers": 5, "seed": SEED, **overrides}
    return simulate(FleetConfig(**settings))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("clients", "min_reuse_s", "conns", "mean_interval_s"),
    [
        (N, 600.0, 64.0, 750.0),  # the reference: 600 s + U[0, 300)
        (N // 4, 120.0, 64.0, 150.0),  # Consul's minimum, five times the rebalances
        (N, 600.0, 0.25, 1600.0),  # rate term N / (S * c) = 1,600 s dominates
    ],
)
def test_mean_rate_is_fleet_over_servers_times_interval(
    clients: int, min_reuse_s: float, conns: float, mean_interval_s: float
) -> None:
    timing = RebalanceTiming(min_reuse_s=min_reuse_s, conns_per_sec_per_server=conns)
    result = run(clients=clients, timing=timing)
    expected = clients / (5 * mean_interval_s)
    assert result.mean_rate_per_sec == pytest.approx(expected, rel=0.10)
    for rate in result.rates_per_sec:
        assert rate == pytest.approx(expected, rel=0.15)


@pytest.mark.parametrize(
    ("clients", "min_reuse_s", "conns", "per_server"),
    [
        (10_000, 600.0, 64.0, 2.67),  # the reference's figures, at their own sizes
        (10_000, 120.0, 64.0, 13.3),
        (100_000, 600.0, 64.0, 26.7),
        # A hundred times the first fleet with a hundred times the cap: the
        # same intervals, so a hundred times every server's rate.
        (1_000_000, 600.0, 6_400.0, 266.7),
    ],
)
def test_the_reference_rates_per_server(
    clients: int, min_reuse_s: float, conns: float, per_server: float
) -> None:
    timing = RebalanceTiming(min_reuse_s=min_reuse_s, conns_per_sec_per_server=conns)
    result = run(clients=clients, timing=timing)
    assert result.mean_rate_per_sec == pytest.approx(per_server, rel=0.02)
    for rate in result.rates_per_sec:
        assert rate == pytest.approx(per_server, rel=0.05)


def test_a_larger_fleet_gives_the_same_per_server_rates_scaled() -> None:
    small = run(clients=N)
    large = run(clients=100 * N)
    for a, b in zip(small.rates_per_sec, large.rates_per_sec, strict=True):
        assert b / 100 == pytest.approx(a, rel=0.10)
    assert large.mean_rate_per_sec / 100 == pytest.approx(small.mean_rate_per_sec, rel=0.03)
    assert large.load_share == pytest.approx(small.load_share, abs=0.03)


@pytest.mark.parametrize(("clients", "conns"), [(100_000, 64.0), (1_000_000, 640.0)])
def test_partition_recovers_in_about_26_minutes(clients: int, conns: float) -> None:
    # The reference's figure: 100,000 clients on one server at 64/s move in
    # N / c = 1,562.5 s; ten times the fleet at ten times the cap, the same.
    timing = RebalanceTiming(conns_per_sec_per_server=conns)
    result = run(clients=clients, partition=True, minutes=40, timing=timing)
    full = result.time_to_full_rebalance_s
    assert full is not None
    assert full == pytest.approx(clients / conns, rel=0.01)
    assert 25 <= full / 60 < 27


_EDGE_US = [0.0, 0.25, 0.5, 1 - 2**-53, math.nextafter(1 - 2**-53, 0.0)]


@pytest.mark.parametrize(
    "timing",
    [
        RebalanceTiming(),
        RebalanceTiming(min_reuse_s=120.0),
        RebalanceTiming(conns_per_sec_per_server=0.25),
        RebalanceTiming(min_reuse_s=0.1, jitter_fraction=3.0),
        RebalanceTiming(min_reuse_s=1e9, jitter_fraction=0.7),
    ],
)
@pytest.mark.parametrize(("num_nodes", "num_servers"), [(0, 0), (1, 1), (10_000, 5), (10**7, 3)])
def test_vectorised_interval_is_the_formula_bit_for_bit(
    timing: RebalanceTiming, num_nodes: int, num_servers: int
) -> None:
    rng = random.Random(SEED)
    us = [*_EDGE_US, *(rng.random() for _ in range(500))]
    got = intervals(timing, num_nodes, num_servers, np.array(us))
    assert got.tolist() == [timing.rebalance_interval(num_nodes, num_servers, u) for u in us]
    assert first_intervals(timing, np.array(us)).tolist() == [timing.first_interval(u) for u in us]


@pytest.mark.parametrize(("servers", "dead"), [(5, 0), (5, 2), (3, 1)])
def test_the_proxy_functions_pick_a_uniform_live_head_keeping_every_server(
    servers: int, dead: int
) -> None:
    # What sim/arrays.py relies on: a client knowing every server as a
    # primary rebalances to a live server drawn uniformly, whatever its
    # current head, and keeps every server active (the interval's S).
    names = [Address(f"server-{i + 1}", 4647) for i in range(servers)]
    alive = {addr: i < servers - dead for i, addr in enumerate(names)}
    state = ProxyState(num_nodes=N)
    for addr in names:
        state, _ = add_primary(state, addr)
    rng = random.Random(SEED)
    heads: Counter[Address] = Counter()
    draws = 20_000
    for _ in range(draws):
        plan = plan_rebalance(state, rng)
        assert plan is not None
        index = choose_head(plan.candidates, alive)
        assert index is not None
        state = reconcile(state, plan, index).state
        assert len(state.active) == servers
        heads[state.active[0]] += 1
    live = servers - dead
    for addr in names[live:]:
        assert heads[addr] == 0
    for addr in names[:live]:
        assert heads[addr] / draws == pytest.approx(1 / live, abs=0.02)


@pytest.mark.parametrize("mode", [{}, {"partition": True}, {"cold_start": True}])
def test_peak_memory_per_client_is_bounded(mode: dict[str, bool]) -> None:
    # Arrays, not an object per client: a few dozen bytes a client (a
    # ProxyState and a heap entry each cost about 390), and the same at two
    # sizes, so ten million clients fit in well under a gigabyte.
    run(clients=100, minutes=20, **mode)  # imports and caches outside the trace
    peaks = {}
    for clients in (50_000, 200_000):
        tracemalloc.start()
        try:
            run(clients=clients, minutes=20, **mode)
            peaks[clients] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    for clients, peak in peaks.items():
        assert peak / clients <= 64
    assert (peaks[200_000] - peaks[50_000]) / 150_000 <= 64


def test_numpy_is_loaded_only_by_a_simulation() -> None:
    # cli.main imports the simulator for every command; serve's idle memory
    # must not pay for numpy.
    code = "import sys, rpcproxy.cli.main; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "mode",
    [{}, {"partition": True}, {"cold_start": True}, {"partition": True, "cold_start": True}],
)
def test_dead_servers_never_get_a_connection_nor_a_client(mode: dict[str, bool]) -> None:
    result = run(dead=2, minutes=30, **mode)
    assert result.dead_names == ("server-4", "server-5")
    for s in (3, 4):
        assert sum(result.per_minute[s]) == 0
        assert all(heads[s] == 0 for heads in result.heads_by_minute)
    assert result.rebalances > 0
    assert result.unanswered == 0
    assert sum(result.load_share) == pytest.approx(1.0)


@pytest.mark.parametrize("partition", [False, True])
def test_load_share_ends_near_one_over_s(partition: bool) -> None:
    result = run(partition=partition)
    for share in result.load_share:
        assert share == pytest.approx(1 / 5, abs=0.03)


def test_partition_recovers_at_the_rate_limit() -> None:
    # One server's rate term N / c = 2,000 s, well above the 900 s jitter
    # ceiling, so the rate limit decides when the last client moves.
    conns = 1.0
    timing = RebalanceTiming(conns_per_sec_per_server=conns)
    partitioned = run(partition=True, minutes=40, timing=timing)
    healthy = run(minutes=40, timing=timing)
    full = partitioned.time_to_full_rebalance_s
    assert full is not None
    assert full == pytest.approx(N / conns, rel=0.05)
    assert healthy.time_to_full_rebalance_s is not None
    assert healthy.time_to_full_rebalance_s < 900
    assert partitioned.max_rate_per_sec[0] <= conns


def test_partition_not_recovered_within_a_short_run_reports_none() -> None:
    timing = RebalanceTiming(conns_per_sec_per_server=1.0)
    result = run(partition=True, minutes=20, timing=timing)
    assert result.time_to_full_rebalance_s is None
    assert result.to_json()["time_to_full_rebalance_s"] is None


def test_cold_start_reference_timer_bursts_and_ours_spreads() -> None:
    reference = run(cold_start=True, reference_first_timer=True, minutes=20)
    ours = run(cold_start=True, minutes=20)

    assert reference.first_rebalance_window_s == (600.0, 600.0)
    assert sum(counts[10] for counts in reference.per_minute) == N

    assert ours.first_rebalance_window_s is not None
    earliest, latest = ours.first_rebalance_window_s
    assert 600.0 <= earliest < 610.0
    assert 890.0 < latest < 900.0
    busiest_minute = max(sum(column) for column in zip(*ours.per_minute, strict=True))
    assert busiest_minute < 0.3 * N
    assert reference.max_rate_per_sec[0] > 4 * ours.max_rate_per_sec[0]


def test_cold_start_puts_everyone_on_the_first_server_until_they_rebalance() -> None:
    result = run(cold_start=True, minutes=20)
    assert result.heads_by_minute[0] == (N, 0, 0, 0, 0)
    assert max(result.heads_by_minute[-1]) < 0.3 * N


def test_a_seed_determines_the_run() -> None:
    first = run(clients=500, minutes=20)
    assert first == run(clients=500, minutes=20)
    assert first != run(clients=500, minutes=20, seed=SEED + 1)


def test_a_single_server_never_rebalances() -> None:
    result = run(servers=1, minutes=20)
    assert result.rebalances == 0
    assert result.time_to_full_rebalance_s is None
    assert result.load_share == (1.0,)


@pytest.mark.parametrize(
    "bad",
    [
        {"clients": 0},
        {"servers": 0},
        {"minutes": 0},
        {"dead": 5},
        {"dead": -1},
        {"reference_first_timer": True},
        {"timing": RebalanceTiming(jitter_fraction=0.0)},
        {"timing": RebalanceTiming(conns_per_sec_per_server=0.0)},
    ],
)
def test_nonsense_configs_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        run(**bad)


def test_json_report_has_the_required_keys() -> None:
    report = run(minutes=20, dead=1).to_json()
    required = {
        "parameters",
        "rebalances_per_sec_per_server",
        "rebalances_per_sec_per_server_mean",
        "max_rebalances_per_sec_per_server",
        "time_to_full_rebalance_s",
        "load_share",
    }
    assert required <= report.keys()
    assert report["parameters"]["clients"] == N
    assert report["parameters"]["dead_servers"] == ["server-5"]
    assert set(report["rebalances_per_sec_per_server"]) == {f"server-{i}" for i in range(1, 6)}
    assert set(report["load_share"]) == set(report["rebalances_per_sec_per_server"])
    json.dumps(report)


def test_progress_reports_climb_to_one() -> None:
    seen: list[float] = []
    # About 9,600 rebalances: at least one report between the first and last.
    simulate(FleetConfig(clients=N, seed=SEED), progress=seen.append)
    assert seen == sorted(seen)
    assert seen[0] == 0.0
    assert seen[-1] == 1.0
    assert len(seen) >= 3


class _FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal() -> None:
    assert progress_bar(io.StringIO()) is None
    stream = _FakeTty()
    bar = progress_bar(stream)
    assert isinstance(bar, ProgressBar)
    bar(0.5)
    bar(0.501)  # same percent: no redraw
    bar.close()
    assert stream.getvalue().count("50%") == 1


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rpcproxy")
    add_simulate_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["simulate", *argv])


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse("--clients", str(N), "--minutes", "20", "--seed", "3", "--json")
    assert run_simulate(args) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["parameters"]["seed"] == 3
    assert report["parameters"]["servers"] == 5
    assert report["parameters"]["min_reuse_s"] == 600.0
    assert report["rebalances_per_sec_per_server_mean"] > 0
    assert captured.err == ""  # no progress bar off a terminal


def test_cli_summary_and_random_seed_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_simulate(_parse("--clients", "500", "--minutes", "5", "--dead", "1")) == 0
    out = capsys.readouterr().out
    assert "seed " in out
    assert "server-5  dead" in out
    assert "time to full rebalance" in out


@pytest.mark.parametrize("argv", [["--dead", "5"], ["--reference-first-timer"], ["--clients", "0"]])
def test_cli_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run_simulate(_parse(*argv)) == 2
    assert "rpcproxy simulate:" in capsys.readouterr().err


def test_cli_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    target = tmp_path / "fleet.png"
    args = _parse("--clients", "500", "--minutes", "15", "--seed", "1", "--plot", str(target))
    assert run_simulate(args) == 0
    assert target.read_bytes().startswith(b"\x89PNG")
    assert str(target) in capsys.readouterr().out


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(899.97, "15m 00.0s"), (1560.0, "26m 00.0s"), (59.95, "1m 00.0s"), (61.2, "1m 01.2s")],
)
def test_durations_never_read_60_seconds(seconds: float, shown: str) -> None:
    assert _duration(seconds).startswith(shown)
