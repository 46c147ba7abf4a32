"""Benchmark: ``serve`` with ``nomad_addr`` against an agent that misbehaves (issue 16).

Two figures of issue 16, each beside a baseline measured in the same run:

* :func:`trickling_agent` (item 3): an agent (tests/nomadapi.py) that sends
  its bodies a byte a second. How long each fetch lasts, from the request's
  arrival at the agent to the bridge hanging up, against its bound
  (``fetch_deadline(nomad_interval_s)``); and milliseconds from SIGTERM to the
  exit of ``serve`` while such a fetch is in flight (a 10 s interval, so a
  10 s deadline: only stop() ending the fetch gets it out sooner), beside
  the same ``serve`` following a healthy agent. Before issue 16: one fetch
  held the poller for ever (one GET in 30 s), and the exit took 6.1 s.
* :func:`gzip_bomb` (item 4): an agent whose every other ``/v1/agent/members``
  answer is a ~1 MB gzip of 1 GiB of zeros (``Content-Encoding: gzip``). The
  peak RSS growth of ``serve`` and ``find_server`` latency while it refuses
  them, beside the same agent answering honestly (gzip too) at the same pace;
  and, in process, how long the bridge takes to refuse one. Before issue 16:
  178 MB of peak RSS and one ``find_server`` held 92 ms.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from common import Result, Spread, call, percentile, running_serve, script, sigterm_to_exit_ms
from lookup import LoadRun

from rpcproxy.bus.service.http_fetch import fetch_deadline
from rpcproxy.bus.service.nomad_http import (
    NomadApiError,
    NomadApiSettings,
    NomadFetcher,
    make_client,
)
from tests.nomadapi import NomadFixture, gzip_of_zeros, nomad_api

TRICKLE_INTERVAL_S = 0.1
"""``nomad_interval_s`` of the trickle's fetches: their bound is fetch_deadline() of it."""
FETCH_SLACK_S = 0.25
"""A fetch may end this much after its bound (the loop's last read, the hang-up)."""
EXIT_TARGET_MS = 1000.0
EXIT_WAIT_S = 60
RSS_GROWTH_TARGET_MIB = 20.0
P99_TARGET_MS = 5.0
BOMB_BYTES = 1 << 30
GOOD = ["10.0.0.1:4647", "10.0.0.2:4647"]


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` every 10 ms until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.01)


def _servers(query: str) -> list[str]:
    return sorted(s["addr"] for s in call(query, "servers")["servers"])


# --------------------------------------------------------------------------
# (a) A trickling agent.


def _trickled_fetches(count: int) -> tuple[list[float], int]:
    """Seconds each of ``count`` trickled fetches lasted, and the warnings serve logged."""
    with nomad_api() as (state, url):
        state.trickle_s = 1.0
        args = ("--nomad-addr", url, "--nomad-interval-s", str(TRICKLE_INTERVAL_S))
        with running_serve(*args) as serve:
            bound = fetch_deadline(TRICKLE_INTERVAL_S)
            _wait(lambda: len(state.hangups) >= count, count * (bound + 5), "trickled fetches")
            lasted = [
                hung - came
                for came, hung in zip(state.arrivals[:count], state.hangups[:count], strict=True)
            ]
            warnings = serve.log().count("a whole fetch may take")
            if _servers(serve.query):
                raise RuntimeError("a trickled fetch published servers")
    return lasted, warnings


def _exit_ms(trickle: bool) -> float:
    """SIGTERM to exit of serve polling an agent every 10 s, its fetch trickled or not."""
    with nomad_api() as (state, url):
        state.trickle_s = 1.0 if trickle else None
        with running_serve("--nomad-addr", url, "--nomad-interval-s", "10") as serve:
            if trickle:
                if not state.trickling.wait(20):
                    raise RuntimeError("the bridge never fetched")
            else:
                _wait(lambda: _servers(serve.query) == GOOD, 20, "the agent's servers")
            elapsed = sigterm_to_exit_ms(serve.proc, EXIT_WAIT_S)
            if "Traceback" in serve.log():
                raise RuntimeError(f"a traceback in serve's log:\n{serve.log()}")
            return elapsed


def trickling_agent(rounds: int = 3, fetches: int = 3) -> Result:
    """Per round: ``fetches`` trickled fetches timed, then exits healthy and trickled."""
    lasted: list[float] = []
    warnings = 0
    healthy_ms: list[float] = []
    trickled_ms: list[float] = []
    for index in range(rounds):
        each, warned = _trickled_fetches(fetches)
        lasted += each
        warnings += warned
        sides = [(healthy_ms, False), (trickled_ms, True)]
        for runs, trickle in sides if index % 2 == 0 else sides[::-1]:
            runs.append(_exit_ms(trickle))
        print(
            f"  round {index + 1}/{rounds}: fetches lasted"
            f" {', '.join(f'{s:.3f}' for s in each)} s; SIGTERM -> exit"
            f" {healthy_ms[-1]:.1f} ms healthy, {trickled_ms[-1]:.1f} ms trickled",
            flush=True,
        )
    bound = fetch_deadline(TRICKLE_INTERVAL_S)
    healthy, trickled = Spread.of(healthy_ms), Spread.of(trickled_ms)
    ratio = Spread.of([t / h for t, h in zip(trickled_ms, healthy_ms, strict=True)])
    result = Result(
        "Nomad bridge: an agent trickling its answers a byte a second",
        ["measure", "figure"],
        [
            [
                f"fetch from request to hang-up (bound {bound:g} s), s",
                Spread.of(lasted).fmt(3),
            ],
            ["SIGTERM -> exit, healthy agent (baseline), ms", healthy.fmt(1)],
            ["SIGTERM -> exit, a fetch trickling, ms", trickled.fmt(1)],
            ["**ratio trickled / healthy**", ratio.fmt(2)],
        ],
    )
    result.check(
        f"slowest trickled fetch ended after {max(lasted):.3f} s",
        f"<= {bound + FETCH_SLACK_S:g} s (its {bound:g} s bound + {FETCH_SLACK_S:g})",
        max(lasted) <= bound + FETCH_SLACK_S,
    )
    result.check(
        f"{warnings} warnings for {len(lasted)} trickled fetches",
        ">= 1 per fetch, at most the rate limit",
        warnings >= len(lasted) - 1,  # the last may end as serve stops, unwarned
    )
    result.check(
        f"SIGTERM -> exit during a trickled fetch {trickled.fmt(1)} ms",
        f"< {EXIT_TARGET_MS:,.0f} ms",
        trickled.high < EXIT_TARGET_MS,
    )
    result.notes.append(
        f"{rounds} rounds. Fetches: `serve --nomad-interval-s {TRICKLE_INTERVAL_S:g}`"
        f" against tests/nomadapi.py sending each body a byte a second; the first"
        f" {fetches} fetches of each round are timed at the agent, from the request's"
        " arrival to the bridge hanging up (seen by a `select` on the connection). Exits:"
        " `serve --nomad-interval-s 10` (a 10 s fetch deadline) SIGTERMed while its first"
        " fetch trickles, beside the same `serve` once it has the healthy agent's"
        " servers, alternating; the clock runs from `kill` to the wake-up of a `poll` on"
        " the process's pidfd. Before issue 16: one fetch lasted for ever (one GET in"
        " 30 s, no warning, no retry) and the exit took 6.1 s (the whole stop budget)."
    )
    return result


# --------------------------------------------------------------------------
# (b) A gzip bomb.


class _BombingAgent(NomadFixture):
    """Every answer gzipped; while ``bombing``, every other members answer a bomb.

    Every other, not every one: a poll that fails backs off (doubling), so an
    agent bombing every answer would be asked less and less often; a good
    answer between two bombs keeps the pace at about one bomb per two polls.
    """

    def __init__(self) -> None:
        super().__init__()
        self.compress = True
        self.bombing = False
        self.bombs = 0
        self._bomb = gzip_of_zeros(BOMB_BYTES)
        self._members_asked = 0

    def body(self, path: str) -> bytes:
        if path.startswith("/v1/agent/members"):
            self._members_asked += 1
            if self.bombing and self._members_asked % 2:
                self.bombs += 1
                return self._bomb
        return super().body(path)


@contextlib.contextmanager
def _bombing_agent() -> Iterator[tuple[_BombingAgent, str]]:
    agent = _BombingAgent()
    with nomad_api(fixture=agent) as (_, url):
        yield agent, url


def _proc_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for pid {pid}")


def _reset_peak(pid: int) -> bool:
    """Restart VmHWM from the current RSS (``clear_refs`` 5, Linux 4.0+)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class _Phase:
    load: LoadRun
    max_us: float
    growth_mib: float
    bombs: int


def _phase(agent: _BombingAgent, query: str, pid: int, bombing: bool, duration_s: float) -> _Phase:
    agent.bombing = bombing
    _reset_peak(pid)
    before_kib, bombs = _proc_kib(pid, "VmRSS"), agent.bombs
    load, max_us = _drive(query, duration_s)
    growth = (_proc_kib(pid, "VmHWM") - before_kib) / 1024
    agent.bombing = False
    return _Phase(load, max_us, growth, agent.bombs - bombs)


def _drive(query: str, duration_s: float) -> tuple[LoadRun, float]:
    """One ``find_server`` client process for ``duration_s``: its run and its slowest trip.

    lookup.drive's client (``req_client.py``), read here to keep the maximum too.
    """
    start_at = time.time() + 0.6  # room for the process to start, as drive() leaves
    proc = subprocess.Popen(
        script("req_client.py", query, repr(start_at), repr(duration_s)), stdout=subprocess.PIPE
    )
    out = json.loads(proc.communicate(timeout=60 + duration_s)[0])
    latencies = sorted(out["lat_us"])
    load = LoadRun(
        throughput=out["count"] / out["elapsed"],
        p50_us=percentile(latencies, 0.50),
        p99_us=percentile(latencies, 0.99),
    )
    return load, latencies[-1]


def _refusal_ms(count: int) -> list[float]:
    """In process: milliseconds the bridge takes to refuse one bomb, ``count`` times."""
    with nomad_api() as (state, url):
        state.raw, state.encoding = gzip_of_zeros(BOMB_BYTES), "gzip"
        settings = NomadApiSettings.from_env({}, addr=url)
        fetcher = NomadFetcher(make_client(settings), settings)
        times: list[float] = []
        for _ in range(count):
            begin = time.perf_counter()
            try:
                fetcher.get("/v1/agent/members")
            except NomadApiError as exc:
                if exc.kind != "too_large":
                    raise
            else:
                raise RuntimeError("the bomb was accepted")
            times.append((time.perf_counter() - begin) * 1000)
        return times


def gzip_bomb(rounds: int = 3, duration_s: float = 2.0) -> Result:
    """Honest and bombing phases alternating on one serve, then refusals timed in process."""
    honest: list[_Phase] = []
    bombed: list[_Phase] = []
    with _bombing_agent() as (agent, url):
        args = ("--nomad-addr", url, "--nomad-interval-s", "0.05")
        with running_serve(*args) as serve:
            pid = serve.proc.pid
            peak_exact = _reset_peak(pid)
            _wait(lambda: _servers(serve.query) == GOOD, 20, "the agent's servers")
            for index in range(rounds):
                sides = [(honest, False), (bombed, True)]
                for phases, bombing in sides if index % 2 == 0 else sides[::-1]:
                    phases.append(_phase(agent, serve.query, pid, bombing, duration_s))
                print(
                    f"  round {index + 1}/{rounds}: p99 honest {honest[-1].load.p99_us:.0f} us,"
                    f" bombed {bombed[-1].load.p99_us:.0f} us (max {bombed[-1].max_us:.0f} us,"
                    f" {bombed[-1].bombs} bombs); RSS growth {bombed[-1].growth_mib:.1f} MiB",
                    flush=True,
                )
            if _servers(serve.query) != GOOD:
                raise RuntimeError(f"the servers changed: {_servers(serve.query)}")
            refused_in_log = serve.log().count("once decoded")
    refusals = _refusal_ms(10)
    return _bomb_result(
        rounds,
        duration_s,
        honest=honest,
        bombed=bombed,
        refusals=refusals,
        refused_in_log=refused_in_log,
        peak_exact=peak_exact,
    )


def _bomb_result(
    rounds: int,
    duration_s: float,
    *,
    honest: list[_Phase],
    bombed: list[_Phase],
    refusals: list[float],
    refused_in_log: int,
    peak_exact: bool,
) -> Result:
    def row(name: str, phases: list[_Phase]) -> list[str]:
        return [
            name,
            Spread.of([p.load.p50_us for p in phases]).fmt(0),
            Spread.of([p.load.p99_us for p in phases]).fmt(0),
            Spread.of([p.max_us for p in phases]).fmt(0),
            Spread.of([p.growth_mib for p in phases]).fmt(1),
            Spread.of([float(p.bombs) for p in phases]).fmt(0),
        ]

    result = Result(
        "Nomad bridge: a gzip bomb (1 GiB of zeros in ~1 MB) every other members answer",
        [
            "agent",
            "find_server p50 (us)",
            "find_server p99 (us)",
            "find_server max (us)",
            "serve peak RSS growth (MiB)",
            "bombs sent in the phase",
        ],
        [row("honest, gzip (baseline)", honest), row("bombing", bombed)],
    )
    growth = max(p.growth_mib for p in bombed)
    p99_ms = Spread.of([p.load.p99_us for p in bombed]).median / 1000
    ratio = Spread.of([b.load.p99_us / h.load.p99_us for b, h in zip(bombed, honest, strict=True)])
    result.rows.append(["**p99 ratio bombing / honest**", "", ratio.fmt(2), "", "", ""])
    result.check(
        f"largest peak RSS growth while bombed {growth:.1f} MiB",
        f"< {RSS_GROWTH_TARGET_MIB:g} MB",
        growth < RSS_GROWTH_TARGET_MIB,
    )
    result.check(
        f"find_server p99 while bombed {p99_ms:.2f} ms",
        f"< {P99_TARGET_MS:g} ms",
        p99_ms < P99_TARGET_MS,
    )
    result.check(
        f"{sum(p.bombs for p in bombed)} bombs sent, {refused_in_log} refusals logged"
        " (rate-limited), the servers unchanged",
        "bombs refused as too large",
        refused_in_log >= 1,
    )
    result.report(
        f"one bomb refused, in process, after {statistics.median(refusals):.1f} ms"
        f" ({min(refusals):.1f}-{max(refusals):.1f}, {len(refusals)} fetches)"
    )
    result.notes.append(
        f"{rounds} rounds of {duration_s:g} s per phase, alternating, on one"
        " `serve --nomad-interval-s 0.05` following tests/nomadapi.py, which gzips every"
        " answer; while bombing, every other `/v1/agent/members` answer is a valid gzip of"
        " 1 GiB of zeros (~1 MB on the wire), so the pace of polls stays that of the"
        " honest phase (a bomb every time would back the poller off). One REQ client"
        " process (`req_client.py`) sends `find_server` back to back in each window. RSS"
        " growth: `VmHWM` at the end minus `VmRSS` at the start of the phase"
        + (
            ", the peak restarted at the phase's start (`/proc/<pid>/clear_refs` 5)."
            if peak_exact
            else "; the peak could not be restarted, so it may include start-up (an upper bound)."
        )
        + " Refusal time: `NomadFetcher.get` in this process against the same bomb, from"
        " the call to the too-large error (4 MiB decoded, in 64 KiB steps). Before issue"
        " 16: the peak RSS rose 178 MB and one `find_server` was held 92 ms."
    )
    return result


def nomad_bridge(rounds: int = 3, duration_s: float = 2.0, fetches: int = 3) -> list[Result]:
    """Both: the trickling agent (``rounds`` x ``fetches``) and the gzip bomb."""
    return [
        trickling_agent(rounds=rounds, fetches=fetches),
        gzip_bomb(rounds=rounds, duration_s=duration_s),
    ]


if __name__ == "__main__":
    for outcome in nomad_bridge(rounds=1, duration_s=1.0, fetches=2):
        print(outcome.markdown())
