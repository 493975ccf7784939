"""The sidecar's own HTTP/1.1 client (``sidecar.http_client``): first its pure parts
(building requests, reading answers, URLs, reasons), then real sockets against a Trio
server on 127.0.0.1, over TLS with a test CA: the request as sent (and never through a
proxy from the environment), long, chunked and until-close bodies, a long poll, the
connection closed after the answer, and each way a request fails (refused, timeout,
certificate verification, a hostname mismatch, a dropped connection, a malformed or
oversized answer)."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

from sidecar import http_client
from sidecar.errors import (
    ConnectError,
    ConnectionLost,
    HttpClientError,
    HttpTimeout,
    MalformedResponse,
    TlsError,
)
from sidecar.http_client import (
    HttpRequest,
    HttpResponse,
    ResponseHeaders,
    _os_reason,
    _target_of,
    build_request,
    send,
)
from tests.sidecar.test_identity_support import TestCa
from tests.support.processes import LOOPBACK, free_port

# --- pure parts -------------------------------------------------------------------------------


def test_a_request_with_params_and_a_json_body() -> None:
    request = build_request(
        "PUT",
        "https://meshd.test:15012/v1/instances/a%2Fb",
        params={"version": "v 1/2", "wait": "30", "flag": ""},
        json_body={"name": "é", "n": 1},
        headers=[("User-Agent", "mesh-sidecar/0")],
        timeout_s=45.0,
    )
    assert request.url == (
        "https://meshd.test:15012/v1/instances/a%2Fb?version=v+1%2F2&wait=30&flag="
    )
    assert request.path == "/v1/instances/a%2Fb"
    assert request.params == {"version": "v 1/2", "wait": "30", "flag": ""}
    assert request.body == '{"name":"é","n":1}'.encode()
    assert request.json() == {"name": "é", "n": 1}
    assert request.header("content-type") == "application/json"
    assert request.header("USER-AGENT") == "mesh-sidecar/0"
    assert request.header("authorization") is None
    assert (request.timeout_s, request.connect_timeout_s) == (45.0, 5.0)
    # Parameters join a query the URL already has; pairs keep their order.
    joined = build_request("GET", "http://h/p?a=1", params=[("b", "2"), ("c", "3")])
    assert joined.url == "http://h/p?a=1&b=2&c=3"
    assert build_request("GET", "http://h").path == "/"


def test_response_headers_ignore_case_and_join_repeats() -> None:
    headers = ResponseHeaders([("X-Mesh-Version", "v1"), ("Vary", "a"), ("vary", "b")])
    assert headers["x-mesh-version"] == headers["X-MESH-VERSION"] == "v1"
    assert headers.get("Vary") == "a, b"
    assert headers.get("Retry-After") is None
    assert "x-mesh-version" in headers
    assert len(headers) == 2


def test_a_made_up_response() -> None:
    answer = HttpResponse.of(404, json_body={"detail": "not known"})
    assert answer.json() == {"detail": "not known"}
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.reason_phrase == "Not Found"  # none sent: the standard one
    assert HttpResponse(299, reason="Fine").reason_phrase == "Fine"
    assert HttpResponse(299).reason_phrase == ""
    odd = HttpResponse.of(200, body=b"\xffnot json")
    assert odd.text == "\ufffdnot json"
    with pytest.raises(ValueError, match=r"JSON|decode|Expecting"):
        odd.json()
    problem = HttpResponse.of(
        400, json_body={"detail": "x"}, headers={"content-type": "application/problem+json"}
    )
    assert problem.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("url", "host", "port", "authority", "target"),
    [
        ("http://meshd:8080/a?b=c", "meshd", 8080, "meshd:8080", b"/a?b=c"),
        ("http://meshd:80", "meshd", 80, "meshd", b"/"),
        ("https://MeshD.example/", "meshd.example", 443, "meshd.example", b"/"),
        ("https://[::1]:15012/x", "::1", 15012, "[::1]:15012", b"/x"),
    ],
)
def test_where_a_request_goes(
    url: str, host: str, port: int, authority: str, target: bytes
) -> None:
    where = _target_of(HttpRequest("GET", url, tls=ssl.create_default_context()))
    assert (where.host, where.port, where.authority, where.target) == (
        host,
        port,
        authority,
        target,
    )


@pytest.mark.parametrize(
    ("url", "tls", "reason"),
    [
        ("ftp://meshd/x", True, "not an http:// or https:// URL"),
        ("meshd:8080/x", True, "not an http:// or https:// URL"),
        ("http://meshd:port/", True, "bad port"),
        ("https://meshd/", False, "needs a TLS context"),
        ("http://meshd/é", True, "not ASCII"),
    ],
)
def test_a_request_that_cannot_be_sent(url: str, tls: bool, reason: str) -> None:
    context = ssl.create_default_context() if tls else None
    with pytest.raises(HttpClientError, match=reason) as caught:
        trio.run(send, HttpRequest("GET", url, tls=context))
    assert (caught.value.method, caught.value.url) == ("GET", url)
    assert str(caught.value).startswith(f"GET {url}: ")


def test_connect_reasons_are_the_operating_systems() -> None:
    """Trio reports every address it tried in an exception group behind a generic
    message: the reason names each distinct failure."""
    tried = [
        ConnectionRefusedError(111, "Error connecting to ('::1', 80): Connection refused"),
        ConnectionRefusedError(111, "Error connecting to ('127.0.0.1', 80): Connection refused"),
        OSError(101, "Error connecting to ('198.18.0.1', 80): Network is unreachable"),
    ]
    error = OSError("all attempts to connect to localhost:80 failed")
    error.__cause__ = ExceptionGroup("all attempts", tried)
    assert _os_reason(error) == (
        "[Errno 111] Connection refused; [Errno 101] Network is unreachable"
    )
    assert _os_reason(OSError(-2, "Name or service not known")) == (
        "[Errno -2] Name or service not known"
    )


# --- real sockets -----------------------------------------------------------------------------

Answer = Callable[[trio.abc.Stream], Awaitable[None]]


@dataclass
class Server:
    """What a test server saw: each request as bytes (head and body), and whether the
    client closed the connection after the answer."""

    port: int = 0
    requests: list[bytes] = field(default_factory=list)
    answered: int = 0
    closed_by_client: list[bool] = field(default_factory=list)
    handshake_failures: int = 0


async def read_request(stream: trio.abc.Stream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head + b"\r\n\r\n" + body


@asynccontextmanager
async def serving(answer: Answer, context: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    """A server on 127.0.0.1 (TLS with ``context``) that reads one request per
    connection, lets ``answer`` write the response, then waits for the client's close."""
    server = Server()

    async def handle(tcp: trio.SocketStream) -> None:
        stream: trio.abc.Stream = tcp
        if context is not None:
            stream = trio.SSLStream(tcp, context, server_side=True, https_compatible=True)
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError:
                server.handshake_failures += 1
                return
        try:
            server.requests.append(await read_request(stream))
            await answer(stream)
            server.answered += 1
            with trio.move_on_after(5):
                server.closed_by_client.append(await stream.receive_some(1) == b"")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            server.closed_by_client.append(True)
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host=LOOPBACK))
        server.port = int(listeners[0].socket.getsockname()[1])
        yield server
        with trio.move_on_after(2):  # until the client closed what was answered
            while len(server.closed_by_client) < server.answered:  # noqa: ASYNC110
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def attempt(request: HttpRequest) -> HttpResponse | HttpClientError:
    """The answer, or the error (returned: raised inside ``serving`` it would come out
    wrapped in the nursery's exception group)."""
    try:
        return await send(request)
    except HttpClientError as exc:
        return exc


