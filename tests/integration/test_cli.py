"""The ``rpcproxy`` command from outside: signals, configuration, status, demo."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, port_is_free, tcp
from tests.integration.serving import (
    RPCPROXY,
    RawClient,
    Serve,
    _env,
    addrs,
    hb_payload,
    hb_server,
    run_rpcproxy,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo() -> Iterator[subprocess.Popen[str]]:
    """The demo runs for several seconds: start it first, check it last."""
    proc = subprocess.Popen(
        [RPCPROXY, "demo", "--plain", "--speed", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(None),
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module", autouse=True)
def _start_demo_early(demo: subprocess.Popen[str]) -> None:
    """Requesting the fixture at module start lets the demo run beside the other tests."""


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


# --------------------------------------------------------------------------
# Signals.


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_it_cleanly_and_frees_the_ports(
    serve_factory: Callable[..., Serve], signum: int
) -> None:
    proxy = serve_factory()
    with RawClient(proxy.query) as client:
        client.call("add_primary_server", addr="10.0.0.1")
    ports = [port_of(proxy.query), port_of(proxy.heartbeat), port_of(proxy.events)]
    assert not any(port_is_free(p) for p in ports)
    started = time.monotonic()
    assert proxy.stop(signum) == 0, proxy.stderr()
    assert time.monotonic() - started < 3.0
    assert all(port_is_free(p) for p in ports)
    assert "Traceback" not in proxy.stderr()


def test_a_restart_on_the_same_port_answers(serve_factory: Callable[..., Serve]) -> None:
    first = serve_factory()
    port = port_of(first.query)
    assert first.stop() == 0
    second = serve_factory(query_port=port)
    assert second.call("ping")["pong"] is True


# --------------------------------------------------------------------------
# Bad configuration: exit 2 and one line naming the key.


@pytest.mark.parametrize(
    ("flags", "env", "key"),
    [
        (["--ping-timeout-s", "abc"], {}, "ping_timeout_s"),
        (["--ping-timeout-s", "-1"], {}, "ping_timeout_s"),
        (["--max-message-bytes", "12"], {}, "max_message_bytes"),
        (["--primary-servers", "10.0.0.1:99999"], {}, "primary_servers"),
        (["--query", "not-an-endpoint"], {}, "query"),
        ([], {"RPCPROXY_PING_METHOD": "udp"}, "ping_method"),
        ([], {"RPCPROXY_MIN_REUSE_S": "soon"}, "min_reuse_s"),
        ([], {"RPCPROXY_RPC_MAJOR_VERSION": "1.5"}, "rpc_major_version"),
        ([], {"RPCPROXY_BACKUP_SERVERS": "10.0.0.1,::bad"}, "backup_servers"),
    ],
)
def test_a_bad_value_exits_2_with_one_line_naming_the_key(
    flags: list[str], env: dict[str, str], key: str
) -> None:
    ports = ["--query", tcp(free_port()), "--heartbeat-bind", tcp(free_port()), "--events", ""]
    result = run_rpcproxy("serve", *ports, *flags, env=env)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.search(rf"\b{key}\b", lines[0]), lines[0]


def test_a_bad_value_in_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "rpcproxy.toml"
    config.write_text('jitter_fraction = "lots"\n')
    result = run_rpcproxy("serve", "--config", str(config))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "jitter_fraction" in lines[0], result.stderr


def test_a_port_in_use_fails_to_start(serve_factory: Callable[..., Serve]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_rpcproxy(
            "serve", "--query", tcp(port), "--heartbeat-bind", tcp(free_port()), "--events", ""
        )
    assert result.returncode != 0
    assert "query" in result.stderr


# --------------------------------------------------------------------------
# Precedence: file < environment < flag, seen from outside.


def test_config_precedence_file_env_flag(
    tmp_path: Path, serve_factory: Callable[..., Serve]
) -> None:
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    config = tmp_path / "rpcproxy.toml"
    config.write_text(f'query = "{tcp(file_port)}"\ndatacenter = "dc-file"\n')
    env = {"RPCPROXY_QUERY": tcp(env_port), "RPCPROXY_DATACENTER": "dc-env"}
    dcs = {"10.0.0.1:4647": "dc-file", "10.0.0.2:4647": "dc-env", "10.0.0.3:4647": "dc-flag"}
    heartbeat = hb_payload([hb_server(addr, dc) for addr, dc in dcs.items()], num_nodes=1)

    def primary_dc(proxy: Serve) -> str:
        """The datacenter the proxy thinks it is in: its heartbeat primary's."""
        proxy.call("heartbeat", **heartbeat)
        primary = addrs(proxy.call("status")["primary"])
        assert len(primary) == 1, primary
        return dcs[primary[0]]

    # File only.
    proxy = serve_factory("--config", str(config), query_port=file_port, pass_query=False)
    assert primary_dc(proxy) == "dc-file"
    assert proxy.stop() == 0
    # File and environment: the environment wins.
    proxy = serve_factory("--config", str(config), env=env, query_port=env_port, pass_query=False)
    assert primary_dc(proxy) == "dc-env"
    assert port_is_free(file_port)
    assert proxy.stop() == 0
    # All three: the flag wins.
    proxy = serve_factory(
        "--config", str(config), "--datacenter", "dc-flag", env=env, query_port=flag_port
    )
    assert primary_dc(proxy) == "dc-flag"
    assert port_is_free(file_port) and port_is_free(env_port)


