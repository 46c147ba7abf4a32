"""Run the rpcproxy benchmarks and print (or write) what they measured.

Usage::

    python bench/run.py                      # every benchmark, a few minutes
    python bench/run.py --quick              # short smoke run, under a minute
    python bench/run.py --write bench/RESULTS.md   # what `make bench` runs
    python bench/run.py --only lookup,memory --write /tmp/part.md

Writing bench/RESULTS.md takes a full run (no --quick, no --only): the file
is written whole, names the commit measured, ends with a digest of its text,
and the README's Performance block is rebuilt from it (bench/report.py).

Each benchmark compares the product with a baseline measured side by side in
the same run (alternating rounds) and reports ratios; timings are never
asserted anywhere, so a slow machine cannot fail a build.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import report
from before_after import before_after
from common import Result, git_commit, machine_description
from exits import exit_times
from fill import fill_to_max_servers, throttle_cost
from flood import heartbeat_flood
from idle_subscribers import idle_subscribers
from ingest import heartbeat_ingest
from lookup import concurrency, lookup_throughput
from memory import memory
from metrics_idle import metrics_idle
from nomad_bridge import nomad_bridge
from nomad_ping import nomad_ping
from publish_source import publish_source
from rebalance import lookups_during_blackhole, rebalance
from simulate import simulate_benchmark
from state_file import state_file
from subscription_flood import subscription_flood
from watch import watch_benchmarks
from writes import write_round_trip

Outcome = Result | list[Result]


@dataclass(frozen=True, kw_only=True)
class Bench:
    """One benchmark: its full run and its ``--quick`` run (the full one if not given).

    Each is a call with its arguments written out by name, so a benchmark's
    sizes sit on its own line and a new one cannot shift another's.
    """

    full: Callable[[], Outcome]
    quick: Callable[[], Outcome] | None = None

    def run(self, quick: bool) -> Outcome:
        return (self.quick or self.full)() if quick else self.full()


# The benchmarks, in the order they run and appear in RESULTS.md. To add one:
# import its function above and add its entry here (a quick run is optional).
BENCHMARKS: dict[str, Bench] = {
    "lookup": Bench(
        full=lambda: lookup_throughput(rounds=8, duration_s=1.5),
        quick=lambda: lookup_throughput(rounds=5, duration_s=0.5),
    ),
    "concurrency": Bench(
        full=lambda: concurrency(rounds=6, duration_s=1.5),
        quick=lambda: concurrency(rounds=3, duration_s=0.7),
    ),
    "rebalance": Bench(
        full=lambda: rebalance(repetitions=5), quick=lambda: rebalance(repetitions=2)
    ),
    "ingest": Bench(
        full=lambda: heartbeat_ingest(rounds=7, count=50_000),
        quick=lambda: heartbeat_ingest(rounds=2, count=10_000),
    ),
    "memory": Bench(full=memory),
    "flood": Bench(
        full=lambda: heartbeat_flood(rounds=3, duration_s=4.0),
        quick=lambda: heartbeat_flood(rounds=1, duration_s=2.0),
    ),
    "blackhole": Bench(
        full=lambda: lookups_during_blackhole(rounds=8, duration_s=1.5),
        quick=lambda: lookups_during_blackhole(rounds=5, duration_s=0.5),
    ),
    "fill": Bench(
        full=lambda: fill_to_max_servers(rounds=3), quick=lambda: fill_to_max_servers(rounds=1)
    ),
    "throttle": Bench(full=lambda: throttle_cost(rounds=5), quick=lambda: throttle_cost(rounds=3)),
    "subscribers": Bench(
        full=lambda: idle_subscribers(subscribers=1000, rate=5000.0, duration_s=20.0),
        quick=lambda: idle_subscribers(subscribers=300, rate=5000.0, duration_s=5.0),
    ),
    "subscription_flood": Bench(
        full=lambda: subscription_flood(subscriptions=1_000_000, rate=50_000.0),
        quick=lambda: subscription_flood(subscriptions=250_000, rate=50_000.0),
    ),
    "exits": Bench(full=lambda: exit_times(rounds=3), quick=lambda: exit_times(rounds=2)),
    "metrics_idle": Bench(
        full=lambda: metrics_idle(scrapes=300, rounds=3),
        quick=lambda: metrics_idle(scrapes=60, rounds=2),
    ),
    "nomad_ping": Bench(
        full=lambda: nomad_ping(rounds=10, plain_pings=1000, tls_pings=300),
        quick=lambda: nomad_ping(rounds=3, plain_pings=300, tls_pings=100),
    ),
    "nomad_bridge": Bench(
        full=lambda: nomad_bridge(rounds=3, duration_s=2.0, fetches=3),
        quick=lambda: nomad_bridge(rounds=1, duration_s=1.0, fetches=2),
    ),
    "publish_source": Bench(
        full=lambda: publish_source(duration_s=3.0),
        quick=lambda: publish_source(duration_s=1.0),
    ),
    "state_file": Bench(full=lambda: state_file(rounds=3), quick=lambda: state_file(rounds=1)),
    "watch": Bench(
        full=lambda: watch_benchmarks(rounds=8, duration_s=1.0, changes=300, concurrency_rounds=4),
        quick=lambda: watch_benchmarks(rounds=3, duration_s=0.5, changes=100, concurrency_rounds=2),
    ),
    "writes": Bench(
        full=lambda: write_round_trip(back_to_back=3000, paced=500, pause_s=0.02),
        quick=lambda: write_round_trip(back_to_back=500, paced=100, pause_s=0.02),
    ),
    "simulate": Bench(
        full=lambda: simulate_benchmark(clients=10_000_000, rounds=3),
        quick=lambda: simulate_benchmark(clients=1_000_000, rounds=2),
    ),
    "before_after": Bench(
        full=lambda: before_after(rounds=6, lookup_s=1.5, ingest_count=30_000, rebalances=5),
        quick=lambda: before_after(rounds=2, lookup_s=0.5, ingest_count=5_000, rebalances=2),
    ),
}


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def markdown(results: list[Result], machine: list[tuple[str, str]], argv: list[str]) -> str:
    """The whole of RESULTS.md, sealed: it is written at once, never pieced together."""
    verdicts = [
        report.Verdict(report.short_name(result.title), figure, target, met)
        for result in results
        for figure, target, met in result.verdicts
    ]
    lines = [
        "# rpcproxy benchmarks",
        "",
        f"Generated by `python bench/{' '.join(['run.py', *argv])}`, every section in this"
        " one run (the machine table says where and on which commit). Ratios are measured"
        " side by side (alternating rounds of product and baseline); each figure is the"
        " median over rounds with the min-max range in parentheses.",
        "",
        "| machine | |",
        "| --- | --- |",
        *(report.row([key, value]) for key, value in machine),
        "",
        *report.summary_markdown(verdicts),
        "",
    ]
    return report.seal("\n".join(lines) + "\n" + "\n".join(r.markdown() for r in results))


def _writes_results(path: Path | None) -> bool:
    return path is not None and path.resolve() == report.RESULTS


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--write",
        type=Path,
        help="also write the results to this Markdown file (bench/RESULTS.md: and the"
        " README's Performance block)",
    )
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; choose from {sorted(BENCHMARKS)}")
    if _writes_results(args.write) and (args.quick or args.only):
        # RESULTS.md is one full run, whole: a part of one would leave the
        # other sections out, and a quick one is not the figures to quote.
        parser.error(f"{report.RESULTS} is written by a full run only (no --quick, --only)")
    # The commit is read before the first benchmark starts: it is the code
    # that ran (another checkout step during the run is caught below).
    commit = git_commit()
    machine = [*machine_description(), ("commit", commit)]
    machine.append(("load average before", _load()))
    results: list[Result] = []
    for name in names:
        print(f"{name}:", flush=True)
        begin = time.monotonic()
        # A benchmark may report several tables (watch: three figures).
        outcome = BENCHMARKS[name].run(args.quick)
        results += outcome if isinstance(outcome, list) else [outcome]
        print(f"  ({time.monotonic() - begin:.0f} s)", flush=True)
    machine.append(("load average after", _load()))
    if (after := git_commit()) != commit:
        machine.append(("commit after the run (changed during it)", after))
    text = markdown(results, machine, argv)
    print("\n" + text)
    if args.write:
        args.write.write_text(text)
        print(f"wrote {args.write}")
    if _writes_results(args.write):
        report.write_readme(text)
        print(f"rewrote the Performance block of {report.README}")
    return 0  # a missed target is a finding to read, not a failure


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
