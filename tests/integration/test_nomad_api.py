"""``rpcproxy publish --nomad-addr`` and ``serve --nomad-addr`` (docs/protocol.md section 7).

Both follow a Nomad-shaped HTTP API on loopback (tests/nomadapi.py) through a
membership change; the proxy's ``servers`` is polled with a deadline. ``serve``
also meets an agent that misbehaves (issue 16): one that trickles its answers a
byte a second (each fetch fails at its deadline, is warned about and retried,
and SIGTERM still ends ``serve`` at once), and one that sends a gzip bomb (the
fetch fails as too large, memory stays flat, queries are answered and the
servers already known stay).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.serving import (
    RPCPROXY,
    Serve,
    addrs,
    assert_clean_log,
    run_rpcproxy,
)
from tests.nomadapi import NomadFixture, gzip_of_zeros, member_0x, member_1x, nomad_api
from tests.waiting import poll_until

pytestmark = pytest.mark.integration


@pytest.fixture
def nomad() -> Iterator[tuple[NomadFixture, str]]:
    with nomad_api() as served:
        yield served


def served_addrs(serve: Serve) -> list[str]:
    return sorted(addrs(serve.call("servers")["servers"]))


def follow_a_membership_change(serve: Serve, state: NomadFixture) -> None:
    want = ["10.0.0.1:4647", "10.0.0.2:4647"]
    poll_until(lambda: served_addrs(serve) == want, 20, 0.05, what="the fixture's servers")
    state.members = [member_1x("c", "10.0.0.3"), member_0x("a", "10.0.0.1")]
    want = ["10.0.0.1:4647", "10.0.0.3:4647"]
    poll_until(lambda: served_addrs(serve) == want, 20, 0.05, what="the changed members")
    # A broken API publishes nothing: the list stays as it was.
    state.status = 500
    n = len(state.paths)
    poll_until(lambda: len(state.paths) > n + 1, 20, 0.05, what="polls of the broken API")
    assert served_addrs(serve) == want


def test_publish_nomad_addr_follows_the_cluster(
    nomad: tuple[NomadFixture, str], serve_factory: Callable[..., Serve]
) -> None:
    state, url = nomad
    serve = serve_factory()
    argv = [RPCPROXY, "publish", "--nomad-addr", url, "--connect", serve.heartbeat]
    proc = subprocess.Popen(
        [*argv, "--interval-s", "0.1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        follow_a_membership_change(serve, state)
        publishers = [p["publisher"] for p in serve.call("status")["publishers"]]
        assert publishers == ["a.global"]
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output


def test_serve_nomad_addr_follows_the_cluster(
    nomad: tuple[NomadFixture, str], serve_factory: Callable[..., Serve]
) -> None:
    state, url = nomad
    serve = serve_factory("--nomad-addr", url, "--nomad-interval-s", "0.1")
    follow_a_membership_change(serve, state)
    publishers = [p["publisher"] for p in serve.call("status")["publishers"]]
    assert publishers == ["a.global"]


def test_serve_nomad_addr_with_an_unusable_ca_exits_2(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-ca.pem")
    result = run_rpcproxy(
        "serve",
        "--nomad-addr",
        "https://127.0.0.1:1",
        "--query",
        "tcp://127.0.0.1:*",
        "--heartbeat-bind",
        "tcp://127.0.0.1:*",
        "--events",
        "",
        env={"NOMAD_CACERT": missing},
    )
    assert result.returncode == 2, result.stderr
    assert "nomad_addr" in result.stderr


def test_publish_nomad_addr_with_an_unusable_ca_exits_2(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-ca.pem")
    result = run_rpcproxy(
        "publish", "--nomad-addr", "https://127.0.0.1:1", "--ca-cert", missing, timeout=30
    )
    assert result.returncode == 2, result.stderr
    assert "no-ca.pem" in result.stderr and "Traceback" not in result.stderr


# --- An agent that misbehaves ----------------------------------------------------

GOOD = ["10.0.0.1:4647", "10.0.0.2:4647"]
"""The servers the fixture lists until a test changes them."""


def test_serve_warns_about_and_retries_a_trickling_agent(
    nomad: tuple[NomadFixture, str], serve_factory: Callable[..., Serve]
) -> None:
    state, url = nomad
    state.trickle_s = 1.0  # a byte a second: every read is quick, the body never ends
    serve = serve_factory("--nomad-addr", url, "--nomad-interval-s", "0.1")
    # Each fetch fails at its deadline (2 s for a 0.1 s interval) and is retried:
    # without a deadline of its own, the first would last some 300 s.
    poll_until(lambda: len(state.arrivals) >= 2, 30, 0.05, what="a retry of the trickled fetch")
    # As the agent saw it: from the request to the client hanging up.
    lasted = state.hangups[0] - state.arrivals[0]
    assert lasted < 6.0, f"the first fetch lasted {lasted:.2f} s; its bound is 2 s"
    poll_until(lambda: "a whole fetch may take 2 s" in serve.stderr(), 10, 0.05, what="the warning")
    assert served_addrs(serve) == []  # nothing was published


def test_sigterm_ends_serve_at_once_during_a_trickled_fetch(
    nomad: tuple[NomadFixture, str], serve_factory: Callable[..., Serve]
) -> None:
    state, url = nomad
    state.trickle_s = 1.0
    # A 10 s interval: a 10 s deadline, far past the 3 s bound below, so only
    # stop() ending the fetch (not the deadline) gets serve out in time.
    serve = serve_factory("--nomad-addr", url, "--nomad-interval-s", "10")
    assert state.trickling.wait(20), "the bridge never fetched"
    begin = time.monotonic()
    code = serve.stop(signal.SIGTERM)
    elapsed = time.monotonic() - begin
    assert code == 0, serve.stderr()
    assert elapsed < 3.0, f"serve exited {elapsed:.2f} s after SIGTERM"
    assert_clean_log(serve)


def proc_status_kib(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` figure in KiB (``VmRSS``, ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for pid {pid}")


def reset_peak_rss(pid: int) -> None:
    """Start ``VmHWM`` afresh from the current RSS (Linux 4.0+), when allowed.

    Otherwise the peak still counts start-up, and the growth measured from
    it is only larger (the assertion stays on the safe side).
    """
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def test_serve_refuses_a_gzip_bomb_keeping_its_memory_and_its_servers(
    nomad: tuple[NomadFixture, str], serve_factory: Callable[..., Serve]
) -> None:
    state, url = nomad
    serve = serve_factory("--nomad-addr", url, "--nomad-interval-s", "0.1")
    poll_until(lambda: served_addrs(serve) == GOOD, 20, 0.05, what="the fixture's servers")
    pid = serve.proc.pid
    bomb = gzip_of_zeros(1 << 30)  # 1 GiB of zeros in about 1 MB
    reset_peak_rss(pid)
    before_kib = proc_status_kib(pid, "VmRSS")
    served = len(state.paths)
    state.raw, state.encoding = bomb, "gzip"

    def refused_a_few_times() -> bool:
        # Queries are answered all along (call() asserts each reply is ok).
        serve.call("find_server")
        return len(state.paths) >= served + 4 and "once decoded" in serve.stderr()

    poll_until(refused_a_few_times, 30, 0.01, what="the bomb refused as too large")
    growth_mib = (proc_status_kib(pid, "VmHWM") - before_kib) / 1024
    # Some 5 MiB is expected (the 4 MiB bound and a step); before issue 16, 178 MB.
    assert growth_mib < 40, f"serve's peak RSS grew {growth_mib:.1f} MiB"
    assert served_addrs(serve) == GOOD  # a broken API never changes the list
