"""Strictness: every ambiguous or malformed request is refused with a 4xx/5xx hint, the
connection is left to close, and nothing after the bad bytes is parsed. Raw bytes only.

Each case notes whether llhttp refuses it on its own or our checks do (see
sidecar/protocol/heads.py); the test does not care which.
"""

from __future__ import annotations

import pytest

from sidecar.protocol import (
    DONE,
    Data,
    EndOfMessage,
    Limits,
    ProtocolError,
    RemoteProtocolError,
    Request,
    ServerConnection,
)
from tests.protocol.support import HOST, coalesce, request_error, serve

POST = b"POST /upload HTTP/1.1\r\n" + HOST
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"

# (id, raw request, status hint)
BAD_REQUESTS: list[tuple[str, bytes, int]] = [
    # --- Content-Length and Transfer-Encoding together (request smuggling) ------------
    ("cl-then-te", POST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("te-then-cl", POST + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
    ("cl-zero-te", POST + b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    # --- Content-Length: repeated, lists, not a number -------------------------------
    ("cl-repeated-equal", POST + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("cl-repeated-differ", POST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("cl-repeated-case", POST + b"Content-Length: 3\r\ncontent-length: 3\r\n\r\nabc", 400),
    ("cl-list", POST + b"Content-Length: 3, 3\r\n\r\nabc", 400),
    ("cl-list-nospace", POST + b"Content-Length: 3,3\r\n\r\nabc", 400),
    ("cl-negative", POST + b"Content-Length: -3\r\n\r\n", 400),
    ("cl-plus", POST + b"Content-Length: +3\r\n\r\nabc", 400),
    ("cl-hex", POST + b"Content-Length: 0x3\r\n\r\nabc", 400),
    ("cl-float", POST + b"Content-Length: 3.0\r\n\r\nabc", 400),
    ("cl-letters", POST + b"Content-Length: abc\r\n\r\n", 400),
    ("cl-inner-space", POST + b"Content-Length: 1 2\r\n\r\n", 400),
    ("cl-trailing-space", POST + b"Content-Length: 3 \r\n\r\nabc", 400),
    ("cl-trailing-tab", POST + b"Content-Length: 3\t\r\n\r\nabc", 400),
    ("cl-empty", POST + b"Content-Length: \r\n\r\n", 400),
    ("cl-overflow", POST + b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
    ("cl-19-digits", POST + b"Content-Length: 1000000000000000000\r\n\r\n", 400),
    ("cl-vtab", POST + b"Content-Length: \x0b3\r\n\r\nabc", 400),
    # --- Transfer-Encoding other than exactly "chunked" ------------------------------
    ("te-chunked-identity", POST + b"Transfer-Encoding: chunked, identity\r\n\r\n", 400),
    ("te-identity", POST + b"Transfer-Encoding: identity\r\n\r\n", 400),
    ("te-xchunked", POST + b"Transfer-Encoding: xchunked\r\n\r\n", 400),
    ("te-chunkedx", POST + b"Transfer-Encoding: chunkedx\r\n\r\n", 400),
    ("te-trailing-space", POST + b"Transfer-Encoding: chunked \r\n\r\n0\r\n\r\n", 400),
    ("te-trailing-tab", POST + b"Transfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n", 400),
    ("te-trailing-comma", POST + b"Transfer-Encoding: chunked,\r\n\r\n0\r\n\r\n", 400),
    ("te-quoted", POST + b'Transfer-Encoding: "chunked"\r\n\r\n0\r\n\r\n', 400),
    ("te-params", POST + b"Transfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n", 400),
    ("te-vtab", POST + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", 400),
    ("te-nul", POST + b"Transfer-Encoding: chunked\x00\r\n\r\n0\r\n\r\n", 400),
    (
        "te-repeated",
        POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "te-repeated-other",
        POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
        400,
    ),
    (
        "te-split-codings",
        POST + b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("te-space-before-colon", POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-tab-before-colon", POST + b"Transfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-obs-fold", POST + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-leading-fold", POST + b" Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-bare-lf-name", POST + b"X: y\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-in-http10", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-gzip-chunked", POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    # --- chunk sizes and chunk framing -----------------------------------------------
    ("chunk-not-hex", CHUNKED + b"zz\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-0x", CHUNKED + b"0x3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-negative", CHUNKED + b"-3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-plus", CHUNKED + b"+3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-empty-size", CHUNKED + b"\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-too-long", CHUNKED + b"00000000000000003\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-overflow", CHUNKED + b"fffffffffffffffff\r\n", 400),
    ("chunk-leading-space", CHUNKED + b" 3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-trailing-space", CHUNKED + b"3 \r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-trailing-tab", CHUNKED + b"3\t\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-bare-lf", CHUNKED + b"3\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-bare-cr", CHUNKED + b"3\rabc\r\n0\r\n\r\n", 400),
    ("chunk-data-no-crlf", CHUNKED + b"3\r\nabcX\r\n0\r\n\r\n", 400),
    ("chunk-data-too-long", CHUNKED + b"3\r\nabcd\r\n0\r\n\r\n", 400),
    ("chunk-data-bare-lf", CHUNKED + b"3\r\nabc\n0\r\n\r\n", 400),
    ("chunk-ext-control", CHUNKED + b"3;a=\x01\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-ext-nul", CHUNKED + b"3;\x00\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-ext-no-name", CHUNKED + b"3;\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-ext-space-in-name", CHUNKED + b"3;a b\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-ext-open-quote", CHUNKED + b'3;a="b\r\nabc\r\n0\r\n\r\n', 400),
    ("chunk-ext-empty-value", CHUNKED + b"3;a=\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-line-too-long", CHUNKED + b"3;" + b"a" * 2000 + b"\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-last-bare-lf", CHUNKED + b"0\n\r\n", 400),
    ("chunk-end-bare-lf", CHUNKED + b"0\r\n\n", 400),
    ("trailer-bare-lf", CHUNKED + b"0\r\nX: y\n\r\n", 400),
    ("trailer-obs-fold", CHUNKED + b"0\r\nX: y\r\n z\r\n\r\n", 400),
    ("trailer-bad-name", CHUNKED + b"0\r\nX y: z\r\n\r\n", 400),
    ("trailer-content-length", CHUNKED + b"0\r\nContent-Length: 5\r\n\r\n", 400),
    ("trailer-transfer-encoding", CHUNKED + b"0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("trailer-host", CHUNKED + b"0\r\nHost: evil\r\n\r\n", 400),
    # --- header syntax -----------------------------------------------------------------
    ("obs-fold", b"GET / HTTP/1.1\r\n" + HOST + b"X-A: 1\r\n 2\r\n\r\n", 400),
    ("obs-fold-tab", b"GET / HTTP/1.1\r\n" + HOST + b"X-A: 1\r\n\t2\r\n\r\n", 400),
    ("first-line-folded", b"GET / HTTP/1.1\r\n Host: svc\r\n\r\n", 400),
    ("name-control", b"GET / HTTP/1.1\r\n" + HOST + b"X\x01: a\r\n\r\n", 400),
    ("name-nul", b"GET / HTTP/1.1\r\n" + HOST + b"X\x00: a\r\n\r\n", 400),
    ("name-paren", b"GET / HTTP/1.1\r\n" + HOST + b"X(y): a\r\n\r\n", 400),
    ("name-slash", b"GET / HTTP/1.1\r\n" + HOST + b"X/y: a\r\n\r\n", 400),
    ("name-space", b"GET / HTTP/1.1\r\n" + HOST + b"X Y: a\r\n\r\n", 400),
    ("name-high-byte", b"GET / HTTP/1.1\r\n" + HOST + b"X\x80: a\r\n\r\n", 400),
    ("name-empty", b"GET / HTTP/1.1\r\n" + HOST + b": a\r\n\r\n", 400),
    ("name-no-colon", b"GET / HTTP/1.1\r\n" + HOST + b"X-A\r\n\r\n", 400),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost : svc\r\n\r\n", 400),
    ("value-nul", b"GET / HTTP/1.1\r\n" + HOST + b"X: a\x00b\r\n\r\n", 400),
    ("value-control", b"GET / HTTP/1.1\r\n" + HOST + b"X: a\x01b\r\n\r\n", 400),
    ("value-escape", b"GET / HTTP/1.1\r\n" + HOST + b"X: a\x1bb\r\n\r\n", 400),
    ("value-del", b"GET / HTTP/1.1\r\n" + HOST + b"X: a\x7fb\r\n\r\n", 400),
    ("value-bare-cr", b"GET / HTTP/1.1\r\n" + HOST + b"X: a\rb\r\n\r\n", 400),
    ("value-vtab", b"GET / HTTP/1.1\r\n" + HOST + b"X: a\x0bb\r\n\r\n", 400),
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: svc\n\n", 400),
    ("bare-lf-header", b"GET / HTTP/1.1\r\nHost: svc\nX: y\r\n\r\n", 400),
    ("bare-lf-end", b"GET / HTTP/1.1\r\nHost: svc\n\r\n", 400),
    ("bare-lf-request-line", b"GET / HTTP/1.1\nHost: svc\r\n\r\n", 400),
    ("host-missing", b"GET / HTTP/1.1\r\nX: y\r\n\r\n", 400),
    ("host-twice", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("host-twice-http10", b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    # --- request line --------------------------------------------------------------------
    ("method-invalid-char", b"G@T / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("method-control", b"G\x01T / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("method-leading-space", b" GET / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("method-unknown", b"BREW / HTTP/1.1\r\n" + HOST + b"\r\n", 501),
    ("method-lowercase", b"get / HTTP/1.1\r\n" + HOST + b"\r\n", 501),
    ("target-space", b"GET /a b HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("target-tab", b"GET /a\tb HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("target-control", b"GET /a\x01b HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("target-nul", b"GET /a\x00b HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("target-del", b"GET /a\x7fb HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("target-high-byte", b"GET /a\xffb HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("double-space", b"GET  / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    ("space-after-version", b"GET / HTTP/1.1 \r\n" + HOST + b"\r\n", 400),
    ("no-version", b"GET /\r\n\r\n", 400),
    ("version-lowercase", b"GET / http/1.1\r\n" + HOST + b"\r\n", 400),
    ("version-three-digits", b"GET / HTTP/1.10\r\n" + HOST + b"\r\n", 400),
    ("http-0.9", b"GET / HTTP/0.9\r\n" + HOST + b"\r\n", 505),
    ("http-1.2", b"GET / HTTP/1.2\r\n" + HOST + b"\r\n", 505),
    ("http-2.0", b"GET / HTTP/2.0\r\n" + HOST + b"\r\n", 505),
    ("http-3.0", b"GET / HTTP/3.0\r\n" + HOST + b"\r\n", 505),
    ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    # --- CONNECT -----------------------------------------------------------------------
    (
        "connect-with-body",
        b"CONNECT svc:443 HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\n\r\n",
        400,
    ),
    (
        "connect-chunked",
        b"CONNECT svc:443 HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n",
        400,
    ),
]


@pytest.mark.parametrize(
    ("raw", "status"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_request_is_refused(raw: bytes, status: int) -> None:
    assert request_error(raw).status_hint == status


@pytest.mark.parametrize(
    ("raw", "status"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_request_is_refused_byte_by_byte(raw: bytes, status: int) -> None:
    """Fed one byte at a time, the same error comes (no earlier acceptance, no hang).
    The end of stream follows, so a case whose bytes never end a head still ends."""
    pieces = [raw[i : i + 1] for i in range(len(raw))] + [b""]
    conn = ServerConnection()
    error: ProtocolError | None = None
    for piece in pieces:
        try:
            conn.receive_data(piece)
        except ProtocolError as exc:
            error = exc
            break
    assert error is not None
    assert error.status_hint == status


def test_bad_request_events_before_the_error_are_not_delivered() -> None:
    """A request whose body turns out malformed in the same read raises: its head is
    not delivered, so a proxy never starts forwarding it."""
    conn = ServerConnection()
    with pytest.raises(RemoteProtocolError, match="chunk"):
        conn.receive_data(CHUNKED + b"3\r\nabc\r\nzz\r\n")


# --- the limits ------------------------------------------------------------------------

SMALL = Limits(max_request_line=64, max_header_bytes=256, max_header_count=4, max_chunk_line=16)


def limited_error(data: bytes) -> int:
    conn = ServerConnection(SMALL)
    with pytest.raises(RemoteProtocolError) as caught:
        conn.receive_data(data)
    return caught.value.status_hint


def test_request_line_limit_414_complete_and_partial() -> None:
    line = b"GET /" + b"a" * 60 + b" HTTP/1.1\r\n"
    assert limited_error(line + HOST + b"\r\n") == 414
    assert limited_error(line[:-2]) == 414  # no CRLF yet: known too long already


def test_request_line_at_the_limit_is_fine() -> None:
    target = b"/" + b"a" * (64 - len(b"GET  HTTP/1.1") - 1)
    line = b"GET " + target + b" HTTP/1.1"
    assert len(line) == 64
    (request, _) = ServerConnection(SMALL).receive_data(line + b"\r\n" + HOST + b"\r\n")
    assert isinstance(request, Request)
    assert request.target == target


def test_header_block_limit_431_complete_and_partial() -> None:
    big = b"GET / HTTP/1.1\r\n" + HOST + b"X: " + b"v" * 300 + b"\r\n"
    assert limited_error(big + b"\r\n") == 431
    assert limited_error(big) == 431  # incomplete head, already too large


def test_header_count_limit_431() -> None:
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(4))
    assert limited_error(b"GET / HTTP/1.1\r\n" + HOST + fields + b"\r\n") == 431
    ok = ServerConnection(SMALL).receive_data(
        b"GET / HTTP/1.1\r\n" + HOST + fields[: fields.index(b"X-3")] + b"\r\n"
    )
    assert len(ok) == 2


def test_trailer_limits() -> None:
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
    many = b"".join(b"T-%d: v\r\n" % i for i in range(5))
    assert limited_error(head + many + b"\r\n") == 431
    assert limited_error(head + b"T: " + b"v" * 300) == 431


def test_chunk_line_limit() -> None:
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert limited_error(head + b"3;" + b"e" * 20 + b"\r\nabc\r\n") == 400
    assert limited_error(head + b"3;" + b"e" * 20) == 400  # no CRLF yet


def test_body_size_is_not_limited() -> None:
    size = 10 * 1024 * 1024
    conn = ServerConnection(SMALL)
    events = conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
    received = 0
    chunk = b"x" * 65536
    while received < size:
        for event in conn.receive_data(chunk):
            assert isinstance(event, Data | EndOfMessage)
            if isinstance(event, Data):
                received += len(event.data)
        events = []
    assert received == size
    assert conn.their_state is DONE
    assert events == []


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="positive"):
        Limits(max_header_count=0)
    with pytest.raises(ValueError, match="exceed"):
        Limits(max_request_line=100, max_header_bytes=50)


# --- request smuggling end to end --------------------------------------------------------


def test_cl_te_smuggling_is_refused_before_any_event() -> None:
    """CL.TE: a front end that honours Content-Length forwards the body; a back end that
    honours chunked reads "0" as the end and "SMUGGLED" as the next request."""
    raw = (
        b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 13\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED"
    )
    conn = ServerConnection()
    with pytest.raises(RemoteProtocolError) as caught:
        conn.receive_data(raw)
    assert caught.value.status_hint == 400
    assert conn.trailing_data == b""  # nothing kept to parse later


def test_te_cl_smuggling_is_refused() -> None:
    """TE.CL: the front end reads chunked, the back end reads Content-Length: 3 and sees
    "GPOST / ..." as the next request."""
    raw = (
        b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"5c\r\nGPOST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n"
    )
    assert request_error(raw).status_hint == 400


@pytest.mark.parametrize(
    "obfuscation",
    [
        b"Transfer-Encoding: xchunked",
        b"Transfer-Encoding : chunked",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x",
        b"Transfer-Encoding:[\x0b]chunked".replace(b"[\x0b]", b"\x0b"),
        b"Transfer-Encoding\r\n : chunked",
        b" Transfer-Encoding: chunked",
        b"X: X\nTransfer-Encoding: chunked",
        b"Transfer-Encoding\n: chunked",
        b"Transfer-Encoding: chunked\r\n\tx",
        b"Transfer-Encoding: identity, chunked, identity",
        b"Transfer-Encoding: chunked, chunked",
        b"Transfer-Encoding: \x00chunked",
        b"Transfer-Encoding: chunk",
    ],
)
def test_te_te_obfuscations_are_refused(obfuscation: bytes) -> None:
    """TE.TE: one of two servers is made to ignore an obfuscated Transfer-Encoding and
    fall back to Content-Length. We refuse every variant instead of guessing."""
    raw = (
        b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\n"
        + obfuscation
        + b"\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n"
    )
    assert request_error(raw).status_hint in (400, 501)


def test_te_with_leading_whitespace_is_plain_chunked() -> None:
    """Leading whitespace is optional whitespace: the value is unambiguously chunked, and
    the body is read as chunked (no smuggling: both readings agree)."""
    raw = (
        b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding:\t chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    events = coalesce(serve([raw]))
    assert events[1:] == [Data(b"abc"), EndOfMessage()]


def test_a_request_hidden_in_a_body_stays_body() -> None:
    inner = b"GET /admin HTTP/1.1\r\nHost: svc\r\n\r\n"
    raw = b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner
    events = serve([raw])
    assert coalesce(events)[1:] == [Data(inner), EndOfMessage()]
    requests = [e for e in events if isinstance(e, Request)]
    assert [r.target for r in requests] == [b"/"]


def test_pipelined_request_after_a_bad_one_is_never_parsed() -> None:
    raw = (
        POST
        + b"Content-Length: 1\r\nContent-Length: 40\r\n\r\nGET /admin HTTP/1.1\r\n"
        + HOST
        + b"\r\n"
    )
    conn = ServerConnection()
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(raw)
    with pytest.raises(ProtocolError):
        conn.start_next_cycle()
