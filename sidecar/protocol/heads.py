"""Message heads: one complete head (start line through the empty line) -> an event and
its framing, with llhttp (httptools) doing the byte-level validation in C and our checks
on top where llhttp is lenient or where framing must be decided without ambiguity.

The connection finds the end of a head itself (``\\r\\n\\r\\n``) and gives the whole head
to a fresh llhttp parser (creating one costs ~0.2 µs), so llhttp never sees a body or
the next message: message boundaries stay ours, exact, which pipelining, HEAD
responses and protocol switches need.

What llhttp rejects on its own (strict mode, no leniency enabled): bare LF, obs-fold,
invalid bytes in field names or values (NUL, CR, other controls), whitespace before the
colon, methods it does not know, invalid bytes in the request target, Content-Length
that is not digits or overflows, a repeated Content-Length, Content-Length together
with Transfer-Encoding, a request whose Transfer-Encoding does not end in ``chunked``.

What we add: the HTTP version (only 1.0 and 1.1; else 505), one space exactly between
the parts of the request line, Transfer-Encoding exactly ``chunked`` in a single field
(so ``chunked `` and ``gzip`` + ``chunked`` in two fields are refused too), no
Transfer-Encoding in HTTP/1.0, one Host in HTTP/1.1, CONNECT without a body, control
bytes in a response's reason phrase, the same framing rules for responses (where llhttp
would read an ambiguous body until close), trailing whitespace of field values, and the
limits.
"""

from __future__ import annotations

import re
from typing import Final

import httptools

from sidecar.protocol.errors import RemoteProtocolError
from sidecar.protocol.events import InformationalResponse, Request, Response
from sidecar.protocol.headers import TOKEN, Headers
from sidecar.protocol.limits import Limits

CHUNKED: Final = -1
"""Body length: chunked transfer coding."""
UNTIL_CLOSE: Final = -2
"""Body length: everything until the peer closes (responses only)."""

_MAX_CONTENT_LENGTH_DIGITS: Final = 18  # < 2**63: fits every platform's off_t

# The fields whose raw value decides framing, keep-alive or a protocol switch.
_NOTED: Final = frozenset(
    (b"content-length", b"transfer-encoding", b"connection", b"host", b"expect", b"upgrade")
)
# Fields that must not be trailers: they would change framing or routing after the fact
# (RFC 9110 §6.5.1).
NOT_TRAILERS: Final = frozenset((b"content-length", b"transfer-encoding", b"host"))

_token = re.compile(TOKEN).fullmatch
_other_version = re.compile(rb" HTTP/[0-9]\.[0-9]").fullmatch
_control_byte = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search
_TRAILER_PREFIX: Final = b"GET / HTTP/1.1\r\n"


class _Collector:
    """The httptools protocol object for one head."""

    __slots__ = ("complete", "fields", "noted", "reason", "target")

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.noted: list[tuple[bytes, bytes]] = []
        self.target = b""
        self.reason = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        # llhttp drops leading whitespace but keeps trailing whitespace: drop it too
        # (rstrip returns the same object when there is none).
        self.fields.append((name, value.rstrip(b" \t")))
        if name in _NOTED:
            self.noted.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


RequestHead = tuple[Request, int, bool, bool, bool]
"""A parsed request head: (event, body length, keep-alive, expects 100-continue,
proposes a protocol switch). A tuple: it is built for every request."""

ResponseHead = tuple[Response | InformationalResponse, int, bool]
"""A parsed response head: (event, body length, keep-alive)."""


def _bad_request(reason: str, status: int = 400) -> RemoteProtocolError:
    return RemoteProtocolError(status, reason)


