"""ClientConnection: requests out, responses in, read knowing the request's method; an
upstream's ambiguous response is refused (the proxy answers 502)."""

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
    ClientConnection,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Headers,
    InformationalResponse,
    LocalProtocolError,
    RemoteProtocolError,
    Request,
    Response,
)
from tests.protocol.support import client_for, coalesce, response_error

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


def host(*more: tuple[bytes, bytes]) -> Headers:
    return Headers([(b"host", b"svc"), *more])


# --- requests ------------------------------------------------------------------------------


def test_request_head_bytes() -> None:
    conn = ClientConnection()
    out = conn.send(Request(b"GET", b"/a?b=c", host((b"x-request-id", b"42"))))
    assert out == b"GET /a?b=c HTTP/1.1\r\nhost: svc\r\nx-request-id: 42\r\n\r\n"
    assert (conn.our_state, conn.their_state) == (SEND_BODY, SEND_RESPONSE)
    assert conn.send(EndOfMessage()) == b""
    assert conn.our_state is DONE


def test_request_with_content_length() -> None:
    conn = ClientConnection()
    conn.send(Request(b"POST", b"/", host((b"content-length", b"3"))))
    assert conn.send(Data(b"ab")) == b"ab"
    with pytest.raises(LocalProtocolError, match="exceed"):
        conn.send(Data(b"cd"))
    assert conn.our_state is ERROR


def test_request_with_chunked_body() -> None:
    conn = ClientConnection()
    conn.send(Request(b"POST", b"/", host((b"transfer-encoding", b"chunked"))))
    assert conn.send(Data(b"abc")) == b"3\r\nabc\r\n"
    assert conn.send(Data(b"de")) == b"2\r\nde\r\n"
    assert conn.send(EndOfMessage()) == b"0\r\n\r\n"


def test_request_without_framing_has_no_body() -> None:
    conn = ClientConnection()
    conn.send(Request(b"GET", b"/", host()))
    with pytest.raises(LocalProtocolError, match="neither Content-Length nor"):
        conn.send(Data(b"x"))


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (Request(b"GET", b"/", Headers()), "Host"),
        (Request(b"GET", b"/", host((b"host", b"other"))), "Host"),
        (Request(b"G T", b"/", host()), "token"),
        (Request(b"GET", b"/a b", host()), "target"),
        (Request(b"GET", b"/a\r\nX: 1", host()), "target"),
        (Request(b"GET", b"", host()), "target"),
        (Request(b"CONNECT", b"db:1", host((b"content-length", b"1"))), "CONNECT"),
    ],
)
def test_invalid_requests_are_not_sent(request_: Request, match: str) -> None:
    conn = ClientConnection()
    with pytest.raises(LocalProtocolError, match=match):
        conn.send(request_)
    assert conn.our_state is ERROR


def test_a_client_sends_no_responses() -> None:
    with pytest.raises(LocalProtocolError, match="client can't send Response"):
        ClientConnection().send(Response(200))


def test_one_request_at_a_time() -> None:
    conn = client_for()
    with pytest.raises(LocalProtocolError):
        conn.send(Request(b"GET", b"/", host()))


# --- responses -----------------------------------------------------------------------------


def test_response_with_content_length_and_keep_alive() -> None:
    conn = client_for()
    events = conn.receive_data(OK)
    assert events == [
        Response(200, Headers([(b"content-length", b"2")]), b"OK"),
        Data(b"hi"),
        EndOfMessage(),
    ]
    assert (conn.our_state, conn.their_state) == (DONE, DONE)
    assert conn.keep_alive
    assert conn.start_next_cycle() == []
    assert (conn.our_state, conn.their_state) == (IDLE, IDLE)


def test_chunked_response_in_pieces() -> None:
    conn = client_for()
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n"
    )
    events = []
    for i in range(0, len(raw), 7):
        events += conn.receive_data(raw[i : i + 7])
    assert coalesce(events)[1:] == [Data(b"wikipedia"), EndOfMessage()]
    assert conn.their_state is DONE


