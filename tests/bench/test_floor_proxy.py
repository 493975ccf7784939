"""The floor proxies' framing (pure); the proxies themselves run as real processes in
the benchmark's smoke test."""

from __future__ import annotations

import pytest

from bench.floor_proxy import head_end, response_size

RESPONSE = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 5\r\n\r\nhello"


def test_head_end_is_after_the_blank_line() -> None:
    assert head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n") == 27
    assert head_end(b"GET / HTTP/1.1\r\nHost: a\r\n") == -1


def test_response_size_counts_head_and_body_whatever_has_arrived() -> None:
    assert response_size(RESPONSE) == len(RESPONSE)
    assert response_size(RESPONSE[:-3]) == len(RESPONSE)
    assert response_size(bytearray(RESPONSE + b"HTTP/1.1 200 OK\r\n")) == len(RESPONSE)
    assert response_size(RESPONSE[:20]) == -1
    assert response_size(RESPONSE.replace(b"Content-Length", b"CONTENT-length")) == len(RESPONSE)


def test_a_response_it_cannot_frame_is_an_error() -> None:
    with pytest.raises(ValueError, match="Content-Length"):
        response_size(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
