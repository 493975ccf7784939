"""What the proxy reports to telemetry: one request record per request on each side
(``reporter="source"`` outbound, ``"destination"`` inbound) with the peer's identity,
the security policy and Envoy's response flags; TCP connections opened and closed."""

from __future__ import annotations

from pathlib import Path

import trio

from meshd.compile import snapshot as s
from sidecar.proxy import UpstreamSpec
from sidecar.telemetry import Telemetry
from tests.proxy.support import (
    cluster,
    endpoint,
    forward,
    free_port,
    get,
    make_identity,
    route,
    running_proxy,
    snapshot,
    spiffe,
    vhost,
)
from tests.sidecar.test_identity_support import TestCa
from tests.support.apps import HttpApp, TcpEchoApp


def samples(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def test_requests_and_tcp_connections_are_reported_on_both_sides(tmp_path: Path) -> None:
    async def main() -> None:
        ca = TestCa()
        async with trio.open_nursery() as nursery:
            app = HttpApp("reviews-1")
            app_port = await app.start(nursery)
            echo = TcpEchoApp()
            echo_port = await echo.start(nursery)
            server_snap = snapshot(service="reviews", app_port=app_port)
            async with running_proxy(
                server_snap, make_identity(ca, "reviews", tmp_path / "r")
            ) as srv:
                server_metrics = Telemetry("reviews", "default", spiffe("reviews"))
                srv.server.ctx.telemetry.attach(server_metrics)
                c = cluster("reviews", [endpoint(srv.inbound, spiffe("reviews"))])
                empty = cluster("ratings", [])
                db = cluster("db", [endpoint(echo_port)], port=5432, protocol="tcp", tls="DISABLE")
                tcp = s.TcpService(
                    db.service, 5432, (s.TcpRoute((s.WeightedCluster(db.name, 100),)),)
                )
                snap = snapshot(
                    clusters=[c, empty, db],
                    vhosts=[
                        vhost("reviews", [route(forward(c))]),
                        vhost("ratings", [route(forward(empty))]),
                    ],
                    tcp=[tcp],
                    allow_any=False,
                )
                local = free_port()
                async with running_proxy(
                    snap,
                    make_identity(ca, "frontend", tmp_path / "f"),
                    upstreams=[UpstreamSpec("db", None, local)],
                ) as cli:
                    client_metrics = Telemetry("frontend", "default", spiffe("frontend"))
                    cli.server.ctx.telemetry.attach(client_metrics)
                    for _ in range(3):
                        assert (await get(cli.outbound, "/", host="reviews")).status == 200
                    assert (await get(cli.outbound, "/", host="ratings")).status == 503
                    assert (await get(cli.outbound, "/", host="nowhere")).status == 404
                    stream = await trio.open_tcp_stream("127.0.0.1", local)
                    await stream.send_all(b"ping")
                    await stream.send_eof()
                    assert await stream.receive_some(10) == b"ping"
                    assert await stream.receive_some(10) == b""
                    await stream.aclose()
                    await trio.sleep(0.05)
                out = client_metrics.render()
                inb = server_metrics.render()
            nursery.cancel_scope.cancel()
        ok = [x for x in samples(out, "istio_requests_total") if 'response_code="200"' in x]
        assert len(ok) == 1
        assert ok[0].endswith(" 3")
        assert 'reporter="source"' in ok[0]
        assert 'destination_principal="spiffe://cluster.local/ns/default/sa/reviews"' in ok[0]
        assert 'destination_service="reviews.default.svc.cluster.local"' in ok[0]
        assert 'connection_security_policy="mutual_tls"' in ok[0]
        assert any(
            'response_code="503"' in x and 'response_flags="UH"' in x
            for x in samples(out, "istio_requests_total")
        )
        assert any(
            'response_code="404"' in x and 'response_flags="NR"' in x
            for x in samples(out, "istio_requests_total")
        )
        tcp_opened = samples(out, "istio_tcp_connections_opened_total")
        assert tcp_opened
        assert tcp_opened[0].endswith(" 1")
        assert samples(out, "istio_tcp_received_bytes_total")[0].endswith(" 4")
        seen = samples(inb, "istio_requests_total")
        assert len(seen) == 1
        assert seen[0].endswith(" 3")
        assert 'reporter="destination"' in seen[0]
        assert 'source_principal="spiffe://cluster.local/ns/default/sa/frontend"' in seen[0]
        assert 'connection_security_policy="mutual_tls"' in seen[0]

    trio.run(main)
