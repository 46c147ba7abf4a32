"""Configuration: defaults, the three sources, precedence and validation
(docs/protocol.md section 6).

Every test passes its environment as a dict, so nothing here reads or changes
the real ``os.environ``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpcproxy.bus.service.discovery import DnsName, Nameserver
from rpcproxy.cli.config import (
    KEYS,
    Config,
    ConfigError,
    add_config_arguments,
    config_reference_markdown,
    load_config,
)
from rpcproxy.proxy import Address, parse_address


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rpcproxy serve")
    add_config_arguments(parser)
    return parser


def _load(
    tmp_path: Path,
    *,
    toml: str | None = None,
    env: Mapping[str, str] | None = None,
    argv: Sequence[str] = (),
) -> Config:
    """Load a Config from an optional TOML text, an environment and flags."""
    args = list(argv)
    if toml is not None:
        path = tmp_path / "rpcproxy.toml"
        path.write_text(toml, encoding="utf-8")
        args = ["--config", str(path), *args]
    return load_config(_parser().parse_args(args), env or {})


def _error(
    tmp_path: Path,
    *,
    toml: str | None = None,
    env: Mapping[str, str] | None = None,
    argv: Sequence[str] = (),
) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, toml=toml, env=env, argv=argv)
    text = str(info.value)
    assert "\n" not in text, "the CLI prints the error as one line"
    return info.value


def _env(name: str) -> str:
    return "RPCPROXY_" + name.upper()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# --- defaults ----------------------------------------------------------------

PROTOCOL_DEFAULTS: dict[str, Any] = {
    "region": "global",
    "datacenter": "dc1",
    "rpc_major_version": 1,
    "rpc_minor_version": 1,
    "query": "tcp://127.0.0.1:4650",
    "heartbeat_bind": ("tcp://127.0.0.1:4651",),
    "heartbeat_connect": (),
    "events": "tcp://127.0.0.1:4652",
    "backup_servers": (),
    "primary_servers": (),
    "ping_method": "nomad",
    "ping_timeout_s": 1.0,
    "min_reuse_s": 600.0,
    "jitter_fraction": 2.0,
    "conns_per_sec_per_server": 64.0,
    "api_mismatch_log_interval_s": 10800.0,
    "max_message_bytes": 1048576,
    "max_servers": 4096,
    "events_refresh_s": 1.0,
    "nomad_tls_ca_file": "",
    "nomad_tls_cert_file": "",
    "nomad_tls_key_file": "",
    "nomad_tls_verify_server_hostname": True,
    "nomad_addr": "",
    "nomad_interval_s": 10.0,
    "nomad_nodes_refresh_s": 300.0,
    "metrics": "",
    "heartbeat_stale_s": 60.0,
    "consul_addr": "",
    "consul_service": "nomad",
    "consul_tag": "rpc",
    "discover_dns": (),
    "discover_dns_nameservers": (),
    "discover_interval_s": 60.0,
    "state_file": "",
    "curve_secret_key_file": "",
    "curve_allowed_dir": "",
    "log_level": "info",
    "log_format": "text",
}
"""The docs/protocol.md section 6 table, plus the operational keys."""


def test_defaults_equal_the_protocol_table(tmp_path: Path) -> None:
    assert [key.name for key in KEYS] == list(PROTOCOL_DEFAULTS)
    assert dataclasses.asdict(Config()) == PROTOCOL_DEFAULTS
    assert _load(tmp_path) == Config()


def test_float_defaults_are_floats() -> None:
    config = Config()
    for name, value in PROTOCOL_DEFAULTS.items():
        assert type(getattr(config, name)) is type(value), name


# --- each source alone -------------------------------------------------------

# key -> (text for env and flag, TOML literal, parsed value); one row per key.
SAMPLES: dict[str, tuple[str, str, Any]] = {
    "region": ("eu-west", '"eu-west"', "eu-west"),
    "datacenter": ("dc 2", '"dc 2"', "dc 2"),
    "rpc_major_version": ("2", "2", 2),
    "rpc_minor_version": ("0", "0", 0),
    "query": ("ipc:///tmp/q.sock", '"ipc:///tmp/q.sock"', "ipc:///tmp/q.sock"),
    "heartbeat_bind": (
        "tcp://*:5000,inproc://hb",
        '["tcp://*:5000", "inproc://hb"]',
        ("tcp://*:5000", "inproc://hb"),
    ),
    "heartbeat_connect": (
        "tcp://[::1]:5001",
        '["tcp://[::1]:5001"]',
        ("tcp://[::1]:5001",),
    ),
    "events": ("", '""', ""),
    "backup_servers": (
        "10.0.0.1,[::1]:99",
        '["10.0.0.1", "[::1]:99"]',
        (Address("10.0.0.1", 4647), Address("::1", 99)),
    ),
    "primary_servers": ("Nomad.Example", '["Nomad.Example"]', (Address("nomad.example", 4647),)),
    "ping_method": ("tcp", '"tcp"', "tcp"),
    "ping_timeout_s": ("0.25", "0.25", 0.25),
    "min_reuse_s": ("120", "120", 120.0),
    "jitter_fraction": ("4.5", "4.5", 4.5),
    "conns_per_sec_per_server": ("1e3", "1e3", 1000.0),
    "api_mismatch_log_interval_s": ("0", "0", 0.0),
    "max_message_bytes": ("1024", "1024", 1024),
    "max_servers": ("3", "3", 3),
    "events_refresh_s": ("0", "0", 0.0),
    "nomad_tls_ca_file": ("/tls/ca.pem", '"/tls/ca.pem"', "/tls/ca.pem"),
    "nomad_tls_verify_server_hostname": ("False", "false", False),
    "nomad_addr": ("https://127.0.0.1:4646", '"https://127.0.0.1:4646"', "https://127.0.0.1:4646"),
    "nomad_interval_s": ("0.5", "0.5", 0.5),
    "nomad_nodes_refresh_s": ("60", "60", 60.0),
    "metrics": ("0.0.0.0:9100", '"0.0.0.0:9100"', "0.0.0.0:9100"),
    "heartbeat_stale_s": ("5", "5", 5.0),
    "consul_addr": ("http://127.0.0.1:8500", '"http://127.0.0.1:8500"', "http://127.0.0.1:8500"),
    "consul_service": ("nomad-servers", '"nomad-servers"', "nomad-servers"),
    "consul_tag": ("", '""', ""),
    "discover_dns": (
        "_nomad._rpc.service.consul,Nomad.Example.:4648",
        '["_nomad._rpc.service.consul", "Nomad.Example.:4648"]',
        (DnsName("_nomad._rpc.service.consul"), DnsName("nomad.example", 4648)),
    ),
    "discover_dns_nameservers": (
        "127.0.0.1:5353,[::1]",
        '["127.0.0.1:5353", "[::1]"]',
        (Nameserver("127.0.0.1", 5353), Nameserver("::1", 53)),
    ),
    "discover_interval_s": ("2.5", "2.5", 2.5),
    "state_file": ("/tmp/s.json", '"/tmp/s.json"', "/tmp/s.json"),
    "log_level": ("DEBUG", '"debug"', "debug"),
    "log_format": ("json", '"json"', "json"),
}


PAIRED_KEYS = {
    "curve_secret_key_file",
    "curve_allowed_dir",
    "nomad_tls_cert_file",
    "nomad_tls_key_file",
}
"""Keys that are only valid together; tested as pairs below."""


def test_samples_cover_every_key() -> None:
    assert set(SAMPLES) | PAIRED_KEYS == {key.name for key in KEYS}


def test_curve_keys_from_each_source(tmp_path: Path) -> None:
    env = {_env("curve_secret_key_file"): "/k/proxy.key_secret", _env("curve_allowed_dir"): "/k/a"}
    config = _load(tmp_path, env=env)
    assert (config.curve_secret_key_file, config.curve_allowed_dir) == (
        "/k/proxy.key_secret",
        "/k/a",
    )
    toml = 'curve_secret_key_file = "/s"\ncurve_allowed_dir = "/d"\n'
    assert _load(tmp_path, toml=toml).curve_allowed_dir == "/d"


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ("curve_secret_key_file", "curve_allowed_dir"),
        ("curve_allowed_dir", "curve_secret_key_file"),
    ],
)
def test_curve_needs_both_keys(tmp_path: Path, given: str, missing: str) -> None:
    error = _error(tmp_path, argv=[f"{_flag(given)}=/x"])
    assert error.key == missing


def test_nomad_tls_client_pair_from_each_source(tmp_path: Path) -> None:
    env = {
        _env("nomad_tls_ca_file"): "/t/ca.pem",
        _env("nomad_tls_cert_file"): "/t/cli.pem",
        _env("nomad_tls_key_file"): "/t/cli-key.pem",
    }
    config = _load(tmp_path, env=env)
    assert (config.nomad_tls_cert_file, config.nomad_tls_key_file) == (
        "/t/cli.pem",
        "/t/cli-key.pem",
    )
    toml = (
        'nomad_tls_ca_file = "/c"\nnomad_tls_cert_file = "/p"\nnomad_tls_key_file = "/k"\n'
        "nomad_tls_verify_server_hostname = true\n"
    )
    assert _load(tmp_path, toml=toml).nomad_tls_key_file == "/k"


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ("nomad_tls_cert_file", "nomad_tls_key_file"),
        ("nomad_tls_key_file", "nomad_tls_cert_file"),
    ],
)
def test_nomad_tls_client_certificate_needs_both_keys(
    tmp_path: Path, given: str, missing: str
) -> None:
    argv = [f"{_flag('nomad_tls_ca_file')}=/ca.pem", f"{_flag(given)}=/x"]
    error = _error(tmp_path, argv=argv)
    assert (error.key, error.source) == (missing, _flag(given))


def test_nomad_tls_client_certificate_needs_the_ca(tmp_path: Path) -> None:
    """A client certificate is only ever presented over TLS, which the CA turns on."""
    argv = [f"{_flag('nomad_tls_cert_file')}=/c.pem", f"{_flag('nomad_tls_key_file')}=/k.pem"]
    assert _error(tmp_path, argv=argv).key == "nomad_tls_ca_file"
    with pytest.raises(ConfigError):
        Config(nomad_tls_cert_file="/c.pem", nomad_tls_key_file="/k.pem")


@pytest.mark.parametrize("text", ["true", "TRUE", "yes", "on", "1"])
def test_bool_texts_true(tmp_path: Path, text: str) -> None:
    env = {_env("nomad_tls_verify_server_hostname"): text}
    assert _load(tmp_path, env=env).nomad_tls_verify_server_hostname is True


@pytest.mark.parametrize("text", ["false", "No", "off", "0"])
def test_bool_texts_false(tmp_path: Path, text: str) -> None:
    argv = [f"{_flag('nomad_tls_verify_server_hostname')}={text}"]
    assert _load(tmp_path, argv=argv).nomad_tls_verify_server_hostname is False


def test_curve_refuses_heartbeat_connect(tmp_path: Path) -> None:
    argv = [
        f"{_flag('curve_secret_key_file')}=/s",
        f"{_flag('curve_allowed_dir')}=/d",
        f"{_flag('heartbeat_connect')}=tcp://10.0.0.1:5000",
    ]
    assert _error(tmp_path, argv=argv).key == "heartbeat_connect"


def test_curve_refuses_nomad_addr(tmp_path: Path) -> None:
    # serve's in-process Nomad bridge is no CURVE client of the heartbeat socket.
    argv = [
        f"{_flag('curve_secret_key_file')}=/s",
        f"{_flag('curve_allowed_dir')}=/d",
        f"{_flag('nomad_addr')}=http://127.0.0.1:4646",
    ]
    assert _error(tmp_path, argv=argv).key == "nomad_addr"


def test_nomad_addr_takes_the_task_apis_unix_socket(tmp_path: Path) -> None:
    # Nomad 1.5+'s Task API: ${NOMAD_SECRETS_DIR}/api.sock, as NOMAD_ADDR takes it.
    sock = "unix:///var/nomad/alloc/5c63/rpcproxy/secrets/api.sock"
    assert _load(tmp_path, env={_env("nomad_addr"): sock}).nomad_addr == sock
    assert _load(tmp_path, argv=[f"{_flag('nomad_addr')}={sock}"]).nomad_addr == sock
    assert _load(tmp_path, toml=f'nomad_addr = "{sock}"\n').nomad_addr == sock
    assert Config(nomad_addr="unix:///secrets/api.sock").nomad_addr == "unix:///secrets/api.sock"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("unix://secrets/api.sock", "absolute path"),
        ("unix://", "absolute path"),
        ("unix:///" + "a" * 107, "107 bytes"),
        ("ftp://h", "unix:///path"),
    ],
)
def test_nomad_addr_says_what_is_wrong_with_a_socket_path(
    tmp_path: Path, text: str, says: str
) -> None:
    error = _error(tmp_path, argv=[f"{_flag('nomad_addr')}={text}"])
    assert error.key == "nomad_addr" and says in str(error), str(error)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_toml_alone(tmp_path: Path, name: str) -> None:
    _, literal, expected = SAMPLES[name]
    config = _load(tmp_path, toml=f"{name} = {literal}\n")
    assert getattr(config, name) == expected
    assert dataclasses.replace(config, **{name: PROTOCOL_DEFAULTS[name]}) == Config()


@pytest.mark.parametrize("name", list(SAMPLES))
def test_environment_alone(tmp_path: Path, name: str) -> None:
    text, _, expected = SAMPLES[name]
    config = _load(tmp_path, env={_env(name): text})
    assert getattr(config, name) == expected


@pytest.mark.parametrize("name", list(SAMPLES))
def test_flag_alone(tmp_path: Path, name: str) -> None:
    text, _, expected = SAMPLES[name]
    config = _load(tmp_path, argv=[f"{_flag(name)}={text}"])
    assert getattr(config, name) == expected


def test_absent_flags_are_absent_from_the_namespace() -> None:
    namespace = _parser().parse_args([])
    assert namespace.config is None
    assert not any(hasattr(namespace, key.name) for key in KEYS)


def test_help_mentions_every_flag_and_env_var() -> None:
    text = _parser().format_help()
    for key in KEYS:
        assert key.flag in text
        assert key.env in text.replace("\n", "").replace(" ", "")


# --- precedence --------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_file", "in_env", "in_flag", "expected"),
    [
        (True, True, True, 1.0),
        (True, True, False, 2.0),
        (True, False, True, 1.0),
        (False, True, True, 1.0),
        (True, False, False, 3.0),
        (False, True, False, 2.0),
        (False, False, False, 600.0),
    ],
)
def test_precedence_scalar(
    tmp_path: Path, in_file: bool, in_env: bool, in_flag: bool, expected: float
) -> None:
    config = _load(
        tmp_path,
        toml="min_reuse_s = 3\n" if in_file else None,
        env={"RPCPROXY_MIN_REUSE_S": "2"} if in_env else {},
        argv=["--min-reuse-s", "1"] if in_flag else [],
    )
    assert config.min_reuse_s == expected


@pytest.mark.parametrize(
    ("in_file", "in_env", "in_flag", "expected"),
    [
        (True, True, True, ("flag:1",)),
        (True, True, False, ("env:1", "env:2")),
        (True, False, False, ("file:1", "file:2", "file:3")),
        (False, False, True, ("flag:1",)),
        (False, False, False, ()),
    ],
)
def test_precedence_list_replaces_whole_list(
    tmp_path: Path, in_file: bool, in_env: bool, in_flag: bool, expected: tuple[str, ...]
) -> None:
    config = _load(
        tmp_path,
        toml='backup_servers = ["file:1", "file:2", "file:3"]\n' if in_file else None,
        env={"RPCPROXY_BACKUP_SERVERS": "env:1,env:2"} if in_env else {},
        argv=["--backup-servers", "flag:1"] if in_flag else [],
    )
    assert config.backup_servers == tuple(parse_address(text) for text in expected)


def test_empty_environment_list_overrides_file(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        toml='heartbeat_bind = ["tcp://127.0.0.1:9"]\n',
        env={"RPCPROXY_HEARTBEAT_BIND": ""},
    )
    assert config.heartbeat_bind == ()


def test_flag_rescues_a_bad_environment_value(tmp_path: Path) -> None:
    """Only the winning source is parsed, so a flag can always override."""
    config = _load(tmp_path, env={"RPCPROXY_PING_TIMEOUT_S": "abc"}, argv=["--ping-timeout-s", "2"])
    assert config.ping_timeout_s == 2.0


def test_unknown_environment_variables_are_ignored(tmp_path: Path) -> None:
    env = {"RPCPROXY_NO_SUCH_KEY": "1", "RPCPROXY_CONFIG": "/nonexistent", "HOME": "/"}
    assert _load(tmp_path, env=env) == Config()


# --- environment lists -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("  ", ()),
        ("tcp://a:1", ("tcp://a:1",)),
        ("tcp://a:1,tcp://b:2", ("tcp://a:1", "tcp://b:2")),
        (" tcp://a:1 , tcp://b:2 ", ("tcp://a:1", "tcp://b:2")),
        ("tcp://a:1,,tcp://b:2,", ("tcp://a:1", "tcp://b:2")),
    ],
)
def test_environment_list_splitting(tmp_path: Path, text: str, expected: tuple[str, ...]) -> None:
    config = _load(tmp_path, env={"RPCPROXY_HEARTBEAT_CONNECT": text})
    assert config.heartbeat_connect == expected


def test_addresses_are_canonical(tmp_path: Path) -> None:
    config = _load(tmp_path, env={"RPCPROXY_PRIMARY_SERVERS": "10.0.0.1, 10.0.0.2:4648"})
    assert [str(a) for a in config.primary_servers] == ["10.0.0.1:4647", "10.0.0.2:4648"]


# --- endpoints ---------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://127.0.0.1:1",
        "tcp://127.0.0.1:65535",
        "tcp://*:5555",
        "tcp://127.0.0.1:*",
        "tcp://eth0:5555",
        "tcp://nomad.example.com:4650",
        "tcp://[::1]:4650",
        "tcp://[::]:4650",
        "ipc:///tmp/rpcproxy.sock",
        "ipc://@abstract",
        "inproc://query",
    ],
)
def test_valid_bind_endpoints(tmp_path: Path, endpoint: str) -> None:
    assert _load(tmp_path, argv=["--query", endpoint]).query == endpoint


# --- validation: every rule has a failing case naming the key ----------------

BAD_TEXT: list[tuple[str, str]] = [
    ("region", ""),
    ("region", "us east"),
    ("region", "us/east"),
    ("region", "us\teast"),
    ("datacenter", ""),
    ("rpc_major_version", "-1"),
    ("rpc_major_version", "1.5"),
    ("rpc_major_version", "one"),
    ("rpc_minor_version", "-1"),
    ("rpc_minor_version", ""),
    ("query", ""),
    ("query", "localhost:4650"),
    ("query", "http://127.0.0.1:4650"),
    ("query", "tcp://127.0.0.1"),
    ("query", "tcp://127.0.0.1:"),
    ("query", "tcp://:4650"),
    ("query", "tcp://127.0.0.1:0"),
    ("query", "tcp://127.0.0.1:65536"),
    ("query", "tcp://127.0.0.1:http"),
    ("query", "tcp://bad host:4650"),
    ("query", "tcp://[::zz]:4650"),
    ("query", "tcp://[::1:4650"),
    ("query", "ipc://"),
    ("query", "inproc://"),
    ("heartbeat_bind", "tcp://127.0.0.1:9,nonsense"),
    ("heartbeat_connect", "tcp://*:5000"),
    ("heartbeat_connect", "tcp://127.0.0.1:*"),
    ("heartbeat_connect", "udp://127.0.0.1:5000"),
    ("events", "events"),
    ("events", " "),
    ("backup_servers", "10.0.0.1:0"),
    ("backup_servers", "10.0.0.1,::1"),
    ("primary_servers", "[::1"),
    ("primary_servers", "300.0.0.1"),
    ("ping_method", "udp"),
    ("ping_method", ""),
    ("nomad_tls_verify_server_hostname", "maybe"),
    ("nomad_tls_verify_server_hostname", ""),
    ("nomad_tls_ca_file", "/a\x00b"),
    ("nomad_tls_cert_file", "/a\x00b"),
    ("nomad_tls_key_file", "/a\x00b"),
    ("nomad_addr", "127.0.0.1:4646"),
    ("nomad_addr", "ftp://h"),
    ("nomad_addr", "http://"),
    ("nomad_addr", "unix://relative/api.sock"),
    ("nomad_addr", "unix://"),
    ("nomad_addr", "unix:///" + "a" * 107),
    ("nomad_interval_s", "0"),
    ("nomad_nodes_refresh_s", "-1"),
    ("ping_timeout_s", "abc"),
    ("ping_timeout_s", "0"),
    ("ping_timeout_s", "-1"),
    ("ping_timeout_s", "nan"),
    ("ping_timeout_s", "inf"),
    ("ping_timeout_s", ""),
    ("min_reuse_s", "0"),
    ("min_reuse_s", "1e400"),
    ("jitter_fraction", "0"),
    ("jitter_fraction", "-0.5"),
    ("conns_per_sec_per_server", "0"),
    ("conns_per_sec_per_server", "-inf"),
    ("api_mismatch_log_interval_s", "-1"),
    ("api_mismatch_log_interval_s", "nan"),
    ("max_message_bytes", "1023"),
    ("max_message_bytes", "1e6"),
    ("max_message_bytes", "1_048_576x"),
    ("max_servers", "0"),
    ("max_servers", "-1"),
    ("events_refresh_s", "-1"),
    ("events_refresh_s", "nan"),
    ("max_servers", "4096.0"),
    ("metrics", "9100"),
    ("metrics", "host:0"),
    ("heartbeat_stale_s", "0"),
    ("consul_addr", "127.0.0.1:8500"),
    ("consul_addr", "consul://x"),
    ("consul_service", ""),
    ("consul_tag", "a b"),
    ("discover_dns", "nomad.example:0"),
    ("discover_dns", "_nomad._rpc.service.consul:4647"),
    ("discover_dns", "bad..name"),
    ("discover_dns", "-bad.example"),
    ("discover_dns_nameservers", "dns.example"),
    ("discover_dns_nameservers", "127.0.0.1:99999"),
    ("discover_dns_nameservers", "[::1]53"),
    ("discover_interval_s", "0"),
    ("curve_allowed_dir", "a\x00b"),
    ("curve_secret_key_file", "a\x00b"),
    ("state_file", "a\x00b"),
    ("log_level", "verbose"),
    ("log_format", "xml"),
]


def test_every_key_has_a_failing_case() -> None:
    assert {name for name, _ in BAD_TEXT} == {key.name for key in KEYS}


@pytest.mark.parametrize(("name", "text"), BAD_TEXT)
def test_bad_environment_value_names_key_and_variable(tmp_path: Path, name: str, text: str) -> None:
    error = _error(tmp_path, env={_env(name): text})
    assert error.key == name
    assert str(error).startswith(f"{name}: ")
    assert str(error).endswith(f"(from {_env(name)})")


@pytest.mark.parametrize(("name", "text"), BAD_TEXT[::5])
def test_bad_flag_value_names_key_and_flag(tmp_path: Path, name: str, text: str) -> None:
    error = _error(tmp_path, argv=[f"{_flag(name)}={text}"])
    assert str(error).startswith(f"{name}: ")
    assert str(error).endswith(f"(from {_flag(name)})")


def test_error_message_shape(tmp_path: Path) -> None:
    error = _error(tmp_path, env={"RPCPROXY_PING_TIMEOUT_S": "abc"})
    assert str(error) == (
        "ping_timeout_s: expected a positive number, got 'abc' (from RPCPROXY_PING_TIMEOUT_S)"
    )


BAD_TOML: list[tuple[str, str]] = [
    ("region", "5"),
    ("region", '"a/b"'),
    ("rpc_major_version", "true"),
    ("rpc_minor_version", "false"),
    ("max_message_bytes", "true"),
    ("max_servers", "0"),
    ("max_servers", "1.5"),
    ("rpc_major_version", "1.0"),
    ("rpc_major_version", '"1"'),
    ("ping_timeout_s", "true"),
    ("ping_timeout_s", '"1.5"'),
    ("ping_timeout_s", "nan"),
    ("ping_timeout_s", "inf"),
    ("min_reuse_s", "0"),
    ("api_mismatch_log_interval_s", "-0.1"),
    ("heartbeat_bind", '"tcp://127.0.0.1:9"'),
    ("heartbeat_bind", '["tcp://127.0.0.1:9", 5]'),
    ("heartbeat_connect", "[true]"),
    ("backup_servers", '"10.0.0.1"'),
    ("backup_servers", "[1]"),
    ("events", "false"),
    ("query", "[]"),
    ("ping_method", '["zmq"]'),
    ("nomad_tls_verify_server_hostname", '"false"'),
    ("nomad_tls_verify_server_hostname", "0"),
    ("log_level", "{ a = 1 }"),
]


@pytest.mark.parametrize(("name", "literal"), BAD_TOML)
def test_bad_toml_value_names_key_and_file(tmp_path: Path, name: str, literal: str) -> None:
    """TOML values are typed: bools are not ints, strings are not numbers or lists."""
    error = _error(tmp_path, toml=f"{name} = {literal}\n")
    assert error.key == name
    assert str(error).startswith(f"{name}: ")
    assert str(error).endswith(f"(from {tmp_path / 'rpcproxy.toml'})")


def test_toml_string_for_a_list_says_to_use_an_array(tmp_path: Path) -> None:
    error = _error(tmp_path, toml='heartbeat_bind = "tcp://127.0.0.1:9"\n')
    assert "TOML array" in str(error)


def test_bad_list_item_says_which_item(tmp_path: Path) -> None:
    error = _error(tmp_path, env={"RPCPROXY_BACKUP_SERVERS": "10.0.0.1,10.0.0.2:0"})
    assert "item 2" in str(error)


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"RPCPROXY_EVENTS": "tcp://127.0.0.1:4650"}, "events"),
        ({"RPCPROXY_HEARTBEAT_BIND": "tcp://127.0.0.1:4650"}, "heartbeat_bind"),
        ({"RPCPROXY_HEARTBEAT_BIND": "inproc://a,inproc://a"}, "heartbeat_bind"),
    ],
)
def test_two_sockets_cannot_bind_one_endpoint(
    tmp_path: Path, env: dict[str, str], key: str
) -> None:
    error = _error(tmp_path, env=env)
    assert error.key == key
    assert "also bound by" in str(error)


def test_configured_servers_count_against_max_servers(tmp_path: Path) -> None:
    env = {"RPCPROXY_PRIMARY_SERVERS": "a,b", "RPCPROXY_BACKUP_SERVERS": "b,c:4647,c"}
    # a, b and c: a server named on both lists, or twice, counts once.
    assert _load(tmp_path, env=env, argv=["--max-servers", "3"]).max_servers == 3
    error = _error(tmp_path, env=env, argv=["--max-servers", "2"])
    assert error.key == "max_servers"
    assert str(error) == (
        "max_servers: primary_servers and backup_servers name 3 servers, more than 2"
        " (from --max-servers)"
    )
    with pytest.raises(ConfigError, match="name 2 servers, more than 1"):
        Config(primary_servers=(parse_address("a"), parse_address("b")), max_servers=1)


def test_wildcard_ports_may_repeat(tmp_path: Path) -> None:
    env = {"RPCPROXY_QUERY": "tcp://127.0.0.1:*", "RPCPROXY_EVENTS": "tcp://127.0.0.1:*"}
    assert _load(tmp_path, env=env).events == "tcp://127.0.0.1:*"


# --- the file itself ---------------------------------------------------------


def test_unknown_toml_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    error = _error(tmp_path, toml="ping_timout_s = 1\n")
    assert error.key == "ping_timout_s"
    assert "unknown key" in str(error)
    assert "ping_timeout_s" in str(error)


@pytest.mark.parametrize(
    "toml", ["ping-timeout-s = 1\n", "[proxy]\nregion = 'x'\n", "config = 'x'\n"]
)
def test_other_unknown_toml_keys(tmp_path: Path, toml: str) -> None:
    assert "unknown key" in str(_error(tmp_path, toml=toml))


@pytest.mark.parametrize("toml", ["region = \n", "region = 'a'\nregion = 'b'\n", "[[x]\n"])
def test_invalid_toml(tmp_path: Path, toml: str) -> None:
    error = _error(tmp_path, toml=toml)
    assert error.key == "config"
    assert "rpcproxy.toml" in str(error)
    assert "not valid TOML" in str(error)


def test_toml_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"region = '\xe9'\n")
    with pytest.raises(ConfigError) as info:
        load_config(_parser().parse_args(["--config", str(path)]), {})
    assert info.value.key == "config"
    assert "latin1.toml" in str(info.value)


@pytest.mark.parametrize("name", ["missing.toml", "."])
def test_unreadable_toml(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(ConfigError) as info:
        load_config(_parser().parse_args(["--config", str(path)]), {})
    assert info.value.key == "config"
    assert str(info.value).startswith(f"config: cannot read {path}")
    assert "\n" not in str(info.value)


def test_full_file(tmp_path: Path) -> None:
    toml = "\n".join(f"{name} = {literal}" for name, (_, literal, _) in SAMPLES.items())
    config = _load(tmp_path, toml=toml + "\n")
    assert config == Config(**{name: value for name, (_, _, value) in SAMPLES.items()})


# --- Config built in code ----------------------------------------------------


def test_config_validates_on_construction() -> None:
    with pytest.raises(ConfigError, match=r"^ping_timeout_s: expected a positive number"):
        Config(ping_timeout_s=0)
    with pytest.raises(ConfigError, match=r"^rpc_major_version: "):
        Config(rpc_major_version=True)


def test_config_normalises_typed_values() -> None:
    config = Config(min_reuse_s=30, primary_servers=("10.0.0.1",), log_level="WARNING")  # type: ignore[arg-type]
    assert config.min_reuse_s == 30.0
    assert isinstance(config.min_reuse_s, float)
    assert config.primary_servers == (Address("10.0.0.1", 4647),)
    assert config.log_level == "warning"


def test_with_overrides() -> None:
    config = Config().with_overrides(query="inproc://q", heartbeat_bind=["inproc://hb"])
    assert config.query == "inproc://q"
    assert config.heartbeat_bind == ("inproc://hb",)
    with pytest.raises(ConfigError, match=r"^no_such_key: unknown key"):
        Config().with_overrides(no_such_key=1)
    with pytest.raises(ConfigError, match=r"^events: "):
        Config().with_overrides(events="bogus")


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().region = "x"  # type: ignore[misc]


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=1e-9, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_positive_floats_round_trip_through_text(value: float) -> None:
    args = _parser().parse_args(["--ping-timeout-s", repr(value)])
    config = load_config(args, {"RPCPROXY_MIN_REUSE_S": str(value)})
    assert config.ping_timeout_s == value
    assert config.min_reuse_s == value
    assert math.isfinite(config.ping_timeout_s)


# --- docs --------------------------------------------------------------------


def test_markdown_table_lists_every_key() -> None:
    table = config_reference_markdown()
    lines = table.strip().splitlines()
    assert lines[0] == "| key | type | default | env var | description |"
    assert len(lines) == 2 + len(KEYS)
    for key, line in zip(KEYS, lines[2:], strict=True):
        assert line.startswith(f"| `{key.name}` |")
        assert f"`{key.env}`" in line
        assert line.count(" | ") == 4
    assert '`["tcp://127.0.0.1:4651"]`' in table
    assert "<" not in table.replace("&lt;", "")


def test_default_of_every_key_parses_as_toml(tmp_path: Path) -> None:
    """The documented defaults are TOML literals that load back to the default."""
    toml = "\n".join(f"{key.name} = {key.default_text}" for key in KEYS) + "\n"
    assert _load(tmp_path, toml=toml) == Config()
