"""Simulated sidecars: N config watches on meshd, in one process of their own.

``python -m bench.watchers --port P --token T --ids FILE`` opens one keep-alive
HTTP/1.1 connection per proxy id and long-polls ``GET /v1/xds/{id}?version=V&wait=S``
on it, as a sidecar does. On a 200 it immediately polls again with the version it just
got (``X-Mesh-Version``): that poll is the proxy's ACK. The snapshot body is read in
full but not decoded — decoding is the sidecar's cost, not meshd's, and would make the
client the bottleneck.

Requests are written by hand on raw asyncio streams (uvloop when installed): a general
HTTP client at 1,000 connections would spend more CPU than meshd and the benchmark
would measure it instead.

Every 200 is recorded as ``(received_ns, acked_ns, bytes)`` with ``time.monotonic_ns()``
(CLOCK_MONOTONIC, the same clock in every process of the machine, so the orchestrator
can subtract its own timestamps). ``received`` is when the last byte of the body was
read, ``acked`` right after the next poll was handed to the socket.

Control protocol: one JSON object per line on stdin, answered by one per line on stdout
(logs go to stderr):

- ``{"cmd": "status"}`` -> ``{"event": "status", "loop", "watchers", "connected",
  "synced", "reconnects", "errors", "last_error"}`` (``synced``: got at least one snapshot);
- ``{"cmd": "collect", "since_ns": T, "timeout_s": S}`` -> waits (at most S) until every
  watcher has received and ACKed a snapshot after T, then ``{"event": "collected",
  "received_ns": [...], "acked_ns": [...], "bytes": [...], "pushes": [...], "missing": [...]}``
  — per watcher, in id order, its first snapshot after T (``null`` when missing);
  ``pushes`` counts its snapshots after T (more than one means an extra push);
- ``{"cmd": "stop"}`` or end of stdin: close every connection and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

CONNECT_CONCURRENCY = 64
"""Connections opened at once at start-up: all 1,000 at once would overflow nothing on
loopback (meshd's backlog is 4096) but would turn start-up into a thundering herd."""
RETRY_DELAY_S = 0.2
STREAM_LIMIT = 16 * 1024
"""Per-connection read buffer bound (the reader pauses the socket at twice this)."""
READ_CHUNK = 16 * 1024


class ProtocolError(Exception):
    """meshd answered something a sidecar could not use."""


@dataclass(slots=True)
class Push:
    received_ns: int
    size: int
    version: str
    acked_ns: int = 0


@dataclass(slots=True)
class Watcher:
    proxy_id: str
    version: str = ""
    pushes: list[Push] = field(default_factory=list)
    connected: bool = False
    reconnects: int = 0
    errors: int = 0
    last_error: str = ""

    def first_after(self, since_ns: int) -> tuple[Push | None, int]:
        """The first snapshot received at or after ``since_ns`` and how many there were."""
        after = [p for p in self.pushes if p.received_ns >= since_ns]
        return (after[0] if after else None), len(after)


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    token: str
    wait_s: float
    # meshd serves HTTPS only; each watcher verifies it as a sidecar would.
    tls: ssl.SSLContext | None = None

    def request(self, proxy_id: str, version: str) -> bytes:
        path = f"/v1/xds/{quote(proxy_id, safe='')}?version={quote(version, safe='')}"
        return (
            f"GET {path}&wait={self.wait_s:g} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\n"
            "Accept: application/json\r\n"
            "\r\n"
        ).encode("ascii")


async def _discard(reader: asyncio.StreamReader, size: int, keep: int) -> bytes:
    """Read ``size`` body bytes in small pieces and drop them, keeping the first ``keep``.
    One growing buffer per connection (1,000 of them, each the size of a snapshot) would
    make this process fault in hundreds of MiB during the first rounds and slow them
    down: a cost of the simulation, not of meshd."""
    head = b""
    left = size
    while left > 0:
        chunk = await reader.read(min(left, READ_CHUNK))
        if not chunk:
            raise asyncio.IncompleteReadError(head, size)
        if len(head) < keep:
            head += chunk[: keep - len(head)]
        left -= len(chunk)
    return head


async def read_response(
    reader: asyncio.StreamReader, keep: int = 200
) -> tuple[int, dict[str, str], int, bytes]:
    """One HTTP/1.1 response: status, lower-cased headers, body size and its first
    ``keep`` bytes (Content-Length or chunked; no body for 1xx, 204 and 304)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ProtocolError(f"not an HTTP/1.1 status line: {lines[0]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if status < 200 or status in (204, 304):
        return status, headers, 0, b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        total = 0
        start = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # uvicorn sends no trailers
                return status, headers, total, start
            start += await _discard(reader, size, max(0, keep - len(start)))
            total += size
            await reader.readexactly(2)
    length = int(headers.get("content-length", "0"))
    return status, headers, length, await _discard(reader, length, keep)


async def watch(w: Watcher, target: Target, gate: asyncio.Semaphore, acked: asyncio.Event) -> None:
    """Long-poll forever on one connection, reconnecting if meshd closes it; ``acked``
    is set after every ACK (so a collector can wake up and look)."""
    while True:
        writer: asyncio.StreamWriter | None = None
        try:
            async with gate:
                reader, writer = await asyncio.open_connection(
                    target.host, target.port, limit=STREAM_LIMIT, ssl=target.tls
                )
            w.connected = True
            pending: Push | None = None
            while True:
                writer.write(target.request(w.proxy_id, w.version))
                if pending is not None:
                    # The poll carrying the new version is the ACK: stamp it as written.
                    pending.acked_ns = time.monotonic_ns()
                    pending = None
                    acked.set()
                await writer.drain()
                status, headers, size, start = await read_response(reader)
                if status == 200:
                    received = time.monotonic_ns()
                    version = headers.get("x-mesh-version", "")
                    if not version:
                        raise ProtocolError("a 200 without X-Mesh-Version")
                    pending = Push(received, size, version)
                    w.pushes.append(pending)
                    w.version = version
                elif status != 304:
                    # 404 before the first compile covered this proxy, or a real error:
                    # count it, back off, poll again.
                    w.errors += 1
                    w.last_error = f"HTTP {status}: {start.decode(errors='replace')}"
                    await asyncio.sleep(RETRY_DELAY_S)
                if headers.get("connection", "").lower() == "close":
                    break
        except (
            OSError,
            ValueError,  # a malformed number in the head
            ProtocolError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as exc:
            w.errors += 1
            w.last_error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(RETRY_DELAY_S)
        finally:
            w.connected = False
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        w.reconnects += 1


def _status(watchers: Sequence[Watcher]) -> dict[str, Any]:
    last = next((w.last_error for w in reversed(watchers) if w.last_error), "")
    loop = type(asyncio.get_running_loop())
    return {
        "event": "status",
        "loop": f"{loop.__module__}.{loop.__qualname__}",
        "watchers": len(watchers),
        "connected": sum(w.connected for w in watchers),
        "synced": sum(bool(w.pushes) for w in watchers),
        "reconnects": sum(w.reconnects for w in watchers),
        "errors": sum(w.errors for w in watchers),
        "last_error": last,
    }


async def _collect(
    watchers: Sequence[Watcher], acked: asyncio.Event, since_ns: int, timeout_s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s

    def done(w: Watcher) -> bool:
        push, _ = w.first_after(since_ns)
        return push is not None and push.acked_ns > 0

    # Timestamps are taken where events happen, so how soon this loop notices does
    # not change the numbers; it only has to wake up now and then.
    while not all(done(w) for w in watchers):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        acked.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(acked.wait(), min(left, 0.05))
    # Let a second push, if one is coming, show up as ``pushes > 1`` in the result.
    await asyncio.sleep(0.05)
    received: list[int | None] = []
    acked_ns: list[int | None] = []
    sizes: list[int | None] = []
    counts: list[int] = []
    missing: list[str] = []
    for w in watchers:
        push, count = w.first_after(since_ns)
        counts.append(count)
        if push is None or not push.acked_ns:
            missing.append(w.proxy_id)
        received.append(push.received_ns if push else None)
        acked_ns.append(push.acked_ns if push and push.acked_ns else None)
        sizes.append(push.size if push else None)
        # Only the newest push matters for later rounds; keep memory flat.
        del w.pushes[:-1]
    return {
        "event": "collected",
        "since_ns": since_ns,
        "received_ns": received,
        "acked_ns": acked_ns,
        "bytes": sizes,
        "pushes": counts,
        "missing": missing,
    }


def _reply(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


async def serve(ids: Sequence[str], target: Target) -> None:
    watchers = [Watcher(pid) for pid in ids]
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    acked = asyncio.Event()
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(watch(w, target, gate, acked)) for w in watchers]
        try:
            while line := await commands.readline():
                cmd = json.loads(line)
                match cmd.get("cmd"):
                    case "status":
                        _reply(_status(watchers))
                    case "collect":
                        _reply(
                            await _collect(
                                watchers,
                                acked,
                                int(cmd["since_ns"]),
                                float(cmd.get("timeout_s", 30)),
                            )
                        )
                    case "stop":
                        break
                    case other:
                        _reply({"event": "error", "message": f"unknown command {other!r}"})
        finally:
            for task in tasks:
                task.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.watchers", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True, help="a bearer token with the viewer role")
    parser.add_argument("--ids", type=Path, required=True, help="JSON list of proxy ids")
    parser.add_argument("--wait", type=float, default=60.0, help="long-poll wait, seconds")
    parser.add_argument("--ca-file", type=Path, required=True, help="meshd's CA bundle")
    parser.add_argument(
        "--loop", choices=["auto", "asyncio", "uvloop"], default="auto", help="event loop"
    )
    args = parser.parse_args(argv)
    ids = json.loads(args.ids.read_text())
    tls = ssl.create_default_context(cafile=str(args.ca_file))
    target = Target(args.host, args.port, args.token, args.wait, tls)
    use_uvloop = args.loop != "asyncio"
    try:
        import uvloop  # noqa: PLC0415 — optional, and only this process wants it
    except ImportError:
        if args.loop == "uvloop":
            raise
        use_uvloop = False
    with contextlib.suppress(KeyboardInterrupt):
        if use_uvloop:
            uvloop.run(serve(ids, target))
        else:
            asyncio.run(serve(ids, target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
