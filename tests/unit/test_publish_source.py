"""Which source ``rpcproxy publish`` follows, and its static list (cli/tools.py).

docs/protocol.md section 7, last paragraph: a static list when ``--servers``
or ``--servers-file`` is given; otherwise Nomad's API when ``--nomad-addr``
is given or ``NOMAD_ADDR`` is set; neither, or a static list with
``--nomad-addr``, is a usage error. The real process is tested in
tests/integration/test_publish.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rpcproxy.cli.tools import PublishUsageError, _servers_source, publish_source
from rpcproxy.proxy import HeartbeatServer

NOMAD = {"NOMAD_ADDR": "http://127.0.0.1:4646"}


def source(env: dict[str, str] | None = None, **flags: Any) -> str:
    given: dict[str, Any] = {"servers": None, "servers_file": None, "nomad_addr": None}
    given.update(flags)
    return publish_source(env=env or {}, **given)


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        ({"servers": ["a"]}, {}, "static"),
        ({"servers_file": "f"}, {}, "static"),
        ({"servers": ["a"]}, NOMAD, "static"),  # the rule's "otherwise"
        ({"servers_file": "f", "servers": []}, NOMAD, "static"),
        ({"nomad_addr": "http://x:4646"}, {}, "nomad"),
        ({}, NOMAD, "nomad"),
        ({"nomad_addr": "unix:///secrets/api.sock"}, NOMAD, "nomad"),
    ],
)
def test_the_source(flags: dict[str, Any], env: dict[str, str], expected: str) -> None:
    assert source(env, **flags) == expected


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({}, {}, "nothing to publish"),
        ({}, {"NOMAD_ADDR": ""}, "nothing to publish"),
        ({"servers": ["a"], "nomad_addr": "http://x"}, {}, "two sources"),
        ({"servers_file": "f", "nomad_addr": "http://x"}, NOMAD, "two sources"),
        ({"servers": []}, NOMAD, "--servers lists no address"),
        ({"nomad_addr": " "}, {}, "--nomad-addr is empty"),
        ({"servers_file": ""}, {}, "--servers-file is empty"),
    ],
)
def test_no_source_or_two_is_a_usage_error(
    flags: dict[str, Any], env: dict[str, str], message: str
) -> None:
    with pytest.raises(PublishUsageError, match=message) as err:
        source(env, **flags)
    assert "\n" not in str(err.value)


def server(addr: str, dc: str = "dc1") -> HeartbeatServer:
    return HeartbeatServer(addr, 1, 1, dc)


def test_the_file_replaces_servers_while_it_can_be_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "servers"
    entries = _servers_source(["10.0.0.9"], str(path), "dc1")
    assert entries() == (server("10.0.0.9"),)  # missing: --servers
    path.write_text("10.0.0.1\n10.0.0.2@dc2\n")
    assert entries() == (server("10.0.0.1"), server("10.0.0.2", "dc2"))
    assert capsys.readouterr().err == ""


def test_an_empty_or_missing_file_sends_nothing_and_says_so_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "servers"
    entries = _servers_source([], str(path), "dc1")
    assert entries() is None and entries() is None  # missing, no --servers
    path.write_text("10.0.0.1\n")
    assert entries() == (server("10.0.0.1"),)
    # Empty (a rewrite in place, mid-way): no fallback, no empty heartbeat.
    path.write_text(" \n")
    assert entries() is None and entries() is None
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3, lines
    assert "cannot read" in lines[0] and "sending nothing" in lines[0]
    assert "listed again" in lines[1]
    assert "lists nobody" in lines[2] and "sending nothing" in lines[2]


def test_an_empty_file_does_not_fall_back_to_servers(tmp_path: Path) -> None:
    path = tmp_path / "servers"
    path.write_text("")
    assert _servers_source(["10.0.0.9"], str(path), "dc1")() is None
