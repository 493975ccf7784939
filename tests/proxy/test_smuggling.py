"""Request smuggling shapes sent as raw bytes to the outbound listener and to the
inbound listener (plaintext in PERMISSIVE mode, and over mTLS): each gets 400 and the
connection is closed, and nothing reaches the app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.proxy.support import (
    client_tls,
    cluster,
    endpoint,
    forward,
    make_identity,
    route,
    running_proxy,
    snapshot,
    vhost,
)
from tests.sidecar.test_identity_support import TestCa
from tests.support.apps import HttpApp

H = b"POST / HTTP/1.1\r\nHost: reviews\r\n"
SHAPES: dict[str, bytes] = {
    "CL.TE": H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    "TE.CL": H
    + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    "duplicate CL": H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "conflicting CL": H + b"Content-Length: 5\r\nContent-Length: 12\r\n\r\nhello",
    "CL list": H + b"Content-Length: 5, 5\r\n\r\nhello",
    "CL sign": H + b"Content-Length: +5\r\n\r\nhello",
    "CL trailing space": H + b"Content-Length: 5 \r\n\r\nhello",
    "TE xchunked": H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "TE space before colon": H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "TE obs-fold": H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "TE vertical tab": H + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
    "TE chunked, chunked": H + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    "TE in HTTP/1.0": (
        b"POST / HTTP/1.0\r\nHost: reviews\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "bad chunk size": H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk size 0x": H + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunk without CRLF": H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    "bare LF": b"POST / HTTP/1.1\nHost: reviews\nContent-Length: 0\n\n",
    "NUL in value": H + b"X-Thing: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "two Hosts": H + b"Host: other\r\nContent-Length: 0\r\n\r\n",
    "no Host": b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
}


async def refused(port: int, data: bytes, tls: Any = None) -> tuple[bytes, bool]:
    """Send ``data``; what came back, and whether the proxy closed the connection."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream: trio.abc.Stream = tcp
    if tls is not None:
        stream = trio.SSLStream(tcp, tls, server_hostname=None, https_compatible=True)
    reply = b""
    closed = False
    try:
        await stream.send_all(data)
        with trio.move_on_after(3):
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    closed = True
                    break
                reply += chunk
    except trio.BrokenResourceError:
        closed = True
    finally:
        await stream.aclose()
    return reply, closed


@pytest.mark.parametrize("listener", ["outbound", "inbound", "inbound-mtls"])
def test_each_smuggling_shape_gets_400_and_a_closed_connection(
    tmp_path: Path, listener: str
) -> None:
    async def main() -> None:
        ca = TestCa()
        async with trio.open_nursery() as nursery:
            app = HttpApp("r")
            app_port = await app.start(nursery)
            c = cluster("reviews", [endpoint(app_port)], tls="DISABLE")
            snap = snapshot(
                service="reviews",
                app_port=app_port,
                mtls="PERMISSIVE",
                clusters=[c],
                vhosts=[vhost("reviews", [route(forward(c))])],
            )
            async with running_proxy(snap, make_identity(ca, "reviews", tmp_path / "r")) as proxy:
                port = proxy.outbound if listener == "outbound" else proxy.inbound
                tls = (
                    client_tls(ca, "frontend", tmp_path / "c")
                    if listener == "inbound-mtls"
                    else None
                )
                failures = []
                for name, data in SHAPES.items():
                    reply, closed = await refused(port, data, tls)
                    if not (
                        reply.startswith(b"HTTP/1.1 400 ")
                        and closed
                        and reply.count(b"HTTP/1.1") == 1
                    ):
                        failures.append(f"{name}: {reply[:80]!r} closed={closed}")
                assert failures == []
                assert app.requests == 0
            nursery.cancel_scope.cancel()

    trio.run(main)