def failure(body: Callable[[], Awaitable[HttpResponse | HttpClientError]]) -> HttpClientError:
    outcome = run(body)
    assert isinstance(outcome, HttpClientError), outcome
    return outcome


def raw(data: bytes, *, close: bool = False) -> Answer:
    async def answer(stream: trio.abc.Stream) -> None:
        await stream.send_all(data)
        if close:
            await stream.aclose()

    return answer


@dataclass
class Tls:
    """A test CA, a server context with a certificate for 127.0.0.1 and localhost, and a
    client context that trusts the CA."""

    ca: TestCa
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    return make_tls(tmp_path)


def make_tls(tmp_path: Path) -> Tls:
    ca = TestCa("http client test CA")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    creds = ca.credentials(tmp_path, None, ips=(LOOPBACK,), dns=("localhost",), name="s.pem")
    server.load_cert_chain(str(creds))
    return Tls(ca, server, ssl.create_default_context(cadata=ca.root_pem))


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        with trio.fail_after(20):
            return await body()

    return trio.run(main)


def test_the_request_as_sent_and_never_through_a_proxy(
    tls: Tls, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy from the environment would be this closed port: the request goes direct.
    proxy = f"http://{LOOPBACK}:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    answer = b'HTTP/1.1 201 Made\r\nContent-Length: 11\r\nX-Mesh-Version: v7\r\n\r\n{"ok":true}'

    async def body() -> tuple[Server, HttpResponse]:
        async with serving(raw(answer), tls.server) as server:
            request = build_request(
                "POST",
                f"https://{LOOPBACK}:{server.port}/v1/ca/sign",
                params={"proxy": "a b"},
                json_body={"csr": "x"},
                headers=[("User-Agent", "mesh-sidecar/0"), ("Connection", "keep-alive")],
                tls=tls.client,
            )
            return server, await send(request)

    server, response = run(body)
    assert (response.status, response.reason, response.json()) == (201, "Made", {"ok": True})
    assert response.headers["x-mesh-version"] == "v7"
    head, _, sent_body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/ca/sign?proxy=a+b HTTP/1.1"
    assert sorted(lines[1:]) == sorted(
        [
            f"host: {LOOPBACK}:{server.port}".encode(),
            b"user-agent: mesh-sidecar/0",
            b"content-type: application/json",
            b"content-length: 11",
            b"connection: close",  # the caller's keep-alive is not ours to give
        ]
    )
    assert sent_body == b'{"csr":"x"}'
    assert server.closed_by_client == [True]


def test_a_put_without_a_body_says_so_and_a_get_says_nothing() -> None:
    async def body() -> Server:
        async with serving(raw(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")) as server:
            await send(build_request("PUT", f"http://{LOOPBACK}:{server.port}/v1/agent/x"))
            await send(build_request("GET", f"http://{LOOPBACK}:{server.port}/v1/agent/x"))
            return server

    put, get = run(body).requests
    assert b"\r\ncontent-length: 0\r\n" in put
    assert b"content-length" not in get


def test_a_long_body_arrives_whole_over_tls(tls: Tls) -> None:
    payload = bytes(range(256)) * (3 * 4096 + 7)  # about 3 MB

    async def answer(stream: trio.abc.Stream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload))
        for start in range(0, len(payload), 100_000):
            await stream.send_all(payload[start : start + 100_000])
            await trio.lowlevel.checkpoint()

    async def body() -> tuple[Server, HttpResponse]:
        async with serving(answer, tls.server) as server:
            url = f"https://{LOOPBACK}:{server.port}/big"
            return server, await send(build_request("GET", url, tls=tls.client))

    server, response = run(body)
    assert response.body == payload
    # The server did not close: the client did, once it had the whole answer.
    assert server.closed_by_client == [True]


def test_a_chunked_body_with_trailers(tls: Tls) -> None:
    async def answer(stream: trio.abc.Stream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b"hello, ", b"chunked ", b"world"):
            await stream.send_all(b"%x\r\n%s\r\n" % (len(piece), piece))
            await trio.sleep(0.01)
        await stream.send_all(b"0\r\nX-Checksum: 1\r\n\r\n")

    async def body() -> HttpResponse:
        async with serving(answer, tls.server) as server:
            url = f"https://{LOOPBACK}:{server.port}/"
            return await send(build_request("GET", url, tls=tls.client))

    response = run(body)
    assert response.body == b"hello, chunked world"


def test_a_body_that_ends_with_the_connection(tls: Tls) -> None:
    """No Content-Length, not chunked: the body is whatever comes until the server
    closes (here without TLS close_notify, as many servers do)."""

    async def answer(stream: trio.abc.Stream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil ")
        await trio.sleep(0.01)
        await stream.send_all(b"the end")
        assert isinstance(stream, trio.SSLStream)
        await trio.aclose_forcefully(stream.transport_stream)  # a ragged end

    async def body() -> HttpResponse:
        async with serving(answer, tls.server) as server:
            url = f"https://{LOOPBACK}:{server.port}/"
            return await send(build_request("GET", url, tls=tls.client))

    assert run(body).body == b"until the end"


def test_informational_heads_are_skipped() -> None:
    answer = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"

    async def body() -> HttpResponse:
        async with serving(raw(answer)) as server:
            return await send(build_request("GET", f"http://{LOOPBACK}:{server.port}/"))

    response = run(body)
    assert (response.status, response.body) == (204, b"")


def test_a_long_poll_is_answered_late() -> None:
    """meshd holds a poll until something changes or its wait ends: the client waits as
    long as the request's own timeout allows."""

    async def answer(stream: trio.abc.Stream) -> None:
        await trio.sleep(1.0)
        await stream.send_all(b"HTTP/1.1 304 Not Modified\r\n\r\n")

    async def body() -> tuple[float, HttpResponse]:
        async with serving(answer) as server:
            started = trio.current_time()
            url = f"http://{LOOPBACK}:{server.port}/v1/xds/p?version=v1&wait=1"
            response = await send(build_request("GET", url, timeout_s=5.0))
            return trio.current_time() - started, response

    took, response = run(body)
    assert response.status == 304
    assert took >= 1.0


def test_sni_and_hostname_are_the_urls_host(tls: Tls) -> None:
    names: list[str | None] = []

    def remember(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)

    tls.server.sni_callback = remember

    async def body() -> HttpResponse:
        async with serving(raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), tls.server) as s:
            return await send(build_request("GET", f"https://localhost:{s.port}/", tls=tls.client))

    assert run(body).body == b"ok"
    assert names == ["localhost"]


# --- failures ---------------------------------------------------------------------------------


def test_connection_refused() -> None:
    url = f"http://{LOOPBACK}:{free_port()}/v1/xds/p"
    with pytest.raises(ConnectError) as caught:
        run(lambda: send(build_request("GET", url)))
    assert caught.value.reason == "[Errno 111] Connection refused"
    assert str(caught.value) == f"GET {url}: [Errno 111] Connection refused"
    assert not isinstance(caught.value, TlsError)


def test_a_server_that_does_not_answer_times_out() -> None:
    async def answer(stream: trio.abc.Stream) -> None:
        await trio.sleep_forever()

    async def body() -> HttpResponse | HttpClientError:
        async with serving(answer) as server:
            url = f"http://{LOOPBACK}:{server.port}/"
            return await attempt(build_request("GET", url, timeout_s=0.3))

    started = time.monotonic()
    error = failure(body)
    assert time.monotonic() - started < 3
    assert isinstance(error, HttpTimeout)
    assert error.reason == "no complete answer within 0.3 s"


def test_a_tls_handshake_that_does_not_finish_is_a_connect_timeout() -> None:
    """A plain TCP server that never speaks TLS: the handshake stalls."""

    async def answer(stream: trio.abc.Stream) -> None:
        raise AssertionError("no request comes")

    async def body() -> HttpResponse | HttpClientError:
        async with serving(answer) as server:  # (plain TCP: it waits for a request head)
            request = build_request(
                "GET",
                f"https://{LOOPBACK}:{server.port}/",
                tls=ssl.create_default_context(),
                connect_timeout_s=0.2,
            )
            return await attempt(request)

    error = failure(body)
    assert isinstance(error, HttpTimeout)
    assert error.reason == "no connection within 0.2 s"


def test_a_certificate_from_another_ca_fails_verification(tls: Tls) -> None:
    stranger = ssl.create_default_context(cadata=TestCa("another CA").root_pem)
    seen: list[Server] = []

    async def body() -> HttpResponse | HttpClientError:
        async with serving(raw(b"HTTP/1.1 200 OK\r\n\r\n"), tls.server) as server:
            seen.append(server)
            url = f"https://{LOOPBACK}:{server.port}/"
            outcome = await attempt(build_request("GET", url, tls=stranger))
            await trio.sleep(0.05)  # let the server see the failed handshake
            return outcome

    error = failure(body)
    assert isinstance(error, TlsError)
    assert isinstance(error, ConnectError)  # a kind of connection failure
    assert "CERTIFICATE_VERIFY_FAILED" in error.reason
    assert "unable to get local issuer certificate" in error.reason
    assert seen[0].handshake_failures == 1
    assert seen[0].requests == []


def test_a_certificate_for_another_address_fails_verification(tls: Tls, tmp_path: Path) -> None:
    other = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    other.load_cert_chain(str(tls.ca.credentials(tmp_path / "o", None, ips=("127.0.0.2",))))

    async def body() -> HttpResponse | HttpClientError:
        async with serving(raw(b"HTTP/1.1 200 OK\r\n\r\n"), other) as server:
            url = f"https://{LOOPBACK}:{server.port}/"
            return await attempt(build_request("GET", url, tls=tls.client))

    error = failure(body)
    assert isinstance(error, TlsError)
    assert "CERTIFICATE_VERIFY_FAILED" in error.reason
    assert "IP address mismatch" in error.reason


def test_a_server_that_closes_without_answering() -> None:
    async def body() -> HttpResponse | HttpClientError:
        async with serving(raw(b"", close=True)) as server:
            return await attempt(build_request("GET", f"http://{LOOPBACK}:{server.port}/"))

    error = failure(body)
    assert isinstance(error, ConnectionLost)
    assert error.reason == "the server closed the connection without answering"


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "is not HTTP/1.0 or HTTP/1.1"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "before the end"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk"),
    ],
)
def test_a_malformed_answer(answer: bytes, reason: str) -> None:
    async def body() -> HttpResponse | HttpClientError:
        async with serving(raw(answer, close=True)) as server:
            return await attempt(build_request("GET", f"http://{LOOPBACK}:{server.port}/"))

    error = failure(body)
    assert isinstance(error, MalformedResponse)
    assert reason in error.reason
    assert "upstream" not in error.reason  # the proxy's wording is not ours


def test_an_oversized_answer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_client, "MAX_RESPONSE_BYTES", 1000)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000

    async def body() -> HttpResponse | HttpClientError:
        async with serving(raw(answer)) as server:
            return await attempt(build_request("GET", f"http://{LOOPBACK}:{server.port}/"))

    error = failure(body)
    assert isinstance(error, MalformedResponse)
    assert error.reason == "the body is larger than 1000 bytes"
