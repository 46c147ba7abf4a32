"""A dispatch that leaves out a case fails ``mypy --strict``: the unions are closed.

ProxyCore's ``handle`` (over ``ProxyMessage``) and the service's
``validate`` (over the wire's ``OpRequest``) each end in ``assert_never``, so
a message or an op added to its union and not to the dispatch is a type
error, not a runtime surprise. These tests plant a small module that
dispatches over the real union, one case per member taken from
``typing.get_args``, and run mypy on it twice: whole, it passes; with one
case removed, mypy names ``assert_never`` and the missing type.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, get_args

import pytest

from rpcproxy.actors import ProxyMessage
from rpcproxy.bus.wire import OpRequest

UNIONS = {
    "actor": ("rpcproxy.actors", "ProxyMessage", ProxyMessage),
    "wire": ("rpcproxy.bus.wire", "OpRequest", OpRequest),
}


def plant(path: Path, union: tuple[str, str, Any], leave_out: type[Any] | None = None) -> Path:
    """A module whose ``dispatch`` matches every member of ``union`` but ``leave_out``."""
    module, name, alias = union
    members = [m for m in get_args(alias) if m is not leave_out]
    imports = "\n".join(f"from {m.__module__} import {m.__qualname__}" for m in members)
    cases = "\n".join(
        f"        case {m.__qualname__}():\n            return {m.__qualname__!r}" for m in members
    )
    path.write_text(
        textwrap.dedent(
            """\
            from typing import assert_never

            from {module} import {name}
            {imports}


            def dispatch(message: {name}) -> str:
                match message:
            {cases}
                    case _:
                        assert_never(message)
            """
        ).format(module=module, name=name, imports=imports, cases=cases),
        encoding="utf-8",
    )
    return path


def mypy(path: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            "",
            "--cache-dir",
            str(cache),
            str(path),
        ],
        capture_output=True,
        text=True,
        cwd=path.parent,
        timeout=540,
        check=False,
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One cache for the module's runs: rpcproxy is checked once, not four times.
    return tmp_path_factory.mktemp("mypy-cache")


@pytest.mark.parametrize("kind", sorted(UNIONS))
def test_a_dispatch_with_every_case_passes(kind: str, tmp_path: Path, cache: Path) -> None:
    result = mypy(plant(tmp_path / f"whole_{kind}.py", UNIONS[kind]), cache)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", sorted(UNIONS))
def test_a_dispatch_missing_a_case_fails(kind: str, tmp_path: Path, cache: Path) -> None:
    union = UNIONS[kind]
    missing = get_args(union[2])[-1]
    result = mypy(plant(tmp_path / f"short_{kind}.py", union, leave_out=missing), cache)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "assert_never" in result.stdout, result.stdout
    assert missing.__qualname__ in result.stdout, result.stdout
