"""The proxy's small parts on their own: the new flags, header forwarding, TLS
half-close of :class:`TlsStream`, connection pools (reuse, identity check, retirement,
idle sweep), and config compilation (effective mTLS mode, ``--upstream`` names)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import trio

from meshd.compile import snapshot as s
from registry.latest import Latest
from sidecar.errors import ConfigError
from sidecar.identity import Identity
from sidecar.protocol import DONE, EndOfMessage, Headers, Request, Response
from sidecar.proxy.config import ProxyState, effective_mode, tcp_candidates
from sidecar.proxy.forwarding import (
    new_request_id,
    new_traceparent,
    request_fields,
    response_fields,
    valid_traceparent,
)
from sidecar.proxy.streams import TcpStream, TlsStream, connect_tcp
from sidecar.proxy.upstream import ConnectFailure, Pools, Upstream
from sidecar.settings import UpstreamSpec, parse_upstreams
from tests.proxy.support import cluster, endpoint, make_identity, snapshot, spiffe
from tests.sidecar.support import make_settings
from tests.sidecar.test_identity_support import TestCa
from tests.support.apps import HttpApp

# --- flags ---------------------------------------------------------------------------------


def test_upstream_flags_parse_and_ports_must_differ(tmp_path: Path) -> None:
    assert parse_upstreams("db=15432, mysql.shop:3306=13306") == (
        UpstreamSpec("db", None, 15432),
        UpstreamSpec("mysql.shop", 3306, 13306),
    )
    for bad in ("db", "=5", "DB!=5", "db:x=5", "db=99999"):
        with pytest.raises(ConfigError, match="--upstream"):
            parse_upstreams(bad)
    settings = make_settings(
        tmp_path, upstream="db=15432", drain_timeout="2.5", inbound_address="127.0.0.1"
    )
    assert settings.upstreams == (UpstreamSpec("db", None, 15432),)
    assert (settings.drain_timeout_s, settings.inbound_address) == (2.5, "127.0.0.1")
    assert make_settings(tmp_path).inbound_address == "0.0.0.0"
    with pytest.raises(ConfigError, match="both 15001"):
        make_settings(tmp_path, upstream="db=15001")
    with pytest.raises(ConfigError, match="--drain-timeout"):
        make_settings(tmp_path, drain_timeout="-1")
    with pytest.raises(ConfigError, match="--app-address"):
        make_settings(tmp_path, app_address="localhost")


# --- forwarding ----------------------------------------------------------------------------


def test_request_fields_drop_hop_by_hop_and_add_forwarding_headers() -> None:
    headers = Headers(
        [
            ("host", "old"),
            ("connection", "x-private, keep-alive"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("expect", "100-continue"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("accept", "*/*"),
        ]
    )
    fields, rid = request_fields(headers, b"reviews:9080", b"127.0.0.1", b"http", chunked=True)
    names = [n for n, _ in fields]
    assert fields[0] == (b"host", b"reviews:9080")
    for dropped in (b"connection", b"x-private", b"upgrade", b"expect"):
        assert dropped not in names
    assert names.count(b"transfer-encoding") == 1  # ours, for the chunked body
    assert (b"x-forwarded-for", b"10.0.0.1, 10.0.0.2, 127.0.0.1") in fields
    assert (b"x-request-id", rid) in fields
    assert len(rid) == 36
    assert new_request_id() != rid
    up, _ = request_fields(
        Headers([("host", "a")]), b"a", b"1.2.3.4", b"https", upgrade=b"websocket"
    )
    assert (b"connection", b"upgrade") in up
    assert (b"upgrade", b"websocket") in up
    assert (b"x-forwarded-proto", b"https") in up


def test_generated_ids_are_uuid4_and_valid_trace_contexts() -> None:
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for rid in ids:
        parsed = uuid.UUID(rid.decode())
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed).encode() == rid
    for _ in range(2000):
        assert valid_traceparent(new_traceparent())


def test_traceparent_validation() -> None:
    assert valid_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert not valid_traceparent(b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert not valid_traceparent(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01")
    assert not valid_traceparent(b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01")


def test_response_fields_keep_upgrade_only_on_a_switch() -> None:
    headers = Headers(
        [("connection", "Upgrade"), ("upgrade", "websocket"), ("keep-alive", "5"), ("x", "1")]
    )
    assert response_fields(headers) == [(b"x", b"1")]
    assert response_fields(headers, upgrade=True) == [
        (b"upgrade", b"websocket"),
        (b"x", b"1"),
        (b"connection", b"upgrade"),
    ]


# --- TLS half-close ------------------------------------------------------------------------


def test_tls_stream_half_close_both_ways(tmp_path: Path) -> None:
    ca = TestCa()
    server_id = make_identity(ca, "server", tmp_path / "s")
    client_id = make_identity(ca, "client", tmp_path / "c")

    async def main() -> None:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        done: list[bytes] = []

        async def serve() -> None:
            accepted = await listener.accept()
            raw = accepted.socket.detach()
            import socket as stdlib

            tls = TlsStream.server(TcpStream(stdlib.socket(fileno=raw)), server_id.server_context)
            await tls.do_handshake()
            got = b""
            while data := await tls.receive_some():
                got += data
            done.append(got)  # the client's close_notify: its end of stream
            await tls.send_all(b"reply after your EOF")
            await tls.send_eof()
            tls.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            tcp = await connect_tcp("127.0.0.1", port)
            tls = TlsStream.client(tcp, client_id.client_context)
            await tls.do_handshake()
            await tls.send_all(b"request")
            await tls.send_eof()
            reply = b""
            while data := await tls.receive_some():
                reply += data
            assert reply == b"reply after your EOF"
            tls.close()
        assert done == [b"request"]
        await listener.aclose()

    trio.run(main)


# --- pools ---------------------------------------------------------------------------------


async def exchange(up: Upstream) -> int:
    """One GET over a pooled connection; the response status."""
    conn = up.conn
    head = Headers([("host", "app")])
    await up.stream.send_all(conn.send(Request(b"GET", b"/", head)) + conn.send(EndOfMessage()))
    status = 0
    while conn.their_state is not DONE:
        for event in conn.receive_data(await up.stream.receive_some()):
            if isinstance(event, Response):
                status = event.status
    return status


def test_pools_reuse_check_peers_retire_and_sweep(tmp_path: Path) -> None:
    ca = TestCa()
    clock = [0.0]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            app = HttpApp("a")
            port = await app.start(nursery)
            identity: Latest[Identity | None] = Latest(
                make_identity(ca, "frontend", tmp_path / "f")
            )
            pools = Pools(identity, clock=lambda: clock[0])
            up = await pools.acquire("127.0.0.1", port, secure=False)
            assert await exchange(up) == 200
            pools.release(up)
            again = await pools.acquire("127.0.0.1", port, secure=False)
            assert again is up
            assert again.reused
            assert await exchange(again) == 200
            pools.release(again)
            clock[0] = 31.0  # idle past 30 s
            assert pools.sweep() == 1
            fresh = await pools.acquire("127.0.0.1", port, secure=False)
            assert fresh is not up
            assert await exchange(fresh) == 200
            pools.release(fresh)
            assert pools.retire(set()) == 1
            assert fresh.stream.closed
            # mTLS to something that is not a mesh sidecar fails as a connect failure.
            with pytest.raises(ConnectFailure, match="TLS"):
                await pools.acquire(
                    "127.0.0.1", port, secure=True, expected={spiffe("x")}, connect_timeout_s=2
                )
            # A refused port.
            with pytest.raises(ConnectFailure, match="connection failure"):
                await pools.acquire("127.0.0.1", 1, secure=False)
            pools.close_all()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_pooled_connection_the_peer_closed_is_not_reused(tmp_path: Path) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            app = HttpApp("a")
            port = await app.start(nursery)
            pools = Pools()
            up = await pools.acquire("127.0.0.1", port, secure=False)
            assert await exchange(up) == 200
            pools.release(up)
            nursery.cancel_scope.cancel()  # the app (and its connections) go away
        await trio.sleep(0.05)
        assert pools.take_idle("127.0.0.1", port, False) is None
        assert up.stream.closed

    trio.run(main)


# --- config --------------------------------------------------------------------------------


def test_effective_mode_and_upstream_names() -> None:
    inbound = s.InboundConfig(15006, 9080, "http", "STRICT", ((9080, "PERMISSIVE"), (1, "DISABLE")))
    assert effective_mode(inbound) == "PERMISSIVE"
    assert effective_mode(s.InboundConfig(15006, 9080, "http")) == "STRICT"
    assert tcp_candidates("db", "shop", "cluster.local")[0] == "db.shop.svc.cluster.local"
    assert tcp_candidates("db.other", "shop", "cluster.local")[0] == "db.other.svc.cluster.local"
    assert (
        tcp_candidates("db.other.svc", "shop", "cluster.local")[0] == "db.other.svc.cluster.local"
    )
    assert tcp_candidates("redis.example.com", "shop", "cluster.local") == ("redis.example.com",)
    c3306 = cluster("mysql", [endpoint(1, spiffe("mysql"))], port=3306, protocol="tcp")
    c33060 = cluster("mysql", [endpoint(2, spiffe("mysql"))], port=33060, protocol="tcp")
    tcp = [
        s.TcpService(c.service, c.port, (s.TcpRoute((s.WeightedCluster(c.name, 100),)),))
        for c in (c3306, c33060)
    ]
    config = ProxyState().apply(snapshot(clusters=[c3306, c33060], tcp=tcp))
    assert config.tcp_service("mysql", None) is None  # two ports: say which
    found = config.tcp_service("mysql", 3306)
    assert found is not None
    assert found.port == 3306
    assert config.tcp_service("mysql.default", 33060) is not None
    assert config.tcp_service("nope", None) is None
