"""tests/debian/install.sh, run down its install path with stand-in system tools.

Once a package is on a machine the script never reaches apt-get again, so a
broken install line would stay hidden until a fresh machine (CI's first
run). Here ``apt-get``, ``id`` and ``sudo`` are small scripts on PATH that
record how they were called, and the binary is a path the stand-in apt-get
creates. Every package the tests install goes through this one script.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from tests.debian_packages import DNSMASQ, INSTALL_SCRIPT, PROMTOOL

PACKAGES = [DNSMASQ.package, PROMTOOL.package]


def _tool(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run(
    tmp_path: Path, package: str, *, uid: int, installs: bool = True
) -> tuple[int, list[str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    binary = tmp_path / "sbin" / "tool"
    _tool(bin_dir, "id", f"echo {uid}\n")
    _tool(bin_dir, "sudo", f'echo "sudo $*" >> {log}\nexec "$@"\n')
    make = f'mkdir -p {binary.parent}; printf "#!/bin/sh\\n" > {binary}; chmod +x {binary}'
    _tool(
        bin_dir,
        "apt-get",
        f'echo "apt-get $* DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> {log}\n'
        f'case "$*" in *install*) {make if installs else ":"};; esac\n',
    )
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(INSTALL_SCRIPT), str(binary), package],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return done.returncode, calls, binary


@pytest.mark.parametrize("package", PACKAGES)
def test_as_root_it_updates_then_installs_the_package(tmp_path: Path, package: str) -> None:
    code, calls, binary = _run(tmp_path, package, uid=0)

    assert code == 0
    assert calls == [
        "apt-get update -qq DEBIAN_FRONTEND=noninteractive",
        f"apt-get install -y -qq --no-install-recommends {package} DEBIAN_FRONTEND=noninteractive",
    ]
    assert binary.is_file()


@pytest.mark.parametrize("package", PACKAGES)
def test_as_a_user_it_goes_through_sudo(tmp_path: Path, package: str) -> None:
    code, calls, _ = _run(tmp_path, package, uid=1000)

    assert code == 0
    assert [c for c in calls if c.startswith("sudo ")] == [
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq",
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq"
        f" --no-install-recommends {package}",
    ]


def test_with_the_binary_there_it_asks_apt_get_nothing(tmp_path: Path) -> None:
    _run(tmp_path, "dnsmasq-base", uid=0)
    (tmp_path / "calls.log").unlink()

    code, calls, _ = _run(tmp_path, "dnsmasq-base", uid=0)

    assert code == 0
    assert calls == []


def test_an_install_that_leaves_no_binary_fails(tmp_path: Path) -> None:
    code, _, binary = _run(tmp_path, "prometheus", uid=0, installs=False)

    assert code != 0
    assert not binary.exists()


def test_it_needs_a_binary_and_a_package(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "usage:" in done.stderr
