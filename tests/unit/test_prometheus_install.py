"""tests/prometheus/install.sh, run down its install path with stand-in system tools.

Once promtool is on a machine the script never reaches apt-get again, so a
broken install line would stay hidden until a fresh machine (CI's first
run). Here ``apt-get``, ``id`` and ``sudo`` are small scripts on PATH that
record how they were called, and ``PROMTOOL`` points at a file the stand-in
apt-get creates.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from tests.promtool import INSTALL_SCRIPT


def _tool(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run(tmp_path: Path, *, uid: int, installs: bool = True) -> tuple[int, list[str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    binary = tmp_path / "usr-bin" / "promtool"
    _tool(bin_dir, "id", f"echo {uid}\n")
    _tool(bin_dir, "sudo", f'echo "sudo $*" >> {log}\nexec "$@"\n')
    make = f'mkdir -p {binary.parent}; printf "#!/bin/sh\\n" > {binary}; chmod +x {binary}'
    _tool(
        bin_dir,
        "apt-get",
        f'echo "apt-get $* DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> {log}\n'
        f'case "$*" in *install*) {make if installs else ":"};; esac\n',
    )
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "PROMTOOL": str(binary),
    }
    done = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return done.returncode, calls, binary


def test_as_root_it_updates_then_installs_prometheus(tmp_path: Path) -> None:
    code, calls, binary = _run(tmp_path, uid=0)

    assert code == 0
    assert calls == [
        "apt-get update -qq DEBIAN_FRONTEND=noninteractive",
        "apt-get install -y -qq --no-install-recommends prometheus DEBIAN_FRONTEND=noninteractive",
    ]
    assert binary.is_file()


def test_as_a_user_it_goes_through_sudo(tmp_path: Path) -> None:
    code, calls, _ = _run(tmp_path, uid=1000)

    assert code == 0
    assert [c for c in calls if c.startswith("sudo ")] == [
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq",
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq"
        " --no-install-recommends prometheus",
    ]


def test_with_the_binary_there_it_asks_apt_get_nothing(tmp_path: Path) -> None:
    _run(tmp_path, uid=0)
    (tmp_path / "calls.log").unlink()

    code, calls, _ = _run(tmp_path, uid=0)

    assert code == 0
    assert calls == []


def test_an_install_that_leaves_no_binary_fails(tmp_path: Path) -> None:
    code, _, binary = _run(tmp_path, uid=0, installs=False)

    assert code != 0
    assert not binary.exists()
