"""Floor proxies: the least work an HTTP/1.1 keep-alive proxy can do on an event loop,
as a yardstick for the sidecar. Not a product: only the benchmark runs them.

``python -m bench.floor_proxy --loop trio|uvloop --port P --backend B`` listens on
``127.0.0.1:P``. Each client connection gets one upstream connection of its own to
``127.0.0.1:B``; for each request it reads the client's head (a ``GET`` with no body, as
the benchmark sends), writes it upstream unchanged, reads the response until its
``Content-Length`` is complete and writes it back. No routing, no header edits, no
metrics, no pool, no limits, no error answers: everything a real proxy does is left
out, so what remains is the event loop, the system calls and the least framing.

- ``trio``: one task per connection on non-blocking sockets, trying each system call
  first and waiting for readiness only when it would block, with a checkpoint every
  16 requests (how the sidecar's streams drive Trio). This is the most a Trio-based
  proxy of one process can reach on this machine.
- ``uvloop``: asyncio protocol callbacks on uvloop: no task switch per read, the
  loop itself in C. The same job on the cheapest Python event loop.

The benchmark reports both beside nginx and the sidecar, so each run shows how far the
sidecar is from what its event loop allows, and how far that is from nginx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
from collections.abc import Sequence
from typing import cast

LOOPBACK = "127.0.0.1"
RECV_SIZE = 64 * 1024
CHECKPOINT_EVERY = 16
_CONTENT_LENGTH = b"\r\ncontent-length:"


def head_end(buf: bytes | bytearray) -> int:
    """Where a message's head ends (after its blank line), or -1 while incomplete."""
    end = buf.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def response_size(buf: bytes | bytearray) -> int:
    """Bytes of the whole response at the start of ``buf`` (head and body), or -1 while
    its head is incomplete. A response without ``Content-Length`` is an error here."""
    end = head_end(buf)
    if end < 0:
        return -1
    head = bytes(buf[:end]).lower()
    at = head.find(_CONTENT_LENGTH)
    if at < 0:
        raise ValueError("a response without Content-Length: the floor proxy cannot frame it")
    at += len(_CONTENT_LENGTH)
    return end + int(head[at : head.index(b"\r\n", at)])


# --- Trio ------------------------------------------------------------------------------------


def serve_trio(port: int, backend: int) -> None:
    import trio  # noqa: PLC0415 - the uvloop floor must not pay for importing Trio
    from trio.lowlevel import checkpoint, wait_readable, wait_writable  # noqa: PLC0415

    async def recv(sock: socket.socket) -> bytes:
        while True:
            try:
                return sock.recv(RECV_SIZE)
            except BlockingIOError:
                await wait_readable(sock)

    async def send_all(sock: socket.socket, data: bytes) -> None:
        sent = 0
        while True:  # one send call, unless the send buffer is full
            with contextlib.suppress(BlockingIOError):
                sent += sock.send(data[sent:] if sent else data)
            if sent == len(data):
                return
            await wait_writable(sock)

    async def read_until(sock: socket.socket, buf: bytes, complete: int) -> bytes:
        while len(buf) < complete:
            more = await recv(sock)
            if not more:
                raise ConnectionError("the backend closed mid-response")
            buf += more
        return buf

    async def relay(client: socket.socket) -> None:
        up = socket.create_connection((LOOPBACK, backend))
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up.setblocking(False)
        served = 0
        try:
            while True:
                request = b""
                while head_end(request) < 0:
                    more = await recv(client)
                    if not more:
                        return
                    request += more
                await send_all(up, request)
                response = b""
                while (size := response_size(response)) < 0:
                    response = await read_until(up, response, len(response) + 1)
                response = await read_until(up, response, size)
                await send_all(client, response)
                served += 1
                if served % CHECKPOINT_EVERY == 0:
                    await checkpoint()
        except (OSError, ValueError):
            pass  # the load generator hangs up at the end of each run
        finally:
            client.close()
            up.close()

    async def main() -> None:
        listener = socket.create_server((LOOPBACK, port), backlog=4096)
        listener.setblocking(False)
        print(f"floor proxy (trio) on {LOOPBACK}:{port} -> {backend}", flush=True)
        async with trio.open_nursery() as nursery:
            while True:
                await wait_readable(listener)
                try:
                    client, _ = listener.accept()
                except BlockingIOError:
                    continue
                client.setblocking(False)
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(relay, client)

    trio.run(main)


# --- uvloop ----------------------------------------------------------------------------------


class _Upstream(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            size = response_size(self.buf)
        except ValueError:
            self.client.close()
            return
        if 0 <= size <= len(self.buf):
            self.client.write(bytes(self.buf[:size]))
            del self.buf[:size]

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Client(asyncio.Protocol):
    def __init__(self, backend: int) -> None:
        self.backend = backend
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(
                lambda: _Upstream(self), LOOPBACK, self.backend
            )
        except OSError:
            self.close()
            return
        self.upstream = upstream
        self._forward()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._forward()

    def _forward(self) -> None:
        if self.upstream is None or self.upstream.transport is None:
            return  # still connecting: _connect forwards what came meanwhile
        while (end := head_end(self.buf)) >= 0:
            self.upstream.transport.write(bytes(self.buf[:end]))
            del self.buf[:end]

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()


def serve_uvloop(port: int, backend: int) -> None:
    import uvloop  # noqa: PLC0415

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Client(backend), LOOPBACK, port, backlog=4096)
        print(f"floor proxy (uvloop) on {LOOPBACK}:{port} -> {backend}", flush=True)
        await server.serve_forever()

    uvloop.run(main())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.floor_proxy",
        description="A least-work HTTP/1.1 proxy: the benchmark's yardstick, not a product.",
    )
    parser.add_argument("--loop", choices=("trio", "uvloop"), required=True)
    parser.add_argument("--port", type=int, required=True, help="listen on 127.0.0.1:PORT")
    parser.add_argument("--backend", type=int, required=True, help="forward to 127.0.0.1:PORT")
    args = parser.parse_args(argv)
    serve = serve_trio if args.loop == "trio" else serve_uvloop
    try:
        serve(args.port, args.backend)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
