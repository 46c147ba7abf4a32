"""Nomad's msgpack-rpc framing against captured bytes (bus/probes/msgpackrpc.py).

The captured bytes are what Nomad's Go client sends and its server answers
for ``Status.Ping`` (docs/protocol.md section 4); the independent ``msgpack``
package makes the other streams, so the splitter is checked against a real
encoder and not against itself.
"""

from __future__ import annotations

from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpcproxy.bus.probes.msgpackrpc import (
    MAX_DEPTH,
    RPC_NOMAD,
    FramingError,
    ValueSplitter,
    decode_request_header,
    decode_response_header,
    encode_request,
    encode_response,
)
from rpcproxy.bus.probes.nomad import ReplyCheck

PING_REQUEST_SEQ_1 = b"\x01\x82\xa3Seq\x01\xadServiceMethod\xabStatus.Ping\x80"
"""``01 82 a3 'Seq' 01 ad 'ServiceMethod' ab 'Status.Ping' 80``."""

PING_REPLY_SEQ_1 = b"\x83\xa5Error\xa0\xa3Seq\x01\xadServiceMethod\xabStatus.Ping\x80"
"""``83 a5 'Error' a0 a3 'Seq' 01 ad 'ServiceMethod' ab 'Status.Ping' 80``."""


def split_all(data: bytes, chunk: int, max_bytes: int = 1 << 16) -> list[bytes]:
    splitter = ValueSplitter(max_bytes)
    values: list[bytes] = []
    for start in range(0, len(data), chunk):
        values += splitter.feed(data[start : start + chunk])
    assert splitter.buffered == 0, "bytes left over after the last value"
    return values


# -- captured bytes ---------------------------------------------------------------


def test_the_request_is_the_captured_bytes() -> None:
    assert RPC_NOMAD + encode_request(1) == PING_REQUEST_SEQ_1


def test_the_reply_is_the_captured_bytes() -> None:
    assert encode_response(1, "Status.Ping") == PING_REPLY_SEQ_1


def test_strings_are_str_never_bin() -> None:
    """Nomad's decoder rejects bin where it expects a string: raw=False
    decodes str as str and bin as bytes, so bytes here would be bin."""
    header, body = split_all(encode_request(7), 100)
    assert msgpack.unpackb(header, raw=False) == {"Seq": 7, "ServiceMethod": "Status.Ping"}
    assert msgpack.unpackb(body, raw=False) == {}
    reply = msgpack.unpackb(split_all(encode_response(7, "Status.Ping", "e"), 100)[0], raw=False)
    assert reply == {"Error": "e", "Seq": 7, "ServiceMethod": "Status.Ping"}


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 13, 1000])
def test_captured_request_splits_into_header_and_body(chunk: int) -> None:
    header, body = split_all(PING_REQUEST_SEQ_1[1:], chunk)
    assert decode_request_header(header).service_method == "Status.Ping"
    assert decode_request_header(header).seq == 1
    assert body == b"\x80"


@pytest.mark.parametrize("chunk", [1, 2, 7, 1000])
def test_captured_reply_splits_and_decodes(chunk: int) -> None:
    header, body = split_all(PING_REPLY_SEQ_1, chunk)
    decoded = decode_response_header(header)
    assert (decoded.seq, decoded.error, decoded.service_method) == (1, "", "Status.Ping")
    assert body == b"\x80"


# -- the reply check --------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 4, len(PING_REPLY_SEQ_1)])
def test_reply_check_passes_the_captured_reply_in_pieces(chunk: int) -> None:
    check = ReplyCheck(1)
    verdicts = [
        check.feed(PING_REPLY_SEQ_1[i : i + chunk]) for i in range(0, len(PING_REPLY_SEQ_1), chunk)
    ]
    assert verdicts[-1] is True
    assert all(v is None for v in verdicts[:-1]), "decided before the body was whole"


def test_reply_check_waits_for_the_body() -> None:
    check = ReplyCheck(1)
    assert check.feed(PING_REPLY_SEQ_1[:-1]) is None
    assert check.feed(PING_REPLY_SEQ_1[-1:]) is True


def test_reply_with_the_wrong_seq_fails() -> None:
    check = ReplyCheck(2)
    assert check.feed(PING_REPLY_SEQ_1) is False
    assert "Seq 1" in check.error


def test_reply_with_an_error_fails() -> None:
    check = ReplyCheck(1)
    reply = encode_response(1, "Status.Ping", "rpc: can't find service Status.Ping")
    assert check.feed(reply) is False
    assert "can't find service" in check.error


def test_reply_header_keys_in_any_order_and_extra_keys() -> None:
    header = msgpack.packb(
        {"Seq": 9, "Extra": [1, {"a": None}], "ServiceMethod": "Status.Ping", "Error": ""}
    )
    assert ReplyCheck(9).feed(header + b"\xc0") is True


def test_reply_seq_as_uint64_is_accepted() -> None:
    """Go's encoder may write Seq as a wider int than the value needs."""
    header = b"\x83\xa5Error\xa0\xa3Seq\xcf" + (5).to_bytes(8, "big")
    header += b"\xadServiceMethod\xabStatus.Ping"
    assert ReplyCheck(5).feed(header + b"\x80") is True


