"""The inbound listener (``--inbound-port``, 15006): where peers reach this workload.

Per connection: the first byte decides. ``0x16`` (a TLS ClientHello) gets mesh mTLS with
the CURRENT identity's server context (a client certificate is required and must chain
to the mesh roots); the peer's SPIFFE ID is kept for authorization and telemetry.
Anything else is plaintext, accepted only when the mode of the app's port (the
snapshot's ``mtls_mode``, or its ``portLevelMtls``) is PERMISSIVE or DISABLE: in STRICT
the connection is closed before a byte is read.

Then, for ``--protocol tcp`` (and HTTP/2 / gRPC, relayed as bytes for now) the bytes
are relayed to ``127.0.0.1:<app-port>``. For HTTP each request is parsed strictly
(protocol errors: 400 and close), authorized (AuthorizationPolicy; denied: 403
``RBAC: access denied``), and forwarded to the app over a plaintext keep-alive pool,
the response streamed back. ``X-Forwarded-For`` gets the peer's address,
``X-Forwarded-Proto`` is ``https`` over mTLS when the client sidecar did not set it,
``x-request-id`` and ``traceparent`` are kept (made when missing).
"""

from __future__ import annotations

import socket
import time

import trio

from registry.latest import Latest
from sidecar.filters.authz import Attributes, Deny, evaluate
from sidecar.identity import Identity
from sidecar.protocol import Headers, Request
from sidecar.proxy.config import ProxyConfig, ProxyState
from sidecar.proxy.exchange import (
    Downstream,
    Plan,
    ProxyContext,
    Target,
    forward,
    local_reply,
    serve_http,
)
from sidecar.proxy.forwarding import request_fields
from sidecar.proxy.report import DESTINATION, MTLS, PLAINTEXT, RequestFacts
from sidecar.proxy.streams import TcpStream, TlsStream
from sidecar.proxy.tunnel import relay
from sidecar.proxy.upstream import ConnectFailure
from sidecar.routing import RequestView
from sidecar.tls_contexts import peer_spiffe_id

__all__ = ["APP_HOST", "InboundListener", "upgrade_of"]

APP_HOST = "127.0.0.1"
FIRST_BYTE_TIMEOUT_S = 10.0
HANDSHAKE_TIMEOUT_S = 10.0
TLS_HANDSHAKE = 0x16
RBAC_DENIED = b"RBAC: access denied"


def upgrade_of(request: Request) -> bytes | None:
    """The ``Upgrade`` value of an HTTP/1.1 Upgrade request (``Connection: upgrade``
    and an ``Upgrade`` field), else None."""
    headers = request.headers
    if request.http_version != b"1.1" or not headers.contains(b"upgrade"):
        return None
    if b"upgrade" not in headers.get_tokens(b"connection"):
        return None
    return headers.get(b"upgrade")


def body_is_chunked(request: Request) -> bool:
    return request.headers.contains(b"transfer-encoding")


async def first_byte(tcp: TcpStream) -> int | None:
    """The first byte the client sent, left unread (MSG_PEEK); None when it closed."""
    sock = tcp.sock
    while True:
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        except OSError:
            return None
        return data[0] if data else None


