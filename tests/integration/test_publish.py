"""Which source the real ``rpcproxy publish`` follows (docs/protocol.md section 7, last paragraph).

A static list when ``--servers`` or ``--servers-file`` is given; otherwise
Nomad's API when ``--nomad-addr`` is given or ``NOMAD_ADDR`` is set; with
neither, exit 2 and publish nothing. It used to ignore ``NOMAD_ADDR`` and
send ``servers: []`` every second, which dropped every primary of the proxy
it fed, so every test that lets it run also listens on a SUB socket of its
own (the witness) and checks that no heartbeat it sent was empty.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pytest
import zmq

from tests.helpers import tcp, unpack
from tests.integration.serving import CTX, RPCPROXY, Serve, _env, addrs
from tests.nomadapi import NomadFixture, nomad_api
from tests.waiting import poll_until

pytestmark = pytest.mark.integration

NOMAD_SERVERS = ["10.0.0.1:4647", "10.0.0.2:4647"]
"""The servers the Nomad API fixture serves at first (tests/nomadapi.py)."""


def publish_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without Nomad's variables, plus ``extra``.

    A developer's shell set up for the ``nomad`` CLI must not change what
    these tests see.
    """
    env = {k: v for k, v in _env(None).items() if not k.startswith("NOMAD_")}
    env.update(extra or {})
    return env


class Witness:
    """A SUB socket ``publish`` also connects to: every heartbeat it sent, decoded."""

    def __init__(self) -> None:
        self.sock: zmq.Socket[bytes] = CTX.socket(zmq.SUB)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.SUBSCRIBE, b"heartbeat/")
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.seen: list[dict[str, Any]] = []

    def drain(self) -> list[dict[str, Any]]:
        """Read what has arrived (without waiting); return everything seen so far."""
        while self.sock.poll(0):
            topic, payload = self.sock.recv_multipart()
            assert topic == b"heartbeat/global", topic
            heartbeat = unpack(payload)
            assert isinstance(heartbeat, dict), heartbeat
            self.seen.append(heartbeat)
        return self.seen

    def assert_none_empty(self) -> None:
        empty = [h for h in self.drain() if not h["servers"]]
        assert not empty, f"publish sent heartbeats with no servers: {empty}"

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture
def witness() -> Iterator[Witness]:
    seen = Witness()
    yield seen
    seen.close()


class Publish:
    """A running ``rpcproxy publish``, its stderr read line by line as it comes."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str]) -> None:
        self.proc = subprocess.Popen(
            [RPCPROXY, "publish", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        assert self.proc.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def wait_for_line(self, text: str, timeout: float = 10.0) -> str:
        """The next stderr line containing ``text``; fails after ``timeout`` seconds."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"publish wrote no line with {text!r} within {timeout} s: {self.stderr}"
                ) from None
            self.stderr.append(line)
            if text in line:
                return line

    def stop(self) -> str:
        """SIGTERM; asserts a clean exit 0 and returns the rest of stderr."""
        self.proc.terminate()
        code = self.proc.wait(timeout=20)
        self._reader.join(timeout=5)
        while not self.lines.empty():
            self.stderr.append(self.lines.get_nowait())
        text = "\n".join(self.stderr)
        assert code == 0, text
        assert "Traceback" not in text, text
        return text


@pytest.fixture
def publishes() -> Iterator[Callable[..., Publish]]:
    """Start ``publish`` processes; any still running at the end is killed."""
    started: list[Publish] = []

    def start(*args: str, env: Mapping[str, str] | None = None) -> Publish:
        publish = Publish(args, publish_env(env))
        started.append(publish)
        return publish

    yield start
    for publish in started:
        if publish.proc.poll() is None:
            publish.proc.kill()
            publish.proc.wait()


@pytest.fixture
def nomad() -> Iterator[tuple[NomadFixture, str]]:
    with nomad_api() as served:
        yield served


def served(serve: Serve) -> list[str]:
    return sorted(addrs(serve.call("servers")["servers"]))


