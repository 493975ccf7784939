"""Keep-alive in the sidecar's HTTP client (``http_client.ConnectionPool``), on real
sockets over TLS: requests to one server share a connection; a connection is not reused
with another TLS context, after ``Connection: close``, once the server closed it, or
after it sat idle too long; a request whose reused connection was closed under it is
sent again on a new one only when its method is idempotent."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from sidecar import http_client
from sidecar.errors import ConnectionLost
from sidecar.http_client import ConnectionPool, build_request
from tests.sidecar.test_http_client import Tls, make_tls, read_request
from tests.support.processes import LOOPBACK


@dataclass
class KeepAliveServer:
    """Answers every request on a connection until the client closes it. ``requests``
    holds (connection number, request line). ``drop_on`` lists request numbers (counted
    over the whole server, from 1) read and then left unanswered with the connection
    closed; ``close_after`` closes each connection after that many answers, without
    saying so in the answer; ``say_close`` answers with ``Connection: close``."""

    port: int = 0
    connections: int = 0
    requests: list[tuple[int, bytes]] = field(default_factory=list)
    drop_on: set[int] = field(default_factory=set)
    close_after: int = 0
    say_close: bool = False


@asynccontextmanager
async def keep_alive_server(
    context: ssl.SSLContext, **options: Any
) -> AsyncIterator[KeepAliveServer]:
    server = KeepAliveServer(**options)

    async def handle(tcp: trio.SocketStream) -> None:
        server.connections += 1
        number = server.connections
        stream = trio.SSLStream(tcp, context, server_side=True, https_compatible=True)
        answered = 0
        try:
            await stream.do_handshake()
            while True:
                request = await read_request(stream)
                if not request:
                    return
                server.requests.append((number, request.split(b"\r\n", 1)[0]))
                if len(server.requests) in server.drop_on:
                    return
                close = b"Connection: close\r\n" if server.say_close else b""
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\n" + close + b"Content-Length: 2\r\n\r\nok"
                )
                answered += 1
                if server.say_close or answered == server.close_after:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host=LOOPBACK))
        server.port = int(listeners[0].socket.getsockname()[1])
        yield server
        nursery.cancel_scope.cancel()


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        with trio.fail_after(20):
            return await body()

    return trio.run(main)


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    return make_tls(tmp_path)


def request(server: KeepAliveServer, method: str, context: ssl.SSLContext) -> Any:
    return build_request(method, f"https://{LOOPBACK}:{server.port}/v1/x", tls=context)


def test_requests_to_one_server_share_a_connection(tls: Tls) -> None:
    async def body() -> tuple[KeepAliveServer, ConnectionPool]:
        pool = ConnectionPool()
        async with keep_alive_server(tls.server) as server:
            for method in ("PUT", "GET", "POST", "PUT"):
                answer = await pool.send(request(server, method, tls.client))
                assert (answer.status, answer.body) == (200, b"ok")
            await pool.aclose()
        return server, pool

    server, pool = run(body)
    assert server.connections == 1
    assert pool.connections_made == 1
    assert [line for _, line in server.requests] == [
        b"PUT /v1/x HTTP/1.1",
        b"GET /v1/x HTTP/1.1",
        b"POST /v1/x HTTP/1.1",
        b"PUT /v1/x HTTP/1.1",
    ]


def test_another_tls_context_gets_its_own_connection(tls: Tls) -> None:
    renewed = ssl.create_default_context(cadata=tls.ca.root_pem)

    async def body() -> KeepAliveServer:
        pool = ConnectionPool()
        async with keep_alive_server(tls.server) as server:
            await pool.send(request(server, "GET", tls.client))
            await pool.send(request(server, "GET", renewed))
            await pool.send(request(server, "GET", renewed))
            await pool.aclose()
        return server

    server = run(body)
    assert [n for n, _ in server.requests] == [1, 2, 2]


def test_connection_close_and_a_closed_connection_are_not_reused(tls: Tls) -> None:
    async def body(**options: Any) -> KeepAliveServer:
        pool = ConnectionPool()
        async with keep_alive_server(tls.server, **options) as server:
            for _ in range(3):
                await pool.send(request(server, "GET", tls.client))
                await trio.sleep(0.05)  # the server's close arrives before the next request
            await pool.aclose()
        return server

    said = run(partial(body, say_close=True))
    assert [n for n, _ in said.requests] == [1, 2, 3]
    closed = run(partial(body, close_after=2))
    assert [n for n, _ in closed.requests] == [1, 1, 2]


def test_an_idle_connection_expires(tls: Tls, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_client, "IDLE_REUSE_S", 0.1)

    async def body() -> KeepAliveServer:
        pool = ConnectionPool()
        async with keep_alive_server(tls.server) as server:
            await pool.send(request(server, "GET", tls.client))
            await trio.sleep(0.2)
            await pool.send(request(server, "GET", tls.client))
            await pool.aclose()
        return server

    assert [n for n, _ in run(body).requests] == [1, 2]


def test_only_idempotent_requests_are_sent_again_when_the_connection_was_lost(
    tls: Tls,
) -> None:
    # Request 2 finds its reused connection closed under it (read, never answered).
    async def body(method: str) -> tuple[KeepAliveServer, object]:
        pool = ConnectionPool()
        async with keep_alive_server(tls.server, drop_on={2}) as server:
            await pool.send(request(server, "GET", tls.client))
            try:
                outcome: object = await pool.send(request(server, method, tls.client))
            except ConnectionLost as exc:
                outcome = exc
            await pool.aclose()
        return server, outcome

    server, outcome = run(partial(body, "PUT"))
    assert getattr(outcome, "status", None) == 200
    assert [(n, line.split()[0]) for n, line in server.requests] == [
        (1, b"GET"),
        (1, b"PUT"),
        (2, b"PUT"),
    ]
    server, outcome = run(partial(body, "POST"))
    assert isinstance(outcome, ConnectionLost)
    assert "closed the connection" in str(outcome)
    assert len(server.requests) == 2  # not sent twice
