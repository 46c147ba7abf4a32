"""CURVE keys for a client of the proxy, and the certificate files they live in.

A proxy that runs with CURVE (docs/protocol.md section 9) talks only to peers
whose public key it allows. A client needs the proxy's public key and a key
pair of its own: :class:`CurveClient` holds both and secures a socket with
them. Keys are ``zmq.auth`` certificate files, as ``rpcproxy keygen`` writes
them: ``NAME.key`` (public) and ``NAME.key_secret`` (public and secret). The
service reads its own key pair with the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

__all__ = [
    "CurveClient",
    "CurveError",
    "KeyPair",
    "create_key_pair",
    "load_key_pair",
    "load_public_key",
]


class CurveError(ValueError):
    """A key file or directory that cannot be used; the message says which."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A CURVE key pair in Z85 text form."""

    public: bytes
    secret: bytes


def load_key_pair(path: str | Path) -> KeyPair:
    """Read a ``.key_secret`` certificate (it holds both keys).

    Raises:
        CurveError: the file cannot be read or holds no secret key.
    """
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise CurveError(f"cannot read CURVE certificate {path}: {exc}") from None
    if secret is None:
        raise CurveError(f"{path} holds no secret key (use the .key_secret file)")
    return KeyPair(public, secret)


def load_public_key(path: str | Path) -> bytes:
    """Read the public key of a ``.key`` (or ``.key_secret``) certificate.

    Raises:
        CurveError: the file cannot be read.
    """
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise CurveError(f"cannot read CURVE certificate {path}: {exc}") from None
    return public


def create_key_pair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` into ``directory``; return both paths."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    return Path(public), Path(secret)


@dataclass(frozen=True, slots=True)
class CurveClient:
    """A peer's side of CURVE: the proxy's public key and the peer's own pair."""

    server_public: bytes
    keys: KeyPair

    @classmethod
    def from_files(cls, server_key_file: str | Path, cert_file: str | Path) -> CurveClient:
        """Read the proxy's ``.key`` and this peer's ``.key_secret``.

        Raises:
            CurveError: a file cannot be read or holds the wrong keys.
        """
        return cls(load_public_key(server_key_file), load_key_pair(cert_file))

    def secure(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE client of the proxy; set before connecting."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.keys.public
        sock.curve_secretkey = self.keys.secret
