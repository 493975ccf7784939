"""Properties (Hypothesis):

- serialize -> parse round trips, for generated requests (ClientConnection ->
  ServerConnection) and responses (ServerConnection -> ClientConnection);
- cutting a valid byte stream into any pieces yields the same events as feeding it
  at once (up to how a body is cut into Data);
- arbitrary or mutated bytes never raise anything but ProtocolError, and one read never
  yields parts of two requests.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.protocol import (
    EMPTY,
    ClientConnection,
    Data,
    EndOfMessage,
    Event,
    Headers,
    InformationalResponse,
    ProtocolError,
    Request,
    Response,
    ServerConnection,
)
from tests.protocol.support import answer_all, coalesce, one_message_at_most, serve

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VALUE_BYTES = [9, *range(32, 127), *range(128, 256)]
TARGET_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%/?"
SPECIAL = {
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"expect",
    b"upgrade",
    b"te",
    b"trailer",
}

names = (
    st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=12)
    .map(lambda s: s.lower().encode())
    .filter(lambda n: n not in SPECIAL)
)
values = st.lists(st.sampled_from(VALUE_BYTES), max_size=24).map(lambda b: bytes(b).strip(b" \t"))
fields = st.lists(st.tuples(names, values), max_size=6)
bodies = st.lists(st.binary(max_size=40), max_size=4)


@dataclass(frozen=True)
class Message:
    """One generated message: its head's extra fields, framing, body pieces, trailers."""

    fields: list[tuple[bytes, bytes]]
    framing: str  # "none" | "length" | "chunked"
    pieces: list[bytes]
    trailers: list[tuple[bytes, bytes]]

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces) if self.framing != "none" else b""

    def headers(self, first: list[tuple[bytes, bytes]]) -> Headers:
        out = [*first, *self.fields]
        if self.framing == "length":
            out.append((b"content-length", b"%d" % len(self.body)))
        elif self.framing == "chunked":
            out.append((b"transfer-encoding", b"chunked"))
        return Headers(out)

    def end(self) -> EndOfMessage:
        return EndOfMessage(Headers(self.trailers) if self.framing == "chunked" else EMPTY)

    def body_events(self) -> list[Event]:
        data: list[Event] = [Data(self.body)] if self.body else []
        return [*data, self.end()]


messages = st.builds(
    Message,
    fields=fields,
    framing=st.sampled_from(["none", "length", "chunked"]),
    pieces=bodies,
    trailers=st.lists(st.tuples(names, values), max_size=2),
)


@dataclass(frozen=True)
class RequestSpec:
    method: bytes
    target: bytes
    message: Message

    def request(self) -> Request:
        return Request(self.method, self.target, self.message.headers([(b"host", b"svc")]))

    def render(self) -> bytes:
        client = ClientConnection()
        out = client.send(self.request())
        if self.message.framing != "none":
            for piece in self.message.pieces:
                out += client.send(Data(piece))
        return out + client.send(self.message.end())

    def events(self) -> list[Event]:
        return [self.request(), *self.message.body_events()]


requests = st.builds(
    RequestSpec,
    method=st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD"]),
    target=st.text(alphabet=TARGET_CHARS, max_size=30).map(lambda t: b"/" + t.encode()),
    message=messages,
)


def cuts(data: st.DataObject, stream: bytes) -> list[bytes]:
    points = sorted(
        data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cut points")
    )
    pieces = []
    start = 0
    for point in [*points, len(stream)]:
        pieces.append(stream[start:point])
        start = point
    return [p for p in pieces if p]


@given(st.lists(requests, min_size=1, max_size=4), st.data())
def test_requests_round_trip_however_cut(specs: list[RequestSpec], data: st.DataObject) -> None:
    stream = b"".join(spec.render() for spec in specs)
    expected = [event for spec in specs for event in spec.events()]
    assert coalesce(serve([stream])) == expected
    assert coalesce(serve(cuts(data, stream))) == expected


@dataclass(frozen=True)
class Exchange:
    method: bytes
    status: int
    informational: list[int]
    message: Message


exchanges = st.builds(
    Exchange,
    method=st.sampled_from([b"GET", b"HEAD", b"POST"]),
    status=st.integers(200, 599),
    informational=st.lists(st.sampled_from([100, 102, 103]), max_size=2),
    message=messages,
)


