"""A command prefix under which every DNS lookup hangs: a real resolver black hole.

A private mount namespace (``unshare -m``) whose ``/etc/resolv.conf`` names a
"name server" that is a UDP socket of this process, bound on port 53 and never
read, so every lookup of a name that is not in ``/etc/hosts`` hangs until the
resolver gives up. Used by the ping-isolation tests and by the benchmark that
measures lookups during such a rebalance.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

BLACKHOLE = "blackhole.invalid.example"
"""A name that is in no hosts file, so its lookup goes to the silent name server."""

# Bind-mount $0 over resolv.conf and $1 over nsswitch.conf, then run the rest.
_MOUNT_AND_RUN = (
    'mount --bind "$0" /etc/resolv.conf && mount --bind "$1" /etc/nsswitch.conf'
    ' && shift && exec "$@"'
)


@contextlib.contextmanager
def blackhole_prefix(lookup_hangs_s: int = 10) -> Iterator[tuple[str, ...] | str]:
    """Yield the prefix (``unshare ... sh -c ...``), or a string saying why there is none.

    ``unshare -m`` as root; otherwise ``-r`` maps us to root in a new user
    namespace, where the kernel allows that. The prefix is checked with a
    lookup of :data:`BLACKHOLE` that must still hang after a second.

    Args:
        lookup_hangs_s: how long one lookup hangs (resolv.conf ``timeout``).
    """
    rng = random.Random()
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with dns, tempfile.TemporaryDirectory(prefix="rpcproxy-blackhole-") as tmp:
        for _ in range(50):
            ip = f"127.53.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            try:
                dns.bind((ip, 53))
                break
            except OSError:
                continue
        else:
            yield "no free 127.53.x.y:53 for a silent name server"
            return
        resolv, nsswitch = Path(tmp, "resolv.conf"), Path(tmp, "nsswitch.conf")
        resolv.write_text(f"nameserver {ip}\noptions timeout:{lookup_hangs_s} attempts:1\n")
        nsswitch.write_text("hosts: files dns\n")
        flags = "-m" if os.geteuid() == 0 else "-rm"
        prefix = ("unshare", flags, "sh", "-c", _MOUNT_AND_RUN, str(resolv), str(nsswitch))
        try:
            probe = subprocess.run(
                [*prefix, "timeout", "1", "getent", "hosts", BLACKHOLE],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except FileNotFoundError:
            yield "unshare is not installed"
            return
        if probe.returncode != 124:  # 124: timeout killed the lookup, which hung.
            why = probe.stderr.strip() or f"getent exited {probe.returncode}: {probe.stdout!r}"
            yield f"cannot make a name lookup hang (unshare {flags} and mount needed): {why}"
            return
        yield prefix
