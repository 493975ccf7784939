"""Bodies through the proxy: chunked and multi-MiB bodies streamed both ways (never
buffered whole), ``Expect: 100-continue``, and pipelined requests answered in order;
through one hop and through the mesh path (outbound -> mTLS -> inbound)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import trio

from tests.proxy.support import (
    Client,
    cluster,
    endpoint,
    forward,
    make_identity,
    raw_exchange,
    route,
    running_proxy,
    snapshot,
    spiffe,
    vhost,
)
from tests.sidecar.test_identity_support import TestCa
from tests.support.apps import HttpApp

MIB = 1024 * 1024


async def _mesh_round_trips(tmp_path: Path, check: object) -> None:
    """Run ``check(outbound_port, app)`` against client sidecar -> mTLS -> server
    sidecar -> app."""
    ca = TestCa()
    async with trio.open_nursery() as nursery:
        app = HttpApp("reviews-1")
        app_port = await app.start(nursery)
        server_snap = snapshot(service="reviews", app_port=app_port)
        async with running_proxy(server_snap, make_identity(ca, "reviews", tmp_path / "r")) as srv:
            c = cluster("reviews", [endpoint(srv.inbound, spiffe("reviews"))])
            snap = snapshot(clusters=[c], vhosts=[vhost("reviews", [route(forward(c))])])
            async with running_proxy(snap, make_identity(ca, "frontend", tmp_path / "f")) as cli:
                await check(cli.outbound, app)  # type: ignore[operator]
        nursery.cancel_scope.cancel()


def test_large_and_chunked_bodies_stream_both_ways_through_the_mesh(tmp_path: Path) -> None:
    async def check(port: int, app: HttpApp) -> None:
        client = Client(port)
        body = bytes(range(256)) * (12 * MIB // 256)  # 12 MiB with a length
        r = await client.request("POST", "/upload", body=body)
        assert r.status == 200
        assert r.json()["body_size"] == len(body)
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        # Chunked both ways at once: the app echoes each piece as it arrives.
        pieces = [bytes([i % 256]) * (256 * 1024 + i) for i in range(24)]  # ~6 MiB
        r = await client.request("POST", "/echo", chunks=pieces)
        assert r.status == 200
        assert r.body == b"".join(pieces)
        # A big chunked download.
        r = await client.request("GET", f"/bytes/{8 * MIB}")
        assert len(r.body) == 8 * MIB
        # Still one connection from the client, and the pools reused theirs.
        r = await client.request("GET", "/")
        assert r.status == 200
        assert client.connections == 1
        await client.aclose()

    trio.run(_mesh_round_trips, tmp_path, check)


def test_expect_100_continue_is_answered_before_the_body(tmp_path: Path) -> None:
    async def check(port: int, app: HttpApp) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"POST /x HTTP/1.1\r\nHost: reviews\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        got = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in got:
                got += await stream.receive_some(1024)
        assert got.startswith(b"HTTP/1.1 100 Continue\r\n"), got
        await stream.send_all(b"hello")
        with trio.fail_after(5):
            while b'"body_size": 5' not in got:
                got += await stream.receive_some(65536)
        assert b"HTTP/1.1 200" in got
        # The app was not asked to send 100 (the proxy answered Expect itself).
        assert b"expect" not in got.lower().split(b"\r\n\r\n", 2)[2]
        await stream.aclose()

    trio.run(_mesh_round_trips, tmp_path, check)


def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    async def check(port: int, app: HttpApp) -> None:
        requests = (
            b"".join(
                b"GET /delay/%d?n=%d HTTP/1.1\r\nHost: reviews\r\n\r\n" % (30 - 10 * i, i)
                for i in range(3)
            )
            + b"POST /last HTTP/1.1\r\nHost: reviews\r\nContent-Length: 3\r\n"
            + b"Connection: close\r\n\r\nabc"
        )
        reply = await raw_exchange(port, requests)
        assert reply.count(b"HTTP/1.1 200") == 4, reply
        order = [reply.index(b'"target": "/delay/%d?n=%d"' % (30 - 10 * i, i)) for i in range(3)]
        assert order == sorted(order)
        assert reply.index(b'"target": "/last"') > order[-1]

    trio.run(_mesh_round_trips, tmp_path, check)


def test_a_chunked_upload_streams_through_one_hop(tmp_path: Path) -> None:
    """Plaintext cluster (an app without a sidecar): 4 MiB echoed piece by piece."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            app = HttpApp("r")
            c = cluster("reviews", [endpoint(await app.start(nursery))], tls="DISABLE")
            snap = snapshot(clusters=[c], vhosts=[vhost("reviews", [route(forward(c))])])
            async with running_proxy(snap, None) as proxy:
                client = Client(proxy.outbound)
                pieces = [b"x" * 65536] * 64
                r = await client.request("POST", "/echo", chunks=pieces)
                assert len(r.body) == 64 * 65536
                await client.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)
