"""promtool, Prometheus's own checker, for the tests of deploy/prometheus/.

promtool comes with Debian's ``prometheus`` package, installed by
``tests/prometheus/install.sh`` (with apt-get, only when the binary is
missing), so the rules are checked by the parser and evaluator Prometheus
itself runs, not by a reading of ours. A machine where it cannot be
installed fails these tests with the script's output; it never skips them.

Example::

    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = REPO / "tests" / "prometheus" / "install.sh"
PROMTOOL = Path(os.environ.get("PROMTOOL", "/usr/bin/promtool"))
RULES_DIR = REPO / "deploy" / "prometheus"
RULES = RULES_DIR / "rpcproxy-alerts.yml"
RULE_TESTS = RULES_DIR / "rpcproxy-alerts.test.yml"

INSTALL_TIMEOUT_S = 600.0
"""A fresh machine runs apt-get update first."""
RUN_TIMEOUT_S = 60.0

_install_lock = threading.Lock()
_installed: Path | None = None
_install_error: str | None = None


class PromtoolError(RuntimeError):
    """promtool could not be installed; the message says why."""


def install_promtool() -> Path:
    """Install promtool if missing (once per process) and return the binary's path.

    A failure is remembered, so every test reports it at once instead of
    rerunning apt-get for each.

    Raises:
        PromtoolError: install.sh failed; the message carries its output.
    """
    global _installed, _install_error  # noqa: PLW0603 - a per-process cache, by design
    with _install_lock:
        if _installed is not None:
            return _installed
        if _install_error is not None:
            raise PromtoolError(_install_error)
        try:
            done = subprocess.run(
                ["bash", str(INSTALL_SCRIPT)],
                env={**os.environ, "PROMTOOL": str(PROMTOOL)},
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            _install_error = f"{INSTALL_SCRIPT} took more than {INSTALL_TIMEOUT_S:g} s"
            raise PromtoolError(_install_error) from None
        if done.returncode != 0 or not os.access(PROMTOOL, os.X_OK):
            _install_error = (
                f"promtool is needed by the alerting-rule tests and could not be installed: "
                f"{INSTALL_SCRIPT} exited {done.returncode}; "
                f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            )
            raise PromtoolError(_install_error)
        _installed = PROMTOOL
        return _installed


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool args...`` (installing it first if needed) to completion."""
    return subprocess.run(
        [str(install_promtool()), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
