"""Adversary run: a real ``rpcproxy serve`` under every attack of issue 9 at once.

Not a pytest test (``make adversary`` runs it). For ``--seconds`` it starts
the proxy and, all together:

- a flood of 4096-server heartbeats from one allowed publisher, as fast as
  the proxy reads them, each replacing the backups (its own process);
- garbage heartbeats, one-frame messages, heartbeats of 4096 invalid
  entries and heartbeats under ever new publisher names;
- a DEALER that keeps hundreds of writes in flight;
- requests of too many frames;
- one client calling ``find_server`` and, now and then, a write.

It passes when every ``find_server`` was answered (within 5 s), every write
was answered (``ok`` or ``unavailable`` at once, never silence), every
oversized request got ``bad_request``, the proxy's RSS grew by less than
``--max-rss-growth-mib``, its log by less than ``--max-log-kib`` per minute,
the flood's last heartbeat was applied within ``--fresh-s`` after the flood,
and SIGTERM, sent while the attacks still run, stopped it with exit 0 within
10 s.

    python tests/soak/adversary.py --seconds 60
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import msgpack  # type: ignore[import-untyped]
import zmq

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers import pack  # noqa: E402
from tests.integration.flood import FIRST, server_list  # noqa: E402
from tests.integration.serving import (  # noqa: E402
    CTX,
    NoReplyError,
    RawClient,
    Serve,
    hb_payload,
    hb_server,
    start_serve,
)

TOPIC = b"heartbeat/global"
STOP_TIMEOUT_S = 10.0
LOOKUP_TIMEOUT_S = 5.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Adversary:
    """The attacks, each on its own thread, and what they saw."""

    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.stop = threading.Event()
        self.garbage_stop = threading.Event()
        self.stopping = threading.Event()
        """Set at SIGTERM: silence from a proxy that is stopping is no failure."""
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []
        self.latencies: list[float] = []

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def fail(self, what: str) -> None:
        if self.stopping.is_set():
            return
        with self.lock:
            self.counts["failures"] += 1
            if len(self.failures) < 20:
                self.failures.append(what)

    # -- attacks -------------------------------------------------------------

    def garbage(self) -> None:
        """Bad payloads, one-frame messages, invalid entries, invented publishers."""
        pub: zmq.Socket[bytes] = CTX.socket(zmq.PUB)
        pub.linger = 0
        pub.connect(self.serve.heartbeat)
        invalid = pack(hb_payload([hb_server(f"bad {i}!") for i in range(4096)], 5))
        try:
            for i in itertools.count():
                if self.garbage_stop.wait(0.0005):
                    return
                pub.send_multipart([TOPIC, b"\xc1 garbage %d" % i])
                pub.send_multipart([TOPIC])
                name = f"invented-{i}"
                fresh = hb_payload([hb_server("10.0.0.1:4647")], 7, publisher=name, seq=1)
                pub.send_multipart([TOPIC, pack(fresh)])
                if i % 50 == 0:
                    pub.send_multipart([TOPIC, invalid])
                self.count("garbage sent", 3)
        finally:
            pub.close()

    def writes(self) -> None:
        """Hundreds of writes in flight at once, from one DEALER."""
        dealer: zmq.Socket[bytes] = CTX.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(self.serve.query)
        in_flight = 0
        try:
            for i in itertools.count():
                if self.stop.is_set():
                    return
                while in_flight < 500:
                    body = pack({"op": "notify_failed_server", "addr": "10.0.0.1", "id": i})
                    dealer.send_multipart([b"", body])
                    in_flight += 1
                if not dealer.poll(int(LOOKUP_TIMEOUT_S * 1000)):
                    self.fail(f"no reply to a write within {LOOKUP_TIMEOUT_S} s")
                    return
                while dealer.poll(0):
                    _, reply = dealer.recv_multipart()
                    in_flight -= 1
                    answer = msgpack.unpackb(reply)
                    if answer["ok"]:
                        self.count("writes ok")
                    elif answer["error"]["code"] == "unavailable":
                        self.count("writes unavailable")
                    else:
                        self.fail(f"write answered {answer!r}")
        finally:
            dealer.close()

    def oversized(self) -> None:
        """Requests of 20 frames: each must get bad_request."""
        while not self.stop.wait(0.01):
            req: zmq.Socket[bytes] = CTX.socket(zmq.REQ)
            try:
                req.linger = 0
                req.connect(self.serve.query)
                req.send_multipart([b"x"] * 19 + [pack({"op": "ping"})])
                if not req.poll(int(LOOKUP_TIMEOUT_S * 1000)):
                    self.fail("no reply to a request of 20 frames")
                    continue
                answer = msgpack.unpackb(req.recv())
                if answer.get("error", {}).get("code") != "bad_request":
                    self.fail(f"20 frames answered {answer!r}")
                self.count("oversized refused")
            finally:
                req.close()

    def lookups(self) -> None:
        """find_server back to back, a write now and then; every one must be answered."""
        with RawClient(self.serve.query) as client:
            for n in itertools.count():
                if self.stop.is_set():
                    return
                begin = time.perf_counter()
                try:
                    client.call("find_server", timeout=LOOKUP_TIMEOUT_S)
                    if n % 100 == 0:
                        reply = client.request(
                            {"op": "remove_server", "addr": "10.66.0.1"}, LOOKUP_TIMEOUT_S
                        )
                        if not reply["ok"] and reply["error"]["code"] != "unavailable":
                            self.fail(f"remove_server answered {reply!r}")
                except NoReplyError as exc:
                    self.fail(f"find_server: {exc}")
                    continue
                self.latencies.append(time.perf_counter() - begin)


def flood_process(serve: Serve, seconds: float) -> subprocess.Popen[str]:
    flood = ROOT / "tests" / "integration" / "flood.py"
    return subprocess.Popen(
        [sys.executable, str(flood), serve.heartbeat, repr(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="rpcproxy-adversary-"))
    serve = start_serve(workdir, "--log-level", "info", events=False)
    pid = serve.proc.pid
    adversary = Adversary(serve)
    with RawClient(serve.query) as client:
        client.call("heartbeat", servers=server_list(99), num_nodes=1, leader_rpc_addr="")
        base_rss = rss_mib(pid)
        base_log = len(serve.stderr())
        flood_s = max(1.0, args.seconds - 2.0)
        flood = flood_process(serve, flood_s)
        threads = [
            threading.Thread(target=attack, name=attack.__name__, daemon=True)
            for attack in (adversary.garbage, adversary.writes, adversary.oversized)
        ] + [threading.Thread(target=adversary.lookups, name="lookups", daemon=True)]
        for thread in threads:
            thread.start()
        peak_rss = base_rss
        started = time.monotonic()
        while flood.poll() is None:
            peak_rss = max(peak_rss, rss_mib(pid))
            if time.monotonic() - started > flood_s - 1.0:
                # Its valid heartbeats (invented publishers) would overwrite the
                # flood's last one: they stop a second before the flood does.
                adversary.garbage_stop.set()
            # Sample RSS every 50 ms, and stop sampling the moment the flood ends.
            with contextlib.suppress(subprocess.TimeoutExpired):
                flood.wait(0.05)
        flood_end = time.monotonic()
        out, _ = flood.communicate()
        last, sent = (int(x) for x in out.split())
        fresh_s: float | None = None
        while time.monotonic() - flood_end < 30.0:
            if client.call("status", timeout=LOOKUP_TIMEOUT_S)["num_nodes"] == last:
                fresh_s = time.monotonic() - flood_end
                break
            peak_rss = max(peak_rss, rss_mib(pid))
        # SIGTERM while the other attacks still run.
        stop_begin = time.monotonic()
        adversary.stopping.set()
        serve.send_signal(signal.SIGTERM)
        try:
            code: int | None = serve.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
            serve.proc.kill()
            serve.proc.wait()
        stop_s = time.monotonic() - stop_begin
        adversary.stop.set()
        adversary.garbage_stop.set()
        for thread in threads:
            thread.join(10.0)
    elapsed_min = (time.monotonic() - started) / 60
    log_kib = (len(serve.stderr()) - base_log) / 1024
    return report(
        args,
        adversary,
        {
            "flood heartbeats sent": f"{sent} (last num_nodes {last}, first {FIRST})",
            "RSS": f"{base_rss:.1f} MiB -> peak {peak_rss:.1f} MiB",
            "log": f"{log_kib:.1f} KiB ({log_kib / elapsed_min:.1f} KiB/min)",
            "last heartbeat applied after": "never" if fresh_s is None else f"{fresh_s:.3f} s",
            "exit after SIGTERM": f"{code} after {stop_s:.2f} s",
        },
        verdicts=[
            (adversary.counts["failures"] == 0, "every request was answered as it should be"),
            (peak_rss - base_rss < args.max_rss_growth_mib, "RSS growth within bound"),
            (log_kib / elapsed_min < args.max_log_kib, "log volume within bound"),
            (fresh_s is not None and fresh_s <= args.fresh_s, "last heartbeat applied in time"),
            (code == 0, "SIGTERM: exit 0 within 10 s"),
        ],
        stderr_path=serve.stderr_path,
    )


def report(
    args: argparse.Namespace,
    adversary: Adversary,
    figures: dict[str, str],
    *,
    verdicts: list[tuple[bool, str]],
    stderr_path: Path,
) -> int:
    lat = adversary.latencies
    print(f"adversary run of {args.seconds:g} s against rpcproxy serve")
    for key, value in figures.items():
        print(f"  {key}: {value}")
    print(
        f"  find_server: {len(lat)} answered, p50 {percentile(lat, 0.5) * 1e3:.2f} ms,"
        f" p99 {percentile(lat, 0.99) * 1e3:.2f} ms, max {max(lat, default=0) * 1e3:.1f} ms"
    )
    for name, count in sorted(adversary.counts.items()):
        print(f"  {name}: {count}")
    for failure in adversary.failures:
        print(f"  FAILURE: {failure}")
    ok = all(met for met, _ in verdicts)
    for met, what in verdicts:
        print(f"  [{'ok' if met else 'FAILED'}] {what}")
    print(f"  proxy log: {stderr_path}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the attacks run")
    parser.add_argument("--max-rss-growth-mib", type=float, default=100.0)
    parser.add_argument("--max-log-kib", type=float, default=256.0, help="per minute")
    parser.add_argument("--fresh-s", type=float, default=1.0)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
