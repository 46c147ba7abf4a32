"""Soak run: a real ``rpcproxy serve`` under steady load for a while.

Not a pytest test (``make soak`` runs it): it starts the proxy with
``min_reuse_s = 1`` (a timed rebalance every 1-1.5 s), three Nomad-server
stand-ins, a heartbeat publisher sending every 10 ms, a client asking for a
``rebalance`` every second, and several client threads calling
``find_server`` and ``notify_failed_server`` as fast as they can. It passes
when no call failed or timed out and the proxy's resident memory grew by less
than ``--max-rss-growth`` percent between the end of the warm-up and the end.

    python tests/soak/run_soak.py --seconds 60
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import zmq

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rpcproxy.bus.client import ProxyClient, ProxyError, ProxyTimeoutError  # noqa: E402
from rpcproxy.bus.standins.standin import ServerStandIn  # noqa: E402
from tests.helpers import free_port  # noqa: E402

RPCPROXY = str(Path(sys.executable).parent / "rpcproxy")
HEARTBEAT_PERIOD_S = 0.01
REBALANCE_PERIOD_S = 1.0
SAMPLE_PERIOD_S = 1.0


def rss_kib(pid: int) -> int:
    """The process's resident set size (VmRSS) in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Tally:
    """Counts shared by the load threads (one lock; counting is cheap)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def fail(self, key: str, detail: str) -> None:
        with self.lock:
            self.counts[key] += 1
            if len(self.failures) < 20:
                self.failures.append(f"{key}: {detail}")


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.stop = threading.Event()
        self.measuring = threading.Event()
        self.tally = Tally()
        self.context: zmq.Context[Any] = zmq.Context()
        self.standins: list[ServerStandIn] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.query = ""
        self.heartbeat = ""
        self.stderr_path = workdir / "rpcproxy.stderr"
        self.rss: list[tuple[float, int]] = []

    # -- setup ---------------------------------------------------------------

    def start(self) -> None:
        for _ in range(3):
            standin = ServerStandIn("tcp://127.0.0.1:*", context=self.context)
            standin.start()
            self.standins.append(standin)
        self.query = f"tcp://127.0.0.1:{free_port()}"
        self.heartbeat = f"tcp://127.0.0.1:{free_port()}"
        argv = [
            RPCPROXY,
            "serve",
            "--query",
            self.query,
            "--heartbeat-bind",
            self.heartbeat,
            "--events",
            f"tcp://127.0.0.1:{free_port()}",
            "--min-reuse-s",
            "1",
            "--ping-timeout-s",
            "0.5",
            "--state-file",
            str(self.workdir / "state.json"),
            "--log-level",
            "warning",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RPCPROXY_")}
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env=env
            )
        with ProxyClient(self.query, timeout_s=0.2, retries=1, context=self.context) as client:
            deadline = time.monotonic() + 15.0
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"rpcproxy exited at start:\n{self.stderr()}")
                try:
                    client.ping()
                    break
                except ProxyTimeoutError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"rpcproxy never answered:\n{self.stderr()}") from None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self.standins]

    # -- load ------------------------------------------------------------------

    def publish_heartbeats(self) -> None:
        pub = self.context.socket(zmq.PUB)
        pub.linger = 0
        pub.connect(self.heartbeat)
        servers = [
            {
                "rpc_advertise_addr": addr,
                "rpc_major_version": 1,
                "rpc_minor_version": 1,
                "datacenter": "dc1",
            }
            for addr in self.addresses
        ]
        seq = 0
        try:
            next_at = time.monotonic()
            while not self.stop.is_set():
                seq += 1
                payload = {
                    "servers": servers,
                    "num_nodes": 100 + seq % 7,
                    "leader_rpc_addr": self.addresses[0],
                    "publisher": "soak",
                    "seq": seq,
                }
                pub.send_multipart([b"heartbeat/global", msgpack.packb(payload)])
                self.tally.add("heartbeats sent")
                next_at += HEARTBEAT_PERIOD_S
                self.stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            pub.close(linger=0)

    def rebalance_every_second(self) -> None:
        with ProxyClient(self.query, timeout_s=5.0, retries=1, context=self.context) as client:
            while not self.stop.wait(REBALANCE_PERIOD_S):
                try:
                    result = client.rebalance()
                except ProxyTimeoutError as exc:
                    self.tally.fail("timeouts", f"rebalance: {exc}")
                    continue
                except ProxyError as exc:
                    self.tally.fail("errors", f"rebalance: {exc!r}")
                    continue
                self.tally.add("rebalances")
                if result.healthy is False:
                    self.tally.add("rebalances with no server answering")

    def client_loop(self, index: int) -> None:
        known = set(self.addresses)
        with ProxyClient(self.query, timeout_s=2.0, retries=2, context=self.context) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                try:
                    server = client.find_server()
                    self.tally.add("find_server")
                    if server is None or server.addr not in known:
                        if self.measuring.is_set():
                            self.tally.fail("wrong answers", f"client {index}: {server}")
                        continue
                    if n % 4 == index % 4:
                        client.notify_failed_server(server.addr)
                        self.tally.add("notify_failed_server")
                except ProxyTimeoutError as exc:
                    self.tally.fail("timeouts", f"client {index}: {exc}")
                except ProxyError as exc:
                    self.tally.fail("errors", f"client {index}: {exc!r}")

    # -- run ---------------------------------------------------------------------

    def run(self) -> int:
        args = self.args
        assert self.proc is not None
        pid = self.proc.pid
        threads = [
            threading.Thread(target=self.publish_heartbeats, name="heartbeats"),
            threading.Thread(target=self.rebalance_every_second, name="rebalance"),
        ] + [
            threading.Thread(target=self.client_loop, args=(i,), name=f"client-{i}")
            for i in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        warmup_s = min(args.warmup, args.seconds / 3)
        end = started + args.seconds
        try:
            # Let the heartbeats fill the list before answers are judged.
            self.stop.wait(min(1.0, warmup_s))
            self.measuring.set()
            self.stop.wait(max(0.0, started + warmup_s - time.monotonic()))
            rss_start = rss_kib(pid)
            self.rss.append((time.monotonic() - started, rss_start))
            while (left := end - time.monotonic()) > 0:
                self.stop.wait(min(SAMPLE_PERIOD_S, left))
                if self.proc.poll() is not None:
                    self.tally.fail("errors", f"rpcproxy exited with {self.proc.returncode}")
                    break
                self.rss.append((time.monotonic() - started, rss_kib(pid)))
            rss_end = self.rss[-1][1]
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(15.0)
        exit_code = self.shutdown()
        return self.report(rss_start, rss_end, time.monotonic() - started, exit_code)

    def shutdown(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for standin in self.standins:
            with contextlib.suppress(Exception):
                standin.stop()
        self.context.destroy(linger=0)

    def report(self, rss_start: int, rss_end: int, elapsed_s: float, exit_code: int | None) -> int:
        counts = self.tally.counts
        growth = 100.0 * (rss_end - rss_start) / rss_start
        peak = max(kib for _, kib in self.rss)
        stderr = self.stderr()
        tracebacks = stderr.count("Traceback")
        error_lines = [line for line in stderr.splitlines() if " ERROR " in line]
        print(f"soak: {elapsed_s:.1f} s, {self.args.clients} client threads")
        for key in sorted(counts):
            print(f"  {key:40s} {counts[key]:>10d}")
        ops = counts["find_server"] + counts["notify_failed_server"] + counts["rebalances"]
        print(f"  {'client ops per second':40s} {ops / elapsed_s:>10.0f}")
        print(
            f"  rss after warm-up {rss_start} KiB, at end {rss_end} KiB, peak {peak} KiB: "
            f"growth {growth:+.2f} % (limit {self.args.max_rss_growth} %)"
        )
        print(
            f"  proxy exit code {exit_code}, tracebacks {tracebacks}, "
            f"ERROR lines {len(error_lines)}"
        )
        problems = []
        for key in ("errors", "timeouts", "wrong answers"):
            if counts[key]:
                problems.append(f"{counts[key]} {key}")
        if growth >= self.args.max_rss_growth:
            problems.append(f"rss grew {growth:.2f} %")
        if counts["rebalances"] == 0:
            problems.append("no rebalance op completed")
        if exit_code != 0:
            problems.append(f"rpcproxy exited with {exit_code}")
        if tracebacks or error_lines:
            problems.append("tracebacks or ERROR lines in the proxy's log")
        for failure in self.tally.failures:
            print(f"  ! {failure}")
        for line in error_lines[:10]:
            print(f"  ! log: {line}")
        if problems:
            print("soak: FAIL: " + "; ".join(problems))
            return 1
        print("soak: PASS")
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="total run time")
    parser.add_argument(
        "--warmup", type=float, default=10.0, help="seconds before the first RSS sample"
    )
    parser.add_argument("--clients", type=int, default=8, help="client threads")
    parser.add_argument(
        "--max-rss-growth", type=float, default=5.0, help="percent of RSS growth allowed"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rpcproxy-soak-") as tmp:
        soak = Soak(args, Path(tmp))
        try:
            soak.start()
            return soak.run()
        finally:
            soak.close()


if __name__ == "__main__":
    sys.exit(main())
