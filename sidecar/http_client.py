"""A small HTTP/1.1 client on Trio for the sidecar's own control traffic: registration,
config long polls and NACKs to meshd (:mod:`sidecar.control_client`), certificate
signing (:mod:`sidecar.identity`), and the local Consul agent with ``--registry consul``
(:mod:`sidecar.consul_agent`).

Why not httpx: httpx, with httpcore, anyio, h11, certifi and the parts of the standard
library it loads (email, http.client, urllib.request, http.cookiejar), costs every sidecar
process 5-6 MB of memory, for a few requests a minute. This client is built from what the
sidecar holds anyway: Trio's sockets and TLS, and the proxy's sans-IO HTTP/1.1 layer
(:mod:`sidecar.protocol`: llhttp, through httptools, parses the response head, and the
body is framed by Content-Length, chunked, or the end of the connection).

:func:`send` uses one connection per request, closed after its answer (the request says
``Connection: close``): for requests made once in a while, like certificate signing.
A :class:`ConnectionPool` keeps connections alive between requests, for a client that
asks the same server every few seconds (heartbeats, TTL updates, config polls): without
it each of them would cost both sides a TLS handshake, and meshd serves thousands of
sidecars. A pooled connection is only reused with the very TLS context object it was
made with, so after a certificate renewal or a change of roots new requests get new
connections; connections made with the old context end after
:data:`IDLE_REUSE_S` unused.

Never through a proxy: proxy environment variables (``HTTP_PROXY``...) are not read; they
may well point at this very sidecar's outbound listener.

:func:`send` is the real thing. Code that sends requests takes a :data:`Send` so its tests
can answer with a plain async function instead. Failures are
:class:`~sidecar.errors.HttpClientError` and its subclasses.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import trio

from sidecar.errors import (
    ConnectError,
    ConnectionLost,
    HttpClientError,
    HttpTimeout,
    MalformedResponse,
    TlsError,
)
from sidecar.protocol import (
    ClientConnection,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Headers,
    LocalProtocolError,
    RemoteProtocolError,
    Request,
    Response,
)

__all__ = [
    "CONNECT_TIMEOUT_S",
    "MAX_RESPONSE_BYTES",
    "REQUEST_TIMEOUT_S",
    "ConnectionPool",
    "HttpRequest",
    "HttpResponse",
    "ResponseHeaders",
    "Send",
    "build_request",
    "send",
]

CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 10.0
"""The default deadline of a whole request: connecting, sending, the complete answer."""
CLOSE_TIMEOUT_S = 2.0
"""How long closing a connection (its TLS close_notify) may take before it is cut."""
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
"""A body larger than this is refused rather than held: a runaway answer must not take
the sidecar's memory. A snapshot of a large mesh is a few megabytes."""
RECEIVE_SIZE = 64 * 1024
IDLE_REUSE_S = 30.0
"""A pooled connection unused for longer is closed, not reused: well inside the idle
timeouts servers apply (meshd's is 75 s), and old TLS contexts' connections end."""
MAX_IDLE_PER_ORIGIN = 2
"""Idle connections kept per server and TLS context: a long poll and a heartbeat at once."""
_RETRY_ON_A_NEW_CONNECTION = frozenset(("GET", "HEAD", "PUT", "DELETE", "OPTIONS"))
"""Idempotent methods: when a reused connection turns out to be closed by the server (it
may close an idle connection just as we send), these are sent again on a new one."""

