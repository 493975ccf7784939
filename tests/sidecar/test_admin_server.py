"""The admin server on real loopback sockets (in-process, on Trio): keep-alive and
pipelining, error answers that close, the idle timeout, the connection cap."""

from __future__ import annotations

import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from sidecar.admin import AdminApp, AdminServer, Response
from sidecar.config_store import ConfigStore
from sidecar.control_client import Connectivity
from sidecar.errors import AdminServerError
from tests.sidecar.support import PROXY, FakeIdentity, make_settings, make_snapshot

Scenario = Callable[[int], Awaitable[None]]


def serve(
    tmp_path: Path,
    scenario: Scenario,
    prepare: Callable[[AdminApp], None] = lambda app: None,
    **server_args: float,
) -> None:
    """Run ``scenario(port)`` against an admin server holding config v1."""
    settings = make_settings(tmp_path)
    store = ConfigStore(tmp_path, PROXY)
    store.apply(make_snapshot("v1"))
    app = AdminApp(settings, PROXY, store, Connectivity(settings.meshd_url), FakeIdentity())
    prepare(app)
    server = AdminServer(app, "127.0.0.1", 0, **server_args)  # type: ignore[arg-type]

    async def main() -> None:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                port = await nursery.start(server.serve)
                await scenario(port)
                nursery.cancel_scope.cancel()

    trio.run(main)


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, then read until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        received = bytearray()
        while chunk := await stream.receive_some(65536):
            received += chunk
    return bytes(received)


def statuses(raw: bytes) -> list[str]:
    return [m.decode() for m in re.findall(rb"HTTP/1\.1 \d{3} [^\r]*(?=\r\n)", raw)]


def test_keep_alive_and_pipelining(tmp_path: Path) -> None:
    async def scenario(port: int) -> None:
        raw = await exchange(
            port,
            b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n"
            b"HEAD /stats/prometheus HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /clusters HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        assert statuses(raw) == [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 200 OK",
        ]
        assert b"ready\n" in raw
        assert b"mesh_sidecar_config_updates_total" not in raw  # HEAD has no body
        assert raw.count(b"Connection: close") == 1

    serve(tmp_path, scenario)


def test_an_oversized_head_gets_431_and_the_connection_closes(tmp_path: Path) -> None:
    async def scenario(port: int) -> None:
        raw = await exchange(
            port, b"GET /ready HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
        )
        assert statuses(raw) == ["HTTP/1.1 431 Request Header Fields Too Large"]
        assert b"Connection: close" in raw

    serve(tmp_path, scenario)


def test_a_post_with_a_body_gets_405_and_its_body_is_not_parsed(tmp_path: Path) -> None:
    async def scenario(port: int) -> None:
        body = b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n"  # would be a request if parsed
        raw = await exchange(
            port,
            b"POST /ready HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
        )
        assert statuses(raw) == ["HTTP/1.1 405 Method Not Allowed"]
        assert b"Allow: GET, HEAD" in raw

    serve(tmp_path, scenario)


def test_garbage_gets_400(tmp_path: Path) -> None:
    async def scenario(port: int) -> None:
        raw = await exchange(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
        assert statuses(raw) == ["HTTP/1.1 400 Bad Request"]

    serve(tmp_path, scenario)


def test_a_failing_endpoint_answers_500_and_the_server_lives_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def boom() -> Response:
        raise RuntimeError("a bug")

    def prepare(app: AdminApp) -> None:
        app._routes["/clusters"] = boom

    async def scenario(port: int) -> None:
        raw = await exchange(
            port,
            b"GET /clusters HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        assert statuses(raw) == ["HTTP/1.1 500 Internal Server Error", "HTTP/1.1 200 OK"]

    serve(tmp_path, scenario, prepare)
    assert "admin endpoint /clusters failed" in caplog.text


def test_idle_connections_are_closed(tmp_path: Path) -> None:
    async def scenario(port: int) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            with trio.fail_after(5):
                assert await stream.receive_some(100) == b""  # closed by the server
        # ... also after a request, on a kept-alive connection
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n")
            received = bytearray()
            with trio.fail_after(5):
                while chunk := await stream.receive_some(100):
                    received += chunk
            assert statuses(bytes(received)) == ["HTTP/1.1 200 OK"]

    serve(tmp_path, scenario, idle_timeout_s=0.2)


def test_connections_over_the_cap_are_closed(tmp_path: Path) -> None:
    async def scenario(port: int) -> None:
        first = await trio.open_tcp_stream("127.0.0.1", port)
        async with first:
            await first.send_all(b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n")
            assert b"200 OK" in await first.receive_some(1000)  # the first one is served
            with trio.fail_after(5):
                assert await exchange(port, b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n") == b""

    serve(tmp_path, scenario, max_connections=1)


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = make_settings(tmp_path)
        store = ConfigStore(tmp_path, PROXY)
        app = AdminApp(settings, PROXY, store, Connectivity(settings.meshd_url), FakeIdentity())

        async def main() -> None:
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(AdminServer(app, "127.0.0.1", port).serve)
            except BaseExceptionGroup as group:
                (only,) = group.exceptions
                raise only from None

        with pytest.raises(AdminServerError, match=rf"cannot listen on 127\.0\.0\.1:{port}"):
            trio.run(main)
