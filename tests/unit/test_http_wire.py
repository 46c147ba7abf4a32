"""http_wire: request heads parsed, responses rendered, no sockets."""

from __future__ import annotations

import pytest

from rpcproxy.bus.service.http_wire import (
    HttpError,
    Request,
    Response,
    head_end,
    parse_head,
    render,
    route_of,
)


def test_head_end_finds_the_blank_line_however_the_bytes_arrive() -> None:
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nbody"
    buffer = bytearray()
    scanned, end = 0, -1
    for byte in head:  # one byte at a time, as slowloris sends it
        buffer.append(byte)
        end = head_end(buffer, scanned)
        scanned = len(buffer)
        if end >= 0:
            break
    assert end == len(head) - len(b"body")
    assert head_end(b"GET / HTTP/1.0\n\n") == 16  # bare LF line ends
    assert head_end(b"GET / HTTP/1.0\r\nHost: x\r\n") == -1


def test_a_request_head_is_parsed() -> None:
    request = parse_head(b"GET /metrics?a=1 HTTP/1.1\r\nAccept: a\r\nACCEPT: b\r\nHost:x\r\n\r\n")
    assert request == Request("GET", "/metrics", "a=1", {"accept": "a, b", "host": "x"})
    assert parse_head(b"HEAD http://h:1/metrics HTTP/1.0\r\n\r\n").path == "/metrics"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /metrics\r\n\r\n", 400),
        (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\n folded: x\r\n\r\n", 400),
        (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
        (b"DELETE /metrics HTTP/1.1\r\n\r\n", 405),
    ],
)
def test_a_bad_head_is_an_error_response(head: bytes, status: int) -> None:
    with pytest.raises(HttpError) as caught:
        parse_head(head)
    assert caught.value.response.status == status


def test_a_path_without_a_route_is_404() -> None:
    with pytest.raises(HttpError) as caught:
        route_of({"/metrics": lambda r: Response(200)}, Request("GET", "/"))
    assert caught.value.response.status == 404


def test_render_frames_the_body_and_closes() -> None:
    response = Response(503, b'{"status": "stopping"}', "application/json", {"Retry-After": "1"})
    full = render(response)
    assert full.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nContent-Length: 22\r\nConnection: close\r\nRetry-After: 1\r\n\r\n" in full
    assert full.endswith(b'\r\n\r\n{"status": "stopping"}')
    assert render(response, head_only=True) == full[: -len(response.body)]
