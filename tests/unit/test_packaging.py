"""What ``pip install rpcproxy`` gives a user: one typed package, nothing else.

The wheel is built from this checkout and installed, without its
dependencies, into a fresh virtual environment; its site-packages must then
hold ``rpcproxy`` and its dist-info only. A user's program that uses the client
must pass ``mypy --strict`` against the installed package (which needs
``py.typed``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

import rpcproxy
from rpcproxy.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def _run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def _source_tree(into: Path) -> Path:
    """The checkout's files as a clean clone would have them.

    setuptools builds through ``build/`` in the source folder, and a stale
    ``build/lib`` there (an older layout, an earlier install) would leak into
    the wheel; a user's clone has none.
    """
    listed = _run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO)
    assert listed.returncode == 0, listed.stderr
    for name in filter(None, listed.stdout.split("\0")):
        source = REPO / name
        if source.is_file():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return into


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = _source_tree(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("wheel")
    built = _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, source, cwd=out
    )
    assert built.returncode == 0, built.stderr
    [found] = out.glob("rpcproxy-*.whl")
    return found


def test_the_wheel_installs_one_top_level_package(wheel: Path, tmp_path: Path) -> None:
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    site = next(env.glob("lib/python*/site-packages"))
    python = env / "bin" / "python"
    installed = _run(
        sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--quiet", wheel
    )
    assert installed.returncode == 0, installed.stderr

    top = sorted(p.name for p in site.iterdir() if p.name != "__pycache__")
    assert top == ["rpcproxy", f"rpcproxy-{rpcproxy.__version__}.dist-info"]
    package = site / "rpcproxy"
    assert (package / "py.typed").is_file()
    assert (package / "testing.py").is_file()  # rpcproxy.testing, for users' tests
    assert (env / "bin" / "rpcproxy").is_file()
    subpackages = sorted(p.name for p in package.iterdir() if (p / "__init__.py").is_file())
    assert subpackages == ["actors", "bus", "cli", "proxy", "sim"]
    # The repository's other folders are not part of the product.
    for folder in ("tests", "bench", "examples", "docs", "docker"):
        assert not (package / folder).exists(), folder


def test_the_version_is_the_packages(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"rpcproxy {rpcproxy.__version__}"


USER_PROGRAM = """
from rpcproxy import ProxyClient, ProxyError, Server


def active(endpoint: str) -> str | None:
    with ProxyClient(endpoint, timeout_s=0.5, retries=1) as client:
        try:
            server: Server | None = client.find_server()
        except ProxyError as exc:
            code: str = exc.code
            print(code)
            return None
        return None if server is None else server.addr


def wrong(endpoint: str) -> int:
    return ProxyClient(endpoint).find_server()
"""


def test_a_users_program_type_checks_against_the_client(tmp_path: Path) -> None:
    """The right half passes mypy --strict; the wrong half is caught, so the types are real."""
    program = tmp_path / "user.py"
    program.write_text(textwrap.dedent(USER_PROGRAM))
    checked = _run(
        sys.executable, "-m", "mypy", "--strict", "--no-incremental", program, cwd=tmp_path
    )
    errors = [line for line in checked.stdout.splitlines() if ": error:" in line]
    # Exactly one error: the deliberate one in wrong(); an untyped package
    # would give "missing library stubs or py.typed marker" instead.
    assert len(errors) == 1, checked.stdout
    source = program.read_text().splitlines()
    wrong_line = source.index("    return ProxyClient(endpoint).find_server()") + 1
    assert f"user.py:{wrong_line}:" in errors[0], errors
    assert "Incompatible return value" in errors[0], errors
