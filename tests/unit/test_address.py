"""Address parsing and the canonical form (docs/protocol.md "Words")."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpcproxy.proxy import DEFAULT_PORT, Address, InvalidAddressError, parse_address


@pytest.mark.parametrize(
    ("text", "host", "port", "canonical"),
    [
        ("10.0.0.1:4647", "10.0.0.1", 4647, "10.0.0.1:4647"),
        ("10.0.0.1", "10.0.0.1", 4647, "10.0.0.1:4647"),
        ("10.0.0.1:1", "10.0.0.1", 1, "10.0.0.1:1"),
        ("10.0.0.1:65535", "10.0.0.1", 65535, "10.0.0.1:65535"),
        ("nomad-1.service.consul:4648", "nomad-1.service.consul", 4648, None),
        ("nomad-1.service.consul", "nomad-1.service.consul", 4647, None),
        ("localhost", "localhost", 4647, "localhost:4647"),
        ("Nomad.EXAMPLE.com:80", "nomad.example.com", 80, "nomad.example.com:80"),
        ("server.example.com.", "server.example.com", 4647, "server.example.com:4647"),
        ("10.0.0.1.", "10.0.0.1", 4647, "10.0.0.1:4647"),
        ("[::1]:4647", "::1", 4647, "[::1]:4647"),
        ("[::1]", "::1", 4647, "[::1]:4647"),
        ("[0:0::1]:9000", "::1", 9000, "[::1]:9000"),
        ("[2001:DB8:0:0:0:0:0:1]", "2001:db8::1", 4647, "[2001:db8::1]:4647"),
        ("[2001:db8::1]:1", "2001:db8::1", 1, "[2001:db8::1]:1"),
        ("[::ffff:10.0.0.1]:4647", "::ffff:a00:1", 4647, "[::ffff:a00:1]:4647"),
        ("10.0.0.1:04647", "10.0.0.1", 4647, "10.0.0.1:4647"),
    ],
)
def test_accepted_forms_and_canonical(
    text: str, host: str, port: int, canonical: str | None
) -> None:
    parsed = parse_address(text)
    assert parsed == Address(host, port)
    expected = canonical if canonical is not None else f"{host}:{port}"
    assert parsed.canonical == expected
    assert str(parsed) == expected


def test_default_port_is_nomads_rpc_port() -> None:
    assert DEFAULT_PORT == 4647
    assert parse_address("nomad").port == 4647
    assert parse_address("[fe80::1]").port == 4647


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":4647",
        "10.0.0.1:",
        "10.0.0.1:0",
        "10.0.0.1:65536",
        "10.0.0.1:99999",
        "10.0.0.1:123456",
        "10.0.0.1:http",
        "10.0.0.1:-1",
        "10.0.0.1:+80",
        "10.0.0.1: 80",
        "10.0.0.1:80 ",
        "10.0.0.1:4647:4647",
        "10.0.0.1:\uff18\uff10",  # full-width digits
        "::1",
        "::1:4647",
        "2001:db8::1",
        "fe80::1:4647",
        "300.1.1.1",
        "300.1.1.1:4647",
        "1.2.3",
        "1.2.3.4.5",
        "256.0.0.0",
        "123",
        "-nomad.example.com",
        "nomad-.example.com",
        "nomad..example.com",
        ".nomad",
        ".",
        "nomad example",
        "nomad/1",
        "nomad@host",
        "no*mad",
        "a" * 64,
        ".".join(["a" * 60] * 5),
        "[::1",
        "[::1:4647",
        "[",
        "[]",
        "[]:4647",
        "[::1]:",
        "[::1]4647",
        "[::1]:0",
        "[::1]:65536",
        "[::1]:abc",
        "[::1]]",
        "[::1]:4647x",
        "[::1]:4647]",
        "[10.0.0.1]:4647",
        "[nomad]:4647",
        "[gggg::1]",
        "10.0.0.1:4647 trailing",
        "x" * 301,
    ],
)
def test_rejections(text: str) -> None:
    with pytest.raises(InvalidAddressError):
        parse_address(text)


def test_invalid_address_error_is_a_value_error_with_a_reason() -> None:
    with pytest.raises(ValueError, match="65536"):
        parse_address("10.0.0.1:65536")


def test_non_string_rejected() -> None:
    with pytest.raises(InvalidAddressError):
        parse_address(4647)  # type: ignore[arg-type]
    with pytest.raises(InvalidAddressError):
        parse_address(b"10.0.0.1")  # type: ignore[arg-type]


def test_longest_valid_name_accepted() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters
    assert len(name) == 253
    assert parse_address(name).host == name


# Regressions found while writing these tests (fixed in proxy/address.py).


def test_regression_hostname_with_trailing_newline_rejected() -> None:
    # The label regex was anchored with "$", which also matches before a final "\n".
    for text in ("nomad\n", "nomad\n:4647", "nomad\n.example.com"):
        with pytest.raises(InvalidAddressError):
            parse_address(text)


def test_regression_bad_ipv4_with_trailing_dot_rejected() -> None:
    # "300.1.1.1." was accepted as a DNS name whose canonical form did not re-parse.
    with pytest.raises(InvalidAddressError):
        parse_address("300.1.1.1.")
    assert parse_address("10.0.0.1.").canonical == "10.0.0.1:4647"


def test_regression_non_ascii_host_rejected() -> None:
    # "\u212a" (KELVIN SIGN) lower-cases to an ASCII "k", so it slipped past the check.
    for text in ("\u212aelvin", "nömad", "\uff4e\uff4f\uff4d\uff41\uff44"):
        with pytest.raises(InvalidAddressError):
            parse_address(text)


# Known defects of the reference (docs/protocol.md, last section).


def test_defect_raw_string_identity_default_port_is_same_server() -> None:
    assert parse_address("10.0.0.1") == parse_address("10.0.0.1:4647")
    assert hash(parse_address("10.0.0.1")) == hash(parse_address("10.0.0.1:4647"))
    assert len({parse_address("10.0.0.1"), parse_address("10.0.0.1:4647")}) == 1
    assert parse_address("10.0.0.1") != parse_address("10.0.0.1:4648")


def test_defect_raw_string_identity_ipv6_spellings_are_same_server() -> None:
    spellings = ["[::1]", "[0:0::1]:4647", "[::1]:4647", "[0000:0000:0000:0000:0:0:0:1]"]
    assert {parse_address(s) for s in spellings} == {Address("::1", 4647)}


def test_defect_raw_string_identity_host_case_is_same_server() -> None:
    assert parse_address("NOMAD.example.COM") == parse_address("nomad.example.com:4647")
    assert parse_address("[2001:DB8::1]") == parse_address("[2001:db8::1]:4647")


def test_defect_dns_lookup_parse_never_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def forbidden(name: str):  # type: ignore[no-untyped-def]
        def fail(*args: object, **kwargs: object) -> None:
            calls.append(name)
            raise AssertionError(f"socket.{name} called while parsing an address")

        return fail

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_connection"):
        monkeypatch.setattr(socket, name, forbidden(name))
    parsed = parse_address("nomad.invalid")
    assert parsed == Address("nomad.invalid", 4647)
    assert parse_address("does-not-exist.invalid:4648").canonical == "does-not-exist.invalid:4648"
    assert calls == []


# Properties.

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_middle = st.text(alphabet=_ALNUM + "-_", max_size=6)
_label = st.builds(
    lambda first, middle, last: first + middle + last if middle else first,
    st.sampled_from(_ALNUM),
    _middle,
    st.sampled_from(_ALNUM),
)
# The last label starts with a letter: all-numeric dotted text is read as IPv4.
_top_label = st.builds(str.__add__, st.sampled_from(_ALNUM[:26]), st.text(_ALNUM, max_size=6))
_hostname = st.builds(
    lambda labels, top: ".".join([*labels, top]), st.lists(_label, max_size=3), _top_label
)
_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(lambda ip: f"[{ip.exploded}]")
_port = st.integers(min_value=1, max_value=65535)


@st.composite
def _valid_address_text(draw: st.DrawFn) -> str:
    host = draw(st.one_of(_hostname, _ipv4, _ipv6))
    if draw(st.booleans()):
        host = "".join(c.upper() if draw(st.booleans()) else c for c in host)
    if draw(st.booleans()):
        return host
    return f"{host}:{draw(_port)}"


@settings(max_examples=200, deadline=None)
@given(_valid_address_text())
def test_canonical_is_a_fixed_point_for_valid_addresses(text: str) -> None:
    parsed = parse_address(text)
    again = parse_address(parsed.canonical)
    assert again == parsed
    assert again.canonical == parsed.canonical
    if ":" not in text.removeprefix("[").split("]")[-1]:
        assert parsed.port == DEFAULT_PORT


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(max_size=40),
        st.text(alphabet="0123456789abcdefABCDEF:.[]-_%xyz \n", max_size=30),
    )
)
def test_any_text_either_rejected_or_canonical_fixed_point(text: str) -> None:
    try:
        parsed = parse_address(text)
    except InvalidAddressError:
        return
    assert parse_address(parsed.canonical) == parsed
    assert parse_address(parsed.canonical).canonical == parsed.canonical
    assert parsed.canonical.isprintable()
    assert 1 <= parsed.port <= 65535


def test_regression_ipv6_zone_id_restricted() -> None:
    # ipaddress alone accepts any zone text, so "[fe80::1%\n]" used to parse.
    assert parse_address("[fe80::1%eth0]:80").canonical == "[fe80::1%eth0]:80"
    for text in ("[fe80::1%\n]", "[fe80::1% x]:80", "[fe80::1%]", "[fe80::1%a%b]"):
        with pytest.raises(InvalidAddressError):
            parse_address(text)