def test_response_until_close() -> None:
    conn = client_for()
    events = conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nabc")
    assert events[1:] == [Data(b"abc")]
    assert not conn.keep_alive
    assert conn.receive_data(b"def") == [Data(b"def")]
    assert conn.receive_data(b"") == [EndOfMessage(), ConnectionClosed()]
    assert conn.their_state is CLOSED


def test_http10_response_is_not_kept_alive() -> None:
    conn = client_for()
    conn.receive_data(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert not conn.keep_alive
    assert conn.their_state is MUST_CLOSE


def test_connection_close_response() -> None:
    conn = client_for()
    conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert conn.their_state is MUST_CLOSE
    assert conn.our_state is MUST_CLOSE
    assert conn.receive_data(b"junk") == []  # after a last response, nothing is read


def test_head_response_has_no_body() -> None:
    conn = client_for(b"HEAD")
    events = conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    assert [type(e) for e in events] == [Response, EndOfMessage]
    assert conn.their_state is DONE
    conn.start_next_cycle()
    conn.send(Request(b"GET", b"/", host()))
    conn.send(EndOfMessage())
    assert conn.receive_data(OK)[1:] == [Data(b"hi"), EndOfMessage()]


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    conn = client_for()
    events = conn.receive_data(b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status)
    assert [type(e) for e in events] == [Response, EndOfMessage]


def test_informational_responses() -> None:
    conn = ClientConnection()
    conn.send(Request(b"PUT", b"/", host((b"content-length", b"1"), (b"expect", b"100-continue"))))
    waiting = conn.awaiting_continue
    events = conn.receive_data(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    )
    assert events == [
        InformationalResponse(100, Headers(), b"Continue"),
        InformationalResponse(103, Headers([(b"link", b"</a.css>")]), b"Early Hints"),
    ]
    assert (waiting, conn.awaiting_continue) == (True, False)
    assert conn.their_state is SEND_RESPONSE
    conn.send(Data(b"x"))
    conn.send(EndOfMessage())
    assert conn.receive_data(OK)[-1] == EndOfMessage()


def test_an_early_final_response_ends_the_wait_for_100() -> None:
    conn = ClientConnection()
    conn.send(Request(b"PUT", b"/", host((b"content-length", b"1"), (b"expect", b"100-continue"))))
    conn.receive_data(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n")
    assert not conn.awaiting_continue
    assert (conn.our_state, conn.their_state) == (SEND_BODY, DONE)


def test_upgrade_accepted() -> None:
    conn = client_for(b"GET", [(b"connection", b"upgrade"), (b"upgrade", b"websocket")])
    assert conn.our_state is MIGHT_SWITCH_PROTOCOL
    events = conn.receive_data(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        b"\x81\x02hi"
    )
    assert [type(e) for e in events] == [InformationalResponse]
    assert (conn.our_state, conn.their_state) == (SWITCHED_PROTOCOL, SWITCHED_PROTOCOL)
    assert conn.trailing_data == b"\x81\x02hi"
    with pytest.raises(LocalProtocolError, match="switched"):
        conn.receive_data(b"more")


def test_upgrade_declined() -> None:
    conn = client_for(b"GET", [(b"connection", b"upgrade"), (b"upgrade", b"websocket")])
    events = conn.receive_data(OK)
    assert [type(e) for e in events] == [Response, Data, EndOfMessage]
    assert (conn.our_state, conn.their_state) == (DONE, DONE)


def test_connect_2xx_is_a_tunnel() -> None:
    conn = client_for(b"CONNECT")
    assert conn.our_state is MIGHT_SWITCH_PROTOCOL
    # a client ignores Content-Length and Transfer-Encoding on a 2xx to CONNECT
    events = conn.receive_data(
        b"HTTP/1.1 200 Connection Established\r\nContent-Length: 5\r\n\r\nxyz"
    )
    assert [type(e) for e in events] == [Response]
    assert conn.their_state is SWITCHED_PROTOCOL
    assert conn.trailing_data == b"xyz"


def test_connect_refused() -> None:
    conn = client_for(b"CONNECT")
    events = conn.receive_data(b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 2\r\n\r\nno")
    assert [type(e) for e in events] == [Response, Data, EndOfMessage]
    assert (conn.our_state, conn.their_state) == (DONE, DONE)


def test_an_early_response_while_we_still_send() -> None:
    conn = ClientConnection()
    conn.send(Request(b"POST", b"/", host((b"content-length", b"100"))))
    conn.send(Data(b"x" * 10))
    events = conn.receive_data(
        b"HTTP/1.1 413 Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    assert [type(e) for e in events] == [Response, EndOfMessage]
    assert conn.their_state is MUST_CLOSE


# --- the end of stream ---------------------------------------------------------------------


def test_closed_before_any_response_is_a_clean_close() -> None:
    """The upstream closed a connection before answering (a stale pooled connection, or a
    reset): ConnectionClosed with their_state CLOSED, so the proxy may retry."""
    conn = client_for()
    assert conn.receive_data(b"") == [ConnectionClosed()]
    assert conn.their_state is CLOSED
    assert conn.our_state is DONE


def test_idle_pooled_connection_closed() -> None:
    conn = ClientConnection()
    assert conn.receive_data(b"") == [ConnectionClosed()]


def test_closed_in_the_middle() -> None:
    conn = client_for()
    conn.receive_data(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(RemoteProtocolError, match="middle of the response head"):
        conn.receive_data(b"")
    conn = client_for()
    conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(RemoteProtocolError, match="3 bytes before the end") as caught:
        conn.receive_data(b"")
    assert caught.value.status_hint == 502


# --- strictness: an upstream's bad response is never forwarded -----------------------------

BAD_RESPONSES: list[tuple[str, bytes]] = [
    ("cl-te", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ("te-cl", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
    ("cl-repeated", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
    ("cl-list", b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc"),
    ("cl-negative", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
    ("cl-space", b"HTTP/1.1 200 OK\r\nContent-Length: 3 \r\n\r\nabc"),
    ("te-chunked-identity", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n"),
    ("te-gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc"),
    ("te-xchunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\nabc"),
    (
        "te-repeated",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    ),
    ("te-http10", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("bad-chunk", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
    ("chunk-no-crlf", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab"),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n"),
    ("bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 0\n\n"),
    ("name-space", b"HTTP/1.1 200 OK\r\nContent Length: 0\r\n\r\n"),
    ("value-nul", b"HTTP/1.1 200 OK\r\nX: a\x00\r\nContent-Length: 0\r\n\r\n"),
    ("reason-control", b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n"),
    ("version-1.2", b"HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ("version-2", b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ("not-http", b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
    ("status-600", b"HTTP/1.1 600 X\r\nContent-Length: 0\r\n\r\n"),
    ("status-2-digits", b"HTTP/1.1 20 X\r\nContent-Length: 0\r\n\r\n"),
    ("unexpected-101", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"),
    (
        "trailer-framing",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 1\r\n\r\n",
    ),
]


@pytest.mark.parametrize("raw", [c[1] for c in BAD_RESPONSES], ids=[c[0] for c in BAD_RESPONSES])
def test_bad_response_is_refused(raw: bytes) -> None:
    error = response_error(raw)
    assert "upstream" in error.reason


def test_response_limits() -> None:
    conn = client_for()
    with pytest.raises(RemoteProtocolError) as caught:
        conn.receive_data(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000)
    assert caught.value.status_hint == 502


def test_bytes_when_no_response_is_due() -> None:
    conn = ClientConnection()
    with pytest.raises(RemoteProtocolError, match="no response was due"):
        conn.receive_data(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    conn = client_for()
    with pytest.raises(RemoteProtocolError, match="no response was due"):
        conn.receive_data(OK + b"HTTP/1.1 200 OK\r\n")


def test_an_extra_crlf_after_a_response_is_tolerated() -> None:
    conn = client_for()
    assert conn.receive_data(OK + b"\r\n")[-1] == EndOfMessage()
    assert conn.receive_data(b"\r\n") == []
    assert conn.start_next_cycle() == []


def test_bytes_that_are_no_response_are_refused_at_once() -> None:
    conn = client_for()
    with pytest.raises(RemoteProtocolError, match=r"not an HTTP/1\.1 response"):
        conn.receive_data(b"SSH-2.0-")
    conn = client_for()
    assert conn.receive_data(b"HTTP/") == []
