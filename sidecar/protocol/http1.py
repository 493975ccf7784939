"""Sans-IO HTTP/1.1 connections: :class:`ServerConnection` (requests in, responses out)
and :class:`ClientConnection` (requests out, responses in).

Neither does I/O nor imports trio: ``receive_data(bytes) -> list[Event]`` (``b""`` is
the end of stream) and ``send(Event) -> bytes``. States and transitions are those of
:mod:`sidecar.protocol.states`; heads are parsed by :mod:`sidecar.protocol.heads`
(llhttp + our checks), bodies framed by :mod:`sidecar.protocol.framing`.

A proxy's loop on the server side::

    conn = ServerConnection()
    while True:
        events = conn.receive_data(await stream.receive_some())   # may raise ProtocolError
        for event in events: ...                                 # Request, Data*, EndOfMessage
        # answer: conn.send(Response(...)), conn.send(Data(...)), conn.send(EndOfMessage())
        # when both sides are DONE: events = conn.start_next_cycle() (a pipelined request
        # that already arrived); when our_state is MUST_CLOSE: close the stream.

Only one request is in flight: bytes that follow a complete request stay unparsed until
``start_next_cycle()``, and while ``their_state`` is DONE the caller should stop reading
(what has arrived is kept, not parsed). On a :class:`RemoteProtocolError` answer
``send_error(exc)`` and close.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

from sidecar.protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from sidecar.protocol.events import (
    CONNECTION_CLOSED,
    END_OF_MESSAGE,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    InformationalResponse,
    Request,
    Response,
)
from sidecar.protocol.framing import (
    BodyReader,
    BodyWriter,
    ChunkedReader,
    ChunkedWriter,
    LengthReader,
    LengthWriter,
    NoBodyWriter,
    UntilCloseReader,
    UntilCloseWriter,
    write_head,
)
from sidecar.protocol.headers import TOKEN, Field, Headers
from sidecar.protocol.heads import (
    CHUNKED,
    UNTIL_CLOSE,
    parse_request_head,
    parse_response_head,
)
from sidecar.protocol.limits import DEFAULT_LIMITS, Limits
from sidecar.protocol.states import (
    CLIENT,
    DONE,
    IDLE,
    MIGHT_SWITCH_PROTOCOL,
    MUST_CLOSE,
    SEND_BODY,
    SEND_RESPONSE,
    SERVER,
    SWITCHED_PROTOCOL,
    ConnectionState,
    Role,
    State,
)

_token = re.compile(TOKEN).fullmatch
_bad_target = re.compile(rb"[\x00-\x20\x7f]").search
_bad_reason = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search
_bare_lf = re.compile(rb"(?<!\r)\n").search
# How an incomplete head may begin: a request with its method (a token) and a space, a
# response with "HTTP/1.". Anything else is refused at once rather than buffered.
_request_start = re.compile(rb"(?:" + TOKEN + rb" |[-!#$%&'*+.^_`|~0-9A-Za-z]*\Z)").match

_PHRASES: Final = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
_STATUS_LINES: Final = {
    status: b"HTTP/1.1 %d %s" % (status, phrase) for status, phrase in _PHRASES.items()
}
_OUTGOING: Final = frozenset((b"content-length", b"transfer-encoding", b"connection"))


class _Outgoing:
    """The framing and connection options of a head we are about to send."""

    __slots__ = ("chunked", "close", "length", "upgrade")

    def __init__(self, headers: Headers) -> None:
        self.length: int | None = None
        self.chunked = self.close = self.upgrade = False
        for name, value in headers.fields:
            if name not in _OUTGOING:
                continue
            if name == b"content-length":
                if self.length is not None:
                    raise LocalProtocolError("more than one Content-Length field")
                if not value.isdigit():
                    raise LocalProtocolError(f"Content-Length {value!r} is not a number")
                self.length = int(value)
            elif name == b"transfer-encoding":
                if self.chunked or value.lower() != b"chunked":
                    raise LocalProtocolError(
                        f"Transfer-Encoding must be one field saying chunked, not {value!r}"
                    )
                self.chunked = True
            else:
                for raw in value.lower().split(b","):
                    option = raw.strip(b" \t")
                    if option == b"close":
                        self.close = True
                    elif option == b"upgrade":
                        self.upgrade = True
        if self.chunked and self.length is not None:
            raise LocalProtocolError("both Content-Length and Transfer-Encoding")


class _Connection:
    """What both roles share: the buffer, head search, body reading, end of stream."""

    __slots__ = (
        "_buf",
        "_eof",
        "_error",
        "_limits",
        "_method",
        "_more",
        "_reader",
        "_scan",
        "_state",
        "_writer",
    )

    _THEIR_ROLE: Role
    _OUR_ROLE: Role
    _WHAT: str  # "request" or "response": what we parse
    _BAD: int  # status_hint of errors in what we parse
    _HEAD_TOO_LARGE: int
    _LINE_TOO_LONG: int

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._state = ConnectionState()
        self._buf = b""  # received, not yet parsed
        # Received while nothing may be parsed (a pipelined request waiting for its turn,
        # bytes after an Upgrade request): joined once, when their turn comes.
        self._more: list[bytes] = []
        self._scan = 0  # where to resume looking for the end of a head
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self._reader: BodyReader | None = None
        self._writer: BodyWriter | None = None
        self._method = b""  # of the current request

    # --- state --------------------------------------------------------------------------

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another exchange after this one."""
        return self._state.keep_alive

    @property
    def trailing_data(self) -> bytes:
        """Bytes received and not parsed: after a protocol switch, the first bytes of the
        tunnel (forward them before anything read later)."""
        self._gather()
        return self._buf

    @property
    def eof_received(self) -> bool:
        """Whether the peer has closed its side (``receive_data(b"")`` was called)."""
        return self._eof

    # --- receiving ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer (``b""`` when it closed its side); returns the events
        they complete, in order. Raises :class:`RemoteProtocolError` when the bytes are
        not an acceptable message (the peer's state becomes ERROR), and
        :class:`LocalProtocolError` on data after a protocol switch or after the end of
        stream."""
        if self._error is not None:
            raise RemoteProtocolError(self._error.status_hint, self._error.reason)
        if data:
            if self._eof:
                raise LocalProtocolError("data received after the end of stream")
            if self._state.server is SWITCHED_PROTOCOL:  # both roles switch at once
                raise LocalProtocolError(
                    "the connection switched protocols: its bytes are not HTTP/1.1 any more "
                    "(take trailing_data, then tunnel)"
                )
            if type(data) is not bytes:
                data = bytes(data)
            if self._buf or self._more:
                self._more.append(data)
            else:
                self._buf = data
        else:
            self._eof = True
        return self._receive()

    def _pump(self) -> list[Event]:
        raise NotImplementedError

    def _receive(self) -> list[Event]:
        try:
            return self._pump()
        except RemoteProtocolError as exc:
            self._error = exc
            self._state.error(self._THEIR_ROLE)
            self._reader = None
            self._buf = b""  # nothing after bad bytes is ever parsed
            self._more = []
            raise

    def _fail(self, status: int, reason: str) -> RemoteProtocolError:
        return RemoteProtocolError(status, reason)

    def _plausible_start(self, buf: bytes) -> bool:
        raise NotImplementedError

    def _gather(self) -> None:
        """Join what arrived while nothing was parsed onto the buffer."""
        if self._more:
            self._buf = b"".join((self._buf, *self._more))
            self._more = []

    def _discard(self) -> None:
        self._buf = b""
        self._more = []

    def _take_head(self) -> tuple[bytes, int] | None:
        """The next complete head, removed from the buffer, and the offset of its start
        line's CRLF; None while it is incomplete. Enforces the limits on the way."""
        self._gather()
        buf = self._buf
        if buf[:2] == b"\r\n":
            # Empty lines before a message are ignored (RFC 9112 §2.2).
            pos = 2
            while buf.startswith(b"\r\n", pos):
                pos += 2
            buf = self._buf = buf[pos:]
            self._scan = 0
        limits = self._limits
        end = buf.find(b"\r\n\r\n", self._scan)
        if end < 0:
            if len(buf) > limits.max_header_bytes:
                raise self._fail(
                    self._HEAD_TOO_LARGE,
                    f"the {self._WHAT} head is larger than {limits.max_header_bytes} bytes",
                )
            line_end = buf.find(b"\r\n")
            if (line_end if line_end >= 0 else len(buf) - 1) > limits.max_request_line:
                raise self._fail(
                    self._LINE_TOO_LONG,
                    f"the {self._WHAT} line is longer than {limits.max_request_line} bytes",
                )
            if _bare_lf(buf, max(self._scan - 1, 0)):
                raise self._fail(
                    self._BAD, f"a line of the {self._WHAT} head ends in a bare LF, not CRLF"
                )
            if not self._plausible_start(buf):
                raise self._fail(self._BAD, f"the bytes received are not an HTTP/1.1 {self._WHAT}")
            self._scan = max(len(buf) - 3, 0)
            return None
        size = end + 4
        if size > limits.max_header_bytes:
            raise self._fail(
                self._HEAD_TOO_LARGE,
                f"the {self._WHAT} head is larger than {limits.max_header_bytes} bytes",
            )
        line_end = buf.find(b"\r\n")
        if line_end > limits.max_request_line:
            raise self._fail(
                self._LINE_TOO_LONG,
                f"the {self._WHAT} line is longer than {limits.max_request_line} bytes",
            )
        self._scan = 0
        if size == len(buf):
            self._buf = b""
            return buf, line_end
        self._buf = buf[size:]
        return buf[:size], line_end

    def _read_body(self, out: list[Event]) -> bool:
        """Body bytes from the buffer; True when the body is complete."""
        self._gather()
        buf = self._buf
        if not buf:
            return False
        reader = self._reader
        assert reader is not None
        used, done = reader.read(buf, out)
        self._buf = b"" if used == len(buf) else buf[used:]
        # Data keeps SEND_BODY (a loop in the table; the pump reads a body only in
        # SEND_BODY), so only the end of the message moves the state.
        if done:
            self._reader = None
            self._state.process(self._THEIR_ROLE, EndOfMessage)
        return done

    # --- sending ------------------------------------------------------------------------

    def _send_body(self, event: Data | EndOfMessage) -> bytes:
        state = self._state
        role = self._OUR_ROLE
        if type(event) is Data:
            state.process(role, Data)
            data = event.data
            assert self._writer is not None
            return self._writer.data(data)
        assert isinstance(event, EndOfMessage)
        if not state.can(role, EndOfMessage):
            state.process(role, EndOfMessage)  # raises: not in SEND_BODY
        assert self._writer is not None
        trailers = event.trailers
        out = self._writer.end(trailers)
        self._writer = None
        state.process(role, EndOfMessage)
        return out

    def _reset_cycle(self) -> None:
        self._state.start_next_cycle()
        self._method = b""
        self._reader = None
        self._writer = None


class ServerConnection(_Connection):
    """The server side of an HTTP/1.1 connection: parses requests, writes responses.

    ``their_state`` is the client's state, ``our_state`` ours (see
    :mod:`sidecar.protocol.states`).
    """

    __slots__ = ("_expects_continue", "_http10")

    _THEIR_ROLE = CLIENT
    _OUR_ROLE = SERVER
    _WHAT = "request"
    _BAD = 400
    _HEAD_TOO_LARGE = 431
    _LINE_TOO_LONG = 414

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(limits)
        self._http10 = False
        self._expects_continue = False

    @property
    def their_state(self) -> State:
        """The client's state."""
        return self._state.client

    @property
    def our_state(self) -> State:
        """Our (the server's) state."""
        return self._state.server

    @property
    def expects_continue(self) -> bool:
        """The client sent ``Expect: 100-continue`` and waits: send
        ``InformationalResponse(100)`` to get the body, or a final response (then the
        connection is not reused)."""
        return self._expects_continue

    # --- receiving ----------------------------------------------------------------------

    def _plausible_start(self, buf: bytes) -> bool:
        return _request_start(buf) is not None

    def _pump(self) -> list[Event]:
        out: list[Event] = []
        state = self._state
        while True:
            client = state.client
            if client is SEND_BODY:
                if self._buf or self._more:
                    self._expects_continue = False  # the client stopped waiting
                if not self._read_body(out):
                    break
            elif client is IDLE and state.server is IDLE:
                if not self._read_request(out):
                    break
            else:
                break
        if self._eof:
            self._at_eof(out)
        elif state.client is MUST_CLOSE:
            self._discard()  # nothing after a last request is read
        return out

    def _read_request(self, out: list[Event]) -> bool:
        if not (self._buf or self._more):
            return False
        taken = self._take_head()
        if taken is None:
            return False
        request, length, keep_alive, expects_continue, switch = parse_request_head(
            taken[0], taken[1], self._limits
        )
        state = self._state
        out.append(request)
        state.process(CLIENT, Request)
        self._method = request.method
        self._http10 = request.http_version == b"1.0"
        if switch:
            state.propose_switch()
        if not keep_alive:
            state.disable_keep_alive()
        if length == 0:
            out.append(END_OF_MESSAGE)
            state.process(CLIENT, EndOfMessage)
            return True
        self._expects_continue = expects_continue
        if length == CHUNKED:
            self._reader = ChunkedReader(self._limits, 400)
        else:
            self._reader = LengthReader(length, 400)
        return True

    def _at_eof(self, out: list[Event]) -> None:
        state = self._state
        client = state.client
        if client is SEND_BODY:
            assert self._reader is not None
            self._reader.read_eof(out)  # raises: a request body has an end of its own
        elif client is IDLE:
            if self._buf or self._more:
                raise self._fail(400, "the connection closed in the middle of a request head")
        elif client is MUST_CLOSE:
            self._discard()
        elif client is not DONE or self._buf or self._more:
            return  # a switch is pending, or a pipelined request waits for its turn
        out.append(CONNECTION_CLOSED)
        state.process(CLIENT, ConnectionClosed)

    def start_next_cycle(self) -> list[Event]:
        """After a keep-alive exchange (both sides DONE): reset to IDLE and return the
        events of a pipelined request that already arrived (often none)."""
        self._reset_cycle()
        self._http10 = False
        self._expects_continue = False
        return self._receive()

    # --- sending ------------------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """The bytes for ``event`` (an InformationalResponse, Response, Data,
        EndOfMessage or ConnectionClosed). Raises :class:`LocalProtocolError` (and our
        state becomes ERROR) when it is invalid or not allowed now."""
        try:
            kind = type(event)
            if kind is Data or kind is EndOfMessage:
                return self._send_body(event)  # type: ignore[arg-type]
            if kind is Response:
                return self._send_response(event)  # type: ignore[arg-type]
            if kind is InformationalResponse:
                return self._send_informational(event)  # type: ignore[arg-type]
            if kind is ConnectionClosed:
                self._state.process(SERVER, ConnectionClosed)
                return b""
            raise LocalProtocolError(f"a server can't send {kind.__name__}")
        except LocalProtocolError:
            self._state.error(SERVER)
            raise

    def send_error(self, error: ProtocolError) -> bytes:
        """A complete error response for ``error`` (its ``status_hint``, a one-line
        text body, ``Connection: close``), or ``b""`` when a response can no longer be
        sent (ours had begun). Either way, close the connection afterwards."""
        self._state.disable_keep_alive()
        if not self._state.can(SERVER, Response):
            return b""
        status = error.status_hint if 400 <= error.status_hint <= 599 else 500
        body = f"{_PHRASES.get(status, b'Error').decode()}: {error.reason}\n".encode(
            "utf-8", "replace"
        )
        headers = Headers.trusted(
            (
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"x-content-type-options", b"nosniff"),
                (b"content-length", b"%d" % len(body)),
                (b"connection", b"close"),
            )
        )
        head = self.send(Response(status, headers))
        if self._method != b"HEAD":
            head += self.send(Data(body))
        return head + self.send(END_OF_MESSAGE)

    def _send_informational(self, event: InformationalResponse) -> bytes:
        status = event.status
        if type(status) is not int or not 100 <= status <= 199:
            raise LocalProtocolError(f"an informational response has a 1xx status, not {status}")
        state = self._state
        if not state.can(SERVER, InformationalResponse):
            state.process(SERVER, InformationalResponse)  # raises
        headers = event.headers
        if status != 101 and self._http10:
            return b""  # no 1xx to an HTTP/1.0 client (RFC 9110 §15.2)
        head = write_head(_status_line(status, event.reason), headers)
        if status == 101:
            if not (
                state.switch_proposed
                and self._method != b"CONNECT"
                and state.client is MIGHT_SWITCH_PROTOCOL
            ):
                raise LocalProtocolError(
                    "101 Switching Protocols answers a complete Upgrade request only"
                )
            if not headers.contains(b"upgrade"):
                raise LocalProtocolError("a 101 response names the new protocol in Upgrade")
            state.accept_switch()
            return head
        state.process(SERVER, InformationalResponse)
        if status == 100:
            self._expects_continue = False
        return head

    def _send_response(self, event: Response) -> bytes:
        status = event.status
        if type(status) is not int or not 200 <= status <= 599:
            raise LocalProtocolError(f"a final response has a status in 200-599, not {status}")
        state = self._state
        if not state.can(SERVER, Response):
            state.process(SERVER, Response)  # raises
        headers = event.headers
        opts = _Outgoing(headers)
        method = self._method
        keep_alive = state.keep_alive and not opts.close and state.server is not IDLE
        if self._expects_continue:
            # The client may or may not send the body now: the connection can't be reused.
            keep_alive = False
            self._expects_continue = False
        if state.switch_proposed and method == b"CONNECT" and status < 300:
            if opts.length is not None or opts.chunked:
                raise LocalProtocolError(
                    "a 2xx response to CONNECT has neither Content-Length nor Transfer-Encoding"
                )
            head = write_head(_status_line(status, event.reason), headers)
            state.accept_switch()
            return head
        writer: BodyWriter
        extra: list[Field] = []
        if method == b"HEAD" or status in (204, 304):
            writer = NoBodyWriter(f"a {status} response to {method.decode() or 'no request'}")
        elif opts.chunked:
            if self._http10:
                headers = headers.without(b"transfer-encoding")
                writer = UntilCloseWriter()
                keep_alive = False
            else:
                writer = ChunkedWriter()
        elif opts.length is not None:
            writer = LengthWriter(opts.length)
        elif self._http10:
            writer = UntilCloseWriter()
            keep_alive = False
        else:
            extra.append((b"transfer-encoding", b"chunked"))
            writer = ChunkedWriter()
        if not keep_alive:
            if not opts.close:
                headers = headers.without(b"connection")
                extra.append((b"connection", b"close"))
            state.disable_keep_alive()
        fields = [*headers.fields, *extra] if extra else headers.fields
        head = write_head(_status_line(status, event.reason), fields)
        state.process(SERVER, Response)
        if state.switch_proposed:
            state.decline_switch()
        self._writer = writer
        return head


class ClientConnection(_Connection):
    """The client side of an HTTP/1.1 connection: writes requests, parses responses
    (one request at a time; the response is read knowing the request's method).

    ``our_state`` is the client's state, ``their_state`` the server's.
    """

    __slots__ = ("_awaiting_continue",)

    _THEIR_ROLE = SERVER
    _OUR_ROLE = CLIENT
    _WHAT = "response"
    _BAD = 502
    _HEAD_TOO_LARGE = 502
    _LINE_TOO_LONG = 502

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(limits)
        self._awaiting_continue = False

    @property
    def their_state(self) -> State:
        """The server's state."""
        return self._state.server

    @property
    def our_state(self) -> State:
        """Our (the client's) state."""
        return self._state.client

    @property
    def awaiting_continue(self) -> bool:
        """We sent ``Expect: 100-continue`` and no 100 or final response came yet."""
        return self._awaiting_continue

    def _fail(self, status: int, reason: str) -> RemoteProtocolError:
        return RemoteProtocolError(502, f"invalid response from the upstream: {reason}")

    def _plausible_start(self, buf: bytes) -> bool:
        start = buf[:7]
        return start == b"HTTP/1."[: len(start)]

    # --- sending ------------------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """The bytes for ``event`` (a Request, Data, EndOfMessage or ConnectionClosed).
        Raises :class:`LocalProtocolError` (and our state becomes ERROR) when it is
        invalid or not allowed now."""
        try:
            kind = type(event)
            if kind is Data or kind is EndOfMessage:
                return self._send_body(event)  # type: ignore[arg-type]
            if kind is Request:
                return self._send_request(event)  # type: ignore[arg-type]
            if kind is ConnectionClosed:
                self._state.process(CLIENT, ConnectionClosed)
                return b""
            raise LocalProtocolError(f"a client can't send {kind.__name__}")
        except LocalProtocolError:
            self._state.error(CLIENT)
            raise

    def _send_request(self, event: Request) -> bytes:
        method = event.method
        target = event.target
        if not _token(method):
            raise LocalProtocolError(f"method {method!r} is not a token")
        if not target or _bad_target(target):
            raise LocalProtocolError(
                f"request target {target!r} is empty or has spaces or controls"
            )
        state = self._state
        if not state.can(CLIENT, Request):
            state.process(CLIENT, Request)  # raises
        headers = event.headers
        if len(headers.get_all(b"host")) != 1:
            raise LocalProtocolError("an HTTP/1.1 request has exactly one Host field")
        opts = _Outgoing(headers)
        writer: BodyWriter
        if method == b"CONNECT":
            if opts.chunked or opts.length:
                raise LocalProtocolError("a CONNECT request has no body")
            writer = NoBodyWriter("a CONNECT request has no body")
            state.propose_switch()
        elif opts.chunked:
            writer = ChunkedWriter()
        elif opts.length is not None:
            writer = LengthWriter(opts.length)
        else:
            writer = NoBodyWriter("the request has neither Content-Length nor Transfer-Encoding")
        if opts.upgrade and headers.contains(b"upgrade"):
            state.propose_switch()
        head = write_head(method + b" " + target + b" HTTP/1.1", headers)
        state.process(CLIENT, Request)
        if opts.close:
            state.disable_keep_alive()
        self._awaiting_continue = headers.get(
            b"expect", b""
        ).lower() == b"100-continue" and not isinstance(writer, NoBodyWriter)
        self._method = method
        self._writer = writer
        return head

    # --- receiving ----------------------------------------------------------------------

    def _pump(self) -> list[Event]:
        out: list[Event] = []
        state = self._state
        while True:
            server = state.server
            if server is SEND_BODY:
                if not self._read_body(out):
                    break
            elif server is SEND_RESPONSE:
                if not self._read_response(out):
                    break
            else:
                if server is IDLE or server is DONE:
                    self._refuse_stray_bytes()
                elif server is MUST_CLOSE:
                    self._discard()
                break
        if self._eof:
            self._at_eof(out)
        return out

    def _refuse_stray_bytes(self) -> None:
        """Bytes when no response is due: an extra CRLF is tolerated, anything else
        would be taken for the answer to the next request (a desync)."""
        self._gather()
        buf = self._buf
        if not buf:
            return
        pos = 0
        while buf.startswith(b"\r\n", pos):
            pos += 2
        if buf[pos:] not in (b"", b"\r"):
            raise self._fail(502, "bytes arrived when no response was due")
        self._buf = buf[pos:]

    def _read_response(self, out: list[Event]) -> bool:
        if not (self._buf or self._more):
            return False
        taken = self._take_head()
        if taken is None:
            return False
        event, length, keep_alive = parse_response_head(
            taken[0], taken[1], self._limits, self._method
        )
        state = self._state
        if type(event) is InformationalResponse:
            if event.status == 101:
                if not state.switch_proposed or self._method == b"CONNECT":
                    raise self._fail(502, "101 Switching Protocols to a request without Upgrade")
                if state.client is not MIGHT_SWITCH_PROTOCOL:
                    raise self._fail(502, "101 Switching Protocols before the request was complete")
                out.append(event)
                self._awaiting_continue = False
                state.accept_switch()
                return False  # what follows is the new protocol
            out.append(event)
            state.process(SERVER, InformationalResponse)
            if event.status == 100:
                self._awaiting_continue = False
            return True
        out.append(event)
        self._awaiting_continue = False
        if self._method == b"CONNECT" and event.status < 300 and state.switch_proposed:
            if state.client is not MIGHT_SWITCH_PROTOCOL:
                raise self._fail(502, "a 2xx to CONNECT before the request was complete")
            state.accept_switch()
            return False  # the tunnel starts after the head
        state.process(SERVER, Response)
        if state.switch_proposed:
            state.decline_switch()
        if not keep_alive:
            state.disable_keep_alive()
        if length == 0:
            out.append(END_OF_MESSAGE)
            state.process(SERVER, EndOfMessage)
        elif length == CHUNKED:
            self._reader = ChunkedReader(self._limits, 502)
        elif length == UNTIL_CLOSE:
            self._reader = UntilCloseReader(502)
        else:
            self._reader = LengthReader(length, 502)
        return True

    def _at_eof(self, out: list[Event]) -> None:
        state = self._state
        server = state.server
        if server is SEND_BODY:
            assert self._reader is not None
            self._reader.read_eof(out)  # an end of its own raises; until-close ends here
            self._reader = None
            out.append(CONNECTION_CLOSED)
            state.process(SERVER, EndOfMessage)
            state.process(SERVER, ConnectionClosed)
        elif server is SEND_RESPONSE:
            if self._buf or self._more:
                raise self._fail(502, "the connection closed in the middle of the response head")
            out.append(CONNECTION_CLOSED)
            state.process(SERVER, ConnectionClosed)
        elif server is IDLE or server is DONE or server is MUST_CLOSE:
            out.append(CONNECTION_CLOSED)
            state.process(SERVER, ConnectionClosed)

    def start_next_cycle(self) -> list[Event]:
        """After a keep-alive exchange (both sides DONE): reset to IDLE for the next
        request. Returns ``[]`` (the server side's returns pipelined events)."""
        self._reset_cycle()
        self._awaiting_continue = False
        return self._receive()


def _status_line(status: int, reason: bytes) -> bytes:
    if not reason:
        line = _STATUS_LINES.get(status)
        return line if line is not None else b"HTTP/1.1 %d " % status
    if _bad_reason(reason):
        raise LocalProtocolError(f"reason phrase {reason!r} has control bytes")
    return b"HTTP/1.1 %d %s" % (status, reason)


__all__ = ["ClientConnection", "ServerConnection"]
