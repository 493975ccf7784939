"""ServerConnection: requests in, responses out; keep-alive, pipelining, 100-continue,
Upgrade and CONNECT, the end of stream."""

from __future__ import annotations

import pytest

from sidecar.protocol import (
    CLOSED,
    DONE,
    ERROR,
    IDLE,
    MIGHT_SWITCH_PROTOCOL,
    MUST_CLOSE,
    SEND_BODY,
    SEND_RESPONSE,
    SWITCHED_PROTOCOL,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Headers,
    InformationalResponse,
    LocalProtocolError,
    RemoteProtocolError,
    Request,
    Response,
    ServerConnection,
)
from tests.protocol.support import coalesce

GET = b"GET /items?x=1 HTTP/1.1\r\nHost: svc\r\nAccept: */*\r\n\r\n"


def respond(conn: ServerConnection, status: int = 200, body: bytes = b"") -> bytes:
    headers = Headers([(b"content-length", b"%d" % len(body))])
    out = conn.send(Response(status, headers))
    if body:
        out += conn.send(Data(body))
    return out + conn.send(EndOfMessage())


# --- requests ------------------------------------------------------------------------------


def test_a_simple_get() -> None:
    conn = ServerConnection()
    assert (conn.their_state, conn.our_state) == (IDLE, IDLE)
    events = conn.receive_data(GET)
    assert events == [
        Request(b"GET", b"/items?x=1", Headers([(b"host", b"svc"), (b"accept", b"*/*")])),
        EndOfMessage(),
    ]
    request = events[0]
    assert isinstance(request, Request)
    assert request.http_version == b"1.1"
    assert not request.expects_continue
    assert (conn.their_state, conn.our_state) == (DONE, SEND_RESPONSE)
    assert conn.keep_alive


def test_header_fields_are_kept_in_order_lowercased_and_trimmed() -> None:
    raw = (
        b"GET / HTTP/1.1\r\nHost: svc\r\nX-Multi: a\r\nX-EMPTY:\r\n"
        b"X-Space:   padded value \t\r\nx-multi: b\r\nX-Obs: caf\xe9\r\n\r\n"
    )
    (request, _) = ServerConnection().receive_data(raw)
    assert isinstance(request, Request)
    assert request.headers == [
        (b"host", b"svc"),
        (b"x-multi", b"a"),
        (b"x-empty", b""),
        (b"x-space", b"padded value"),
        (b"x-multi", b"b"),
        (b"x-obs", b"caf\xe9"),
    ]
    assert request.headers.get(b"X-Multi") == b"a"
    assert request.headers.get_all(b"x-multi") == [b"a", b"b"]


@pytest.mark.parametrize(
    "target",
    [b"/", b"*", b"http://reviews.default/a?b=c", b"/a%20b?q=%2F#frag", b"/~user/;p=1"],
)
def test_request_targets_are_kept_as_sent(target: bytes) -> None:
    method = b"OPTIONS" if target == b"*" else b"GET"
    (request, _) = ServerConnection().receive_data(
        method + b" " + target + b" HTTP/1.1\r\nHost: svc\r\n\r\n"
    )
    assert isinstance(request, Request)
    assert request.target == target


def test_a_body_by_content_length_streams_without_copies() -> None:
    conn = ServerConnection()
    events = conn.receive_data(b"POST /u HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\nab")
    assert events[1:] == [Data(b"ab")]
    assert conn.their_state is SEND_BODY
    piece = b"cdef"
    (data,) = conn.receive_data(piece)
    assert isinstance(data, Data)
    assert data.data is piece  # a read that is all body is passed on as it is
    assert conn.receive_data(b"ghij") == [Data(b"ghij"), EndOfMessage()]
    assert conn.their_state is DONE


