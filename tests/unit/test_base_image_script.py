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


PACKAGES = "python3,python3-venv,ca-certificates,dnsmasq-base"
"""What the image is made with (dnsmasq-base for docker-compose.discovery.yml's
name server), and the label it records them under."""
LABEL = "org.rpcproxy.base-packages"


def _run_with_image(
    tmp_path: Path, made_with: str | None
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the script as root with debootstrap present; ``made_with``: the label
    of an image already tagged ("" for one without it), None for no image."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    debootstrap = tmp_path / "sbin" / "debootstrap"
    debootstrap.parent.mkdir()
    debootstrap.write_text(f'#!/bin/sh\necho "debootstrap $*" >> {log}\n')
    debootstrap.chmod(0o755)
    if made_with is None:
        inspect = "exit 1"
    else:
        inspect = f"case \"$*\" in *--format*) printf '%s\\n' '{made_with}';; esac; exit 0"
    _tool(
        bin_dir,
        "docker",
        f'echo "docker $*" >> {log}\n'
        f'if [ "$1 $2" = "image inspect" ]; then {inspect}; fi\n'
        'if [ "$1" = import ]; then cat >/dev/null; fi\n',
    )
    _tool(bin_dir, "id", "echo 0\n")
    done = subprocess.run(
        ["bash", str(SCRIPT), "rpcproxy-base:test"],
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "DEBOOTSTRAP": str(debootstrap),
            "DEBIAN_MIRROR": "http://mirror.invalid/debian",
            "HOME": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done, log.read_text().splitlines() if log.exists() else []


def test_a_new_image_holds_dnsmasq_and_records_its_packages(tmp_path: Path) -> None:
    done, calls = _run_with_image(tmp_path, None)
    assert done.returncode == 0, done.stderr
    (deboot,) = [c for c in calls if c.startswith("debootstrap")]
    assert f"--include={PACKAGES} " in deboot, deboot
    (imported,) = [c for c in calls if c.startswith("docker import")]
    assert f"LABEL {LABEL}={PACKAGES}" in imported, imported
    assert "built rpcproxy-base:test" in done.stdout


def test_an_image_made_with_these_packages_is_kept(tmp_path: Path) -> None:
    done, calls = _run_with_image(tmp_path, PACKAGES)
    assert done.returncode == 0, done.stderr
    assert "already present" in done.stdout
    assert not [c for c in calls if c.startswith(("debootstrap", "docker import"))], calls


@pytest.mark.parametrize("made_with", ["", "python3,python3-venv,ca-certificates"])
def test_an_image_made_without_dnsmasq_is_made_again(tmp_path: Path, made_with: str) -> None:
    done, calls = _run_with_image(tmp_path, made_with)
    assert done.returncode == 0, done.stderr
    assert "rebuilding" in done.stdout
    assert [c for c in calls if c.startswith("debootstrap")], calls
    assert [c for c in calls if c.startswith("docker import")], calls
