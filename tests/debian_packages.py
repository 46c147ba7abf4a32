"""Real peers the tests run that come from Debian's packages, installed when missing.

``tests/debian/install.sh`` installs a package with apt-get only when its
binary is missing (CI's first run on a fresh machine); a machine that has it
is left alone. Each tool is installed at most once per process, and a
failure is remembered, so every test that needs it reports it at once
instead of rerunning apt-get.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = REPO / "tests" / "debian" / "install.sh"

INSTALL_TIMEOUT_S = 600.0
"""A fresh machine runs apt-get update first."""


class ToolMissingError(RuntimeError):
    """A tool could not be installed; the message carries the script's output."""


class DebianTool:
    """One binary from one Debian package, installed on first use.

    Args:
        binary: where the package puts it (an environment variable may
            point elsewhere: see the module's instances).
        package: the Debian package that holds it.
        needed_by: who needs it, for the error message.
    """

    def __init__(self, binary: Path, package: str, needed_by: str) -> None:
        self.binary = binary
        self.package = package
        self.needed_by = needed_by
        self._lock = threading.Lock()
        self._installed = False
        self._error: str | None = None

    def ensure(self) -> Path:
        """The binary's path, installing its package first if it is missing.

        Raises:
            ToolMissingError: the install failed (remembered for later calls).
        """
        with self._lock:
            if self._installed:
                return self.binary
            if self._error is not None:
                raise ToolMissingError(self._error)
            try:
                done = subprocess.run(
                    ["bash", str(INSTALL_SCRIPT), str(self.binary), self.package],
                    capture_output=True,
                    text=True,
                    timeout=INSTALL_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                self._error = f"{INSTALL_SCRIPT} took more than {INSTALL_TIMEOUT_S:g} s"
                raise ToolMissingError(self._error) from None
            if done.returncode != 0 or not os.access(self.binary, os.X_OK):
                self._error = (
                    f"{self.binary.name} is needed by {self.needed_by} and could not be"
                    f" installed: {INSTALL_SCRIPT} exited {done.returncode}; "
                    f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
                )
                raise ToolMissingError(self._error)
            self._installed = True
            return self.binary


DNSMASQ = DebianTool(
    Path(os.environ.get("DNSMASQ", "/usr/sbin/dnsmasq")),
    "dnsmasq-base",  # the binary alone: no service, no configuration that starts one
    "the DNS discovery tests",
)
PROMTOOL = DebianTool(
    Path(os.environ.get("PROMTOOL", "/usr/bin/promtool")),
    "prometheus",  # promtool has no package of its own
    "the alerting-rule tests",
)