class InboundListener:
    """Handles the connections of the inbound port (see the module docstring)."""

    def __init__(
        self,
        ctx: ProxyContext,
        state: ProxyState,
        identity: Latest[Identity | None] | None,
        *,
        listen_port: int,
        app_host: str = APP_HOST,
    ) -> None:
        self.ctx = ctx
        self.state = state
        self.identity = identity
        self.listen_port = listen_port
        self.app_host = app_host
        self.refused_plaintext = 0
        self.handshake_failures = 0

    async def connection(self, tcp: TcpStream, peer: tuple[str, int]) -> None:
        with trio.move_on_after(FIRST_BYTE_TIMEOUT_S):
            first = await first_byte(tcp)
        if first is None or self.state.current.value is None:
            return
        stream: TcpStream | TlsStream
        peer_id: str | None = None
        if first == TLS_HANDSHAKE:
            identity = self.identity.value if self.identity is not None else None
            if identity is None:
                return  # no certificate yet: nothing to answer a handshake with
            # The context is taken per connection (identity contract): a renewal or a
            # root change applies to the next connection, never to this one.
            tls = TlsStream.server(tcp, identity.server_context)
            with trio.move_on_after(HANDSHAKE_TIMEOUT_S) as scope:
                try:
                    await tls.do_handshake()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.handshake_failures += 1
                    return
            if scope.cancelled_caught:
                self.handshake_failures += 1
                return
            found = peer_spiffe_id(tls)
            peer_id = str(found) if found is not None else None
            stream = tls
        else:
            config = self.state.current.value
            if config is None or config.inbound_mode == "STRICT":
                self.refused_plaintext += 1
                return
            stream = tcp
        if self.ctx.draining:
            return
        config = self.state.current.value
        assert config is not None
        if config.inbound_raw:
            await self._relay(stream, peer, peer_id, config)
            return
        ds = Downstream(
            stream,
            peer[0],
            peer[1],
            self.listen_port,
            limits=self.ctx.limits,
            secure=stream is not tcp,
            peer_id=peer_id,
        )
        await serve_http(self.ctx, ds, self.handle)

    async def _relay(
        self,
        stream: TcpStream | TlsStream,
        peer: tuple[str, int],
        peer_id: str | None,
        config: ProxyConfig,
    ) -> None:
        sink = self.ctx.telemetry
        labels = sink.tcp_labels(
            DESTINATION, sink.inbound_peer(peer_id), config.local_service, peer_id is not None
        )
        try:
            app = await self.ctx.pools.connect(
                self.app_host, config.inbound.app_port, secure=False, connect_timeout_s=5.0
            )
        except ConnectFailure:
            stream.close()
            return
        sink.tcp_opened(labels)
        received, sent = await relay(
            stream,
            app.stream,
            progress=lambda received, sent: sink.tcp_transferred(labels, sent, received),
        )
        sink.tcp_closed(labels, sent, received)

    async def handle(self, ds: Downstream, request: Request) -> None:
        started = time.perf_counter()
        config = self.state.current.value
        ctx = self.ctx
        sink = ctx.telemetry
        facts = RequestFacts()
        facts.peer = sink.inbound_peer(ds.peer_id)
        facts.policy = MTLS if ds.secure else PLAINTEXT
        if config is None:  # pragma: no cover - a config never goes away once there
            facts.status = 503
            facts.sent = await local_reply(ds, 503, b"no config yet", draining=ctx.draining)
            return
        facts.service = config.local_service
        app_port = config.inbound.app_port
        view = RequestView.from_head(request.method, request.target, request.headers.fields,
                                     port=app_port)  # fmt: skip
        host = request.headers.get(b"host")
        if host is None:  # an absolute-form target without Host (HTTP/1.0)
            host = view.authority.encode("latin-1")
        try:
            if not config.authz.empty:
                verdict = evaluate(
                    config.authz,
                    Attributes.for_request(
                        peer_spiffe_id=ds.peer_id,
                        source_ip=ds.peer_ip,
                        method=view.method,
                        path=view.path,
                        host=host.decode("latin-1"),
                        port=app_port,
                        headers=view.headers,
                    ),
                )
                if type(verdict) is Deny:
                    facts.status = 403
                    facts.flag("UAEX")
                    facts.details = verdict.details
                    facts.sent = await local_reply(ds, 403, RBAC_DENIED, draining=ctx.draining)
                    return
            if request.method == b"CONNECT":
                facts.status = 405
                facts.sent = await local_reply(
                    ds, 405, b"CONNECT is not served on the inbound port", draining=ctx.draining
                )
                return
            upgrade = upgrade_of(request)
            fields, _ = request_fields(
                request.headers,
                host,
                ds.peer_ip.encode("latin-1"),
                b"https" if ds.secure else b"http",
                chunked=body_is_chunked(request),
                upgrade=upgrade,
            )
            target = Target(self.app_host, app_port)
            upstream = Request(
                request.method, view.target.encode("latin-1"), Headers.trusted(fields)
            )
            plan = Plan(
                upstream,
                lambda tried: target,
                upgrade=upgrade is not None,
                upstream_is_peer=False,
            )
            await forward(ctx, ds, plan, facts)
        finally:
            if sink.telemetry is not None:
                sink.request(
                    DESTINATION,
                    facts,
                    started,
                    ds.received,
                    method=request.method,
                    target=request.target,
                    authority=host,
                    user_agent=request.headers.get(b"user-agent"),
                    request_id=request.headers.get(b"x-request-id"),
                    peer_address=f"{ds.peer_ip}:{ds.peer_port}",
                    start_time=time.time(),
                )
