"""Byte tunnels (``sidecar.proxy.tunnel.relay``) over real loopback TCP: the plaintext
path that moves bytes with ``splice``, half-close, a reset, and byte counts reported
while a tunnel is open."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
import trio

from sidecar.proxy.streams import TcpStream, connect_tcp
from sidecar.proxy.tunnel import relay

MIB = 1 << 20


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[TcpStream, TcpStream]]:
    """Two ends of one loopback TCP connection, as the proxy's streams."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        near = await connect_tcp("127.0.0.1", listener.getsockname()[1])
        far = TcpStream((await trio.to_thread.run_sync(listener.accept))[0])
    try:
        yield near, far
    finally:
        near.close()
        far.close()


async def read_all(stream: TcpStream) -> bytes:
    chunks = []
    while data := await stream.receive_some():
        chunks.append(data)
    return b"".join(chunks)


def counting_splice(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy on ``os.splice`` (it still runs): the bytes each call moved."""
    moved: list[int] = []
    real: Callable[..., int] = os.splice

    def spy(*args: Any, **kwargs: Any) -> int:
        n = real(*args, **kwargs)
        moved.append(n)
        return n

    monkeypatch.setattr(os, "splice", spy)
    return moved


def test_plaintext_tunnel_splices_both_ways_with_half_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    moved = counting_splice(monkeypatch)
    request = os.urandom(8 * MIB + 123)
    reply = os.urandom(3 * MIB + 7)

    async def main() -> None:
        async with tcp_pair() as (client, a), tcp_pair() as (b, server):
            result: list[tuple[int, int]] = []

            async def tunnel() -> None:
                result.append(await relay(a, b, a_first=b"first:"))

            async def serve() -> None:
                got = await read_all(server)  # ends with the client's half-close
                assert got == b"first:" + request
                await server.send_all(reply)  # the other direction still works
                await server.send_eof()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(tunnel)
                nursery.start_soon(serve)
                await client.send_all(request)
                await client.send_eof()
                assert await read_all(client) == reply
            assert result == [(len(request) + len(b"first:"), len(reply))]
            assert a.closed
            assert b.closed

    trio.run(main)
    # Bulk bytes go through the kernel's pipe (each counted in and out): most of them,
    # the first full read of each burst excepted.
    print(f"spliced {sum(moved) / 2 / (len(request) + len(reply)):.0%} of the bytes")
    assert sum(moved) / 2 > (len(request) + len(reply)) / 2


def test_a_reset_ends_the_tunnel_both_ways() -> None:
    async def main() -> None:
        async with tcp_pair() as (client, a), tcp_pair() as (b, server):
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(relay, a, b)
                    await client.send_all(b"hello")
                    assert await server.receive_some() == b"hello"
                    # A reset from the server's side (SO_LINGER 0), not a clean close.
                    server.sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    server.close()
                    # The client's side ends too (EOF or a reset), and relay returns.
                    with suppress(trio.BrokenResourceError):
                        assert await read_all(client) == b""
            assert a.closed
            assert b.closed

    trio.run(main)


def test_byte_counts_are_reported_while_the_tunnel_is_open() -> None:
    async def main() -> None:
        reports: list[tuple[int, int]] = []
        first_report = trio.Event()

        def progress(a_to_b: int, b_to_a: int) -> None:
            reports.append((a_to_b, b_to_a))
            first_report.set()

        async with tcp_pair() as (client, a), tcp_pair() as (b, server):
            result: list[tuple[int, int]] = []

            async def tunnel() -> None:
                result.append(await relay(a, b, progress=progress, report_every_s=0.05))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(tunnel)
                await client.send_all(b"x" * 1000)
                assert len(await server.receive_some()) == 1000
                with trio.fail_after(5):
                    await first_report.wait()
                assert reports == [(1000, 0)]  # reported while open
                await server.send_all(b"y" * 10)
                await client.send_eof()
                await server.send_eof()
                assert await read_all(client) == b"y" * 10
                assert await read_all(server) == b""
            # What relay returns is what was not reported yet: nothing is counted twice.
            (rest,) = result
            total = (sum(r[0] for r in reports) + rest[0], sum(r[1] for r in reports) + rest[1])
            assert total == (1000, 10)

    trio.run(main)
