"""Configuration of ``rpcproxy serve``: one table, three sources, one-line errors.

docs/protocol.md section 6 lets every key come from a TOML file, an environment
variable ``RPCPROXY_<KEY>`` or a flag ``--<key>``, with flag > environment >
file > default, and requires a bad value to stop the proxy at start with one
line naming the key. To keep those four spellings from drifting apart, the
``Config`` dataclass body *is* the key table: each field line carries its type,
default, parser and help, and the flags, environment names, validation and the
README table are all derived from it. Adding a key is one line.

``Config`` validates itself on construction, so a ``Config`` that exists is a
valid one, however it was built (``load_config``, ``Config(...)`` in tests or
the demo, or ``with_overrides``).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rpcproxy.bus.service.agent_address import check_http_url, parse_agent_address
from rpcproxy.bus.service.discovery import DnsName, Nameserver, parse_dns_name, parse_nameserver
from rpcproxy.bus.wire import (
    DEFAULT_EVENTS_ENDPOINT,
    DEFAULT_HEARTBEAT_ENDPOINT,
    DEFAULT_QUERY_ENDPOINT,
)
from rpcproxy.proxy import DEFAULT_MAX_SERVERS, Address, InvalidAddressError, parse_address

ENV_PREFIX = "RPCPROXY_"
"""Environment variables are ``ENV_PREFIX + key.upper()``."""

_T = TypeVar("_T")
_META = "rpcproxy.config.key"
_SHOW_MAX = 60


class ConfigError(ValueError):
    """A configuration value that cannot be used.

    ``str()`` is always one line, ``<key>: <what is wrong> (from <source>)``,
    because the CLI prints it as the whole diagnostic before exiting 2 and
    operators grep logs for the key.
    """

    def __init__(self, key: str, message: str, source: str | None = None) -> None:
        super().__init__(key, message, source)
        self.key = key
        self.message = message
        self.source = source

    def __str__(self) -> str:
        text = f"{self.key}: {self.message}"
        if self.source:
            text += f" (from {self.source})"
        return " ".join(text.split("\n"))


Convert = Callable[[object, bool], object]
"""``convert(value, textual)``: ``textual`` is True for environment and flag
strings (which need converting) and False for typed TOML / Python values (which
must already have the right type). Raises ValueError with a message that does
not name the key; the caller adds key and source."""


@dataclass(frozen=True, slots=True)
class Parser:
    """How one kind of value is read and checked, plus how it is documented."""

    type_doc: str
    metavar: str
    convert: Convert


@dataclass(frozen=True, slots=True)
class Key:
    """One row of the key table, as seen by flags, environment and docs."""

    name: str
    parser: Parser
    default: object
    help: str

    @property
    def env(self) -> str:
        """The environment variable that sets this key."""
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        """The command-line flag that sets this key."""
        return "--" + self.name.replace("_", "-")

    @property
    def default_text(self) -> str:
        """The default as a TOML literal, so the docs can be pasted into a file."""
        return _toml_literal(self.default)


def _toml_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_literal(item) for item in value) + "]"
    if isinstance(value, str | Address | DnsName | Nameserver):
        return json.dumps(str(value))
    return repr(value)


def _show(value: object) -> str:
    """A value as the user wrote it, short and on one line, for messages."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(_show(item) for item in value) + "]"
    else:
        text = repr(value)
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 3] + "..."


# --- parsers -----------------------------------------------------------------

_INT_TEXT = re.compile(r"[+-]?[0-9]{1,30}")


def _integer(minimum: int) -> Parser:
    """An int >= minimum. TOML floats and booleans are refused: ``true`` is an
    int in Python, and silently reading it as 1 would hide a mistake."""
    expected = f"expected an integer >= {minimum}"

    def convert(value: object, textual: bool) -> object:
        if textual and isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
            number = int(value.strip())
        elif not textual and isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            raise ValueError(f"{expected}, got {_show(value)}")
        if number < minimum:
            raise ValueError(f"{expected}, got {_show(value)}")
        return number

    return Parser(f"int >= {minimum}", "N", convert)


