"""``state_file``: the real ``rpcproxy serve`` saves its lists and restores them.

A restarted proxy must answer the same active server on the very first query,
a corrupt file must not stop it (it starts empty and says so), and a file in a
directory that does not exist is a start-up error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.serving import (
    HeartbeatPub,
    RawClient,
    Serve,
    addrs,
    hb_payload,
    hb_server,
    run_rpcproxy,
)
from tests.waiting import poll_until

pytestmark = pytest.mark.integration

KEPT = ("servers", "primary", "backup", "leader_addr", "num_nodes", "num_servers")
"""The status keys a restart must keep (clocks and publisher seqs are not saved)."""


def kept(status: dict[str, Any]) -> dict[str, Any]:
    return {key: status[key] for key in KEPT}


def on_disk(path: Path) -> dict[str, Any] | None:
    """The file as JSON, or None while it is missing. Invalid JSON fails the test."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    document: dict[str, Any] = json.loads(text)  # atomic writes: never half a file
    return document


def reflects(path: Path, status: dict[str, Any]) -> bool:
    """Whether the saved document matches ``status`` in every saved field."""
    document = on_disk(path)
    return document is not None and (
        document["active"] == addrs(status["servers"])
        and document["primaries"] == addrs(status["primary"])
        and document["backups"] == addrs(status["backup"])
        and document["leader_addr"] == status["leader_addr"]
        and document["num_nodes"] == status["num_nodes"]
    )


def wait_saved(path: Path, serve: Serve, timeout: float = 5.0) -> dict[str, Any]:
    """Poll until the file holds the proxy's current status; return that status."""
    status = serve.call("status")
    poll_until(lambda: reflects(path, status), timeout, what=f"{path} to reflect {status}")
    return status


def build_state(serve: Serve) -> None:
    """Primaries, backups, leader and node count, with a rotated active list."""
    serve.call("add_primary_server", addr="10.0.0.9")
    reply = serve.call(
        "heartbeat",
        **hb_payload(
            [
                hb_server("10.0.0.1:4647"),
                hb_server("10.0.0.2:4647"),
                hb_server("10.0.0.3:4647"),
                hb_server("10.1.0.1:4647", datacenter="dc2"),
            ],
            num_nodes=42,
            leader="10.0.0.2:4647",
        ),
    )
    assert reply["changed"] is True
    serve.call("set_backup_servers", addrs=["[2001:db8::1]:4647", "backup.example.org"])
    head = serve.call("find_server")["server"]["addr"]
    assert serve.call("notify_failed_server", addr=head)["rotated"] is True


def test_restart_restores_lists_leader_and_node_count(
    serve_factory: Callable[..., Serve], tmp_path: Path
) -> None:
    path = tmp_path / "state.json"
    first = serve_factory("--state-file", str(path))
    build_state(first)
    before = wait_saved(path, first)
    active = first.call("find_server")["server"]
    assert active == before["servers"][0]
    assert before["num_nodes"] == 42 and before["leader_addr"] == "10.0.0.2:4647"
    assert addrs(before["backup"]) == ["[2001:db8::1]:4647", "backup.example.org:4647"]
    assert first.stop() == 0

    second = serve_factory("--state-file", str(path))
    # The very first query after ready already has the saved state.
    with RawClient(second.query) as client:
        assert client.call("find_server")["server"] == active
    after = second.call("status")
    assert kept(after) == kept(before)
    assert "restored 5 servers from" in second.stderr()


def test_restart_keeps_the_state_after_more_changes(
    serve_factory: Callable[..., Serve], tmp_path: Path
) -> None:
    """Two generations: what the second changed is what the third sees."""
    path = tmp_path / "state.json"
    first = serve_factory("--state-file", str(path))
    build_state(first)
    wait_saved(path, first)
    assert first.stop() == 0

    second = serve_factory("--state-file", str(path))
    second.call("remove_server", addr="10.0.0.1")
    second.call("add_primary_server", addr="late.example.org:4700")
    head = second.call("find_server")["server"]["addr"]
    second.call("notify_failed_server", addr=head)
    before = wait_saved(path, second)
    assert second.stop() == 0

    third = serve_factory("--state-file", str(path))
    assert third.call("find_server")["server"] == before["servers"][0]
    assert kept(third.call("status")) == kept(before)


def test_the_file_follows_every_change_and_is_always_valid_json(
    serve_factory: Callable[..., Serve], tmp_path: Path
) -> None:
    path = tmp_path / "state.json"
    serve = serve_factory("--state-file", str(path))
    wait_saved(path, serve)  # the empty state is saved too
    seen: list[dict[str, Any]] = []
    for n in range(30):
        serve.call("add_primary_server", addr=f"s{n}.example.org")
        document = on_disk(path)  # parses, whatever write is in progress
        if document is not None:
            seen.append(document)
    serve.call("set_backup_servers", addrs=["b1.example.org", "b2.example.org"])
    status = wait_saved(path, serve)
    assert len(status["servers"]) == 32
    assert all(doc["format"] == 1 for doc in seen)
    # Only the file itself: temporaries are renamed over it, never left behind.
    assert [p.name for p in tmp_path.iterdir() if "state.json" in p.name] == ["state.json"]


