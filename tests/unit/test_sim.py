"""The fleet simulator (``sim/``) and ``rpcproxy simulate``.

Small fleets with a fixed seed, so the suite stays fast and exact; the
expected figures are the reference's, scaled down (docs/protocol.md section 3).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from rpcproxy.cli.simulate import add_simulate_parser, run_simulate
from rpcproxy.proxy import RebalanceTiming
from rpcproxy.sim import FleetConfig, FleetResult, simulate
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
