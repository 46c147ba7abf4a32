"""Loopback ports and MessagePack: the small pieces every test layer (and bench/) shares.

MessagePack here is the independent ``msgpack`` package, never the product's
codec, so a test that speaks the wire with these checks docs/protocol.md and
not the codec's own idea of it.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import msgpack  # type: ignore[import-untyped]


def free_port() -> int:
    """A loopback TCP port nobody listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Whether a new listener could bind ``port`` now (as a restarted proxy would)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
        return True


def tcp(port: int) -> str:
    return f"tcp://127.0.0.1:{port}"


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack(data: bytes) -> Any:
    # strict_map_key=False: a test may look at a reply or frame with int keys.
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