# --------------------------------------------------------------------------
# rpcproxy status.


def test_status_prints_a_table_with_the_head_marked(serve_factory: Callable[..., Serve]) -> None:
    proxy = serve_factory()
    for addr in ("10.0.0.1", "10.0.0.2:5000"):
        proxy.call("add_primary_server", addr=addr)
    proxy.call("set_backup_servers", addrs=["10.0.0.3"])
    proxy.call("notify_failed_server", addr="10.0.0.1")
    result = run_rpcproxy("status", "--query", proxy.query)
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    rows = {
        addr: next(line for line in lines if addr in line)
        for addr in ("10.0.0.1:4647", "10.0.0.2:5000", "10.0.0.3:4647")
    }
    assert rows["10.0.0.2:5000"].lstrip().startswith("->")
    assert "->" not in rows["10.0.0.1:4647"] and "->" not in rows["10.0.0.3:4647"]
    order = [lines.index(rows[a]) for a in ("10.0.0.2:5000", "10.0.0.3:4647", "10.0.0.1:4647")]
    assert order == sorted(order)
    assert "backup" in rows["10.0.0.3:4647"] and "primary" in rows["10.0.0.1:4647"]


def test_status_when_nothing_answers_exits_1(tmp_path: Path) -> None:
    endpoint = tcp(free_port())
    started = time.monotonic()
    result = run_rpcproxy("status", "--query", endpoint, "--timeout", "0.5")
    assert result.returncode == 1
    assert endpoint in result.stderr
    assert result.stdout == ""
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "command",
    [("publish", "--servers", "10.0.0.1:4647"), ("fake-server",)],
    ids=["publish", "fake-server"],
)
def test_a_tool_on_a_taken_port_exits_1_with_one_line(command: tuple[str, ...]) -> None:
    # publish used to print "publishing ..." and run on with a dead thread.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        endpoint = tcp(taken.getsockname()[1])
        result = run_rpcproxy(command[0], "--bind", endpoint, *command[1:])
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and endpoint in lines[0] and "in use" in lines[0], result.stderr
    assert result.stdout == ""


# --------------------------------------------------------------------------
# The demo (started by the module fixture, checked last).


@pytest.fixture(scope="module")
def demo_output(demo: subprocess.Popen[str]) -> str:
    """The whole run's output, once it has ended (about 12 s at speed 4)."""
    output, _ = demo.communicate(timeout=60)
    assert demo.returncode == 0, output
    assert "Traceback" not in output
    return output


def test_the_demo_shows_a_failure_and_a_rebalance(demo_output: str) -> None:
    events = re.findall(r"event: active server -> .*\((\w+)\)", demo_output)
    assert "failed" in events, demo_output
    assert "rebalance" in events, demo_output


def test_the_demo_finds_the_moved_servers_through_consul(demo_output: str) -> None:
    # The last scene: every server moves, only Consul lists the new ones (s5-s7).
    assert "script: every server moves" in demo_output, demo_output
    before, moved = demo_output.split("script: every server moves", 1)
    new = r"s[567]"
    assert not re.search(rf"\b{new}\b", before), before
    # Nobody tells the proxy: its timer's rebalance finds nobody, so it asks Consul.
    lines = moved.splitlines()

    def first(pattern: str) -> int:
        found = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert found, f"no line matches {pattern!r} after the move:\n{moved}"
        return found[0]

    offline = first(r"proxy: offline: no server answered")
    asked = first(r"proxy: discovery \(consul, because offline\): 3 servers become the backups")
    assert offline < asked, moved
    # The status's own line, and the client handed a new server at once: well
    # before the timer's next rebalance (min_reuse_s, 1.5 s at speed 4).
    assert first(r"^ *[\d.]+s  status: discovery: 3 servers from consul, ") > offline
    moved_on = first(rf"event: active server -> {new} \(rebalance\)")
    assert moved_on > offline

    def stamp(index: int) -> float:
        return float(lines[index].split("s", 1)[0])

    assert stamp(moved_on) - stamp(asked) < 1.0, moved
    assert first(rf"client: now using {new}$") > asked
    assert first(rf"script: the client uses {new}, a server only Consul knew of") > asked