def _real(*, positive: bool) -> Parser:
    """A finite float, > 0 or >= 0. TOML ints are accepted (``600`` for 600.0)
    because TOML has no way to say "a float that happens to be whole"."""
    expected = "expected a positive number" if positive else "expected a number >= 0"

    def convert(value: object, textual: bool) -> object:
        try:
            if isinstance(value, bool) or not isinstance(value, str if textual else int | float):
                raise ValueError
            number = float(value)
        except (ValueError, OverflowError):
            raise ValueError(f"{expected}, got {_show(value)}") from None
        if not math.isfinite(number) or number < 0 or (positive and number == 0):
            raise ValueError(f"{expected}, got {_show(value)}")
        return number

    return Parser("float > 0" if positive else "float >= 0", "NUMBER", convert)


def _string(type_doc: str, metavar: str, check: Callable[[str], str]) -> Parser:
    """A str, normalised and checked by ``check`` (which raises ValueError)."""

    def convert(value: object, textual: bool) -> object:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_show(value)}")
        return check(value)

    return Parser(type_doc, metavar, convert)


def _non_empty(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


def _no_whitespace(text: str) -> str:
    if any(char.isspace() or not char.isprintable() for char in text):
        raise ValueError(f"must not contain whitespace, got {_show(text)}")
    return text


def _topic_part(text: str) -> str:
    """The region is spliced into the topic ``heartbeat/<region>``: a '/' or a
    space would make a topic no publisher sends, and the proxy would hear
    nothing, silently."""
    _non_empty(text)
    if "/" in text or any(char.isspace() or not char.isprintable() for char in text):
        raise ValueError(f"must not contain whitespace or '/', got {_show(text)}")
    return text


def _choice(*options: str) -> Parser:
    """One of ``options``, case-insensitively (``INFO`` from an env var is fine)."""
    listed = ", ".join(repr(option) for option in options)

    def check(text: str) -> str:
        if text.lower() not in options:
            raise ValueError(f"expected one of {listed}, got {_show(text)}")
        return text.lower()

    docs = [f"`{option}`" for option in options]
    type_doc = ", ".join(docs[:-1]) + " or " + docs[-1]
    return _string(type_doc, "{" + ",".join(options) + "}", check)


_TCP_HOST = re.compile(r"[A-Za-z0-9._-]+")
_ENDPOINT_HINT = "expected tcp://host:port, ipc://path or inproc://name"


def _check_endpoint(text: str, *, connect: bool) -> str:
    """ZeroMQ endpoint syntax, checked now so a typo is a start-up error naming
    the key rather than a ZMQError from deep inside an actor. Wildcards (``*``)
    only make sense when binding, so connect endpoints refuse them."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc") or not rest or "\x00" in rest:
        raise ValueError(f"{_ENDPOINT_HINT}, got {_show(text)}")
    if scheme != "tcp":
        return text
    host, sep, port = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{_ENDPOINT_HINT}, got {_show(text)}") from None
    elif not sep or not (host == "*" or _TCP_HOST.fullmatch(host)):
        raise ValueError(f"{_ENDPOINT_HINT}, got {_show(text)}")
    if port != "*" and not (
        port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535
    ):
        raise ValueError(f"tcp port must be 1-65535 or '*', got {_show(text)}")
    if connect and "*" in (host, port):
        raise ValueError(f"a connect endpoint cannot use '*', got {_show(text)}")
    return text


def _endpoint(*, connect: bool = False, optional: bool = False) -> Parser:
    def check(text: str) -> str:
        if optional and text == "":
            return text
        return _check_endpoint(text, connect=connect)

    return _string("endpoint or empty" if optional else "endpoint", "ENDPOINT", check)


def _convert_address(value: object, textual: bool) -> object:
    if isinstance(value, Address):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected an address string, got {_show(value)}")
    try:
        return parse_address(value)
    except InvalidAddressError as exc:
        raise ValueError(str(exc)) from None


_ADDRESS = Parser("address", "ADDR", _convert_address)


def _list_of(item: Parser, what: str) -> Parser:
    """A tuple of ``item``s: a TOML array, or comma-separated text.

    In text, items are stripped and empty items dropped, so ``""`` is the empty
    list and a trailing comma is harmless. A TOML string is refused rather than
    split, because ``heartbeat_bind = "tcp://a"`` is almost always a forgotten
    pair of brackets, and the fix is worth saying.
    """

    def convert(value: object, textual: bool) -> object:
        if textual and isinstance(value, str):
            items: list[object] = [part.strip() for part in value.split(",") if part.strip()]
        elif not textual and isinstance(value, list | tuple):
            items = list(value)
        else:
            raise ValueError(f"expected a list of {what} (a TOML array), got {_show(value)}")
        parsed = []
        for index, raw in enumerate(items, 1):
            try:
                parsed.append(item.convert(raw, textual))
            except ValueError as exc:
                raise ValueError(f"item {index}: {exc}") from None
        return tuple(parsed)

    return Parser(f"list of {what}", f"{item.metavar}[,...]", convert)


def _key(default: _T, parser: Parser, doc: str) -> _T:
    """A field of the key table. Typed as the default so mypy sees plain fields."""
    result: _T = field(default=default, metadata={_META: (parser, doc)})
    return result


def _path_or_empty(text: str) -> str:
    if "\x00" in text:
        raise ValueError("a path cannot contain NUL")
    return text


_PATH = _string("path or empty", "PATH", _path_or_empty)


def _listen_or_empty(text: str) -> str:
    """``host:port`` for an HTTP listener (``[v6]:port`` too), or empty for off."""
    if text == "":
        return text
    host, sep, port = text.rpartition(":")
    host_ok = bool(host) and (
        _TCP_HOST.fullmatch(host) is not None or (host.startswith("[") and host.endswith("]"))
    )
    port_ok = port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535
    if not sep or not host_ok or not port_ok:
        raise ValueError(f"expected host:port (port 1-65535) or empty, got {_show(text)}")
    return text


_LISTEN = _string("host:port or empty", "HOST:PORT", _listen_or_empty)


def _url_or_empty(text: str) -> str:
    """An ``http://`` or ``https://`` URL with a host (Consul's API), or empty for off."""
    if text == "":
        return text
    try:
        return check_http_url(text)
    except ValueError:
        raise ValueError(
            f"expected an http:// or https:// URL or empty, got {_show(text)}"
        ) from None


def _agent_url_or_empty(text: str) -> str:
    """Nomad's API: an ``http(s)://`` URL, or ``unix:///abs/path`` (the Task API), or empty.

    The forms ``NOMAD_ADDR`` takes; a relative or empty socket path is refused here,
    so ``serve`` exits 2 naming the key rather than failing every poll.
    """
    if text == "":
        return text
    parse_agent_address(text)  # its ValueError says which form is wrong, and how
    return text


_URL = _string("URL or empty", "URL", _url_or_empty)
# Documented as a URL too: unix:///path is one, and the README's key table
# (generated from these rows) stays as it is.
_AGENT_URL = _string("URL, unix:///path or empty", "URL", _agent_url_or_empty)

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def _convert_bool(value: object, textual: bool) -> object:
    """A bool: TOML ``true``/``false``; in text ``true``/``false`` (also
    ``yes``/``no``, ``on``/``off``, ``1``/``0``), case-insensitively. A TOML
    string or number is refused: ``"false"`` being true would be a trap."""
    if not textual and isinstance(value, bool):
        return value
    if textual and isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError(f"expected true or false, got {_show(value)}")


_BOOL = Parser("bool", "{true,false}", _convert_bool)


def _parsed(kind: str, metavar: str, parse: Callable[[str], object], made: type) -> Parser:
    """A value parsed from one string (``parse`` raises ValueError with the reason).

    A value already of type ``made`` (a Config built in Python) is kept.
    """

    def convert(value: object, textual: bool) -> object:
        if isinstance(value, made):
            return value
        if not isinstance(value, str):
            raise ValueError(f"expected {kind}, got {_show(value)}")
        return parse(value)

    return Parser(kind, metavar, convert)


_DNS_NAME = _parsed("name[:port]", "NAME[:PORT]", parse_dns_name, DnsName)
_NAMESERVER = _parsed("ip[:port]", "IP[:PORT]", parse_nameserver, Nameserver)

_REGION = _string("str without whitespace or /", "NAME", _topic_part)
_NAME = _string("str", "NAME", _non_empty)
_VERSION = _integer(0)
_POSITIVE = _real(positive=True)


# --- the key table -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    """Everything ``rpcproxy serve`` can be told. Each line is one key."""

    # fmt: off
    region: str = _key("global", _REGION, "Nomad region; the proxy hears topic heartbeat/<region> only")  # noqa: E501
    datacenter: str = _key("dc1", _NAME, "Local datacenter: its heartbeat servers are primaries, others backups")  # noqa: E501
    rpc_major_version: int = _key(1, _VERSION, "RPC API major version; servers with a newer API are ignored")  # noqa: E501
    rpc_minor_version: int = _key(1, _VERSION, "RPC API minor version, compared when the majors are equal")  # noqa: E501
    query: str = _key(DEFAULT_QUERY_ENDPOINT, _endpoint(), "Endpoint the query ROUTER socket binds")
    heartbeat_bind: tuple[str, ...] = _key((DEFAULT_HEARTBEAT_ENDPOINT,), _list_of(_endpoint(), "endpoints"), "Endpoints the heartbeat SUB socket binds")  # noqa: E501
    heartbeat_connect: tuple[str, ...] = _key((), _list_of(_endpoint(connect=True), "endpoints"), "Endpoints the heartbeat SUB socket connects to")  # noqa: E501
    events: str = _key(DEFAULT_EVENTS_ENDPOINT, _endpoint(optional=True), "Endpoint the events PUB socket binds; empty turns events off")  # noqa: E501
    backup_servers: tuple[Address, ...] = _key((), _list_of(_ADDRESS, "addresses"), "Backup servers at start, as if given to set_backup_servers")  # noqa: E501
    primary_servers: tuple[Address, ...] = _key((), _list_of(_ADDRESS, "addresses"), "Primary servers at start, as if given to add_primary_server")  # noqa: E501
    ping_method: str = _key("nomad", _choice("nomad", "zmq", "tcp"), "How a rebalance checks a server: Nomad's Status.Ping RPC, a ZeroMQ ping request or a TCP connect")  # noqa: E501
    ping_timeout_s: float = _key(1.0, _POSITIVE, "Seconds a ping may take before the server counts as down")  # noqa: E501
    min_reuse_s: float = _key(600.0, _POSITIVE, "Minimum seconds between rebalances")
    jitter_fraction: float = _key(2.0, _POSITIVE, "The interval adds U[0, min_reuse_s / jitter_fraction) so a fleet spreads out")  # noqa: E501
    conns_per_sec_per_server: float = _key(64.0, _POSITIVE, "New connections per second one server should absorb; stretches the interval for big fleets")  # noqa: E501
    api_mismatch_log_interval_s: float = _key(10800.0, _real(positive=False), "Seconds between warnings about one server with a newer API; 0 warns every time")  # noqa: E501
    max_message_bytes: int = _key(1048576, _integer(1024), "Largest frame accepted (ZeroMQ MAXMSGSIZE); a peer sending more is disconnected")  # noqa: E501
    max_servers: int = _key(DEFAULT_MAX_SERVERS, _integer(1), "Most servers in one heartbeat, in one set_backup_servers, and in the primary and backup lists together; beyond it: bad_request, or the heartbeat is dropped")  # noqa: E501
    events_refresh_s: float = _key(1.0, _real(positive=False), "Seconds between refresh events repeating the active server and epoch (watching clients count silence in them); 0 turns them off")  # noqa: E501
    nomad_tls_ca_file: str = _key("", _PATH, "PEM CA of the cluster's RPC certificates; set, nomad pings use TLS and verify the server against it")  # noqa: E501
    nomad_tls_cert_file: str = _key("", _PATH, "PEM client certificate nomad pings present (servers with tls { rpc = true } require one); with nomad_tls_key_file")  # noqa: E501
    nomad_tls_key_file: str = _key("", _PATH, "PEM private key (unencrypted) of nomad_tls_cert_file")  # noqa: E501
    nomad_tls_verify_server_hostname: bool = _key(True, _BOOL, "With TLS, the server's certificate must name server.<region>.nomad, as Nomad's verify_server_hostname")  # noqa: E501
    nomad_addr: str = _key("", _AGENT_URL, "Poll this Nomad agent's HTTP API (http(s):// URL, or unix:///path for the Task API) for the region's servers (section 7; NOMAD_TOKEN, NOMAD_CACERT... as Nomad's); empty: off")  # noqa: E501
    nomad_interval_s: float = _key(10.0, _POSITIVE, "Seconds between polls of nomad_addr's members and leader")  # noqa: E501
    nomad_nodes_refresh_s: float = _key(300.0, _POSITIVE, "Seconds between counts of nomad_addr's /v1/nodes (num_nodes), which costs the server O(nodes)")  # noqa: E501
    metrics: str = _key("", _LISTEN, "Serve Prometheus metrics over HTTP at host:port (/metrics); empty: off")  # noqa: E501
    heartbeat_stale_s: float = _key(60.0, _POSITIVE, "Warn when no heartbeat has been applied for this many seconds, and discover servers (section 10)")  # noqa: E501
    consul_addr: str = _key("", _URL, "Discover servers in this Consul agent's catalog when heartbeats stop (section 10; CONSUL_HTTP_TOKEN, CONSUL_CACERT... as Consul's); empty: off")  # noqa: E501
    consul_service: str = _key("nomad", _NAME, "The Consul service Nomad servers register")
    consul_tag: str = _key("rpc", _string("str", "TAG", _no_whitespace), "Tag of the service's RPC entries; empty: any")  # noqa: E501
    discover_dns: tuple[DnsName, ...] = _key((), _list_of(_DNS_NAME, "names"), "Discover servers under these DNS names when heartbeats stop (A/AAAA at :port, 4647 by default; SRV for names starting with _)")  # noqa: E501
    discover_dns_nameservers: tuple[Nameserver, ...] = _key((), _list_of(_NAMESERVER, "addresses"), "DNS servers discover_dns asks (ip[:port]); empty: the system's")  # noqa: E501
    discover_interval_s: float = _key(60.0, _POSITIVE, "Seconds between discoveries while one is needed")  # noqa: E501
    state_file: str = _key("", _PATH, "Where the server lists are saved after each change and restored at start; empty: not saved")  # noqa: E501
    curve_secret_key_file: str = _key("", _PATH, "The proxy's CURVE certificate (.key_secret, from rpcproxy keygen); with curve_allowed_dir, turns CURVE on")  # noqa: E501
    curve_allowed_dir: str = _key("", _PATH, "Directory of the public certificates (.key) allowed to publish heartbeats, query and subscribe")  # noqa: E501
    log_level: str = _key("info", _choice("debug", "info", "warning", "error"), "Least severe log level written")  # noqa: E501
    log_format: str = _key("text", _choice("text", "json"), "Log lines as human text or one JSON object each")  # noqa: E501
    # fmt: on

    def __post_init__(self) -> None:
        """Validate and normalise every field, so no invalid Config can exist."""
        values: dict[str, object] = {}
        for key in KEYS:
            value = _parse(key, getattr(self, key.name), textual=False, source=None)
            object.__setattr__(self, key.name, value)
            values[key.name] = value
        _check_distinct_binds(values, {})
        _check_curve(values, {})
        _check_server_bound(values, {})
        _check_nomad_tls(values, {})

    def with_overrides(self, **changes: Any) -> Config:
        """A copy with some keys changed (typed values, validated like TOML)."""
        for name in changes:
            if name not in _KEYS_BY_NAME:
                raise ConfigError(name, "unknown key")
        return dataclasses.replace(self, **changes)


KEYS: tuple[Key, ...] = tuple(
    Key(f.name, f.metadata[_META][0], f.default, f.metadata[_META][1])
    for f in dataclasses.fields(Config)
)
"""The key table in declaration order, for flags, environment, docs and tests."""

_KEYS_BY_NAME = {key.name: key for key in KEYS}


def _parse(key: Key, value: object, *, textual: bool, source: str | None) -> object:
    try:
        return key.parser.convert(value, textual)
    except ValueError as exc:
        raise ConfigError(key.name, str(exc), source) from None


_BIND_KEYS = ("query", "heartbeat_bind", "events")


def _check_distinct_binds(values: Mapping[str, object], sources: Mapping[str, str]) -> None:
    """Two sockets cannot bind one endpoint; say which keys clash at start
    instead of letting the second bind fail with EADDRINUSE later."""
    owner: dict[str, str] = {}
    for name in _BIND_KEYS:
        value = values.get(name, _KEYS_BY_NAME[name].default)
        endpoints = value if isinstance(value, tuple) else (value,)
        for endpoint in endpoints:
            if not isinstance(endpoint, str) or not endpoint or endpoint.endswith(":*"):
                continue
            if endpoint in owner:
                raise ConfigError(
                    name,
                    f"endpoint {endpoint!r} is also bound by {owner[endpoint]}",
                    sources.get(name),
                )
            owner[endpoint] = name


def _check_curve(values: Mapping[str, object], sources: Mapping[str, str]) -> None:
    """CURVE needs both its keys; and a SUB socket is either a CURVE server (for
    publishers connecting to it) or a client, so with CURVE the proxy only binds
    for heartbeats: a connect endpoint would be an unauthenticated way in."""

    def value(name: str) -> object:
        return values.get(name, _KEYS_BY_NAME[name].default)

    secret, allowed = value("curve_secret_key_file"), value("curve_allowed_dir")
    if bool(secret) != bool(allowed):
        missing = "curve_allowed_dir" if secret else "curve_secret_key_file"
        raise ConfigError(missing, "CURVE needs both curve_secret_key_file and curve_allowed_dir")
    if secret and value("heartbeat_connect"):
        raise ConfigError(
            "heartbeat_connect",
            "cannot be used with CURVE: publishers must connect to heartbeat_bind",
            sources.get("heartbeat_connect"),
        )
    if secret and value("nomad_addr"):
        # The in-process bridge is no CURVE client of the heartbeat socket.
        raise ConfigError(
            "nomad_addr",
            "cannot be used with CURVE: run rpcproxy publish --nomad-addr with a client key",
            sources.get("nomad_addr"),
        )


def _check_server_bound(values: Mapping[str, object], sources: Mapping[str, str]) -> None:
    """The servers configured at start count against ``max_servers`` like any
    others; more than it could never all be kept, so say so at start."""

    def value(name: str) -> Any:
        return values.get(name, _KEYS_BY_NAME[name].default)

    limit = value("max_servers")
    servers = len(set(value("primary_servers")) | set(value("backup_servers")))
    if servers > limit:
        raise ConfigError(
            "max_servers",
            f"primary_servers and backup_servers name {servers} servers, more than {limit}",
            sources.get("max_servers"),
        )


def _check_nomad_tls(values: Mapping[str, object], sources: Mapping[str, str]) -> None:
    """A client certificate is its file and its key, and is only presented
    over TLS, which ``nomad_tls_ca_file`` turns on (docs/protocol.md section 4.1):
    a certificate without a CA would be silently unused."""

    def value(name: str) -> object:
        return values.get(name, _KEYS_BY_NAME[name].default)

    cert, key = value("nomad_tls_cert_file"), value("nomad_tls_key_file")
    if bool(cert) != bool(key):
        given, missing = (
            ("nomad_tls_cert_file", "nomad_tls_key_file")
            if cert
            else ("nomad_tls_key_file", "nomad_tls_cert_file")
        )
        raise ConfigError(missing, f"must be set with {given}", sources.get(given))
    if cert and not value("nomad_tls_ca_file"):
        raise ConfigError(
            "nomad_tls_ca_file",
            "must be set with nomad_tls_cert_file: TLS verifies servers against it",
            sources.get("nomad_tls_cert_file"),
        )


# --- sources -----------------------------------------------------------------


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` and one flag per key.

    Every flag defaults to "absent" (SUPPRESS: the attribute is missing), so
    ``load_config`` can tell "not given" from "given the default value" and let
    the environment and the file show through.
    """
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="TOML file of configuration keys; RPCPROXY_* variables and flags override it",
    )
    group = parser.add_argument_group(
        "configuration keys",
        "Each key can also be set as RPCPROXY_<KEY> or in the --config file; "
        "a flag beats the environment, which beats the file. Lists are comma-separated.",
    )
    for key in KEYS:
        kind = key.parser.type_doc.replace("`", "")
        text = f"{key.help} ({kind}; default {key.default_text}; env {key.env})"
        group.add_argument(
            key.flag,
            dest=key.name,
            metavar=key.parser.metavar,
            default=argparse.SUPPRESS,
            help=text.replace("%", "%%"),
        )


def _read_toml(path: str) -> dict[str, Any]:
    """Read the file and refuse unknown keys, so a typo is not silently a default."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(
            "config", f"cannot read {path}: {exc.strerror or exc}", "--config"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}", "--config") from None
    for name in data:
        if name not in _KEYS_BY_NAME:
            close = difflib.get_close_matches(name.replace("-", "_"), _KEYS_BY_NAME, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(name, f"unknown key{hint}", path)
    return data


def load_config(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    """Merge file, environment and flags (flag > environment > file > default).

    Only the winning source of each key is parsed, so a flag can always rescue a
    bad environment variable or file value; a list from a higher source replaces
    the lower one entirely (no merging). Unknown ``RPCPROXY_*`` variables are
    ignored (other tools may share the prefix); unknown file keys are errors.

    Raises:
        ConfigError: the first bad value, naming its key and source.
    """
    config_path = getattr(args, "config", None)
    path = None if config_path is None else os.fspath(config_path)
    from_file = {} if path is None else _read_toml(path)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in KEYS:
        flag_value = getattr(args, key.name, None)
        if flag_value is not None:
            source, raw, textual = key.flag, flag_value, isinstance(flag_value, str)
        elif key.env in environ:
            source, raw, textual = key.env, environ[key.env], True
        elif path is not None and key.name in from_file:
            source, raw, textual = path, from_file[key.name], False
        else:
            continue
        values[key.name] = _parse(key, raw, textual=textual, source=source)
        sources[key.name] = source
    _check_distinct_binds(values, sources)
    _check_curve(values, sources)
    _check_server_bound(values, sources)
    _check_nomad_tls(values, sources)
    return Config(**values)


def config_reference_markdown() -> str:
    """The key table for the README, generated so it cannot go stale."""
    lines = [
        "| key | type | default | env var | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key in KEYS:
        cells = (
            f"`{key.name}`",
            key.parser.type_doc,
            f"`{key.default_text}`",
            f"`{key.env}`",
            key.help,
        )
        escaped = (cell.replace("|", "\\|").replace("<", "&lt;") for cell in cells)
        lines.append("| " + " | ".join(escaped) + " |")
    return "\n".join(lines) + "\n"


__all__ = [
    "ENV_PREFIX",
    "KEYS",
    "Config",
    "ConfigError",
    "Key",
    "Parser",
    "add_config_arguments",
    "config_reference_markdown",
    "load_config",
]
