"""A state file over ``max_servers``, given to the real ``rpcproxy serve``.

docs/protocol.md section 8 bounds the primary and backup lists together.
The state file is outside the proxy's control (written under a larger
bound, edited by hand, or planted by a hostile hand): a file of 50,001
primaries used to load whole, after which every add was refused. Now the
first ``max_servers`` servers of the saved active list are kept, in order,
with one warning counting the rest, and the proxy answers and accepts
changes as usual.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.serving import Serve, addrs
from tests.waiting import poll_until

pytestmark = pytest.mark.integration


def names(count: int) -> list[str]:
    """``count`` distinct canonical addresses, in a fixed order."""
    return [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:4647" for i in range(1, count + 1)]


def plant(path: Path, primaries: list[str], backups: list[str] | None = None) -> None:
    """A state file in the format ``serve`` writes, with these lists."""
    backups = backups or []
    document: dict[str, Any] = {
        "format": 1,
        "active": primaries + backups,
        "primaries": primaries,
        "backups": backups,
        "leader_addr": primaries[0],
        "num_nodes": 7,
    }
    path.write_text(json.dumps(document))


def cut_warnings(serve: Serve) -> list[str]:
    return [
        line
        for line in serve.stderr().splitlines()
        if " WARNING " in line and "more than max_servers" in line
    ]


def on_disk(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def check_held(serve: Serve, path: Path, saved: list[str], max_servers: int) -> None:
    """The proxy holds the first ``max_servers`` of ``saved``, said so once, and is not wedged."""
    kept = saved[:max_servers]
    assert addrs(serve.call("servers", timeout=30)["servers"]) == kept
    warnings = cut_warnings(serve)
    assert len(warnings) == 1, serve.stderr()
    dropped = len(saved) - max_servers
    assert f"dropped {dropped}" in warnings[0] and str(path) in warnings[0], warnings[0]
    assert f"max_servers ({max_servers})" in warnings[0], warnings[0]
    # Queries are answered from the held list.
    assert serve.call("find_server")["server"]["addr"] == kept[0]
    status = serve.call("status")
    assert status["num_servers"] == max_servers and status["num_nodes"] == 7
    # Full: a new server is refused and changes nothing...
    error = serve.client.error({"op": "add_primary_server", "addr": "192.0.2.1"})
    assert error["code"] == "bad_request" and f"max_servers ({max_servers})" in error["message"]
    # ...until one leaves: then it is added (the proxy is not wedged).
    assert serve.call("remove_server", addr=kept[-1])["removed"] is True
    assert serve.call("add_primary_server", addr="192.0.2.1")["added"] is True
    want = addrs(serve.call("servers", timeout=30)["servers"])
    # A new primary stands before the first backup-only server (Words).
    assert [a for a in want if a != "192.0.2.1:4647"] == kept[:-1]
    assert len(want) == max_servers
    # The file follows: the held list, not the planted one, is what is saved now.
    poll_until(lambda: on_disk(path)["active"] == want, 20, 0.05, what="the held list saved")
    assert len(cut_warnings(serve)) == 1


def test_a_state_file_over_max_servers_keeps_its_first_servers(
    serve_factory: Callable[..., Serve], tmp_path: Path
) -> None:
    path = tmp_path / "state.json"
    saved = names(150)
    plant(path, saved)
    serve = serve_factory("--state-file", str(path), "--max-servers", "100")
    check_held(serve, path, saved, 100)
    assert "restored 100 servers from" in serve.stderr()


def test_backups_count_towards_max_servers_and_go_first(
    serve_factory: Callable[..., Serve], tmp_path: Path
) -> None:
    path = tmp_path / "state.json"
    everything = names(130)
    primaries, backups = everything[:80], everything[80:]
    plant(path, primaries, backups)
    serve = serve_factory("--state-file", str(path), "--max-servers", "100")
    status = serve.call("status")
    assert addrs(status["primary"]) == primaries
    assert addrs(status["backup"]) == backups[:20]
    check_held(serve, path, everything, 100)


def test_the_reported_50001_primaries_under_the_default_max_servers(
    serve_factory: Callable[..., Serve], tmp_path: Path
) -> None:
    """The file of issue 16, under the default bound of 4096."""
    path = tmp_path / "state.json"
    saved = names(50_001)
    plant(path, saved)
    serve = serve_factory("--state-file", str(path))
    check_held(serve, path, saved, 4096)
