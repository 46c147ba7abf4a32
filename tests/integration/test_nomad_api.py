"""``rpcproxy publish --nomad-addr`` and ``serve --nomad-addr`` (docs/protocol.md section 7).

Both follow a Nomad-shaped HTTP API on loopback (tests/nomadapi.py) through a
membership change; the proxy's ``servers`` is polled with a deadline.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.serving import RPCPROXY, Serve, addrs, run_rpcproxy
from tests.nomadapi import NomadFixture, member_0x, member_1x, nomad_api
from tests.waiting import poll_until


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
