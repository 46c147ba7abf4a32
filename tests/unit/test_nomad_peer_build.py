"""tests/nomad_peer/build.sh, run down its install path with stand-in system tools.

On a machine that already has Go and the libraries, the real build never runs
apt-get, so a broken line there would stay hidden until a fresh machine (CI's
first run) hits it. Here ``apt-get``, ``dpkg-query``, ``go``, ``id`` and
``sudo`` are small scripts on PATH that record how they were called, so the
install path runs on every machine, as root and as a user with sudo.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from tests.nomadpeer import BUILD_SCRIPT

PACKAGES = [
    "golang-go",
    "golang-github-hashicorp-net-rpc-msgpackrpc-dev",
    "golang-github-hashicorp-go-msgpack-dev",
    "golang-github-hashicorp-yamux-dev",
]


def _tool(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _setup(tmp_path: Path, *, uid: int, installed: bool) -> tuple[dict[str, str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    marker = tmp_path / "installed"
    if installed:
        marker.touch()
    _tool(bin_dir, "id", f"echo {uid}\n")
    _tool(bin_dir, "sudo", f'echo "sudo $*" >> {log}\nexec "$@"\n')
    # dpkg-query says "installed" once the stand-in apt-get has installed.
    _tool(
        bin_dir,
        "dpkg-query",
        f'if [ -e {marker} ]; then echo "install ok installed"; else exit 1; fi\n',
    )
    _tool(
        bin_dir,
        "apt-get",
        f'echo "apt-get $* DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> {log}\n'
        f'case "$*" in *install*) touch {marker};; esac\n',
    )
    # go records its arguments and build environment and "builds" -o's file.
    _tool(
        bin_dir,
        "go",
        f'echo "go $* CGO_ENABLED=$CGO_ENABLED GO111MODULE=$GO111MODULE GOPATH=$GOPATH" >> {log}\n'
        "while [ $# -gt 0 ]; do\n"
        '  if [ "$1" = -o ]; then printf "#!/bin/sh\\n" > "$2"; chmod +x "$2"; fi\n'
        "  shift\n"
        "done\n",
    )
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    return env, log


def _build(env: dict[str, str], out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(BUILD_SCRIPT), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _calls(log: Path, prefix: str) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if line.startswith(prefix)]


@pytest.mark.parametrize("uid", [0, 1000], ids=["root", "user-with-sudo"])
def test_missing_packages_are_installed_then_a_static_gopath_build_runs(
    tmp_path: Path, uid: int
) -> None:
    env, log = _setup(tmp_path, uid=uid, installed=False)
    out = tmp_path / "out" / "nomad-peer"
    done = _build(env, out)

    assert done.returncode == 0, done.stderr
    assert "command not found" not in done.stderr, done.stderr
    assert _calls(log, "apt-get") == [
        "apt-get update -qq DEBIAN_FRONTEND=noninteractive",
        "apt-get install -y -qq --no-install-recommends "
        + " ".join(PACKAGES)
        + " DEBIAN_FRONTEND=noninteractive",
    ]
    assert bool(_calls(log, "sudo")) == (uid != 0)
    (go,) = _calls(log, "go")
    assert go.startswith("go build ")
    assert go.endswith("CGO_ENABLED=0 GO111MODULE=off GOPATH=/usr/share/gocode")
    assert out.is_file()


def test_installed_packages_are_not_touched(tmp_path: Path) -> None:
    env, log = _setup(tmp_path, uid=0, installed=True)
    done = _build(env, tmp_path / "nomad-peer")
    assert done.returncode == 0, done.stderr
    assert _calls(log, "apt-get") == []
    assert len(_calls(log, "go")) == 1


def test_an_up_to_date_binary_is_neither_rebuilt_nor_checked(tmp_path: Path) -> None:
    env, log = _setup(tmp_path, uid=0, installed=False)
    out = tmp_path / "nomad-peer"
    assert _build(env, out).returncode == 0
    log.unlink()
    done = _build(env, out)
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout
    assert not log.exists()