def test_a_heartbeat_burst_ends_with_the_last_heartbeat_on_disk(
    serve_factory: Callable[..., Serve], tmp_path: Path
) -> None:
    path = tmp_path / "state.json"
    serve = serve_factory("--state-file", str(path))
    pub = HeartbeatPub(connect=serve.heartbeat)
    try:
        first = hb_payload([hb_server("10.0.0.1")], num_nodes=0, publisher="p", seq=0)
        pub.publish_until(first, lambda: serve.call("status")["num_servers"] == 1)
        for seq in range(1, 301):
            servers = [hb_server(f"10.0.0.{1 + seq % 5}"), hb_server("10.0.0.200")]
            pub.send(hb_payload(servers, num_nodes=seq, publisher="p", seq=seq))
        poll_until(
            lambda: serve.call("status")["publishers"][0]["seq"] == 300,
            what="the last heartbeat to apply",
        )
    finally:
        pub.close()
    status = wait_saved(path, serve)
    assert status["num_nodes"] == 300
    assert set(addrs(status["primary"])) == {"10.0.0.1:4647", "10.0.0.200:4647"}


def test_state_survives_sigkill(serve_factory: Callable[..., Serve], tmp_path: Path) -> None:
    """A write is complete on disk before the next one starts: a kill loses nothing saved."""
    path = tmp_path / "state.json"
    first = serve_factory("--state-file", str(path))
    build_state(first)
    before = wait_saved(path, first)
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL

    second = serve_factory("--state-file", str(path))
    assert kept(second.call("status")) == kept(before)


def test_sigterm_saves_the_last_change(serve_factory: Callable[..., Serve], tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    serve = serve_factory("--state-file", str(path))
    serve.call("add_primary_server", addr="a.example.org")
    serve.call("add_primary_server", addr="b.example.org")
    reply = serve.call("remove_server", addr="a.example.org")
    assert reply["removed"] is True
    assert serve.stop() == 0  # no wait for the file first: stopping must flush it
    document = on_disk(path)
    assert document is not None
    assert document["active"] == ["b.example.org:4647"]


CORRUPT: dict[str, bytes] = {
    "garbage": bytes(range(256)) * 8,
    "truncated": b'{"format": 1, "active": ["10.0.0.1:4647"], "prim',
    "wrong format": json.dumps(
        {
            "format": 7,
            "active": [],
            "primaries": [],
            "backups": [],
            "leader_addr": "",
            "num_nodes": 0,
        }
    ).encode(),
}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=list(CORRUPT))
def test_a_corrupt_file_starts_empty_with_a_warning(
    serve_factory: Callable[..., Serve], tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    serve = serve_factory("--state-file", str(path))
    assert serve.call("find_server")["server"] is None
    assert serve.call("status")["servers"] == []
    warnings = [
        line
        for line in serve.stderr().splitlines()
        if " WARNING " in line and "starting empty" in line
    ]
    assert len(warnings) == 1, serve.stderr()
    assert str(path) in warnings[0]
    # The next change replaces the corrupt file with a valid one.
    serve.call("add_primary_server", addr="10.0.0.5")
    wait_saved(path, serve)
    code = serve.stop()
    assert code == 0, serve.stderr()


def serve_to_exit(state_file: Path) -> subprocess.CompletedProcess[str]:
    """Run ``serve`` with ``state_file`` on any free ports, for a start that must fail."""
    any_port = "tcp://127.0.0.1:*"
    return run_rpcproxy(
        "serve",
        *("--query", any_port, "--heartbeat-bind", any_port, "--events", any_port),
        *("--state-file", str(state_file)),
        timeout=20.0,
    )


def test_a_state_file_in_a_missing_directory_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "state.json"
    result = serve_to_exit(path)
    assert result.returncode == 1, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert "state_file" in errors[0] and str(path.parent) in errors[0], errors[0]
    assert "Traceback" not in result.stderr
    assert not path.parent.exists()


def test_without_state_file_nothing_is_written(
    serve_factory: Callable[..., Serve], tmp_path: Path
) -> None:
    before = set(tmp_path.iterdir())
    serve = serve_factory()
    serve.call("add_primary_server", addr="10.0.0.1")
    assert serve.stop() == 0
    after = {p for p in tmp_path.iterdir() if not p.name.endswith(".stderr")}
    assert after == {p for p in before if not p.name.endswith(".stderr")}


def test_temporaries_of_interrupted_saves_are_removed_at_start(
    serve_factory: Callable[..., Serve], tmp_path: Path
) -> None:
    """kill -9 during a save leaves its temporary: the next start removes it, and only it."""
    path = tmp_path / "state.json"
    first = serve_factory("--state-file", str(path))
    build_state(first)
    before = wait_saved(path, first)
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    # What killed saves leave (this version's names, and an earlier one's).
    leftovers = [tmp_path / ".state.json.a1b2c3d4.tmp", tmp_path / ".state.json.q9w8e7r6"]
    for leftover in leftovers:
        leftover.write_text('{"format": 1, "active": ["10.9')
    decoy = tmp_path / ".state.json.bak"
    decoy.write_text("not ours")

    second = serve_factory("--state-file", str(path))

    assert not any(leftover.exists() for leftover in leftovers)
    assert decoy.read_text() == "not ours"
    assert kept(second.call("status")) == kept(before)
    removed = [line for line in second.stderr().splitlines() if "interrupted" in line]
    assert len(removed) == 2, second.stderr()


def not_a_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "state.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")
    return path


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_a_state_file_that_is_not_a_regular_file_is_refused_at_start(
    tmp_path: Path, kind: str
) -> None:
    """It used to hang at start (a FIFO blocks the read until a writer comes)."""
    path = not_a_file(tmp_path, kind)
    result = serve_to_exit(path)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "state_file" in lines[0] and "not a regular file" in lines[0], lines[0]
    assert str(path) in lines[0]