def run_publish(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``publish`` run to completion (one that must exit by itself)."""
    return subprocess.run(
        [RPCPROXY, "publish", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=publish_env(env),
        check=False,
    )


@pytest.fixture
def taken() -> Iterator[str]:
    """An endpoint whose port is held: ``publish --bind`` there fails with exit 1.

    A refused ``publish`` given it exits 2 with its own message instead, which
    shows it gave up before opening any socket: it published nothing.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield tcp(sock.getsockname()[1])


# --------------------------------------------------------------------------
# NOMAD_ADDR alone selects Nomad's API.


def test_nomad_addr_in_the_environment_follows_the_api_and_never_sends_an_empty_list(
    nomad: tuple[NomadFixture, str],
    serve_factory: Callable[..., Serve],
    publishes: Callable[..., Publish],
    witness: Witness,
) -> None:
    state, url = nomad
    # The proxy already has a primary: an empty heartbeat would drop it.
    serve = serve_factory()
    serve.call("add_primary_server", addr="10.0.0.1:4647")
    # The API fails first: a failed poll must send nothing, not an empty list.
    state.status = 500
    publish = publishes(
        *("--connect", f"{serve.heartbeat},{witness.endpoint}", "--interval-s", "0.1"),
        env={"NOMAD_ADDR": url},
    )
    poll_until(lambda: len(state.paths) >= 2, 20, 0.02, what="polls of the failing API")
    assert served(serve) == ["10.0.0.1:4647"]
    state.status = 200
    poll_until(lambda: served(serve) == NOMAD_SERVERS, 20, 0.05, what="the API's servers")
    publishers = [p["publisher"] for p in serve.call("status")["publishers"]]
    assert publishers == ["a.global"]  # the agent's ServerName: the API was the source
    # Heartbeats keep coming (one per poll); none is empty, and the list stays.
    poll_until(lambda: len(witness.drain()) >= 3, 20, 0.05, what="heartbeats at the witness")
    witness.assert_none_empty()
    assert {h["publisher"] for h in witness.seen} == {"a.global"}
    assert served(serve) == NOMAD_SERVERS
    publish.stop()


def test_a_static_list_wins_over_nomad_addr_in_the_environment(
    nomad: tuple[NomadFixture, str],
    serve_factory: Callable[..., Serve],
    publishes: Callable[..., Publish],
) -> None:
    state, url = nomad
    serve = serve_factory()
    publish = publishes(
        *("--connect", serve.heartbeat, "--servers", "10.9.0.1", "--interval-s", "0.05"),
        *("--publisher", "static"),
        env={"NOMAD_ADDR": url},
    )
    poll_until(lambda: served(serve) == ["10.9.0.1:4647"], 20, 0.05, what="the static list")
    assert [p["publisher"] for p in serve.call("status")["publishers"]] == ["static"]
    publish.stop()
    assert state.paths == []  # the API was never asked


# --------------------------------------------------------------------------
# No source, or two: exit 2 before any socket is opened.


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == "", result.stdout
    return lines[0]


def test_with_no_source_it_exits_2_saying_there_is_nothing_to_publish(taken: str) -> None:
    result = run_publish("--bind", taken, "--connect", "tcp://127.0.0.1:9")
    assert result.returncode == 2, result.stderr
    line = one_line(result)
    assert line.startswith("rpcproxy publish: nothing to publish"), line
    assert "--servers" in line and "--nomad-addr" in line and "NOMAD_ADDR" in line


def test_an_empty_nomad_addr_variable_is_no_source(taken: str) -> None:
    result = run_publish("--bind", taken, env={"NOMAD_ADDR": ""})
    assert result.returncode == 2, result.stderr
    assert "nothing to publish" in one_line(result)


@pytest.mark.parametrize(
    "static",
    [("--servers", "10.0.0.1"), ("--servers-file", "/nonexistent/servers")],
    ids=["servers", "servers-file"],
)
def test_a_static_list_and_nomad_addr_together_exit_2(
    taken: str, nomad: tuple[NomadFixture, str], static: tuple[str, str]
) -> None:
    state, url = nomad
    result = run_publish("--bind", taken, *static, "--nomad-addr", url)
    assert result.returncode == 2, result.stderr
    line = one_line(result)
    assert "--nomad-addr" in line and "static list" in line, line
    assert state.paths == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--servers", ""), "--servers lists no address"),
        (("--servers", " , "), "--servers lists no address"),
        (("--nomad-addr", ""), "--nomad-addr is empty"),
        (("--servers-file", ""), "--servers-file is empty"),
    ],
    ids=["servers-empty", "servers-commas", "nomad-addr-empty", "servers-file-empty"],
)
def test_a_source_given_empty_exits_2(taken: str, args: tuple[str, str], message: str) -> None:
    result = run_publish("--bind", taken, *args)
    assert result.returncode == 2, result.stderr
    assert message in one_line(result)


# --------------------------------------------------------------------------
# One interval flag.


def test_interval_is_gone(taken: str) -> None:
    # Not even as an abbreviation of --interval-s.
    result = run_publish("--bind", taken, "--servers", "10.0.0.1", "--interval", "1")
    assert result.returncode == 2, result.stderr
    assert "unrecognized arguments: --interval 1" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_interval_s_must_be_a_positive_number(taken: str, value: str) -> None:
    result = run_publish("--bind", taken, "--servers", "10.0.0.1", "--interval-s", value)
    assert result.returncode == 2, result.stderr
    assert "--interval-s" in result.stderr and repr(value) in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------
# --servers-file: a missing or empty file sends nothing, never ``servers: []``.


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_a_missing_or_empty_servers_file_sends_nothing(
    tmp_path: Path,
    serve_factory: Callable[..., Serve],
    publishes: Callable[..., Publish],
    witness: Witness,
) -> None:
    path = tmp_path / "servers"
    serve = serve_factory()
    serve.call("add_primary_server", addr="10.0.0.7:4647")
    publish = publishes(
        *("--connect", f"{serve.heartbeat},{witness.endpoint}", "--servers-file", str(path)),
        *("--interval-s", "0.05"),
    )
    publish.wait_for_line("sending nothing")
    write_atomically(path, "10.0.0.1\n10.0.0.2:4647\n")
    publish.wait_for_line("servers listed again")
    poll_until(lambda: served(serve) == NOMAD_SERVERS, 20, 0.05, what="the file's servers")
    # Emptied in place (as `: > file` does): the proxy keeps what it had.
    path.write_text("")
    line = publish.wait_for_line("sending nothing")
    assert "lists nobody" in line, line
    write_atomically(path, "10.0.0.3\n")
    poll_until(lambda: served(serve) == ["10.0.0.3:4647"], 20, 0.05, what="the new list")
    publish.stop()
    witness.assert_none_empty()
