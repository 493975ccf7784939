"""Helpers of the proxy tests: workload identities from a test CA, hand-built snapshots,
a proxy running in the test's Trio loop, and a small HTTP/1.1 client (h11, so the
proxy's own HTTP layer is not checked against itself)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h11
import trio
from cryptography.hazmat.primitives.asymmetric import ec

from meshd.compile import snapshot as s
from meshd.spiffe import parse_spiffe_id
from registry.latest import Latest
from sidecar.identity import Identity
from sidecar.proxy import ProxyServer, ProxyState, UpstreamSpec
from sidecar.tls_contexts import build_contexts, client_context
from tests.sidecar.test_identity_support import TestCa, key_pem, pem

TD = "cluster.local"
NS = "default"


def spiffe(sa: str, ns: str = NS) -> str:
    return f"spiffe://{TD}/ns/{ns}/sa/{sa}"


def fqdn(name: str, ns: str = NS) -> str:
    return f"{name}.{ns}.svc.{TD}"


def make_identity(
    ca: TestCa,
    workload: str,
    directory: Path,
    *,
    lifetime: datetime.timedelta = datetime.timedelta(hours=1),
    generation: int = 1,
) -> Identity:
    """A workload identity as :class:`~sidecar.identity.IdentityManager` publishes it:
    a key, a leaf for ``spiffe(workload)`` from ``ca``, and the three contexts."""
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = ca.issue(key.public_key(), spiffe(workload), lifetime=lifetime)
    credentials = (key_pem(key) + pem(leaf) + ca.chain_pem).encode()
    directory.mkdir(parents=True, exist_ok=True)
    contexts = build_contexts(directory, credentials, [ca.root_pem])
    now = datetime.datetime.now(datetime.UTC)
    return Identity(
        spiffe_id=parse_spiffe_id(spiffe(workload)),
        serial=f"{leaf.serial_number:x}",
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        issued_at=now,
        trust_bundle="test",
        generation=generation,
        source="meshd",
        cert_pem=pem(leaf),
        chain_pem=ca.chain_pem,
        roots=(ca.root_pem,),
        server_context=contexts.server,
        client_context=contexts.client,
        control_context=contexts.control,
    )


def client_tls(ca: TestCa, workload: str, directory: Path) -> Any:
    """A client context presenting a workload certificate (a peer sidecar's)."""
    path = ca.credentials(directory, spiffe(workload), name=f"{workload}-client.pem")
    return client_context(path, [ca.root_pem])


# --- snapshots ---------------------------------------------------------------------------


def endpoint(port: int, identity: str | None = None, address: str = "127.0.0.1") -> s.Endpoint:
    return s.Endpoint(address, port, identity=identity, instance=f"i-{port}")


def cluster(
    service: str,
    endpoints: Sequence[s.Endpoint],
    *,
    port: int = 9080,
    subset: str | None = None,
    lb: s.LoadBalancer = s.DEFAULT_LB,
    tls: Literal["ISTIO_MUTUAL", "DISABLE"] = "ISTIO_MUTUAL",
    expected: Sequence[str] | None = None,
    protocol: Literal["http", "http2", "grpc", "tcp"] = "http",
    connect_timeout_ms: int = 2000,
) -> s.Cluster:
    host = fqdn(service) if "." not in service else service
    ids = (
        expected if expected is not None else sorted({e.identity for e in endpoints if e.identity})
    )
    return s.Cluster(
        name=f"outbound|{port}|{subset or ''}|{host}",
        service=host,
        port=port,
        subset=subset,
        protocol=protocol,
        endpoints=tuple(endpoints),
        lb=lb,
        tls_mode=tls,
        expected_identities=tuple(ids),
        connect_timeout_ms=connect_timeout_ms,
    )


def forward(
    *clusters: tuple[s.Cluster, int] | s.Cluster,
    timeout_ms: int | None = None,
    retries: s.RetryPolicy | None = None,
    rewrite: s.Rewrite | None = None,
) -> s.ForwardAction:
    weighted = []
    for c in clusters:
        cl, weight = c if isinstance(c, tuple) else (c, 100)
        weighted.append(s.WeightedCluster(cl.name, weight))
    return s.ForwardAction(tuple(weighted), timeout_ms=timeout_ms, retries=retries, rewrite=rewrite)


NO_RETRIES = s.RetryPolicy(attempts=0)


def route(
    action: s.RouteAction,
    *matches: s.RouteMatch,
    name: str = "r",
    request_headers: s.HeaderOps = s.NO_HEADER_OPS,
    response_headers: s.HeaderOps = s.NO_HEADER_OPS,
) -> s.Route:
    return s.Route(name, tuple(matches), action, request_headers, response_headers)


def vhost(service: str, routes: Sequence[s.Route], port: int = 9080) -> s.VirtualHost:
    host = fqdn(service)
    domains = (
        host, f"{host}:{port}", f"{service}.{NS}.svc", f"{service}.{NS}.svc:{port}",
        f"{service}.{NS}", f"{service}.{NS}:{port}", service, f"{service}:{port}",
    )  # fmt: skip
    return s.VirtualHost(f"{host}:{port}", domains, tuple(routes))


def snapshot(
    *,
    service: str = "frontend",
    clusters: Sequence[s.Cluster] = (),
    vhosts: Sequence[s.VirtualHost] = (),
    tcp: Sequence[s.TcpService] = (),
    app_port: int = 8080,
    protocol: Literal["http", "http2", "grpc", "tcp"] = "http",
    mtls: Literal["STRICT", "PERMISSIVE", "DISABLE"] = "STRICT",
    authz: Sequence[s.AuthzPolicy] = (),
    allow_any: bool = True,
    version: str = "v1",
) -> s.ProxySnapshot:
    return s.ProxySnapshot(
        proxy_id=f"{service}-1.{NS}",
        version=version,
        service=fqdn(service),
        namespace=NS,
        identity=spiffe(service),
        inbound=s.InboundConfig(
            port=15006, app_port=app_port, protocol=protocol, mtls_mode=mtls, authz=tuple(authz)
        ),
        outbound=s.OutboundConfig(
            virtual_hosts=tuple(vhosts),
            tcp_services=tuple(tcp),
            clusters=tuple(clusters),
            allow_any=allow_any,
        ),
    )


def with_version(snap: s.ProxySnapshot, version: str, **outbound: Any) -> s.ProxySnapshot:
    return dataclasses.replace(
        snap, version=version, outbound=dataclasses.replace(snap.outbound, **outbound)
    )


# --- a proxy in the test's loop ------------------------------------------------------------


@dataclass
class RunningProxy:
    server: ProxyServer
    state: ProxyState
    identity: Latest[Identity | None]
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def inbound(self) -> int:
        return self.ports["inbound"]

    @property
    def outbound(self) -> int:
        return self.ports["outbound"]

    def apply(self, snap: s.ProxySnapshot) -> None:
        config = self.state.apply(snap)
        self.server._on_swap(config)


@asynccontextmanager
async def running_proxy(
    snap: s.ProxySnapshot,
    identity: Identity | None,
    *,
    upstreams: Sequence[UpstreamSpec] = (),
    idle_timeout_s: float = 60.0,
) -> AsyncIterator[RunningProxy]:
    """A :class:`ProxyServer` on free loopback ports serving ``snap``; cancelled on exit."""
    state = ProxyState()
    state.apply(snap)
    current: Latest[Identity | None] = Latest(identity)
    server = ProxyServer(
        state,
        current,
        inbound_host="127.0.0.1",
        inbound_port=0,
        outbound_port=0,
        upstreams=upstreams,
        idle_timeout_s=idle_timeout_s,
    )
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(server.serve)
        try:
            yield RunningProxy(server, state, current, ports)
        finally:
            nursery.cancel_scope.cancel()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- an HTTP/1.1 client ------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value

    def header_values(self, name: str) -> list[str]:
        return [v.decode("latin-1") for n, v in self.raw_headers if n.decode().lower() == name]


class Client:
    """One keep-alive connection to ``port`` (optionally over TLS), one request at a time."""

    def __init__(self, port: int, *, tls: Any = None) -> None:
        self.port = port
        self.tls = tls
        self.stream: trio.abc.Stream | None = None
        self.conn = h11.Connection(h11.CLIENT)
        self.connections = 0

    async def _connect(self) -> trio.abc.Stream:
        tcp = await trio.open_tcp_stream("127.0.0.1", self.port)
        stream: trio.abc.Stream = tcp
        if self.tls is not None:
            tls = trio.SSLStream(tcp, self.tls, server_hostname=None, https_compatible=True)
            try:
                await tls.do_handshake()
            except BaseException:
                await tcp.aclose()
                raise
            stream = tls
        self.connections += 1
        return stream

    async def request(
        self,
        method: str = "GET",
        target: str = "/",
        *,
        host: str = "reviews",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        chunks: Sequence[bytes] | None = None,
    ) -> Reply:
        if self.stream is None or self.conn.our_state is not h11.IDLE:
            if self.stream is not None:
                await self.stream.aclose()
            self.stream = await self._connect()
            self.conn = h11.Connection(h11.CLIENT)
        hdrs = [("host", host), *headers]
        if body is not None:
            hdrs.append(("content-length", str(len(body))))
        elif chunks is not None:
            hdrs.append(("transfer-encoding", "chunked"))
        out = self.conn.send(h11.Request(method=method, target=target, headers=hdrs))
        if body:
            out += self.conn.send(h11.Data(data=body))
        await self.stream.send_all(out)
        if chunks is not None:
            for chunk in chunks:
                await self.stream.send_all(self.conn.send(h11.Data(data=chunk)))
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()))
        return await self.read_response()

    async def read_response(self) -> Reply:
        assert self.stream is not None
        response: h11.Response | None = None
        body = bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(65536)
                self.conn.receive_data(bytes(data))
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("closed before the response")
        assert response is not None
        raw = [(bytes(n), bytes(v)) for n, v in response.headers]
        headers = {n.decode(): v.decode("latin-1") for n, v in raw}
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        else:
            await self.aclose()
        return Reply(response.status_code, headers, bytes(body), raw)

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None
        self.conn = h11.Connection(h11.CLIENT)


async def get(port: int, target: str = "/", **kwargs: Any) -> Reply:
    client = Client(port)
    try:
        return await client.request("GET", target, **kwargs)
    finally:
        await client.aclose()


async def raw_exchange(port: int, data: bytes, *, tls: Any = None, wait_s: float = 5.0) -> bytes:
    """Send ``data`` as it is and read until the server closes (or ``wait_s``)."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream: trio.abc.Stream = tcp
    if tls is not None:
        stream = trio.SSLStream(tcp, tls, server_hostname=None, https_compatible=True)
        try:
            await stream.do_handshake()
        except BaseException:
            await tcp.aclose()
            raise
    out = bytearray()
    try:
        await stream.send_all(data)
        with trio.move_on_after(wait_s):
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                out += chunk
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()
    return bytes(out)
