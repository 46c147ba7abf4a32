"""Where an agent's HTTP API is: an ``http(s)://`` URL, or a Unix socket (``unix:///path``).

Nomad 1.5+ gives every task its local agent's HTTP API on a Unix socket,
``${NOMAD_SECRETS_DIR}/api.sock`` (the Task API, docs/protocol.md section 7),
and Nomad's own Go client takes that address as ``unix:///path``. Over the
socket a request still needs a URL with a host, for httpx and for the
``Host`` header: Nomad's client sends ``http://127.0.0.1``, and so does this.

Pure (no HTTP client is loaded), so ``cli/config.py`` checks an address with
it while reading a configuration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = [
    "MAX_UNIX_PATH_BYTES",
    "UNIX_HOST_URL",
    "UNIX_PREFIX",
    "AgentAddress",
    "check_http_url",
    "parse_agent_address",
]

UNIX_PREFIX = "unix://"
"""How an address names a Unix socket: ``unix://`` and then its absolute path."""

UNIX_HOST_URL = "http://127.0.0.1"
"""The URL of requests over a Unix socket: ``Host: 127.0.0.1``, as Nomad's client sends."""

MAX_UNIX_PATH_BYTES = 107
"""The longest socket path connect() takes on Linux (``sun_path``'s 108 bytes, less the NUL)."""

_SHOW_MAX = 60


def _show(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= _SHOW_MAX else shown[: _SHOW_MAX - 3] + "..."


@dataclass(frozen=True, slots=True)
class AgentAddress:
    """An agent's address, as requests are made to it.

    Attributes:
        url: the base URL of every request (:data:`UNIX_HOST_URL` over a socket).
        unix_socket: the socket's path; empty for an agent over TCP.
    """

    url: str
    unix_socket: str = ""


def check_http_url(text: str) -> str:
    """``text`` when it is an ``http://`` or ``https://`` URL with a host.

    Raises:
        ValueError: it is not; the message shows it.
    """
    scheme, sep, rest = text.partition("://")
    host = rest.split("/", 1)[0]
    if not sep or scheme not in {"http", "https"} or not host or any(c.isspace() for c in text):
        raise ValueError(f"expected an http:// or https:// URL, got {_show(text)}")
    return text


def _unix_path(text: str) -> str:
    path = text[len(UNIX_PREFIX) :]
    # A relative path would depend on the working directory (and Go's URL
    # parser reads "unix://relative" as a host, then dials nothing).
    if not path.startswith("/"):
        raise ValueError(
            "a unix:// address must name an absolute path (unix:///path/api.sock),"
            f" got {_show(text)}"
        )
    if any(not c.isprintable() for c in path):
        raise ValueError(f"a socket path must be printable, got {_show(text)}")
    # Checked here so a path connect() can never take is a start-up error,
    # not a warning at every poll.
    if len(os.fsencode(path)) > MAX_UNIX_PATH_BYTES:
        raise ValueError(
            f"a socket path may be {MAX_UNIX_PATH_BYTES} bytes at most, got {_show(text)}"
        )
    return path


def parse_agent_address(text: str) -> AgentAddress:
    """The address an agent's API is at, from ``NOMAD_ADDR``'s forms.

    Args:
        text: ``http://host:port``, ``https://host:port`` or ``unix:///abs/path``.

    Raises:
        ValueError: none of them; the message shows ``text`` and the forms.
    """
    if text.startswith(UNIX_PREFIX):
        return AgentAddress(UNIX_HOST_URL, _unix_path(text))
    try:
        return AgentAddress(check_http_url(text))
    except ValueError:
        raise ValueError(
            f"expected an http:// or https:// URL or unix:///path, got {_show(text)}"
        ) from None
