"""docker/build-base-image.sh, run down its install path with stand-in system tools.

The compose tests run this script for real, but only its first branch that the
machine happens to need: on a machine that already has debootstrap, the
install path never runs, and a broken line there stays hidden until a fresh
machine hits it. Here ``apt-get``, ``docker``, ``id`` and ``sudo`` are small
scripts on PATH that record how they were called, so the install path runs
on every machine, as root and as a user with sudo.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "build-base-image.sh"
STOP = 42
"""The stand-in debootstrap's exit code: the install path is done, stop here."""


def _tool(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run(tmp_path: Path, *, uid: int) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    debootstrap = tmp_path / "sbin" / "debootstrap"
    # No image yet, so the script goes on to build one.
    _tool(bin_dir, "docker", "exit 1\n")
    _tool(bin_dir, "id", f"echo {uid}\n")
    _tool(bin_dir, "sudo", f'echo "sudo $*" >> {log}\nexec "$@"\n')
    # apt-get records its arguments and the environment it was given; the
    # install "installs" a debootstrap that ends the run with a known code.
    _tool(
        bin_dir,
        "apt-get",
        f'echo "apt-get $* DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> {log}\n'
        f'case "$*" in *install*)\n'
        f"  mkdir -p {debootstrap.parent}\n"
        f"  printf '#!/bin/sh\\nexit {STOP}\\n' > {debootstrap}\n"
        f"  chmod +x {debootstrap};;\n"
        "esac\n",
    )
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "DEBOOTSTRAP": str(debootstrap),
        "DEBIAN_MIRROR": "http://mirror.invalid/debian",
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        ["bash", str(SCRIPT), "rpcproxy-base:test"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return done, calls


@pytest.mark.parametrize("uid", [0, 1000], ids=["root", "user-with-sudo"])
def test_the_install_path_installs_debootstrap_and_uses_it(tmp_path: Path, uid: int) -> None:
    done, calls = _run(tmp_path, uid=uid)

    assert "command not found" not in done.stderr, done.stderr
    apt_calls = [c for c in calls if c.startswith("apt-get")]
    assert apt_calls == [
        "apt-get update -qq DEBIAN_FRONTEND=noninteractive",
        "apt-get install -y -qq debootstrap DEBIAN_FRONTEND=noninteractive",
    ], (calls, done.stderr)
    sudo_calls = [c for c in calls if c.startswith("sudo")]
    assert bool(sudo_calls) == (uid != 0), calls
    # The freshly installed debootstrap is the one the script then ran.
    assert done.returncode == STOP, done.stderr


def test_an_existing_debootstrap_is_not_reinstalled(tmp_path: Path) -> None:
    debootstrap = tmp_path / "sbin" / "debootstrap"
    debootstrap.parent.mkdir()
    debootstrap.write_text(f"#!/bin/sh\nexit {STOP}\n")
    debootstrap.chmod(0o755)
    done, calls = _run(tmp_path, uid=0)
    assert not [c for c in calls if c.startswith("apt-get")], calls
    assert done.returncode == STOP, done.stderr
    assert os.access(debootstrap, os.X_OK)
