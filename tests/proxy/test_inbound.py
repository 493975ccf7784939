"""The inbound listener: mTLS and PERMISSIVE plaintext detection, STRICT refusing
plaintext, authorization, the peer identity check of the client side, WebSocket and raw
TCP (with half-close) through two sidecars."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from meshd.compile import snapshot as s
from sidecar.proxy import UpstreamSpec
from tests.proxy.support import (
    Client,
    client_tls,
    cluster,
    endpoint,
    forward,
    free_port,
    get,
    make_identity,
    raw_exchange,
    route,
    running_proxy,
    snapshot,
    spiffe,
    vhost,
)
from tests.sidecar.test_identity_support import TestCa
from tests.support.apps import FrameReader, HttpApp, TcpEchoApp, WebSocketApp, ws_frame

GET = b"GET /x HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n"


def test_strict_refuses_plaintext_and_permissive_accepts_both(tmp_path: Path) -> None:
    async def main() -> None:
        ca = TestCa()
        async with trio.open_nursery() as nursery:
            app = HttpApp("reviews-1")
            app_port = await app.start(nursery)
            identity = make_identity(ca, "reviews", tmp_path / "r")
            tls = client_tls(ca, "productpage", tmp_path / "c")
            async with running_proxy(
                snapshot(service="reviews", app_port=app_port), identity
            ) as srv:
                assert await raw_exchange(srv.inbound, GET) == b""  # closed, unanswered
                assert srv.server.inbound is not None
                assert srv.server.inbound.refused_plaintext == 1
                reply = await raw_exchange(srv.inbound, GET, tls=tls)
                assert reply.startswith(b"HTTP/1.1 200")
                body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
                headers = dict(body["headers"])
                assert headers["x-forwarded-proto"] == "https"
                assert headers["x-forwarded-for"] == "127.0.0.1"
                # PERMISSIVE: plaintext too, and TLS still.
                srv.apply(
                    snapshot(service="reviews", app_port=app_port, mtls="PERMISSIVE", version="v2")
                )
                assert (await raw_exchange(srv.inbound, GET)).startswith(b"HTTP/1.1 200")
                assert (await raw_exchange(srv.inbound, GET, tls=tls)).startswith(b"HTTP/1.1 200")
                # A client certificate from another CA fails the handshake.
                other = client_tls(TestCa("rogue root"), "productpage", tmp_path / "rogue")
                try:
                    reply = await raw_exchange(srv.inbound, GET, tls=other)
                except trio.BrokenResourceError:
                    reply = b""
                assert reply == b""
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_authorization_denies_with_403(tmp_path: Path) -> None:
    async def main() -> None:
        ca = TestCa()
        only_frontend_reads = s.AuthzPolicy(
            "default/reviews-viewer",
            "ALLOW",
            (
                s.AuthzRule(
                    sources=(
                        (
                            s.Constraint(
                                "source.principal",
                                (s.ValueMatch("exact", "cluster.local/ns/default/sa/frontend"),),
                            ),
                        ),
                    ),
                    operations=(
                        (s.Constraint("request.method", (s.ValueMatch("exact", "GET"),)),),
                    ),
                ),
            ),
        )
        deny_admin = s.AuthzPolicy(
            "default/no-admin",
            "DENY",
            (
                s.AuthzRule(
                    operations=(
                        (s.Constraint("request.path", (s.ValueMatch("prefix", "/admin"),)),),
                    )
                ),
            ),
        )
        async with trio.open_nursery() as nursery:
            app = HttpApp("reviews-1")
            app_port = await app.start(nursery)
            snap = snapshot(
                service="reviews", app_port=app_port, authz=[only_frontend_reads, deny_admin]
            )
            async with running_proxy(snap, make_identity(ca, "reviews", tmp_path / "r")) as srv:
                frontend = Client(srv.inbound, tls=client_tls(ca, "frontend", tmp_path / "f"))
                assert (await frontend.request("GET", "/reviews/1")).status == 200
                denied = await frontend.request("POST", "/reviews/1", body=b"{}")
                assert (denied.status, denied.body) == (403, b"RBAC: access denied")
                # The normalised path is what policy sees: no way round /admin.
                assert (await frontend.request("GET", "/public/../admin/x")).status == 403
                assert (await frontend.request("GET", "/%61dmin")).status == 403
                other = Client(srv.inbound, tls=client_tls(ca, "ratings", tmp_path / "o"))
                assert (await other.request("GET", "/reviews/1")).status == 403
                assert app.requests == 1
                await frontend.aclose()
                await other.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_server_with_the_wrong_identity_gets_503(tmp_path: Path) -> None:
    async def main() -> None:
        ca = TestCa()
        async with trio.open_nursery() as nursery:
            app = HttpApp("impostor")
            app_port = await app.start(nursery)
            # The endpoint claims to be reviews; the sidecar there is ratings.
            async with running_proxy(
                snapshot(service="ratings", app_port=app_port),
                make_identity(ca, "ratings", tmp_path / "x"),
            ) as srv:
                c = cluster("reviews", [endpoint(srv.inbound, spiffe("reviews"))])
                snap = snapshot(clusters=[c], vhosts=[vhost("reviews", [route(forward(c))])])
                async with running_proxy(
                    snap, make_identity(ca, "frontend", tmp_path / "f")
                ) as cli:
                    r = await get(cli.outbound, "/", host="reviews")
                    assert r.status == 503
                    assert b"peer identity mismatch" in r.body
                    assert app.requests == 0
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_websocket_echo_through_two_sidecars(tmp_path: Path) -> None:
    async def main() -> None:
        ca = TestCa()
        async with trio.open_nursery() as nursery:
            ws = WebSocketApp("ws-1")
            app_port = await ws.start(nursery)
            async with running_proxy(
                snapshot(service="chat", app_port=app_port),
                make_identity(ca, "chat", tmp_path / "s"),
            ) as srv:
                c = cluster("chat", [endpoint(srv.inbound, spiffe("chat"))])
                snap = snapshot(clusters=[c], vhosts=[vhost("chat", [route(forward(c))])])
                async with running_proxy(
                    snap, make_identity(ca, "frontend", tmp_path / "f")
                ) as cli:
                    stream = await trio.open_tcp_stream("127.0.0.1", cli.outbound)
                    hello = ws_frame(0x1, b"first, sent with the handshake", mask=True)
                    await stream.send_all(
                        b"GET /socket HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\n"
                        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" + hello
                    )
                    got = b""
                    with trio.fail_after(5):
                        while b"\r\n\r\n" not in got:
                            got += await stream.receive_some(4096)
                    head, rest = got.split(b"\r\n\r\n", 1)
                    assert head.startswith(b"HTTP/1.1 101")
                    assert b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head  # RFC 6455
                    assert b"upgrade: websocket" in head.lower()
                    reader = FrameReader()
                    reader.feed(rest)
                    messages: list[bytes] = []
                    big = b"y" * 200_000
                    await stream.send_all(ws_frame(0x2, big, mask=True))
                    with trio.fail_after(5):
                        while len(messages) < 2:
                            messages += [p for _, p in reader.frames()]
                            if len(messages) < 2:
                                reader.feed(await stream.receive_some(65536))
                    assert messages == [b"first, sent with the handshake", big]
                    await stream.send_all(ws_frame(0x8, b"\x03\xe8", mask=True))
                    with trio.fail_after(5):
                        while True:
                            data = await stream.receive_some(4096)
                            if not data:
                                break
                            reader.feed(data)
                    assert reader.frames() == [(0x8, b"\x03\xe8")]
                    await stream.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_tcp_echo_with_half_close_through_two_sidecars(tmp_path: Path) -> None:
    async def main() -> None:
        ca = TestCa()
        async with trio.open_nursery() as nursery:
            echo = TcpEchoApp()
            app_port = await echo.start(nursery)
            server_snap = snapshot(service="db", app_port=app_port, protocol="tcp")
            async with running_proxy(server_snap, make_identity(ca, "db", tmp_path / "s")) as srv:
                c = cluster("db", [endpoint(srv.inbound, spiffe("db"))], port=5432, protocol="tcp")
                tcp = s.TcpService(
                    c.service, 5432, (s.TcpRoute((s.WeightedCluster(c.name, 100),)),)
                )
                local = free_port()
                snap = snapshot(clusters=[c], tcp=[tcp])
                async with running_proxy(
                    snap,
                    make_identity(ca, "frontend", tmp_path / "f"),
                    upstreams=[UpstreamSpec("db", None, local)],
                ) as cli:
                    payload = b"".join(b"%06d" % i for i in range(200_000))  # 1.2 MB

                    async def send(stream: trio.SocketStream) -> None:
                        await stream.send_all(payload)
                        await stream.send_eof()  # half-close: we still read

                    for _ in range(2):
                        stream = await trio.open_tcp_stream("127.0.0.1", cli.ports["upstream db"])
                        async with trio.open_nursery() as io:
                            io.start_soon(send, stream)
                            got = bytearray()
                            with trio.fail_after(10):
                                while True:
                                    data = await stream.receive_some(65536)
                                    if not data:
                                        break
                                    got += data
                        assert bytes(got) == payload
                        await stream.aclose()
                    assert echo.connections == 2
            nursery.cancel_scope.cancel()

    trio.run(main)