@given(st.lists(exchanges, min_size=1, max_size=3), st.data())
def test_responses_round_trip_however_cut(specs: list[Exchange], data: st.DataObject) -> None:
    server = ServerConnection()
    client = ClientConnection()
    for spec in specs:
        request = Request(spec.method, b"/", Headers([(b"host", b"svc")]))
        server.receive_data(client.send(request) + client.send(EndOfMessage()))
        response = Response(spec.status, spec.message.headers([(b"x-served-by", b"test")]))
        stream = b"".join(server.send(InformationalResponse(s)) for s in spec.informational)
        stream += server.send(response)
        no_body = spec.method == b"HEAD" or spec.status in (204, 304)
        if not no_body:
            for piece in spec.message.pieces:
                stream += server.send(Data(piece))
        stream += server.send(spec.message.end())
        events: list[Event] = []
        for piece in cuts(data, stream):
            events += client.receive_data(piece)
        got = coalesce(events)
        informational = [e for e in got if isinstance(e, InformationalResponse)]
        assert [e.status for e in informational] == spec.informational
        final = got[len(informational)]
        assert isinstance(final, Response)
        assert final.status == spec.status
        # a response without framing was sent chunked: its head says so
        assert final.headers.without(b"transfer-encoding") == response.headers.without(
            b"transfer-encoding"
        )
        if no_body:
            assert got[len(informational) + 1 :] == [EndOfMessage()]
        else:
            body = b"".join(spec.message.pieces)
            trailers = spec.message.trailers if spec.message.framing == "chunked" else []
            expected_body: list[Event] = [Data(body)] if body else []
            assert got[len(informational) + 1 :] == [
                *expected_body,
                EndOfMessage(Headers(trailers)),
            ]
        server.start_next_cycle()
        client.start_next_cycle()


# --- arbitrary bytes ---------------------------------------------------------------------

FRAGMENTS = [
    b"GET / HTTP/1.1\r\n",
    b"POST /x HTTP/1.1\r\n",
    b"CONNECT a:1 HTTP/1.1\r\n",
    b"Host: a\r\n",
    b"Content-Length: ",
    b"Transfer-Encoding: ",
    b"Connection: upgrade\r\nUpgrade: x\r\n",
    b"Expect: 100-continue\r\n",
    b"chunked",
    b"identity",
    b", ",
    b"0",
    b"3",
    b"1a",
    b";ext=1",
    b"abc",
    b":",
    b" ",
    b"\t",
    b"\r\n",
    b"\r",
    b"\n",
    b"\x00",
    b"\xff",
    b"HTTP/1.0",
]
noise = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from(FRAGMENTS), max_size=40).map(b"".join),
)


def check_reads(conn: ServerConnection, pieces: list[bytes]) -> None:
    """Feed ``pieces`` then the end of stream, answering requests; only ProtocolError may
    be raised, and no read yields two requests or anything after an end of message but
    the end of stream."""
    try:
        for piece in [*pieces, b""]:
            one_message_at_most(conn.receive_data(piece))
            answer_all(conn, [])
    except ProtocolError:
        pass


@settings(max_examples=300)
@given(noise, st.data())
def test_arbitrary_bytes_to_a_server(stream: bytes, data: st.DataObject) -> None:
    check_reads(ServerConnection(), [stream])
    check_reads(ServerConnection(), cuts(data, stream))


@settings(max_examples=300)
@given(requests, st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=3)), max_size=4))
def test_mutated_requests_to_a_server(spec: RequestSpec, edits: list[tuple[int, bytes]]) -> None:
    stream = bytearray(spec.render())
    for offset, replacement in edits:
        at = offset % (len(stream) + 1)
        stream[at : at + len(replacement) % 2 + 1] = replacement
    check_reads(ServerConnection(), [bytes(stream)])


@settings(max_examples=300)
@given(
    st.sampled_from([b"GET", b"HEAD", b"CONNECT", b"UPGRADE", b"EXPECT"]),
    noise,
    st.data(),
)
def test_arbitrary_bytes_to_a_client(method: bytes, stream: bytes, data: st.DataObject) -> None:
    client = ClientConnection()
    fields = [(b"host", b"svc")]
    if method == b"UPGRADE":
        fields += [(b"connection", b"upgrade"), (b"upgrade", b"x")]
    if method == b"EXPECT":
        fields += [(b"expect", b"100-continue"), (b"content-length", b"0")]
    target = b"a:1" if method == b"CONNECT" else b"/"
    real = method if method in (b"GET", b"HEAD", b"CONNECT") else b"GET"
    client.send(Request(real, target, Headers(fields)))
    client.send(EndOfMessage())
    try:
        for piece in [*cuts(data, stream), b""]:
            client.receive_data(piece)
    except ProtocolError:
        pass
