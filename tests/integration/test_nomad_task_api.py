"""``serve`` and ``publish`` following Nomad's Task API: the agent on a Unix socket.

Nomad 1.5+ gives every task its agent's HTTP API on
``${NOMAD_SECRETS_DIR}/api.sock``, and always requires a token there
(docs/protocol.md section 7). The Nomad API stand-in (tests/nomadapi.py)
serves on a Unix socket in a fresh directory and answers 403 to a request
without the token, as the Task API does. The real ``rpcproxy`` learns the
servers through it (``--nomad-addr unix://...``, ``nomad_addr`` and
``NOMAD_ADDR``), logs a missing or wrong token once, exits promptly when
stopped during a fetch the socket never answers, and refuses a relative
socket path at start.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping

import pytest

from tests.integration.serving import RPCPROXY, Serve, _env, addrs, assert_clean_log, run_rpcproxy
from tests.nomadapi import NomadFixture, nomad_api
from tests.waiting import poll_until

pytestmark = pytest.mark.integration

TOKEN = "workload-identity-jwt"
"""What ``identity { env = true }`` gives the task as NOMAD_TOKEN."""

SERVERS = ["10.0.0.1:4647", "10.0.0.2:4647"]
"""The servers the stand-in lists (tests/nomadapi.py)."""


@pytest.fixture
def task_api() -> Iterator[tuple[NomadFixture, str]]:
    with nomad_api(unix=True) as (state, url):
        state.required_token = TOKEN
        yield state, url


def no_nomad_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment without Nomad's variables (a developer's shell), plus ``extra``."""
    env = {k: v for k, v in _env(None).items() if not k.startswith("NOMAD_")}
    env.update(extra)
    return env


def served(serve: Serve) -> list[str]:
    return sorted(addrs(serve.call("servers")["servers"]))


def test_serve_learns_the_servers_from_the_task_api(
    task_api: tuple[NomadFixture, str], serve_factory: Callable[..., Serve]
) -> None:
    state, url = task_api
    # A CA left in the environment does not apply to a socket: warned about, never read.
    env = {"NOMAD_TOKEN": TOKEN, "NOMAD_CACERT": "/no/such/ca.pem"}
    serve = serve_factory("--nomad-addr", url, "--nomad-interval-s", "0.1", env=env)
    poll_until(lambda: served(serve) == SERVERS, 20, 0.05, what="the servers over the socket")
    assert set(state.tokens) == {TOKEN} and set(state.hosts) == {"127.0.0.1"}
    assert "NOMAD_CACERT ignored" in serve.stderr()


def publish_until_served(
    serve: Serve, args: list[str], env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run ``publish`` until ``serve`` has the stand-in's servers, then SIGTERM it."""
    proc = subprocess.Popen(
        [RPCPROXY, "publish", "--connect", serve.heartbeat, "--interval-s", "0.1", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=no_nomad_env(env),
    )
    try:
        poll_until(lambda: served(serve) == SERVERS, 20, 0.05, what="the published servers")
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, output)
    assert result.returncode == 0 and "Traceback" not in output, output
    return result


def test_publish_nomad_addr_follows_the_task_api(
    task_api: tuple[NomadFixture, str], serve_factory: Callable[..., Serve]
) -> None:
    state, url = task_api
    serve = serve_factory()
    publish_until_served(serve, ["--nomad-addr", url, "--token", TOKEN], {})
    assert set(state.tokens) == {TOKEN}
    assert [p["publisher"] for p in serve.call("status")["publishers"]] == ["a.global"]


def test_publish_with_nomad_addr_in_the_environment_follows_the_task_api(
    task_api: tuple[NomadFixture, str], serve_factory: Callable[..., Serve]
) -> None:
    # What a task sets: NOMAD_ADDR to the socket, NOMAD_TOKEN from its identity.
    state, url = task_api
    serve = serve_factory()
    publish_until_served(serve, [], {"NOMAD_ADDR": url, "NOMAD_TOKEN": TOKEN})
    assert set(state.tokens) == {TOKEN}


@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("", "none is set (NOMAD_TOKEN / --token); a unix:// agent (Nomad's Task API)"),
        ("not-the-token", "refused the ACL token (NOMAD_TOKEN / --token)"),
    ],
)
def test_a_missing_or_wrong_token_is_logged_once(
    task_api: tuple[NomadFixture, str],
    serve_factory: Callable[..., Serve],
    token: str,
    says: str,
) -> None:
    state, url = task_api
    serve = serve_factory(
        "--nomad-addr", url, "--nomad-interval-s", "0.1", env={"NOMAD_TOKEN": token}
    )
    poll_until(lambda: len(state.paths) >= 4, 20, 0.05, what="retries of the refused poll")
    assert served(serve) == []
    code = serve.stop()  # its log has an ERROR line, so not the fixture's clean-log stop
    assert code == 0, serve.stderr()
    refused = [line for line in serve.stderr().splitlines() if "refused" in line]
    assert len(refused) == 1, refused
    assert " ERROR " in refused[0] and says in refused[0], refused[0]
    assert "Traceback" not in serve.stderr()


def test_sigterm_ends_serve_at_once_during_a_fetch_the_socket_never_answers(
    task_api: tuple[NomadFixture, str], serve_factory: Callable[..., Serve]
) -> None:
    state, url = task_api
    state.silent = True  # the request is read, never answered
    # A 10 s interval: a 10 s deadline, far past the 3 s bound below, so only
    # stop() ending the fetch on the socket gets serve out in time.
    serve = serve_factory(
        "--nomad-addr", url, "--nomad-interval-s", "10", env={"NOMAD_TOKEN": TOKEN}
    )
    poll_until(lambda: state.arrivals, 20, 0.02, what="the bridge's fetch on the socket")
    begin = time.monotonic()
    code = serve.stop(signal.SIGTERM)
    elapsed = time.monotonic() - begin
    assert code == 0, serve.stderr()
    assert elapsed < 3.0, f"serve exited {elapsed:.2f} s after SIGTERM"
    assert_clean_log(serve)


@pytest.mark.parametrize("addr", ["unix://secrets/api.sock", "unix://"])
def test_a_socket_address_that_is_no_absolute_path_exits_2(addr: str) -> None:
    serve = run_rpcproxy(
        *("serve", "--nomad-addr", addr, "--query", "tcp://127.0.0.1:*"),
        *("--heartbeat-bind", "tcp://127.0.0.1:*", "--events", ""),
    )
    assert serve.returncode == 2, serve.stderr
    assert "nomad_addr" in serve.stderr and "absolute path" in serve.stderr, serve.stderr
    publish = run_rpcproxy("publish", "--connect", "tcp://127.0.0.1:9", env={"NOMAD_ADDR": addr})
    assert publish.returncode == 2, publish.stderr
    assert publish.stderr.count("\n") == 1 and "absolute path" in publish.stderr, publish.stderr
