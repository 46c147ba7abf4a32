"""The code as it is against the code before a named commit, side by side in one run.

A refactor promises the same behaviour at the same speed. This benchmark
holds it to that: it runs ``rpcproxy serve`` from this tree and from a
baseline tree (``git archive`` of :data:`BASELINE`, imported ahead of the
installed package through ``PYTHONPATH``), alternating which goes first, and
compares the three figures a refactor of the plumbing could move: lookups
(``find_server`` round trips), heartbeat ingest (the SUB socket, the
conflator and the actor) and a rebalance (the actor, the prober and the
query loop's write path). Same machine, same minutes, same clients: only the
code differs.
"""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from common import BENCH_DIR, Requester, Result, Serve, Spread, pack, running_serve
from ingest import ProxyTarget, heartbeat, one_round
from lookup import drive

BASELINE = "6b8dd4c"
"""The last commit before issue 17's moves and renames (its product is the one
bench/RESULTS.md measured at ac7d027)."""

NOT_WORSE = 0.95
"""Median ratio (this tree / baseline) at or above which a figure is "not worse":
two runs of the same code differ by a few percent on this machine."""

LOOKUP_PRIMARIES = "10.0.0.1:4647,10.0.0.2:4647,10.0.0.3:4647"
INGEST_LEADER = "10.0.0.1:4647"
DEAD = 64
"""Refused addresses ahead of the live one: a rebalance probes them all."""


@dataclass(frozen=True)
class Side:
    """One tree's ``rpcproxy serve``: ``prefix`` picks the tree."""

    name: str
    prefix: tuple[str, ...]


@contextlib.contextmanager
def baseline_tree(commit: str) -> Iterator[Side]:
    """The package as it was at ``commit``, importable ahead of the installed one."""
    with tempfile.TemporaryDirectory(prefix="rpcproxy-baseline-") as tmp:
        package = Path(tmp) / "rpcproxy"
        package.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(BENCH_DIR.parent), "archive", "--format=tar", commit],
            capture_output=True,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(package, filter="data")
        prefix = ("env", f"PYTHONPATH={tmp}")
        _check_imports_from(prefix, package)
        yield Side(f"baseline {commit}", prefix)


def _check_imports_from(prefix: tuple[str, ...], package: Path) -> None:
    """Fail loudly unless the prefix really makes ``rpcproxy`` the baseline's."""
    code = "import rpcproxy.cli.main, rpcproxy; print(rpcproxy.__file__)"
    out = subprocess.run(
        [*prefix, sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    if Path(out).resolve().parent != package.resolve():
        raise RuntimeError(f"the baseline's rpcproxy is not the one imported: {out}")


CURRENT = Side("this tree", ())


def _alternate(
    rounds: int, sides: list[Side], measure: Callable[[Side], float]
) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {side.name: [] for side in sides}
    for index in range(rounds):
        for side in sides if index % 2 == 0 else sides[::-1]:
            figures[side.name].append(measure(side))
        print(
            f"  round {index + 1}/{rounds}: "
            + ", ".join(f"{name} {values[-1]:,.4g}" for name, values in figures.items()),
            flush=True,
        )
    return figures


def _lookups_per_s(side: Side, duration_s: float) -> float:
    with running_serve("--primary-servers", LOOKUP_PRIMARIES, prefix=side.prefix) as serve:
        return drive(serve.query, 1, duration_s).throughput


def _ingest_per_s(side: Side, count: int) -> float:
    with running_serve("--primary-servers", INGEST_LEADER, prefix=side.prefix) as serve:
        target = ProxyTarget(serve)
        try:
            name = f"bench-{uuid.uuid4().hex[:8]}"
            payloads = [pack(heartbeat(i, name, i)) for i in range(1, count + 1)]
            return one_round(target, 0, count, name, payloads).rate
        finally:
            target.close()


def _rebalance_s(side: Side, repetitions: int) -> float:
    """Median seconds of a ``rebalance`` that probes DEAD refused servers and one live one."""
    with _refused_ports(DEAD) as dead, _listener() as live:
        primaries = ",".join([*dead, live])
        args = ("--primary-servers", primaries, "--ping-method", "tcp", "--ping-timeout-s", "2")
        with running_serve(*args, prefix=side.prefix) as serve:
            return _median_rebalance(serve, repetitions)


def _median_rebalance(serve: Serve, repetitions: int) -> float:
    client = Requester(serve.query)
    try:
        times = []
        for _ in range(repetitions):
            began = time.perf_counter()
            reply = client.call("rebalance")
            times.append(time.perf_counter() - began)
            if reply.get("healthy") is not True:
                raise RuntimeError(f"a rebalance found no live server: {reply!r}")
        return Spread.of(times).median
    finally:
        client.close()


@contextlib.contextmanager
def _refused_ports(count: int) -> Iterator[list[str]]:
    """Loopback addresses where nothing listens: each probe is refused at once."""
    holders = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
            holders.append(s)
        yield [f"127.0.0.1:{s.getsockname()[1]}" for s in holders]
    finally:
        for s in holders:
            s.close()


@contextlib.contextmanager
def _listener() -> Iterator[str]:
    """A TCP listener that accepts (the tcp probe's idea of a live server)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    try:
        yield f"127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


def before_after(
    rounds: int, lookup_s: float, ingest_count: int, rebalances: int, commit: str = BASELINE
) -> Result:
    with baseline_tree(commit) as base:
        sides = [CURRENT, base]
        print(f"lookups: {rounds} rounds of {lookup_s} s", flush=True)
        lookups = _alternate(rounds, sides, lambda s: _lookups_per_s(s, lookup_s))
        print(f"ingest: {rounds} rounds of {ingest_count:,} heartbeats", flush=True)
        ingest = _alternate(rounds, sides, lambda s: _ingest_per_s(s, ingest_count))
        print(f"rebalance: {rounds} rounds of {rebalances} rebalances, {DEAD} dead", flush=True)
        rebalance = _alternate(rounds, sides, lambda s: _rebalance_s(s, rebalances))
    result = Result(
        f"Refactor check: this tree against {commit}, side by side",
        ["figure", "this tree", f"baseline {commit}", "ratio (higher is better)"],
    )
    figures = [
        ("find_server round trips/s, 1 REQ client", lookups, False),
        (f"heartbeats applied/s ({ingest_count:,} per round)", ingest, False),
        (f"rebalance of {DEAD} refused + 1 live, median s", rebalance, True),
    ]
    for title, values, lower_is_better in figures:
        now, then = values[CURRENT.name], values[base.name]
        ratios = [(b / a if lower_is_better else a / b) for a, b in zip(now, then, strict=True)]
        ratio = Spread.of(ratios)
        digits = 4 if lower_is_better else 0
        result.rows.append(
            [title, Spread.of(now).fmt(digits), Spread.of(then).fmt(digits), ratio.fmt(3)]
        )
        result.check(f"{title}: ratio {ratio.fmt(3)}", f">= {NOT_WORSE}", ratio.median >= NOT_WORSE)
    result.notes.append(
        f"{rounds} alternating rounds, each side a fresh `rpcproxy serve` per round. The"
        f" baseline is `git archive {commit}` imported ahead of the installed package"
        " (PYTHONPATH); the ratio is this tree's figure over the baseline's (for the"
        " rebalance, the baseline's time over this tree's), so above 1 is faster."
    )
    return result
