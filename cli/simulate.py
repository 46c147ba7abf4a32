"""``rpcproxy simulate``: a whole fleet's rebalancing in virtual time.

The reference justifies its constants with fleet-wide figures (about 13
connections per server per second for 10,000 clients, 26 minutes to recover
from a partition of 100,000); this command reproduces them from the real
``proxy`` code, and shows what changing a constant would do before anyone
deploys it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import TextIO

from rpcproxy.proxy import RebalanceTiming
from rpcproxy.sim import FleetConfig, FleetResult, simulate
from rpcproxy.sim.plot import PlotUnavailableError, save_plot
from rpcproxy.sim.progress import progress_bar

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_DEFAULTS = FleetConfig()


def add_simulate_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``simulate`` sub-command to ``commands`` and return its parser."""
    timing = _DEFAULTS.timing
    parser = commands.add_parser(
        "simulate",
        help="simulate a fleet's rebalancing in virtual time",
        description=(
            "Run N clients and S servers through the real rebalancing code in virtual "
            "time and report the new connections each server sees."
        ),
    )
    parser.add_argument("--clients", type=int, default=_DEFAULTS.clients, help="fleet size")
    parser.add_argument("--servers", type=int, default=_DEFAULTS.servers)
    parser.add_argument(
        "--minutes", type=int, default=_DEFAULTS.minutes, help="virtual minutes to run"
    )
    parser.add_argument("--min-reuse-s", type=float, default=timing.min_reuse_s)
    parser.add_argument("--jitter-fraction", type=float, default=timing.jitter_fraction)
    parser.add_argument(
        "--conns-per-sec-per-server", type=float, default=timing.conns_per_sec_per_server
    )
    parser.add_argument(
        "--dead",
        type=int,
        default=0,
        metavar="K",
        help="the last K servers never answer a ping",
    )
    parser.add_argument(
        "--partition",
        action="store_true",
        help="every client starts knowing one server (timer set for one) and learns all at t=0",
    )
    parser.add_argument(
        "--cold-start",
        action="store_true",
        help="all clients start at t=0 with a first timer (default: steady state)",
    )
    parser.add_argument(
        "--reference-first-timer",
        action="store_true",
        help="with --cold-start: first timer exactly min-reuse-s, as the reference does",
    )
    parser.add_argument("--seed", type=int, default=None, help="default: random, and reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="write a figure")
    return parser


def run_simulate(args: argparse.Namespace) -> int:
    """Run the scenario ``args`` describes, print the report, write the plot if asked."""
    # Without --seed, pick one and report it, so any run can be repeated.
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    config = FleetConfig(
        clients=args.clients,
        servers=args.servers,
        minutes=args.minutes,
        timing=RebalanceTiming(
            min_reuse_s=args.min_reuse_s,
            jitter_fraction=args.jitter_fraction,
            conns_per_sec_per_server=args.conns_per_sec_per_server,
        ),
        dead=args.dead,
        partition=args.partition,
        cold_start=args.cold_start,
        reference_first_timer=args.reference_first_timer,
        seed=seed,
    )
    try:
        config.validate()
    except ValueError as exc:
        print(f"rpcproxy simulate: {exc}", file=sys.stderr)
        return EXIT_USAGE

    bar = progress_bar(sys.stderr)
    try:
        result = simulate(config, progress=bar)
    finally:
        if bar is not None:
            bar.close()

    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print_summary(result, sys.stdout)
    if args.plot:
        try:
            save_plot(result, args.plot)
        except (PlotUnavailableError, OSError) as exc:
            print(f"rpcproxy simulate: cannot write plot: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        if not args.json:
            print(f"plot written to {args.plot}")
    return EXIT_OK


def print_summary(result: FleetResult, out: TextIO) -> None:
    """A short table for humans: per-server rates and shares, then the fleet figures."""
    config = result.config
    timing = config.timing
    flags = config.mode_names
    out.write(
        f"{config.clients:,} clients, {config.servers} servers ({config.dead} dead), "
        f"{config.minutes} virtual minutes, seed {config.seed}\n"
        f"min_reuse_s {timing.min_reuse_s:g}, jitter_fraction {timing.jitter_fraction:g}, "
        f"conns_per_sec_per_server {timing.conns_per_sec_per_server:g}"
        f"{'; ' + ', '.join(flags) if flags else ''}\n\n"
    )
    dead = set(result.dead_names)
    rows = [("server", "state", "rebalances/s", "peak minute /s", "load share")]
    for s, name in enumerate(result.server_names):
        counts = result.per_minute[s]
        busiest = max(counts, default=0)
        rows.append(
            (
                name,
                "dead" if name in dead else "live",
                f"{result.rates_per_sec[s]:.2f}",
                f"{busiest / 60:.2f}",
                f"{result.load_share[s] * 100:.1f} %",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        out.write("  ".join(cells).rstrip() + "\n")

    peak, peak_server, peak_minute = result.max_rate_per_sec
    full = result.time_to_full_rebalance_s
    window = result.first_rebalance_window_s
    out.write(
        f"\nmean rebalances/s per server: {result.mean_rate_per_sec:.2f}"
        f" (per live server {result.mean_live_rate_per_sec:.2f})\n"
        f"busiest minute: {peak:.2f}/s on {result.server_names[peak_server]}"
        f" in minute {peak_minute}"
        f" (cap {timing.conns_per_sec_per_server:g}/s)\n"
        f"time to full rebalance: {_duration(full)}\n"
    )
    if window is not None:
        out.write(f"first rebalances between {window[0]:.1f} s and {window[1]:.1f} s\n")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not within the run"
    # Rounded to tenths first, so 899.97 s reads 15m 00.0s, never 14m 60.0s.
    whole, tenths = divmod(round(seconds * 10), 600)
    return f"{whole}m {tenths / 10:04.1f}s ({seconds:.1f} s)"
