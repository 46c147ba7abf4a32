"""Benchmark: one allowed publisher floods ``rpcproxy serve`` with 4096-server heartbeats.

Issue 9 row 1 (docs/protocol.md section 2, heartbeats are state): while
``flood_publisher.py`` sends heartbeats as fast as the proxy reads them, each
replacing the backups, one REQ client (``req_client.py``) measures
``find_server`` and the benchmark samples the proxy's resident memory. The
same client and samples on the same ``serve``, idle, are the baseline,
measured in alternating rounds. After each flood, the time until ``status``
shows the last heartbeat sent says how fresh conflation keeps the state.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from common import Requester, Result, Spread, call, running_serve, script, vm_rss_kib
from flood_publisher import server_list
from lookup import LoadRun, drive

RSS_GROWTH_TARGET_MIB = 100.0
P99_TARGET_MS = 5.0
FRESH_TARGET_S = 1.0
RSS_PERIOD_S = 0.02


@dataclass(frozen=True)
class Phase:
    """One measured window: latency, memory, and for a flood its rate and freshness."""

    load: LoadRun
    rss_peak_mib: float
    sent_per_s: float = 0.0
    fresh_s: float = 0.0
    """From the flood's last send to ``status`` showing that heartbeat."""


class RssSampler:
    """Samples a process's VmRSS on a thread and keeps the peak."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._stop = threading.Event()
        self.peak_kib = vm_rss_kib(pid)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(RSS_PERIOD_S):
            self.peak_kib = max(self.peak_kib, vm_rss_kib(self._pid))

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024


@contextlib.contextmanager
def flooding(endpoint: str, publisher: str, nice: int) -> Iterator[subprocess.Popen[str]]:
    argv = ["nice", "-n", str(nice), *script("flood_publisher.py", endpoint, publisher)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _idle(query: str, pid: int, duration_s: float) -> Phase:
    with RssSampler(pid) as rss:
        load = drive(query, 1, duration_s)
    return Phase(load, rss.peak_mib)


def _flood(query: str, heartbeat: str, pid: int, duration_s: float, nice: int) -> Phase:
    status = Requester(query)
    # A name of its own: the seqs of an earlier flood's publisher would make it stale.
    publisher = f"flood-{uuid.uuid4().hex[:8]}"

    def arrived() -> bool:
        return any(p["publisher"] == publisher for p in status.call("status")["publishers"])

    try:
        with flooding(heartbeat, publisher, nice) as flooder, RssSampler(pid) as rss:
            deadline = time.monotonic() + 15.0
            while not arrived():
                if time.monotonic() > deadline:
                    raise RuntimeError("the flood never reached the proxy")
                time.sleep(0.01)
            begin = time.monotonic()
            load = drive(query, 1, duration_s)
            assert flooder.stdin is not None
            out, _ = flooder.communicate("", timeout=30)
            flood_s = time.monotonic() - begin
            last, sent, last_at = out.split()
            deadline = time.monotonic() + 30.0
            while status.call("status")["num_nodes"] != int(last):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"heartbeat {last} was never applied")
                time.sleep(0.002)
            fresh_s = time.time() - float(last_at)
        return Phase(load, rss.peak_mib, int(sent) / flood_s, fresh_s)
    finally:
        status.close()


def heartbeat_flood(rounds: int, duration_s: float) -> Result:
    """Idle, flood (flooder at nice 19) and flood (flooder at nice 0), alternating."""
    idle: list[Phase] = []
    quiet: list[Phase] = []
    loud: list[Phase] = []
    with running_serve() as serve:
        pid = serve.proc.pid
        # Warm up with one heartbeat of the same size: the idle baseline then
        # holds 4096 servers and every table they need.
        call(serve.query, "heartbeat", servers=server_list(99), num_nodes=1, leader_rpc_addr="")
        baseline_mib = vm_rss_kib(pid) / 1024
        for index in range(rounds):
            sides: list[tuple[list[Phase], Callable[[], Phase]]] = [
                (idle, lambda: _idle(serve.query, pid, duration_s)),
                (quiet, lambda: _flood(serve.query, serve.heartbeat, pid, duration_s, 19)),
                (loud, lambda: _flood(serve.query, serve.heartbeat, pid, duration_s, 0)),
            ]
            for phases, run in sides if index % 2 == 0 else sides[::-1]:
                phases.append(run())
            print(
                f"  round {index + 1}/{rounds}: p99 idle {idle[-1].load.p99_us:.0f} us,"
                f" flood {quiet[-1].load.p99_us:.0f} us (flooder nice 19),"
                f" {loud[-1].load.p99_us:.0f} us (nice 0); RSS peak"
                f" {max(quiet[-1].rss_peak_mib, loud[-1].rss_peak_mib):.1f} MiB;"
                f" last applied after {quiet[-1].fresh_s:.3f} / {loud[-1].fresh_s:.3f} s",
                flush=True,
            )
    return _result(rounds, duration_s, baseline_mib, idle=idle, quiet=quiet, loud=loud)


def _row(name: str, phases: list[Phase], baseline_mib: float, flood: bool) -> list[str]:
    return [
        name,
        Spread.of([p.load.p50_us for p in phases]).fmt(0),
        Spread.of([p.load.p99_us for p in phases]).fmt(0),
        Spread.of([p.rss_peak_mib for p in phases]).fmt(1),
        Spread.of([p.rss_peak_mib - baseline_mib for p in phases]).fmt(1),
        Spread.of([p.sent_per_s for p in phases]).fmt(0) if flood else "",
        Spread.of([p.fresh_s for p in phases]).fmt(3) if flood else "",
    ]


def _result(
    rounds: int,
    duration_s: float,
    baseline_mib: float,
    *,
    idle: list[Phase],
    quiet: list[Phase],
    loud: list[Phase],
) -> Result:
    result = Result(
        "Heartbeat flood (4096-server heartbeats as fast as the proxy reads them)",
        [
            "phase",
            "find_server p50 (us)",
            "find_server p99 (us)",
            "serve RSS peak (MiB)",
            "RSS growth (MiB)",
            "heartbeats sent/s",
            "last heartbeat applied after (s)",
        ],
        [
            _row("idle (4096 servers known)", idle, baseline_mib, False),
            _row("flood, flooder at nice 19", quiet, baseline_mib, True),
            _row("flood, flooder at nice 0", loud, baseline_mib, True),
        ],
    )
    floods = quiet + loud
    growth = max(p.rss_peak_mib for p in floods) - baseline_mib
    p99_ms = Spread.of([p.load.p99_us for p in quiet]).median / 1000
    fresh = max(p.fresh_s for p in floods)
    ratio = Spread.of([q.load.p99_us / i.load.p99_us for q, i in zip(quiet, idle, strict=True)])
    result.rows.append(["**p99 ratio flood (nice 19) / idle**", "", ratio.fmt(1), "", "", "", ""])
    result.check(
        f"largest RSS growth during a flood {growth:.1f} MiB",
        f"< {RSS_GROWTH_TARGET_MIB:g} MB",
        growth < RSS_GROWTH_TARGET_MIB,
    )
    result.check(
        f"find_server p99 during a flood {p99_ms:.2f} ms (flooder at nice 19)",
        f"< {P99_TARGET_MS:g} ms",
        p99_ms < P99_TARGET_MS,
    )
    result.check(
        f"slowest last heartbeat applied after {fresh:.3f} s",
        f"<= {FRESH_TARGET_S:g} s",
        fresh <= FRESH_TARGET_S,
    )
    result.notes += [
        f"{rounds} rounds of {duration_s:g} s per phase, the phases alternating in order;"
        " one `rpcproxy serve` throughout, warmed up with one 4096-server heartbeat (the"
        f" baseline RSS, {baseline_mib:.1f} MiB, is read then). The flooder"
        " (`flood_publisher.py`, its own process) sends 4096-server heartbeats (8 dc1"
        " primaries and 4088 dc2 backups, the backups different every time, so each"
        " applied heartbeat changes the state), about 370 KB each, from a PUB with"
        " `ZMQ_XPUB_NODROP` and a 16-message queue: it is paced by the proxy's reading"
        " and loses nothing, so its last heartbeat is one the proxy must apply. One REQ"
        " client process (`req_client.py`) sends `find_server` back to back during each"
        " window; RSS is sampled every 20 ms from `/proc/<pid>/status`.",
        "",
        '"Last heartbeat applied after": from the flooder\'s last `send` returning until'
        " a `status` poll (every 2 ms) shows its `num_nodes`. The flooder at nice 19"
        " stands for a peer on another host (as it would be); at nice 0 it also takes"
        " one of this machine's two cores from the proxy and the client, which is what"
        " its row shows. The p99 verdict reads the nice 19 row.",
    ]
    return result