# The client writes these itself (one connection per request, one body per request).
_OWN_FIELDS = frozenset(("host", "connection", "content-length", "transfer-encoding"))
_BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request. ``url`` is absolute (``http://`` or ``https://``, query included);
    ``headers`` are sent as given, after ``Host`` and before the framing the client
    writes itself; ``tls`` is the context an ``https://`` URL is verified with (the
    hostname checked, and sent as SNI, is the URL's host). ``timeout_s`` bounds the whole
    request, ``connect_timeout_s`` connecting (TCP and TLS)."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    tls: ssl.SSLContext | None = field(default=None, repr=False)
    timeout_s: float = REQUEST_TIMEOUT_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S

    @property
    def path(self) -> str:
        return urlsplit(self.url).path or "/"

    @property
    def params(self) -> dict[str, str]:
        """The query's parameters (the last value of a repeated one)."""
        return dict(parse_qsl(urlsplit(self.url).query, keep_blank_values=True))

    def header(self, name: str) -> str | None:
        """The first field called ``name`` (any case), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def json(self) -> Any:
        """The body decoded as JSON (ValueError when it is not)."""
        return json.loads(self.body or b"")


def build_request(
    method: str,
    url: str,
    *,
    params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    json_body: Any = None,
    body: bytes | None = None,
    headers: Iterable[tuple[str, str]] = (),
    tls: ssl.SSLContext | None = None,
    timeout_s: float = REQUEST_TIMEOUT_S,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> HttpRequest:
    """A request with ``params`` added to the URL's query (percent-encoded) and
    ``json_body`` (not None) encoded as the body, ``Content-Type: application/json``."""
    fields = list(headers)
    if json_body is not None:
        body = json.dumps(json_body, ensure_ascii=False, separators=(",", ":")).encode()
        fields.append(("Content-Type", "application/json"))
    if params:
        pairs = params.items() if isinstance(params, Mapping) else params
        # Form-encoded (a space is "+"), as httpx wrote queries: the same bytes as before.
        url += ("&" if "?" in url else "?") + urlencode(list(pairs))
    return HttpRequest(method, url, tuple(fields), body, tls, timeout_s, connect_timeout_s)


class ResponseHeaders(Mapping[str, str]):
    """A response's header fields by name, in any case; the values of a repeated field
    joined with ``", "``."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        pairs = fields.items() if isinstance(fields, Mapping) else fields
        merged: dict[str, str] = {}
        for name, value in pairs:
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        self._fields = merged

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"ResponseHeaders({self._fields!r})"


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A complete answer. ``reason`` is the status line's phrase as sent (may be empty:
    :attr:`reason_phrase` falls back to the standard one)."""

    status: int
    headers: ResponseHeaders = field(default_factory=ResponseHeaders)
    body: bytes = b""
    reason: str = ""

    @classmethod
    def of(
        cls,
        status: int,
        *,
        json_body: Any = None,
        body: bytes = b"",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    ) -> HttpResponse:
        """An answer made up (by a fake server in tests): ``json_body`` encoded as the
        body with ``Content-Type: application/json`` unless ``headers`` give one."""
        fields = ResponseHeaders(headers)
        if json_body is not None:
            body = json.dumps(json_body).encode()
            if "content-type" not in fields:
                fields = ResponseHeaders([*fields.items(), ("content-type", "application/json")])
        return cls(status, fields, body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @property
    def reason_phrase(self) -> str:
        if self.reason:
            return self.reason
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:
            return ""

    def json(self) -> Any:
        """The body decoded as JSON (ValueError when it is not)."""
        return json.loads(self.body)


Send = Callable[[HttpRequest], Awaitable[HttpResponse]]
"""What sends a request: :func:`send`, or a fake in tests. Raises
:class:`~sidecar.errors.HttpClientError` when no complete answer came."""


# --- sending ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    https: bool
    host: str
    """As connected to, verified and sent as SNI (an IPv6 address without brackets)."""
    port: int
    authority: str
    """The Host field."""
    target: bytes
    """The request target: path and query."""


def _target_of(request: HttpRequest) -> _Target:
    def bad(reason: str) -> HttpClientError:
        return HttpClientError(request.method, request.url, reason)

    parts = urlsplit(request.url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise bad("not an http:// or https:// URL with a host")
    try:
        port = parts.port
    except ValueError as exc:
        raise bad(f"bad port: {exc}") from None
    https = scheme == "https"
    if https and request.tls is None:
        raise bad("an https:// URL needs a TLS context")
    default = 443 if https else 80
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port in (None, default) else f"{shown}:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        target = path.encode("ascii")
    except UnicodeEncodeError:
        raise bad("the path is not ASCII: percent-encode it") from None
    return _Target(https, host, port or default, authority, target)


async def send(request: HttpRequest) -> HttpResponse:
    """Send ``request`` on a new connection and return the complete answer, whatever its
    status. Raises :class:`~sidecar.errors.ConnectError` (:class:`~sidecar.errors.TlsError`
    for a failed handshake), :class:`~sidecar.errors.HttpTimeout`,
    :class:`~sidecar.errors.ConnectionLost` or :class:`~sidecar.errors.MalformedResponse`."""
    where = _target_of(request)
    with trio.move_on_after(request.timeout_s):
        stream = await _connect(request, where)
        try:
            return await _exchange(stream, request, where)
        finally:
            await _close(stream)
    raise HttpTimeout(
        request.method, request.url, f"no complete answer within {request.timeout_s:g} s"
    )


async def _connect(request: HttpRequest, where: _Target) -> trio.abc.Stream:
    with trio.move_on_after(request.connect_timeout_s):
        try:
            tcp = await trio.open_tcp_stream(where.host, where.port)
        except OSError as exc:
            raise ConnectError(request.method, request.url, _os_reason(exc)) from exc
        if not where.https:
            return tcp
        assert request.tls is not None  # checked by _target_of
        stream = trio.SSLStream(tcp, request.tls, server_hostname=where.host, https_compatible=True)
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            await trio.aclose_forcefully(tcp)
            raise TlsError(request.method, request.url, _tls_reason(exc)) from exc
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        return stream
    raise HttpTimeout(
        request.method, request.url, f"no connection within {request.connect_timeout_s:g} s"
    )


class ConnectionPool:
    """Sends like :func:`send`, keeping connections alive for the next request to the
    same server with the same TLS context (see the module docstring). Use one per
    client object; :meth:`aclose` closes the idle connections."""

    def __init__(self) -> None:
        self._idle: dict[tuple[bool, str, int, ssl.SSLContext | None], list[_Pooled]] = {}
        self._connections = 0

    @property
    def connections_made(self) -> int:
        """How many connections this pool has opened (for tests and logs)."""
        return self._connections

    async def send(self, request: HttpRequest) -> HttpResponse:
        """As :func:`send`. A request on a reused connection that the server had closed
        is sent again on a new connection when its method is idempotent."""
        where = _target_of(request)
        key = (where.https, where.host, where.port, request.tls)
        with trio.move_on_after(request.timeout_s):
            pooled = self._take(key)
            if pooled is not None:
                try:
                    return await self._send_on(key, pooled, request, where)
                except ConnectionLost:
                    if request.method.upper() not in _RETRY_ON_A_NEW_CONNECTION:
                        raise
            stream = await _connect(request, where)
            self._connections += 1
            return await self._send_on(key, _Pooled(stream), request, where)
        raise HttpTimeout(
            request.method, request.url, f"no complete answer within {request.timeout_s:g} s"
        )

    async def _send_on(
        self,
        key: tuple[bool, str, int, ssl.SSLContext | None],
        pooled: _Pooled,
        request: HttpRequest,
        where: _Target,
    ) -> HttpResponse:
        """One exchange on ``pooled``; it goes back to the pool when it may carry another
        request, and is closed otherwise (also when the exchange fails)."""
        conn = ClientConnection()
        kept = False
        try:
            response = await _exchange(pooled.stream, request, where, conn, keep_alive=True)
            if conn.keep_alive and not conn.trailing_data:
                pooled.since = trio.current_time()
                self._idle.setdefault(key, []).append(pooled)
                kept = True
                self._trim(key)
            return response
        finally:
            if not kept:
                await _close(pooled.stream)

    def _take(self, key: tuple[bool, str, int, ssl.SSLContext | None]) -> _Pooled | None:
        """The most recently used idle connection that is still open and quiet, if any;
        the expired ones of every server are dropped on the way."""
        now = trio.current_time()
        for other in list(self._idle):
            fresh = []
            for pooled in self._idle[other]:
                if now - pooled.since <= IDLE_REUSE_S:
                    fresh.append(pooled)
                else:
                    _close_now(pooled.stream)
            if fresh:
                self._idle[other] = fresh
            else:
                del self._idle[other]
        waiting = self._idle.get(key)
        while waiting:
            pooled = waiting.pop()
            if _quiet(pooled.stream):
                return pooled
            _close_now(pooled.stream)
        return None

    def _trim(self, key: tuple[bool, str, int, ssl.SSLContext | None]) -> None:
        waiting = self._idle[key]
        while len(waiting) > MAX_IDLE_PER_ORIGIN:
            _close_now(waiting.pop(0).stream)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for waiting in idle.values():
            for pooled in waiting:
                await _close(pooled.stream)


@dataclass(slots=True)
class _Pooled:
    stream: trio.abc.Stream
    since: float = 0.0


def _raw_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    return inner.socket if isinstance(inner, trio.SocketStream) else None


def _quiet(stream: trio.abc.Stream) -> bool:
    """An idle keep-alive connection is reusable while the server has sent nothing: no
    end of stream, no TLS close_notify, no stray bytes (a poll; nothing is read)."""
    sock = _raw_socket(stream)
    return sock is not None and not sock.is_readable()


def _close_now(stream: trio.abc.Stream) -> None:
    """Close without a TLS close_notify (from synchronous code; the server is idle)."""
    sock = _raw_socket(stream)
    if sock is not None:
        sock.close()


def _head_fields(
    request: HttpRequest, where: _Target, *, keep_alive: bool = False
) -> list[tuple[str, str]]:
    fields = [("Host", where.authority)]
    fields += [(k, v) for k, v in request.headers if k.lower() not in _OWN_FIELDS]
    body = request.body or b""
    if body or request.method.upper() in _BODY_METHODS:
        fields.append(("Content-Length", str(len(body))))
    if not keep_alive:
        fields.append(("Connection", "close"))
    return fields


async def _exchange(
    stream: trio.abc.Stream,
    request: HttpRequest,
    where: _Target,
    conn: ClientConnection | None = None,
    *,
    keep_alive: bool = False,
) -> HttpResponse:
    method, url = request.method, request.url
    conn = conn or ClientConnection()
    try:
        head = Request(
            method.upper().encode("ascii"),
            where.target,
            Headers(_head_fields(request, where, keep_alive=keep_alive)),
        )
        out = conn.send(head)
        if request.body:
            out += conn.send(Data(request.body))
        out += conn.send(EndOfMessage())
    except (LocalProtocolError, UnicodeEncodeError) as exc:
        raise HttpClientError(method, url, f"cannot send this request: {exc}") from exc
    try:
        await stream.send_all(out)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ConnectionLost(method, url, f"sending the request failed: {_broken(exc)}") from exc
    answer: Response | None = None
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            data = await stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLost(method, url, _broken(exc)) from exc
        try:
            events = conn.receive_data(bytes(data))  # (no copy when it is bytes already)
        except RemoteProtocolError as exc:
            raise MalformedResponse(method, url, _protocol_reason(exc)) from exc
        for event in events:
            if isinstance(event, Response):
                answer = event
            elif isinstance(event, Data):
                size += len(event.data)
                if size > MAX_RESPONSE_BYTES:
                    raise MalformedResponse(
                        method, url, f"the body is larger than {MAX_RESPONSE_BYTES} bytes"
                    )
                chunks.append(event.data)
            elif isinstance(event, EndOfMessage) and answer is not None:
                return _response(answer, b"".join(chunks))
            elif isinstance(event, ConnectionClosed):
                raise ConnectionLost(
                    method, url, "the server closed the connection without answering"
                )
            # (1xx heads are skipped: the final answer follows.)
        if not data:  # the parser ends every message at the end of the stream; defensive
            raise ConnectionLost(method, url, "the connection ended before the answer did")


def _response(head: Response, body: bytes) -> HttpResponse:
    fields = ResponseHeaders((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers)
    return HttpResponse(head.status, fields, body, head.reason.decode("latin-1"))


async def _close(stream: trio.abc.Stream) -> None:
    """Bounded, and also while the caller is being cancelled (the connection must not
    leak); a broken connection has nothing left to say."""
    with (
        trio.move_on_after(CLOSE_TIMEOUT_S, shield=True),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        await stream.aclose()


# --- reasons, as the OS, OpenSSL or the parser put them ----------------------------------------


def _os_reason(exc: OSError) -> str:
    """``[Errno 111] Connection refused``, once per distinct failure of every address
    tried (Trio reports them in an exception group behind a generic message)."""
    group = exc.__cause__
    failures = list(group.exceptions) if isinstance(group, BaseExceptionGroup) else [exc]
    reasons: list[str] = []
    for failure in failures:
        if isinstance(failure, OSError) and failure.errno is not None and failure.errno > 0:
            text = f"[Errno {failure.errno}] {os.strerror(failure.errno)}"
        else:
            text = str(failure) or type(failure).__name__
        if text not in reasons:
            reasons.append(text)
    return "; ".join(reasons)


def _tls_reason(exc: trio.BrokenResourceError) -> str:
    """OpenSSL's reason (``[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed:
    ...``), kept whole: callers add hints keyed on it."""
    cause = exc.__cause__
    if cause is not None and str(cause):
        return str(cause)
    return "the server closed the connection during the TLS handshake"


def _broken(exc: trio.BrokenResourceError | trio.ClosedResourceError) -> str:
    cause = exc.__cause__
    if isinstance(cause, OSError) and not isinstance(cause, ssl.SSLError) and cause.errno:
        return f"[Errno {cause.errno}] {os.strerror(cause.errno)}"
    return str(cause or exc) or "the connection broke"


def _protocol_reason(exc: RemoteProtocolError) -> str:
    # The sans-IO layer words it for the proxy ("... from the upstream"); here the server
    # is the one we asked.
    return exc.reason.removeprefix("invalid response from the upstream: ")
