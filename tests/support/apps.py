"""Small real backends for proxy tests, on Trio: in the test's own event loop, or as a
process (``python -m tests.support.apps http --port P --name v1``).

- :class:`HttpApp` (h11, an HTTP/1.1 implementation independent of the proxy's): every
  response says which instance (``name``) and version answered, with the request's
  method, target, headers, body length and SHA-256 as JSON. ``fail_rate`` answers that
  share of requests 503; ``delay_s`` waits before answering. Paths:
  ``/echo`` streams the request body back as it arrives (chunked);
  ``/bytes/<n>`` sends n bytes (chunked, 64 KiB pieces); ``/status/<code>`` answers
  that status; ``/delay/<ms>`` waits first; ``/close`` answers with
  ``Connection: close``.
- :class:`WebSocketApp`: the RFC 6455 handshake and an echo of every text and binary
  message, hand-rolled (the framing a test needs, nothing more).
- :class:`TcpEchoApp`: echoes bytes; at the client's end of stream, shuts its own
  write side after the last echo (a half-close test can read every byte back).

Each counts connections and requests, so tests can check keep-alive reuse.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import struct
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11
import trio

LOOPBACK = "127.0.0.1"
CHUNK = 64 * 1024
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def _listen(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    port: int,
    task_status: trio.TaskStatus[int],
    host: str = LOOPBACK,
) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = int(listeners[0].socket.getsockname()[1])
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(bound)


# --- HTTP ------------------------------------------------------------------------------------


@dataclass
class HttpApp:
    """An HTTP/1.1 test backend (see the module docstring)."""

    name: str = "app"
    version: str = "v1"
    fail_rate: float = 0.0
    delay_s: float = 0.0
    port: int = 0
    seed: int | None = None
    connections: int = 0
    requests: int = 0
    failures: int = 0
    seen: list[dict[str, object]] = field(default_factory=list)
    keep_seen: bool = False
    host: str = LOOPBACK

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await _listen(self._connection, self.port, task_status, self.host)

    async def start(self, nursery: trio.Nursery) -> int:
        self.port = await nursery.start(self.serve)
        return self.port

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                event = await _next(conn, stream)
                if isinstance(event, h11.ConnectionClosed) or event is None:
                    return
                if not isinstance(event, h11.Request):
                    return
                await self._exchange(conn, stream, event)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()

    async def _exchange(
        self, conn: h11.Connection, stream: trio.SocketStream, req: h11.Request
    ) -> None:
        self.requests += 1
        target = req.target.decode()
        path = target.partition("?")[0]
        headers = [(n.decode(), v.decode("latin-1")) for n, v in req.headers]
        if path == "/echo":
            await self._echo(conn, stream, headers)
            return
        body = hashlib.sha256()
        size = 0
        while True:
            event = await _next(conn, stream)
            if isinstance(event, h11.Data):
                body.update(event.data)
                size += len(event.data)
            else:
                break
        status = 200
        delay = self.delay_s
        if path.startswith("/delay/"):
            delay = int(path.rsplit("/", 1)[1]) / 1000.0
        if delay:
            await trio.sleep(delay)
        if path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
        elif self.fail_rate and self._rng.random() < self.fail_rate:
            status = 503
            self.failures += 1
        extra: list[tuple[str, str]] = [("x-instance", self.name), ("x-version", self.version)]
        if path == "/close":
            extra.append(("connection", "close"))
        if path.startswith("/bytes/"):
            n = int(path.rsplit("/", 1)[1])
            await _send(stream, conn, h11.Response(status_code=200, headers=extra))
            piece = b"x" * CHUNK
            left = n
            while left:
                part = piece[: min(left, CHUNK)]
                left -= len(part)
                await _send(stream, conn, h11.Data(data=part))
            await _send(stream, conn, h11.EndOfMessage())
            return
        info = {
            "instance": self.name,
            "version": self.version,
            "method": req.method.decode(),
            "target": target,
            "headers": headers,
            "body_size": size,
            "body_sha256": body.hexdigest(),
            "http_version": req.http_version.decode(),
        }
        if self.keep_seen:
            self.seen.append(info)
        data = json.dumps(info).encode()
        extra += [("content-type", "application/json"), ("content-length", str(len(data)))]
        await _send(stream, conn, h11.Response(status_code=status, headers=extra))
        if req.method != b"HEAD":
            await _send(stream, conn, h11.Data(data=data))
        await _send(stream, conn, h11.EndOfMessage())

    async def _echo(
        self, conn: h11.Connection, stream: trio.SocketStream, headers: list[tuple[str, str]]
    ) -> None:
        """Stream the body back while it arrives (both directions at once)."""
        await _send(
            stream,
            conn,
            h11.Response(status_code=200, headers=[("x-instance", self.name)]),
        )
        while True:
            event = await _next(conn, stream)
            if isinstance(event, h11.Data):
                await _send(stream, conn, h11.Data(data=event.data))
            else:
                break
        await _send(stream, conn, h11.EndOfMessage())


async def _next(conn: h11.Connection, stream: trio.SocketStream) -> h11.Event | None:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            if conn.they_are_waiting_for_100_continue:
                await _send(stream, conn, h11.InformationalResponse(status_code=100, headers=[]))
            data = await stream.receive_some(CHUNK)
            conn.receive_data(data)
            continue
        if event is h11.PAUSED:
            return None
        assert isinstance(event, h11.Event)
        return event


async def _send(stream: trio.SocketStream, conn: h11.Connection, event: h11.Event) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


# --- WebSocket ---------------------------------------------------------------------------------


def ws_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def ws_frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    """One final frame (client frames are masked, server frames are not)."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = random.randbytes(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class FrameReader:
    """Frames from a byte stream: ``feed`` bytes, ``frames()`` the complete ones as
    ``(opcode, payload)`` (unmasked)."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> None:
        self.buf += data

    def frames(self) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        while True:
            buf = self.buf
            if len(buf) < 2:
                return out
            opcode = buf[0] & 0x0F
            masked = buf[1] & 0x80
            n = buf[1] & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    return out
                n = struct.unpack("!H", buf[2:4])[0]
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    return out
                n = struct.unpack("!Q", buf[2:10])[0]
                pos = 10
            key = b""
            if masked:
                key = buf[pos : pos + 4]
                pos += 4
            if len(buf) < pos + n:
                return out
            payload = buf[pos : pos + n]
            if masked:
                payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            self.buf = buf[pos + n :]
            out.append((opcode, payload))


@dataclass
class WebSocketApp:
    """Echoes WebSocket messages (see the module docstring)."""

    name: str = "ws"
    port: int = 0
    connections: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await _listen(self._connection, self.port, task_status)

    async def start(self, nursery: trio.Nursery) -> int:
        self.port = await nursery.start(self.serve)
        return self.port

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            event = await _next(conn, stream)
            if not isinstance(event, h11.Request):
                return
            key = dict(event.headers).get(b"sec-websocket-key", b"").decode()
            upgrade = dict(event.headers).get(b"upgrade", b"").lower()
            if not key or upgrade != b"websocket":
                await _send(
                    stream, conn, h11.Response(status_code=400, headers=[("content-length", "0")])
                )
                await _send(stream, conn, h11.EndOfMessage())
                return
            await _next(conn, stream)  # the request's EndOfMessage
            await _send(
                stream,
                conn,
                h11.InformationalResponse(
                    status_code=101,
                    headers=[
                        ("upgrade", "websocket"),
                        ("connection", "Upgrade"),
                        ("sec-websocket-accept", ws_accept(key)),
                        ("x-instance", self.name),
                    ],
                ),
            )
            reader = FrameReader()
            reader.feed(conn.trailing_data[0])
            while True:
                for opcode, payload in reader.frames():
                    if opcode == 0x8:  # close: answer it and end
                        await stream.send_all(ws_frame(0x8, payload, mask=False))
                        return
                    if opcode in (0x1, 0x2):
                        await stream.send_all(ws_frame(opcode, payload, mask=False))
                data = await stream.receive_some(CHUNK)
                if not data:
                    return
                reader.feed(data)
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()


# --- TCP -----------------------------------------------------------------------------------------


@dataclass
class TcpEchoApp:
    """Echoes bytes; half-closes after the client's end of stream."""

    port: int = 0
    connections: int = 0
    received: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await _listen(self._connection, self.port, task_status)

    async def start(self, nursery: trio.Nursery) -> int:
        self.port = await nursery.start(self.serve)
        return self.port

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            while True:
                data = await stream.receive_some(CHUNK)
                if not data:
                    break
                self.received += len(data)
                await stream.send_all(data)
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()


# --- as a process --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.apps")
    parser.add_argument("kind", choices=("http", "ws", "tcp"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--name", default="app")
    parser.add_argument("--version", default="v1")
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args(argv)
    app: HttpApp | WebSocketApp | TcpEchoApp
    if args.kind == "http":
        app = HttpApp(
            args.name, args.version, args.fail_rate, args.delay, args.port, host=args.host
        )
    elif args.kind == "ws":
        app = WebSocketApp(args.name, args.port)
    else:
        app = TcpEchoApp(args.port)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(app.serve)
            print(f"listening on {LOOPBACK}:{port}", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