@pytest.mark.parametrize(
    "header",
    [
        msgpack.packb({"Seq": 1, "Error": b"", "ServiceMethod": "Status.Ping"}, use_bin_type=True),
        msgpack.packb({"Seq": "1", "Error": "", "ServiceMethod": "Status.Ping"}),
        msgpack.packb({"Error": "", "ServiceMethod": "Status.Ping"}),
        msgpack.packb([1, "", "Status.Ping"]),
        msgpack.packb("Status.Ping"),
        msgpack.packb(None),
    ],
    ids=["error-as-bin", "seq-as-str", "no-seq", "array", "str", "nil"],
)
def test_reply_header_of_the_wrong_shape_fails(header: bytes) -> None:
    assert ReplyCheck(1).feed(header + b"\x80") is False


@pytest.mark.parametrize(
    "garbage",
    [b"\xc1", b"HTTP/1.1 400 Bad Request\r\n\r\n", b"\xff" * 3, b"SSH-2.0-OpenSSH\r\n"],
    ids=["never-used-byte", "http", "negative-fixints", "ssh"],
)
def test_garbage_reply_fails_at_once(garbage: bytes) -> None:
    assert ReplyCheck(1).feed(garbage) is False


def test_huge_declared_value_fails_before_it_is_buffered() -> None:
    """A str32 claiming 4 GiB is refused on its 5 header bytes."""
    check = ReplyCheck(1, max_value_bytes=1024)
    assert check.feed(b"\xdb\xff\xff\xff\xff") is False


def test_huge_reply_that_streams_fails_at_the_bound() -> None:
    check = ReplyCheck(1, max_value_bytes=1024)
    # A map 32 of many small items: every item is legal, the whole is too big.
    assert check.feed(b"\xdf\x00\x00\x01\x00") is None
    verdict = None
    fed = 5
    while verdict is None:
        verdict = check.feed(b"\x01" * 100)
        fed += 100
        assert fed < 4096, "the bound did not hold"
    assert verdict is False


def test_huge_body_fails_too() -> None:
    check = ReplyCheck(1, max_value_bytes=1024)
    header = PING_REPLY_SEQ_1[:-1]
    assert check.feed(header) is None
    assert check.feed(b"\xc5\xff\xff") is False  # bin 16 of 65535 bytes


# -- the splitter -----------------------------------------------------------------


def test_container_count_past_the_bound_fails_at_once() -> None:
    with pytest.raises(FramingError):
        ValueSplitter(100).feed(b"\xdd\x00\x01\x00\x00")  # array of 65536 items


def test_nesting_past_the_limit_fails() -> None:
    splitter = ValueSplitter(1 << 16)
    with pytest.raises(FramingError, match="deeper"):
        splitter.feed(b"\x91" * (MAX_DEPTH + 1))


def test_nesting_at_the_limit_is_fine() -> None:
    data = b"\x91" * MAX_DEPTH + b"\x00"
    assert ValueSplitter(1 << 16).feed(data) == [data]


def test_a_failed_splitter_stays_failed() -> None:
    splitter = ValueSplitter(100)
    with pytest.raises(FramingError):
        splitter.feed(b"\xc1")
    with pytest.raises(FramingError):
        splitter.feed(b"\x80")


def test_trickled_bytes_are_walked_once() -> None:
    """A byte at a time resumes the walk where it stopped (no rescan per byte)."""
    value = msgpack.packb({"k": ["x" * 10] * 50})
    splitter = ValueSplitter(1 << 16)
    out: list[bytes] = []
    for i in range(len(value)):
        out += splitter.feed(value[i : i + 1])
    assert out == [value]


def test_every_type_byte_is_framed() -> None:
    values: list[Any] = [
        None,
        True,
        False,
        0,
        127,
        -1,
        -32,
        -33,
        255,
        65535,
        2**32 - 1,
        2**64 - 1,
        -(2**63),
        1.5,
        "",
        "x" * 31,
        "x" * 32,
        "x" * 256,
        "x" * 65536,
        b"",
        b"y" * 300,
        b"y" * 70000,
        [],
        [1] * 16,
        list(range(70000)),
        {},
        {str(i): i for i in range(16)},
        {str(i): i for i in range(70000)},
        msgpack.ExtType(1, b"a"),
        msgpack.ExtType(1, b"ab"),
        msgpack.ExtType(1, b"abcd"),
        msgpack.ExtType(1, b"a" * 8),
        msgpack.ExtType(1, b"a" * 16),
        msgpack.ExtType(1, b"a" * 3),
        msgpack.ExtType(1, b"a" * 300),
        msgpack.ExtType(1, b"a" * 70000),
    ]
    packed = [msgpack.packb(v, use_bin_type=True) for v in values]
    packed.append(b"\xca\x3f\xc0\x00\x00")  # float 32
    assert split_all(b"".join(packed), 4096, max_bytes=1 << 21) == packed


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=30,
)


@given(st.lists(json_like, min_size=1, max_size=5), st.integers(min_value=1, max_value=64))
def test_any_stream_splits_into_its_values(values: list[Any], chunk: int) -> None:
    packed = [msgpack.packb(v, use_bin_type=True) for v in values]
    assert split_all(b"".join(packed), chunk) == packed


@given(st.binary(max_size=200))
def test_any_bytes_end_in_values_or_an_error_within_bounds(data: bytes) -> None:
    splitter = ValueSplitter(64)
    try:
        for value in splitter.feed(data):
            assert len(value) <= 64
    except FramingError:
        return
    assert splitter.buffered <= 64
