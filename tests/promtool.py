"""promtool, Prometheus's own checker, for the tests of deploy/prometheus/.

promtool comes with Debian's ``prometheus`` package, installed by
``tests/debian/install.sh`` (with apt-get, only when the binary is
missing), so the rules are checked by the parser and evaluator Prometheus
itself runs, not by a reading of ours. A machine where it cannot be
installed fails these tests with the script's output; it never skips them.

Example::

    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.debian_packages import PROMTOOL

REPO = Path(__file__).resolve().parents[1]
RULES_DIR = REPO / "deploy" / "prometheus"
RULES = RULES_DIR / "rpcproxy-alerts.yml"
RULE_TESTS = RULES_DIR / "rpcproxy-alerts.test.yml"

RUN_TIMEOUT_S = 60.0


def install_promtool() -> Path:
    """Install promtool if missing (once per process) and return the binary's path.

    Raises:
        ToolMissingError: it could not be installed; the message says why.
    """
    return PROMTOOL.ensure()


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