def test_content_length_zero_ends_at_once() -> None:
    conn = ServerConnection()
    events = conn.receive_data(b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 0\r\n\r\n")
    assert events[1:] == [EndOfMessage()]


def test_a_chunked_body_with_extensions_and_trailers() -> None:
    conn = ServerConnection()
    raw = (
        b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: Chunked\r\n\r\n"
        b'5;name=value;q="quoted \\" str"\r\nhello\r\n'
        b"1 ; ext\r\n \r\n"
        b"00006\r\nworld!\r\n"
        b"0\r\nX-Checksum: abc\r\nX-Other:  1 \r\n\r\n"
    )
    events = conn.receive_data(raw)
    assert events[1:] == [
        Data(b"hello world!"),
        EndOfMessage(Headers([(b"x-checksum", b"abc"), (b"x-other", b"1")])),
    ]
    assert conn.their_state is DONE


def test_a_chunked_body_byte_by_byte() -> None:
    conn = ServerConnection()
    raw = (
        b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n10\r\n" + b"x" * 16 + b"\r\n0\r\nT: 1\r\n\r\n"
    )
    events = []
    for i in range(len(raw)):
        events += conn.receive_data(raw[i : i + 1])
    assert coalesce(events)[1:] == [
        Data(b"abc" + b"x" * 16),
        EndOfMessage(Headers([(b"t", b"1")])),
    ]


def test_http10_request_is_not_kept_alive() -> None:
    conn = ServerConnection()
    events = conn.receive_data(b"GET / HTTP/1.0\r\n\r\n")
    request = events[0]
    assert isinstance(request, Request)
    assert request.http_version == b"1.0"
    assert not conn.keep_alive
    assert conn.their_state is MUST_CLOSE
    # a body of unknown length goes until the close; chunked is not for HTTP/1.0
    head = conn.send(Response(200, Headers([(b"transfer-encoding", b"chunked")])))
    assert head == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n"
    assert conn.send(Data(b"abc")) == b"abc"
    assert conn.send(EndOfMessage()) == b""
    assert conn.our_state is MUST_CLOSE


def test_connection_close_request() -> None:
    conn = ServerConnection()
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive, Close\r\n\r\n")
    assert not conn.keep_alive
    assert conn.their_state is MUST_CLOSE
    out = respond(conn, body=b"ok")
    assert b"\r\nconnection: close\r\n" in out
    assert conn.our_state is MUST_CLOSE
    assert conn.receive_data(GET) == []  # nothing after a last request is read
    assert conn.trailing_data == b""
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()


# --- keep-alive and pipelining -------------------------------------------------------------


def test_keep_alive_cycles() -> None:
    conn = ServerConnection()
    for _ in range(3):
        assert conn.receive_data(GET)[-1] == EndOfMessage()
        respond(conn, body=b"hi")
        assert (conn.their_state, conn.our_state) == (DONE, DONE)
        assert conn.start_next_cycle() == []
        assert (conn.their_state, conn.our_state) == (IDLE, IDLE)


def test_start_next_cycle_needs_both_sides_done() -> None:
    conn = ServerConnection()
    conn.receive_data(GET)
    with pytest.raises(LocalProtocolError, match="both sides DONE"):
        conn.start_next_cycle()


def test_pipelined_requests_wait_for_their_turn() -> None:
    conn = ServerConnection()
    post = b"POST /b HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabc"
    events = conn.receive_data(GET + post + b"GET /c HTTP/1.1\r\nHo")
    assert [type(e) for e in events] == [Request, EndOfMessage]
    assert conn.trailing_data.startswith(b"POST /b")
    # more of the third request arrives while the first is answered: not parsed either
    assert conn.receive_data(b"st: svc\r\n\r\n") == []
    respond(conn)
    second = conn.start_next_cycle()
    assert [type(e) for e in second] == [Request, Data, EndOfMessage]
    assert isinstance(second[0], Request)
    assert second[0].target == b"/b"
    respond(conn)
    third = conn.start_next_cycle()
    assert isinstance(third[0], Request)
    assert third[0].target == b"/c"


def test_empty_lines_between_requests_are_ignored() -> None:
    conn = ServerConnection()
    events = conn.receive_data(b"\r\n\r\n" + GET)
    assert isinstance(events[0], Request)
    respond(conn)
    conn.receive_data(b"\r\n")
    assert conn.start_next_cycle() == []
    assert isinstance(conn.receive_data(GET)[0], Request)


def test_a_response_may_come_before_the_request_body() -> None:
    """An early answer (413, 401): the body can still be read (and dropped) to reuse the
    connection, or the connection closed."""
    conn = ServerConnection()
    conn.receive_data(b"PUT / HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\n\r\n")
    respond(conn, 413)
    assert (conn.their_state, conn.our_state) == (SEND_BODY, DONE)
    assert conn.receive_data(b"abcd") == [Data(b"abcd"), EndOfMessage()]
    assert conn.start_next_cycle() == []


# --- Expect: 100-continue ------------------------------------------------------------------

EXPECT = b"PUT /f HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\nExpect: 100-Continue\r\n\r\n"


def test_expect_100_continue() -> None:
    conn = ServerConnection()
    (request,) = conn.receive_data(EXPECT)
    assert isinstance(request, Request)
    assert (request.expects_continue, conn.expects_continue) == (True, True)
    assert conn.send(InformationalResponse(100)) == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert not conn.expects_continue
    assert conn.our_state is SEND_RESPONSE
    assert conn.receive_data(b"abc") == [Data(b"abc"), EndOfMessage()]
    respond(conn)
    assert conn.keep_alive


def test_expect_100_continue_answered_with_a_final_response_closes() -> None:
    conn = ServerConnection()
    conn.receive_data(EXPECT)
    out = respond(conn, 417)
    assert b"connection: close" in out
    assert not conn.expects_continue
    assert conn.our_state is MUST_CLOSE


def test_the_client_may_stop_waiting_for_100() -> None:
    conn = ServerConnection()
    conn.receive_data(EXPECT)
    conn.receive_data(b"a")
    assert not conn.expects_continue


def test_expect_is_ignored_in_http10_and_without_a_body() -> None:
    conn = ServerConnection()
    conn.receive_data(b"PUT / HTTP/1.0\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n")
    assert not conn.expects_continue
    assert conn.send(InformationalResponse(100)) == b""  # no 1xx to HTTP/1.0
    conn = ServerConnection()
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n")
    assert not conn.expects_continue


# --- Upgrade and CONNECT -------------------------------------------------------------------

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive, Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_upgrade_accepted_switches_and_keeps_early_bytes() -> None:
    conn = ServerConnection()
    events = conn.receive_data(UPGRADE + b"\x81\x85frame")
    assert [type(e) for e in events] == [Request, EndOfMessage]
    assert conn.their_state is MIGHT_SWITCH_PROTOCOL
    assert conn.receive_data(b"-more") == []
    head = conn.send(
        InformationalResponse(
            101, Headers([(b"upgrade", b"websocket"), (b"connection", b"Upgrade")])
        )
    )
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert (conn.their_state, conn.our_state) == (SWITCHED_PROTOCOL, SWITCHED_PROTOCOL)
    assert conn.trailing_data == b"\x81\x85frame-more"
    with pytest.raises(LocalProtocolError, match="switched"):
        conn.receive_data(b"x")


def test_upgrade_declined_reads_the_next_request() -> None:
    conn = ServerConnection()
    conn.receive_data(UPGRADE + GET)
    respond(conn, 426)
    assert (conn.their_state, conn.our_state) == (DONE, DONE)
    (request, _) = conn.start_next_cycle()
    assert isinstance(request, Request)
    assert request.target == b"/items?x=1"


def test_upgrade_needs_the_connection_option() -> None:
    conn = ServerConnection()
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: svc\r\nUpgrade: websocket\r\n\r\n")
    assert conn.their_state is DONE
    with pytest.raises(LocalProtocolError, match="Upgrade request"):
        conn.send(InformationalResponse(101, Headers([(b"upgrade", b"websocket")])))
    assert conn.our_state is ERROR


def test_101_names_the_protocol() -> None:
    conn = ServerConnection()
    conn.receive_data(UPGRADE)
    with pytest.raises(LocalProtocolError, match="Upgrade"):
        conn.send(InformationalResponse(101))


def test_connect_accepted_is_a_tunnel() -> None:
    conn = ServerConnection()
    events = conn.receive_data(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n\x00\x01")
    request = events[0]
    assert isinstance(request, Request)
    assert (request.method, request.target) == (b"CONNECT", b"db:5432")
    assert conn.their_state is MIGHT_SWITCH_PROTOCOL
    assert conn.send(Response(200)) == b"HTTP/1.1 200 OK\r\n\r\n"
    assert conn.our_state is SWITCHED_PROTOCOL
    assert conn.trailing_data == b"\x00\x01"


def test_connect_2xx_has_no_framing() -> None:
    conn = ServerConnection()
    conn.receive_data(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n")
    with pytest.raises(LocalProtocolError, match="CONNECT"):
        conn.send(Response(200, Headers([(b"content-length", b"0")])))


def test_connect_refused_is_an_ordinary_response() -> None:
    conn = ServerConnection()
    conn.receive_data(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n")
    respond(conn, 403, b"no")
    assert (conn.their_state, conn.our_state) == (DONE, DONE)


# --- responses -----------------------------------------------------------------------------


def test_content_length_is_enforced_both_ways() -> None:
    conn = ServerConnection()
    conn.receive_data(GET)
    conn.send(Response(200, Headers([(b"content-length", b"5")])))
    assert conn.send(Data(b"abc")) == b"abc"
    with pytest.raises(LocalProtocolError, match="exceed"):
        conn.send(Data(b"def"))
    assert conn.our_state is ERROR
    conn = ServerConnection()
    conn.receive_data(GET)
    conn.send(Response(200, Headers([(b"content-length", b"5")])))
    conn.send(Data(b"abc"))
    with pytest.raises(LocalProtocolError, match="short"):
        conn.send(EndOfMessage())


def test_chunked_is_chosen_when_there_is_no_length() -> None:
    conn = ServerConnection()
    conn.receive_data(GET)
    out = conn.send(Response(200, Headers([(b"content-type", b"text/plain")])))
    assert (
        out == b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    assert conn.send(Data(b"")) == b""
    assert conn.send(Data(b"x" * 300)) == b"12c\r\n" + b"x" * 300 + b"\r\n"
    assert conn.send(EndOfMessage(Headers([(b"x-sum", b"1")]))) == b"0\r\nx-sum: 1\r\n\r\n"


def test_trailers_are_dropped_without_chunked() -> None:
    conn = ServerConnection()
    conn.receive_data(GET)
    conn.send(Response(200, Headers([(b"content-length", b"1")])))
    conn.send(Data(b"a"))
    assert conn.send(EndOfMessage(Headers([(b"x-sum", b"1")]))) == b""


def test_framing_trailers_are_refused() -> None:
    conn = ServerConnection()
    conn.receive_data(GET)
    conn.send(Response(200))
    with pytest.raises(LocalProtocolError, match="trailer"):
        conn.send(EndOfMessage(Headers([(b"content-length", b"1")])))


@pytest.mark.parametrize(("method", "status"), [(b"HEAD", 200), (b"GET", 204), (b"GET", 304)])
def test_responses_without_body(method: bytes, status: int) -> None:
    conn = ServerConnection()
    conn.receive_data(method + b" / HTTP/1.1\r\nHost: svc\r\n\r\n")
    head = conn.send(Response(status, Headers([(b"content-length", b"42")])))
    assert head.endswith(b"content-length: 42\r\n\r\n")
    assert b"transfer-encoding" not in head
    assert conn.send(Data(b"")) == b""
    with pytest.raises(LocalProtocolError, match="can't have a body"):
        conn.send(Data(b"x"))


def test_reason_phrases() -> None:
    conn = ServerConnection()
    conn.receive_data(GET)
    assert conn.send(Response(299, Headers([(b"content-length", b"0")]))).startswith(
        b"HTTP/1.1 299 \r\n"
    )
    conn = ServerConnection()
    conn.receive_data(GET)
    assert conn.send(Response(404, reason=b"Nope")).startswith(b"HTTP/1.1 404 Nope\r\n")
    conn = ServerConnection()
    conn.receive_data(GET)
    with pytest.raises(LocalProtocolError, match="reason"):
        conn.send(Response(200, reason=b"OK\r\nX-Injected: 1"))


def test_headers_built_from_pairs_are_validated() -> None:
    conn = ServerConnection()
    conn.receive_data(GET)
    with pytest.raises(LocalProtocolError, match="control"):
        conn.send(Response(200, Headers([(b"x-a", b"1\r\nx-injected: 1")])))
    conn = ServerConnection()
    conn.receive_data(GET)
    head = conn.send(Response(200, Headers([("X-A", "1"), ("Content-Length", "0")])))
    assert head == b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 0\r\n\r\n"


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ([(b"content-length", b"1"), (b"content-length", b"1")], "more than one"),
        ([(b"content-length", b"-1")], "not a number"),
        ([(b"transfer-encoding", b"gzip")], "chunked"),
        ([(b"transfer-encoding", b"chunked"), (b"content-length", b"1")], "both"),
    ],
)
def test_our_own_framing_is_checked(fields: list[tuple[bytes, bytes]], match: str) -> None:
    conn = ServerConnection()
    conn.receive_data(GET)
    with pytest.raises(LocalProtocolError, match=match):
        conn.send(Response(200, Headers(fields)))


@pytest.mark.parametrize("status", [99, 100, 600, 1000])
def test_final_status_range(status: int) -> None:
    conn = ServerConnection()
    conn.receive_data(GET)
    with pytest.raises(LocalProtocolError, match="200-599"):
        conn.send(Response(status))


def test_wrong_events_for_the_state() -> None:
    conn = ServerConnection()
    with pytest.raises(LocalProtocolError, match="SERVER"):
        conn.send(Data(b"x"))
    assert conn.our_state is ERROR
    conn = ServerConnection()
    with pytest.raises(LocalProtocolError, match="server can't send Request"):
        conn.send(Request(b"GET", b"/"))


def test_a_response_to_no_request_closes() -> None:
    """408 on an idle connection, or a 400 to bytes that were no request."""
    conn = ServerConnection()
    out = respond(conn, 408)
    assert b"connection: close" in out
    assert conn.our_state is MUST_CLOSE


def test_send_error() -> None:
    conn = ServerConnection()
    with pytest.raises(RemoteProtocolError) as caught:
        conn.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    out = conn.send_error(caught.value)
    head, body = out.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"content-length: %d" % len(body) in head
    assert body == b"Bad Request: no Host field\n"
    assert conn.our_state is MUST_CLOSE


def test_send_error_to_head_has_no_body() -> None:
    conn = ServerConnection()
    conn.receive_data(b"HEAD / HTTP/1.1\r\nHost: svc\r\n\r\n")
    out = conn.send_error(RemoteProtocolError(503, "no upstream"))
    assert out.endswith(b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")


def test_send_error_after_our_response_began() -> None:
    conn = ServerConnection()
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.send(Response(200))
    with pytest.raises(RemoteProtocolError) as caught:
        conn.receive_data(b"zz\r\n")
    assert conn.send_error(caught.value) == b""
    assert not conn.keep_alive


# --- the end of stream ---------------------------------------------------------------------


def test_clean_close_between_requests() -> None:
    conn = ServerConnection()
    assert conn.receive_data(b"") == [ConnectionClosed()]
    assert conn.their_state is CLOSED
    assert conn.eof_received
    assert conn.receive_data(b"") == []
    with pytest.raises(LocalProtocolError, match="after the end"):
        conn.receive_data(b"x")


def test_close_after_a_complete_request_still_allows_the_response() -> None:
    conn = ServerConnection()
    conn.receive_data(GET)
    assert conn.receive_data(b"") == [ConnectionClosed()]
    assert conn.their_state is CLOSED
    respond(conn)
    assert conn.our_state is DONE


def test_close_in_the_middle_of_a_head_or_body() -> None:
    conn = ServerConnection()
    conn.receive_data(b"GET / HTT")
    with pytest.raises(RemoteProtocolError, match="middle of a request head"):
        conn.receive_data(b"")
    conn = ServerConnection()
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(RemoteProtocolError, match="3 bytes before the end"):
        conn.receive_data(b"")
    conn = ServerConnection()
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(RemoteProtocolError, match="before the end of the message body"):
        conn.receive_data(b"")


def test_pipelined_request_then_close() -> None:
    conn = ServerConnection()
    conn.receive_data(GET + GET)
    assert conn.receive_data(b"") == []  # the second request is not parsed yet
    respond(conn)
    events = conn.start_next_cycle()
    assert [type(e) for e in events] == [Request, EndOfMessage, ConnectionClosed]
    assert conn.their_state is CLOSED
    respond(conn)
    assert conn.our_state is DONE


def test_send_connection_closed() -> None:
    conn = ServerConnection()
    assert conn.send(ConnectionClosed()) == b""
    assert conn.our_state is CLOSED


def test_bytes_that_are_no_request_are_refused_at_once() -> None:
    """A TLS ClientHello on a plaintext port: refused without waiting for a head."""
    conn = ServerConnection()
    with pytest.raises(RemoteProtocolError, match=r"not an HTTP/1\.1 request") as caught:
        conn.receive_data(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    assert caught.value.status_hint == 400


def test_a_long_pipelined_request_is_kept_until_its_turn() -> None:
    conn = ServerConnection()
    conn.receive_data(GET)
    second = b"PUT /big HTTP/1.1\r\nHost: svc\r\nContent-Length: 100000\r\n\r\n"
    conn.receive_data(second)
    for _ in range(1000):
        assert conn.receive_data(b"z" * 100) == []
    respond(conn)
    events = conn.start_next_cycle()
    assert coalesce(events)[1:] == [Data(b"z" * 100000), EndOfMessage()]


def test_no_101_to_http10() -> None:
    conn = ServerConnection()
    conn.receive_data(b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    with pytest.raises(LocalProtocolError, match="Upgrade request"):
        conn.send(InformationalResponse(101, Headers([(b"upgrade", b"websocket")])))


@pytest.mark.parametrize("headers", [{b"a": b"b"}, [b"ab"], 42, [(b"a", b"b", b"c")]])
def test_headers_that_are_not_pairs(headers: object) -> None:
    with pytest.raises(LocalProtocolError, match=r"\(name, value\) pair"):
        Headers(headers)  # type: ignore[arg-type]


REAL_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
    (
        b"GET /index.html?q=caf%C3%A9 HTTP/1.1\r\nHost: example.internal\r\n"
        b'Connection: keep-alive\r\nsec-ch-ua: "Chromium";v="124"\r\n'
        b"Upgrade-Insecure-Requests: 1\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
        b"Accept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.8\r\n"
        b"Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n"
        b'Cookie: a=1; b="x y"; c=\xc3\xa9\r\n\r\n'
    ),
    (
        b"POST /upload HTTP/1.1\r\nHost: svc:9080\r\nUser-Agent: Go-http-client/1.1\r\n"
        b"Transfer-Encoding: chunked\r\nAccept-Encoding: gzip\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    ),
    (
        b"PUT /obj HTTP/1.1\r\nHost: s3.local\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\nContent-Type: application/octet-stream\r\n\r\nhello"
    ),
    (
        b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Origin: http://example.com\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ),
    b"GET http://reviews:9080/reviews/0 HTTP/1.1\r\nHost: reviews:9080\r\n\r\n",
    b"CONNECT ratings.default.svc:9080 HTTP/1.1\r\nHost: ratings.default.svc:9080\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: svc\r\n\r\n",
    b"DELETE /items/7 HTTP/1.0\r\n\r\n",
]


@pytest.mark.parametrize("raw", REAL_REQUESTS)
def test_real_clients_requests_are_accepted(raw: bytes) -> None:
    conn = ServerConnection()
    events = conn.receive_data(raw)
    assert isinstance(events[0], Request)
    assert events[-1] == EndOfMessage()
