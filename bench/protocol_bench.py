"""HTTP/1.1 protocol layer: ``sidecar.protocol`` (llhttp via httptools + our checks and
framing) against h11 (pure Python) and against raw httptools (llhttp with bare
callbacks and hand-written heads: the floor, with none of our checks or events).

``python -m bench.protocol_bench [--quick] [--json]`` prints a table (or JSON).
In-process and pure: no sockets; every number is the best of several timed rounds of
the same work, so a busy machine inflates it less.

Workloads (both sides of a hop, as the sidecar runs them):

- **parse GET**: a fresh server connection parses a small GET (6 header fields).
- **1 KiB server**: keep-alive; parse a POST with a 1 KiB body (Content-Length, one
  read), write a 200 with a 1 KiB body, start the next cycle.
- **1 KiB client**: keep-alive; write that POST, parse that 200, next cycle.
- **64 KiB chunked server**: parse a POST whose 64 KiB body comes in 8 KiB chunks,
  read 16 KiB at a time; write a 200 with a 64 KiB body in 8 KiB Data (chunked).
- **64 KiB chunked client**: the same from the client's side.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import h11
import httptools

from sidecar.protocol import (
    ClientConnection,
    Data,
    EndOfMessage,
    Headers,
    Request,
    Response,
    ServerConnection,
)

Op = Callable[[], object]

# --- the workloads' bytes --------------------------------------------------------------------

GET = (
    b"GET /api/v1/reviews/42?expand=ratings HTTP/1.1\r\n"
    b"Host: reviews.default.svc.cluster.local:9080\r\n"
    b"User-Agent: Go-http-client/1.1\r\n"
    b"Accept: application/json\r\n"
    b"Accept-Encoding: gzip\r\n"
    b"X-Request-Id: 3f1c2a9e-1b2c-4d5e-8f90-123456789abc\r\n"
    b"Traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"
)
KIB = b"x" * 1024
REQUEST_FIELDS = [
    (b"host", b"reviews.default.svc.cluster.local:9080"),
    (b"user-agent", b"Go-http-client/1.1"),
    (b"content-type", b"application/json"),
    (b"x-request-id", b"3f1c2a9e-1b2c-4d5e-8f90-123456789abc"),
]
RESPONSE_FIELDS = [(b"content-type", b"application/json"), (b"server", b"meshd")]
CHUNK = b"y" * 8192
CHUNKS = 8
BIG = CHUNK * CHUNKS
READ = 16384


def _head(start: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
    return start + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n"


POST_1K = (
    _head(b"POST /api/v1/reviews HTTP/1.1", [*REQUEST_FIELDS, (b"content-length", b"1024")]) + KIB
)
RESPONSE_1K = _head(b"HTTP/1.1 200 OK", [*RESPONSE_FIELDS, (b"content-length", b"1024")]) + KIB


def _chunked(body_chunks: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n" % len(c) + c + b"\r\n" for c in body_chunks) + b"0\r\n\r\n"


POST_64K = _head(
    b"POST /upload HTTP/1.1", [*REQUEST_FIELDS, (b"transfer-encoding", b"chunked")]
) + _chunked([CHUNK] * CHUNKS)
RESPONSE_64K = _head(
    b"HTTP/1.1 200 OK", [*RESPONSE_FIELDS, (b"transfer-encoding", b"chunked")]
) + _chunked([CHUNK] * CHUNKS)


def _reads(stream: bytes) -> list[bytes]:
    return [stream[i : i + READ] for i in range(0, len(stream), READ)]


POST_64K_READS = _reads(POST_64K)
RESPONSE_64K_READS = _reads(RESPONSE_64K)

# --- ours -----------------------------------------------------------------------------------


def ours_parse_get() -> Op:
    def op() -> object:
        return ServerConnection().receive_data(GET)

    return op


def ours_server_1k() -> Op:
    conn = ServerConnection()
    response = Response(200, Headers([*RESPONSE_FIELDS, (b"content-length", b"1024")]))
    data = Data(KIB)
    end = EndOfMessage()

    def op() -> object:
        events = conn.receive_data(POST_1K)
        out = conn.send(response) + conn.send(data) + conn.send(end)
        conn.start_next_cycle()
        return events, out

    return op


def ours_client_1k() -> Op:
    conn = ClientConnection()
    request = Request(
        b"POST", b"/api/v1/reviews", Headers([*REQUEST_FIELDS, (b"content-length", b"1024")])
    )
    data = Data(KIB)
    end = EndOfMessage()

    def op() -> object:
        out = conn.send(request) + conn.send(data) + conn.send(end)
        events = conn.receive_data(RESPONSE_1K)
        conn.start_next_cycle()
        return events, out

    return op


def ours_server_64k() -> Op:
    conn = ServerConnection()
    response = Response(200, Headers([*RESPONSE_FIELDS, (b"transfer-encoding", b"chunked")]))
    data = Data(CHUNK)
    end = EndOfMessage()

    def op() -> object:
        events = []
        for piece in POST_64K_READS:
            events += conn.receive_data(piece)
        out = [conn.send(response)]
        for _ in range(CHUNKS):
            out.append(conn.send(data))
        out.append(conn.send(end))
        conn.start_next_cycle()
        return events, out

    return op


def ours_client_64k() -> Op:
    conn = ClientConnection()
    request = Request(
        b"POST", b"/upload", Headers([*REQUEST_FIELDS, (b"transfer-encoding", b"chunked")])
    )
    data = Data(CHUNK)
    end = EndOfMessage()

    def op() -> object:
        out = [conn.send(request)]
        for _ in range(CHUNKS):
            out.append(conn.send(data))
        out.append(conn.send(end))
        events = []
        for piece in RESPONSE_64K_READS:
            events += conn.receive_data(piece)
        conn.start_next_cycle()
        return events, out

    return op


# --- h11 -------------------------------------------------------------------------------------


def _h11_events(conn: h11.Connection, data: bytes) -> list[object]:
    conn.receive_data(data)
    events: list[object] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return events
        events.append(event)


def h11_parse_get() -> Op:
    def op() -> object:
        return _h11_events(h11.Connection(h11.SERVER), GET)

    return op


def h11_server_1k() -> Op:
    conn = h11.Connection(h11.SERVER)
    fields = [*RESPONSE_FIELDS, (b"content-length", b"1024")]

    def op() -> object:
        events = _h11_events(conn, POST_1K)
        out = (
            conn.send(h11.Response(status_code=200, headers=fields))
            + conn.send(h11.Data(data=KIB))
            + conn.send(h11.EndOfMessage())
        )
        conn.start_next_cycle()
        return events, out

    return op


def h11_client_1k() -> Op:
    conn = h11.Connection(h11.CLIENT)
    fields = [*REQUEST_FIELDS, (b"content-length", b"1024")]

    def op() -> object:
        out = (
            conn.send(h11.Request(method=b"POST", target=b"/api/v1/reviews", headers=fields))
            + conn.send(h11.Data(data=KIB))
            + conn.send(h11.EndOfMessage())
        )
        events = _h11_events(conn, RESPONSE_1K)
        conn.start_next_cycle()
        return events, out

    return op


def h11_server_64k() -> Op:
    conn = h11.Connection(h11.SERVER)
    fields = [*RESPONSE_FIELDS, (b"transfer-encoding", b"chunked")]

    def op() -> object:
        events = []
        for piece in POST_64K_READS:
            events += _h11_events(conn, piece)
        out = [conn.send(h11.Response(status_code=200, headers=fields))]
        for _ in range(CHUNKS):
            out.append(conn.send(h11.Data(data=CHUNK)))
        out.append(conn.send(h11.EndOfMessage()))
        conn.start_next_cycle()
        return events, out

    return op


def h11_client_64k() -> Op:
    conn = h11.Connection(h11.CLIENT)
    fields = [*REQUEST_FIELDS, (b"transfer-encoding", b"chunked")]

    def op() -> object:
        out = [conn.send(h11.Request(method=b"POST", target=b"/upload", headers=fields))]
        for _ in range(CHUNKS):
            out.append(conn.send(h11.Data(data=CHUNK)))
        out.append(conn.send(h11.EndOfMessage()))
        events = []
        for piece in RESPONSE_64K_READS:
            events += _h11_events(conn, piece)
        conn.start_next_cycle()
        return events, out

    return op


# --- raw httptools (the floor) ----------------------------------------------------------------


class _Collect:
    """Bare callbacks: what any use of llhttp pays at least."""

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.url = b""
        self.done = 0

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done += 1


def raw_parse_get() -> Op:
    def op() -> object:
        collect = _Collect()
        httptools.HttpRequestParser(collect).feed_data(GET)
        return collect

    return op


def raw_server_1k() -> Op:
    collect = _Collect()
    parser = httptools.HttpRequestParser(collect)
    fields = [*RESPONSE_FIELDS, (b"content-length", b"1024")]

    def op() -> object:
        collect.fields = []
        collect.body = []
        parser.feed_data(POST_1K)
        return _head(b"HTTP/1.1 200 OK", fields) + KIB

    return op


def raw_client_1k() -> Op:
    collect = _Collect()
    parser = httptools.HttpResponseParser(collect)
    fields = [*REQUEST_FIELDS, (b"content-length", b"1024")]

    def op() -> object:
        out = _head(b"POST /api/v1/reviews HTTP/1.1", fields) + KIB
        collect.fields = []
        collect.body = []
        parser.feed_data(RESPONSE_1K)
        return out

    return op


def raw_server_64k() -> Op:
    collect = _Collect()
    parser = httptools.HttpRequestParser(collect)
    fields = [*RESPONSE_FIELDS, (b"transfer-encoding", b"chunked")]

    def op() -> object:
        collect.fields = []
        collect.body = []
        for piece in POST_64K_READS:
            parser.feed_data(piece)
        out = [_head(b"HTTP/1.1 200 OK", fields)]
        for _ in range(CHUNKS):
            out.append(b"".join((b"%x\r\n" % len(CHUNK), CHUNK, b"\r\n")))
        out.append(b"0\r\n\r\n")
        return out

    return op


def raw_client_64k() -> Op:
    collect = _Collect()
    parser = httptools.HttpResponseParser(collect)
    fields = [*REQUEST_FIELDS, (b"transfer-encoding", b"chunked")]

    def op() -> object:
        out = [_head(b"POST /upload HTTP/1.1", fields)]
        for _ in range(CHUNKS):
            out.append(b"".join((b"%x\r\n" % len(CHUNK), CHUNK, b"\r\n")))
        out.append(b"0\r\n\r\n")
        collect.fields = []
        collect.body = []
        for piece in RESPONSE_64K_READS:
            parser.feed_data(piece)
        return out

    return op


# --- running ----------------------------------------------------------------------------------

# (key, title, bytes of body moved per op (0: report µs only), builders)
WORKLOADS: list[tuple[str, str, int, dict[str, Callable[[], Op]]]] = [
    (
        "parse_get",
        "parse small GET (new conn)",
        0,
        {"ours": ours_parse_get, "h11": h11_parse_get, "httptools": raw_parse_get},
    ),
    (
        "server_1k",
        "keep-alive 1 KiB, server",
        2048,
        {"ours": ours_server_1k, "h11": h11_server_1k, "httptools": raw_server_1k},
    ),
    (
        "client_1k",
        "keep-alive 1 KiB, client",
        2048,
        {"ours": ours_client_1k, "h11": h11_client_1k, "httptools": raw_client_1k},
    ),
    (
        "server_64k",
        "64 KiB chunked, server",
        2 * len(BIG),
        {"ours": ours_server_64k, "h11": h11_server_64k, "httptools": raw_server_64k},
    ),
    (
        "client_64k",
        "64 KiB chunked, client",
        2 * len(BIG),
        {"ours": ours_client_64k, "h11": h11_client_64k, "httptools": raw_client_64k},
    ),
]
IMPLEMENTATIONS = ("ours", "h11", "httptools")


def best_seconds_per_op(op: Op, budget_s: float, rounds: int) -> float:
    """The best of ``rounds`` timed rounds, each sized to take about budget/rounds."""
    for _ in range(3):
        op()  # warm up: first calls build caches
    n = 1
    while True:  # find a round size of ~budget/rounds
        start = time.perf_counter()
        for _ in range(n):
            op()
        took = time.perf_counter() - start
        if took >= budget_s / rounds / 4 or n >= 1 << 20:
            break
        n *= 2
    n = max(1, int(n * (budget_s / rounds) / max(took, 1e-9)))
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        start = time.perf_counter()
        for _ in range(n):
            op()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def _body(events: list[Any]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Data | h11.Data))


def _parsed_by_ours(method: bytes, stream: bytes) -> bytes:
    """The body of ``stream`` (a response to ``method``) as our client reads it."""
    client = ClientConnection()
    client.send(Request(method, b"/", Headers([(b"host", b"x")])))
    client.send(EndOfMessage())
    return _body(client.receive_data(stream))


def sanity_check() -> None:
    """Each implementation does the work it is timed for, and what each writes is read
    back as meant, before anything is timed."""
    assert [type(e) for e in ours_parse_get()()] == [Request, EndOfMessage]  # type: ignore[attr-defined]
    assert len(_h11_events(h11.Connection(h11.SERVER), GET)) == 2
    result: Any = ours_server_1k()()
    assert _body(result[0]) == KIB
    assert _parsed_by_ours(b"POST", result[1]) == KIB
    result = h11_server_1k()()
    assert _body(result[0]) == KIB
    assert _parsed_by_ours(b"POST", result[1]) == KIB
    assert _parsed_by_ours(b"POST", raw_server_1k()()) == KIB  # type: ignore[arg-type]
    for build in (ours_server_64k, h11_server_64k):
        result = build()()
        assert _body(result[0]) == BIG
        assert _parsed_by_ours(b"POST", b"".join(result[1])) == BIG
    assert _parsed_by_ours(b"POST", b"".join(raw_server_64k()())) == BIG  # type: ignore[arg-type]
    for build in (ours_client_1k, h11_client_1k, ours_client_64k, h11_client_64k):
        result = build()()
        assert _body(result[0]) in (KIB, BIG)
        stream = result[1] if isinstance(result[1], bytes) else b"".join(result[1])
        assert _body(ServerConnection().receive_data(stream)) in (KIB, BIG)


def run(quick: bool) -> dict[str, Any]:
    sanity_check()
    budget = 0.3 if quick else 1.5
    rounds = 3 if quick else 7
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "httptools": httptools.__version__,
        "h11": metadata.version("h11"),
        "machine": platform.machine(),
        "workloads": [],
    }
    for key, title, body_bytes, builders in WORKLOADS:
        row: dict[str, Any] = {"key": key, "title": title, "body_bytes": body_bytes}
        for impl in IMPLEMENTATIONS:
            seconds = best_seconds_per_op(builders[impl](), budget, rounds)
            row[impl] = {"us": seconds * 1e6}
            if body_bytes:
                row[impl]["mb_s"] = body_bytes / seconds / 1e6
        results["workloads"].append(row)
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        f"HTTP/1.1 protocol layer (Python {results['python']}, httptools "
        f"{results['httptools']}, h11 {results['h11']}): time per operation, best of rounds",
        "",
        f"{'workload':<28} {'ours':>11} {'h11':>11} {'raw httptools':>14} {'h11 / ours':>11}",
    ]
    for row in results["workloads"]:
        us = [f"{row[impl]['us']:.1f} µs" for impl in IMPLEMENTATIONS]
        ratio = row["h11"]["us"] / row["ours"]["us"]
        lines.append(f"{row['title']:<28} {us[0]:>11} {us[1]:>11} {us[2]:>14} {ratio:>10.1f}x")
        if row["body_bytes"] >= 65536:
            mb = [f"{row[impl]['mb_s']:,.0f} MB/s" for impl in IMPLEMENTATIONS]
            lines.append(f"{'  body bytes in + out':<28} {mb[0]:>11} {mb[1]:>11} {mb[2]:>14}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short rounds (a smoke test)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    results = run(args.quick)
    print(json.dumps(results, indent=2) if args.json else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
