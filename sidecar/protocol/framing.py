"""Message bodies: bytes -> Data/EndOfMessage (readers) and back (writers), by
Content-Length, chunked transfer coding, or (responses only) the end of the connection.

Bodies are framed here rather than by llhttp so the end of every message is known to
the byte: what follows it stays unparsed until its turn. A body that arrives whole in
one read is passed on without a copy.

Chunked bodies are strict (RFC 9112 §7.1): the size is 1-16 hex digits with nothing
around it but chunk extensions (``;name`` or ``;name=value``, tokens or quoted strings,
whitespace only around ``;`` and ``=``), every line ends in CRLF, chunk data is followed
by CRLF, the size line is at most ``Limits.max_chunk_line`` bytes, and trailers are
fields as strict as a head's. Extensions are checked, then dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sidecar.protocol.errors import LocalProtocolError, RemoteProtocolError
from sidecar.protocol.events import END_OF_MESSAGE, Data, EndOfMessage, Event
from sidecar.protocol.headers import TOKEN, Field, Headers
from sidecar.protocol.heads import NOT_TRAILERS, parse_trailers, peer_error
from sidecar.protocol.limits import Limits

_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_chunk_line = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*"
    + TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:"
    + TOKEN
    + rb"|"
    + _QUOTED
    + rb"))?)*"
).fullmatch

_bare_lf = re.compile(rb"(?<!\r)\n").search

# --- readers ------------------------------------------------------------------------------


class BodyReader:
    """Reads one message body from the front of a buffer.

    ``read(buf, out)`` appends Data (at most one per call) and, at the end of the body,
    an EndOfMessage to ``out``; it returns how many bytes of ``buf`` it consumed and
    whether the body is complete. ``read_eof(out)`` is called when the peer closed with
    the body incomplete.
    """

    __slots__ = ("status",)

    def __init__(self, status: int) -> None:
        self.status = status  # of errors: 400 reading a request, 502 a response

    def read(self, buf: bytes, out: list[Event]) -> tuple[int, bool]:
        raise NotImplementedError

    def read_eof(self, out: list[Event]) -> None:
        raise peer_error(self.status, "the connection closed before the end of the message body")


class LengthReader(BodyReader):
    """A body of Content-Length bytes."""

    __slots__ = ("remaining",)

    def __init__(self, length: int, status: int) -> None:
        self.status = status
        self.remaining = length

    def read(self, buf: bytes, out: list[Event]) -> tuple[int, bool]:
        have = len(buf)
        remaining = self.remaining
        if have < remaining:
            if have:
                out.append(Data(buf))
                self.remaining = remaining - have
            return have, False
        out.append(Data(buf if have == remaining else buf[:remaining]))
        out.append(END_OF_MESSAGE)
        self.remaining = 0
        return remaining, True

    def read_eof(self, out: list[Event]) -> None:
        raise peer_error(
            self.status,
            f"the connection closed {self.remaining} bytes before the end of the body",
        )


class UntilCloseReader(BodyReader):
    """A response body that ends when the connection does."""

    __slots__ = ()

    def read(self, buf: bytes, out: list[Event]) -> tuple[int, bool]:
        if buf:
            out.append(Data(buf))
        return len(buf), False

    def read_eof(self, out: list[Event]) -> None:
        out.append(END_OF_MESSAGE)


_SIZE, _DATA, _DATA_END, _TRAILERS = range(4)


class ChunkedReader(BodyReader):
    """A chunked body, trailers included."""

    __slots__ = ("limits", "max_line", "phase", "remaining")

    def __init__(self, limits: Limits, status: int) -> None:
        self.status = status
        self.limits = limits
        self.max_line = limits.max_chunk_line
        self.phase = _SIZE
        self.remaining = 0

    def _error(self, reason: str) -> RemoteProtocolError:
        return peer_error(self.status, f"invalid chunked body: {reason}")

    def read(self, buf: bytes, out: list[Event]) -> tuple[int, bool]:
        # Chunk data is gathered as views and copied once, into the Data it goes out in.
        pieces: list[memoryview] = []
        view = memoryview(buf)
        pos = 0
        end = len(buf)
        phase = self.phase
        remaining = self.remaining
        done = False
        trailers: Headers | None = None
        while True:
            if phase == _DATA:
                if pos == end:
                    break
                if end - pos < remaining:
                    pieces.append(view[pos:])
                    remaining -= end - pos
                    pos = end
                    break
                pieces.append(view[pos : pos + remaining])
                pos += remaining
                remaining = 0
                phase = _DATA_END
            if phase == _DATA_END:
                if end - pos < 2:
                    if end > pos and buf[pos] != 13:
                        raise self._error("chunk data is not followed by CRLF")
                    break
                if buf[pos] != 13 or buf[pos + 1] != 10:
                    raise self._error("chunk data is not followed by CRLF")
                pos += 2
                phase = _SIZE
            if phase == _SIZE:
                limit = self.max_line
                eol = buf.find(b"\r\n", pos, pos + limit + 2)
                if eol < 0:
                    if buf.find(b"\n", pos, pos + limit + 2) >= 0:
                        raise self._error("a chunk-size line ends in a bare LF")
                    if end - pos > limit + 1:
                        raise self._error(f"a chunk-size line is longer than {limit} bytes")
                    break
                match = _chunk_line(buf, pos, eol)
                if match is None:
                    raise self._error(f"malformed chunk-size line {buf[pos:eol][:40]!r}")
                remaining = int(match[1], 16)
                pos = eol + 2
                if remaining:
                    phase = _DATA
                    continue
                phase = _TRAILERS
            # phase == _TRAILERS
            if end - pos < 2:
                if end > pos and buf[pos] == 10:
                    raise self._error("the last chunk ends in a bare LF")
                break
            if buf[pos] == 13 and buf[pos + 1] == 10:
                pos += 2
                done = True
                break
            limit = self.limits.max_header_bytes
            stop = buf.find(b"\r\n\r\n", pos, pos + limit)
            if stop < 0:
                if _bare_lf(buf, pos):
                    raise self._error("a trailer line ends in a bare LF")
                if end - pos >= limit:
                    raise peer_error(
                        431 if self.status == 400 else self.status,
                        f"the trailer section is larger than {limit} bytes",
                    )
                break
            trailers = parse_trailers(buf[pos : stop + 4], self.limits, self.status)
            pos = stop + 4
            done = True
            break
        self.phase = phase
        self.remaining = remaining
        if pieces:
            if len(pieces) == 1 and len(pieces[0]) == end:
                out.append(Data(buf))  # the whole read was chunk data: no copy
            else:
                out.append(Data(b"".join(pieces)))
        if done:
            out.append(END_OF_MESSAGE if not trailers else EndOfMessage(trailers))
        return pos, done


# --- writers ------------------------------------------------------------------------------


class BodyWriter:
    """Frames one outgoing body: ``data`` -> the bytes to write, ``end`` -> the bytes
    that end the message. Raises :class:`LocalProtocolError` when asked for a body
    the framing cannot carry."""

    __slots__ = ()

    def data(self, data: bytes) -> bytes:
        raise NotImplementedError

    def end(self, trailers: Headers) -> bytes:
        return b""


class LengthWriter(BodyWriter):
    """Content-Length: exactly that many bytes, no more, no less."""

    __slots__ = ("remaining",)

    def __init__(self, length: int) -> None:
        self.remaining = length

    def data(self, data: bytes) -> bytes:
        if len(data) > self.remaining:
            raise LocalProtocolError(
                f"{len(data)} bytes of body exceed the {self.remaining} that remain of the "
                "Content-Length"
            )
        self.remaining -= len(data)
        return data

    def end(self, trailers: Headers) -> bytes:
        if self.remaining:
            raise LocalProtocolError(
                f"the message ended {self.remaining} bytes short of its Content-Length"
            )
        return b""


class ChunkedWriter(BodyWriter):
    """Transfer-Encoding: chunked; one chunk per non-empty Data."""

    __slots__ = ()

    def data(self, data: bytes) -> bytes:
        if not data:
            return b""
        return b"".join((b"%x\r\n" % len(data), data, b"\r\n"))

    def end(self, trailers: Headers) -> bytes:
        if not trailers:
            return b"0\r\n\r\n"
        for name, _ in trailers:
            if name in NOT_TRAILERS:
                raise LocalProtocolError(f"{name.decode()} can't be sent as a trailer")
        return b"0\r\n" + _fields(trailers) + b"\r\n"


class UntilCloseWriter(BodyWriter):
    """No framing: the body ends when we close the connection (an HTTP/1.0 peer)."""

    __slots__ = ()

    def data(self, data: bytes) -> bytes:
        return data


class NoBodyWriter(BodyWriter):
    """A message that has no body (HEAD, 1xx, 204, 304; a request without framing)."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why

    def data(self, data: bytes) -> bytes:
        if data:
            raise LocalProtocolError(f"this message can't have a body: {self.why}")
        return b""


def _fields(fields: Iterable[Field]) -> bytes:
    parts: list[bytes] = []
    for name, value in fields:
        parts += (name, b": ", value, b"\r\n")
    return b"".join(parts)


def write_head(start_line: bytes, fields: Iterable[Field]) -> bytes:
    """A head: the start line (without CRLF), the fields, the empty line."""
    parts = [start_line, b"\r\n"]
    for name, value in fields:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
