"""Helpers of the HTTP/1.1 protocol tests."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from sidecar.protocol import (
    DONE,
    ERROR,
    MIGHT_SWITCH_PROTOCOL,
    MUST_CLOSE,
    SEND_RESPONSE,
    ClientConnection,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Headers,
    RemoteProtocolError,
    Request,
    Response,
    ServerConnection,
)

HOST = b"Host: svc\r\n"


def coalesce(events: Iterable[Event]) -> list[Event]:
    """Adjacent Data merged: how a body is cut into Data carries no meaning."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, Data) and out and isinstance(out[-1], Data):
            out[-1] = Data(out[-1].data + event.data)
        elif not (isinstance(event, Data) and not event.data):
            out.append(event)
    return out


def serve(stream: Iterable[bytes], conn: ServerConnection | None = None) -> list[Event]:
    """Feed ``stream``'s pieces to a server, answering each complete request with an
    empty 404 (which also declines any Upgrade or CONNECT) so that pipelined requests
    get their turn; returns every event received."""
    conn = conn or ServerConnection()
    events: list[Event] = []
    for piece in stream:
        events += one_message_at_most(conn.receive_data(piece))
        answer_all(conn, events)
    return events


def one_message_at_most(events: list[Event]) -> list[Event]:
    """``events`` (from one call) hold parts of one request at most: never a second one,
    nothing after an end of message but the end of stream."""
    assert sum(isinstance(e, Request) for e in events) <= 1
    ends = [i for i, e in enumerate(events) if isinstance(e, EndOfMessage)]
    if ends:
        assert all(isinstance(e, ConnectionClosed) for e in events[ends[0] + 1 :])
    return events


def answer_all(conn: ServerConnection, events: list[Event]) -> None:
    """Answer every complete request (see :func:`serve`)."""
    while conn.their_state in (DONE, MUST_CLOSE, MIGHT_SWITCH_PROTOCOL) and (
        conn.our_state is SEND_RESPONSE
    ):
        conn.send(NOT_FOUND)
        conn.send(EndOfMessage())
        if conn.our_state is DONE and conn.their_state is DONE:
            events += one_message_at_most(conn.start_next_cycle())


NOT_FOUND = Response(404, Headers([(b"content-length", b"0")]))


def request_error(data: bytes | list[bytes]) -> RemoteProtocolError:
    """The error a server raises for ``data``, after checking what the connection does
    with it: the client's state is ERROR, keep-alive off, an error response can be sent
    and leaves us MUST_CLOSE, and the connection keeps refusing."""
    conn = ServerConnection()
    pieces = [data] if isinstance(data, bytes) else data
    for piece in pieces[:-1]:
        conn.receive_data(piece)
    with pytest.raises(RemoteProtocolError) as caught:
        conn.receive_data(pieces[-1])
    error = caught.value
    assert conn.their_state is ERROR
    assert not conn.keep_alive
    answer = conn.send_error(error)
    assert answer.startswith(b"HTTP/1.1 %d " % error.status_hint)
    assert b"\r\nconnection: close\r\n" in answer
    assert conn.our_state is MUST_CLOSE
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
    return error


def client_for(
    method: bytes = b"GET", headers: Iterable[tuple[bytes, bytes]] = ()
) -> ClientConnection:
    """A client that has sent a complete ``method`` request."""
    conn = ClientConnection()
    target = b"svc:443" if method == b"CONNECT" else b"/"
    conn.send(Request(method, target, Headers([(b"host", b"svc"), *headers])))
    conn.send(EndOfMessage())
    return conn


def response_error(data: bytes, method: bytes = b"GET") -> RemoteProtocolError:
    conn = client_for(method)
    with pytest.raises(RemoteProtocolError) as caught:
        conn.receive_data(data)
    assert caught.value.status_hint == 502
    assert conn.their_state is ERROR
    assert not conn.keep_alive
    return caught.value
