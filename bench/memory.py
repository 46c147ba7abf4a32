"""Benchmark 5: resident memory of an idle ``rpcproxy serve`` that knows 1,000 servers."""

from __future__ import annotations

import subprocess
import sys
import time

from common import Result, call, running_serve, vm_rss_kib

SERVERS = 1_000
TARGET_MIB = 50.0
IDLE_TARGET_MIB = 30.0
"""Issue 20's target: an idle proxy loads only what its configuration uses."""
IDLE_S = 1.0


def _addresses(count: int) -> str:
    return ",".join(f"10.{i // 250}.{i % 250}.1:4647" for i in range(count))


def _serve_rss_mib() -> float:
    with running_serve("--primary-servers", _addresses(SERVERS)) as serve:
        known = call(serve.query, "status")["num_servers"]
        if known != SERVERS:
            raise RuntimeError(f"the proxy knows {known} servers, not {SERVERS}")
        time.sleep(IDLE_S)
        return vm_rss_kib(serve.proc.pid) / 1024


def _bare_rss_mib() -> float:
    code = "import sys, zmq, msgspec, pykka; print(flush=True); sys.stdin.read()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # imports done
        return vm_rss_kib(proc.pid) / 1024
    finally:
        proc.communicate(b"")


def memory() -> Result:
    serve_mib, bare_mib = _serve_rss_mib(), _bare_rss_mib()
    print(f"  serve {serve_mib:.1f} MiB, bare imports {bare_mib:.1f} MiB", flush=True)
    result = Result(
        f"5. Resident memory (idle, {SERVERS:,} servers known)",
        ["process", "VmRSS (MiB)"],
        [
            [f"`rpcproxy serve` with {SERVERS:,} primaries", f"{serve_mib:.1f}"],
            ['bare `python -c "import zmq, msgspec, pykka"`', f"{bare_mib:.1f}"],
        ],
    )
    result.check(f"serve RSS {serve_mib:.1f} MiB", f"<= {TARGET_MIB:g} MB", serve_mib <= TARGET_MIB)
    result.check(
        f"serve RSS {serve_mib:.1f} MiB, bare imports {bare_mib:.1f} MiB",
        f"<= {IDLE_TARGET_MIB:g} MiB (issue 20)",
        serve_mib <= IDLE_TARGET_MIB,
    )
    result.notes.append(
        f"The servers are given with `--primary-servers` and checked with `status`"
        f" (`num_servers` = {SERVERS:,}); RSS is read from `/proc/<pid>/status` after"
        f" {IDLE_S:g} s idle. MiB = 2^20 bytes (stricter than the 50 MB target)."
        " Without metrics, CURVE, discovery or a Nomad API address, serve imports neither"
        " prometheus_client, asyncio, the HTTP client nor the DNS client."
    )
    return result