def _bad_response(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(502, f"invalid response from the upstream: {reason}")


def peer_error(status: int, reason: str) -> RemoteProtocolError:
    """An error in what the peer sent: a request (``status`` 4xx/5xx) or, with 502, an
    upstream's response (said so in the reason)."""
    return _bad_response(reason) if status == 502 else RemoteProtocolError(status, reason)


def _show(value: bytes) -> str:
    """A peer's bytes for an error message: short, printable."""
    text = repr(value[:64])
    return text + "..." if len(value) > 64 else text


def parse_request_head(head: bytes, line_end: int, limits: Limits) -> RequestHead:
    """``head``: the request line through the empty line; ``line_end``: where the request
    line's CRLF starts. Raises :class:`RemoteProtocolError` with 400, 431, 501 or 505."""
    line = head[:line_end]
    version = line[-9:]
    if version == b" HTTP/1.1":
        http_version = b"1.1"
    elif version == b" HTTP/1.0":
        http_version = b"1.0"
    elif _other_version(version):
        raise _bad_request(
            f"HTTP version {version[6:].decode()} is not supported: use HTTP/1.1", 505
        )
    else:
        raise _bad_request(f"the request line {_show(line)} does not end with HTTP/1.0 or HTTP/1.1")
    if head.count(b"\r\n") - 2 > limits.max_header_count:
        raise _bad_request(f"more than {limits.max_header_count} header fields", 431)

    collector = _Collector()
    parser = httptools.HttpRequestParser(collector)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass  # CONNECT, or Upgrade without a body: the head is complete all the same
    except httptools.HttpParserInvalidMethodError:
        method = line.split(b" ", 1)[0]
        if _token(method):
            raise _bad_request(f"method {_show(method)} is not implemented", 501) from None
        raise _bad_request(f"invalid method {_show(method)}") from None
    except httptools.HttpParserError as exc:
        raise _bad_request(f"malformed request head: {exc}") from None
    if not collector.complete:  # pragma: no cover - llhttp completes or raises
        raise _bad_request("malformed request head")

    space = line.find(b" ")
    method = line[:space]
    target = collector.target
    if len(line) != space + len(target) + 10:
        raise _bad_request(
            "the request line must be METHOD SP request-target SP HTTP-version, with single spaces"
        )

    content_length: bytes | None = None
    transfer_encoding: bytes | None = None
    hosts = 0
    close = upgrade_token = upgrade = False
    expects_continue = False
    for name, value in collector.noted:
        if name == b"host":
            hosts += 1
        elif name == b"connection":
            for raw in value.lower().split(b","):
                option = raw.strip(b" \t")
                if option == b"close":
                    close = True
                elif option == b"upgrade":
                    upgrade_token = True
        elif name == b"content-length":
            if content_length is not None:
                raise _bad_request("more than one Content-Length field")
            content_length = value
        elif name == b"transfer-encoding":
            if transfer_encoding is not None:
                raise _bad_request("more than one Transfer-Encoding field")
            transfer_encoding = value
        elif name == b"expect":
            expects_continue = value.strip(b" \t").lower() == b"100-continue"
        else:  # upgrade
            upgrade = True

    if transfer_encoding is not None:
        if content_length is not None:
            raise _bad_request("both Content-Length and Transfer-Encoding (request smuggling)")
        if http_version == b"1.0":
            raise _bad_request("Transfer-Encoding in an HTTP/1.0 request")
        if transfer_encoding.lower() != b"chunked":
            codings = [c.strip(b" \t") for c in transfer_encoding.lower().split(b",")]
            if (
                len(codings) > 1
                and codings[-1] == b"chunked"
                and all(_token(c) for c in codings)
                and transfer_encoding[-1:] not in (b" ", b"\t")
            ):
                raise _bad_request(
                    f"transfer coding {_show(transfer_encoding)} is not implemented: "
                    "only chunked is",
                    501,
                )
            raise _bad_request(
                f"Transfer-Encoding must be exactly chunked, not {_show(transfer_encoding)}"
            )
        length = CHUNKED
    elif content_length is not None:
        if not content_length.isdigit() or len(content_length) > _MAX_CONTENT_LENGTH_DIGITS:
            raise _bad_request(f"Content-Length {_show(content_length)} is not a valid length")
        length = int(content_length)
    else:
        length = 0

    if hosts != 1 and (hosts or http_version == b"1.1"):
        raise _bad_request("no Host field" if hosts == 0 else "more than one Host field")

    switch = False
    if method == b"CONNECT":
        if length:
            raise _bad_request("a CONNECT request has no body")
        switch = True
    elif upgrade and upgrade_token and http_version == b"1.1":
        switch = True

    event = Request(method, target, Headers.trusted(collector.fields), http_version)
    return (
        event,
        length,
        http_version == b"1.1" and not close,
        expects_continue and http_version == b"1.1",
        switch,
    )


def parse_response_head(
    head: bytes, line_end: int, limits: Limits, request_method: bytes
) -> ResponseHead:
    """``head``: the status line through the empty line, in answer to a request with
    ``request_method``. Raises :class:`RemoteProtocolError` with 502."""
    line = head[:line_end]
    if line.startswith(b"HTTP/1.1 "):
        http_version = b"1.1"
    elif line.startswith(b"HTTP/1.0 "):
        http_version = b"1.0"
    else:
        raise _bad_response(f"the status line {_show(line)} is not HTTP/1.0 or HTTP/1.1")
    if _control_byte(line):
        raise _bad_response(f"control bytes in the status line {_show(line)}")
    if head.count(b"\r\n") - 2 > limits.max_header_count:
        raise _bad_response(f"more than {limits.max_header_count} header fields")

    collector = _Collector()
    parser = httptools.HttpResponseParser(collector)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as exc:
        raise _bad_response(f"malformed head: {exc}") from None
    if not collector.complete:  # pragma: no cover - llhttp completes or raises
        raise _bad_response("malformed head")
    status = parser.get_status_code()
    if not 100 <= status <= 599:
        raise _bad_response(f"status {status} is outside 100-599")

    content_length: bytes | None = None
    transfer_encoding: bytes | None = None
    close = False
    for name, value in collector.noted:
        if name == b"connection":
            for option in value.lower().split(b","):
                if option.strip(b" \t") == b"close":
                    close = True
        elif name == b"content-length":
            if content_length is not None:
                raise _bad_response("more than one Content-Length field")
            content_length = value
        elif name == b"transfer-encoding":
            if transfer_encoding is not None:
                raise _bad_response("more than one Transfer-Encoding field")
            transfer_encoding = value
    if transfer_encoding is not None:
        if content_length is not None:
            raise _bad_response("both Content-Length and Transfer-Encoding")
        if transfer_encoding.lower() != b"chunked":
            raise _bad_response(
                f"Transfer-Encoding must be exactly chunked, not {_show(transfer_encoding)}"
            )
        if http_version == b"1.0":
            raise _bad_response("Transfer-Encoding in an HTTP/1.0 response")
    if content_length is not None and (
        not content_length.isdigit() or len(content_length) > _MAX_CONTENT_LENGTH_DIGITS
    ):
        raise _bad_response(f"Content-Length {_show(content_length)} is not a valid length")

    headers = Headers.trusted(collector.fields)
    keep_alive = http_version == b"1.1" and not close
    if status < 200:
        return (
            InformationalResponse(status, headers, collector.reason, http_version),
            0,
            keep_alive,
        )
    event = Response(status, headers, collector.reason, http_version)
    if (
        request_method == b"HEAD"
        or status in (204, 304)
        or (request_method == b"CONNECT" and status < 300)
    ):
        length = 0
    elif transfer_encoding is not None:
        length = CHUNKED
    elif content_length is not None:
        length = int(content_length)
    else:
        length = UNTIL_CLOSE
        keep_alive = False
    return event, length, keep_alive


def parse_trailers(section: bytes, limits: Limits, status: int) -> Headers:
    """A trailer section (fields, then the empty line) -> its fields, validated by the
    same llhttp rules as a head. ``status`` is the error's status_hint (400 or 502)."""
    if section.count(b"\r\n") - 1 > limits.max_header_count:
        raise peer_error(
            431 if status == 400 else status,
            f"more than {limits.max_header_count} trailer fields",
        )
    collector = _Collector()
    parser = httptools.HttpRequestParser(collector)
    try:
        parser.feed_data(_TRAILER_PREFIX + section)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as exc:
        raise peer_error(status, f"malformed trailer section: {exc}") from None
    if not collector.complete:  # pragma: no cover - llhttp completes or raises
        raise peer_error(status, "malformed trailer section")
    for name, _ in collector.fields:
        if name in NOT_TRAILERS:
            raise peer_error(status, f"{name.decode()} is not allowed as a trailer")
    return Headers.trusted(collector.fields)
