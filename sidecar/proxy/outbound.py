"""The outbound listeners: HTTP on ``127.0.0.1:<outbound-port>`` (15001), and one TCP
listener per ``--upstream NAME=LOCALPORT``.

HTTP: an unchanged app sets ``HTTP_PROXY=http://127.0.0.1:15001`` and calls
``http://reviews/...`` (an absolute-form target), or calls the listener with
``Host: reviews``. Each request is routed by its authority (``sidecar.routing.route``):

- ``Forward``: a weighted destination (``pick_cluster``), its balancer picks an
  endpoint, and the request goes there over a pooled connection: mesh mTLS (the
  server's SPIFFE ID checked against the cluster's expected identities) when the
  endpoint has an identity and the cluster's TLS mode is ISTIO_MUTUAL, plaintext
  otherwise; with the route's rewrite, header operations, timeout and retries (one
  retry budget per cluster), retries avoiding the endpoints already tried;
- ``Redirect`` / ``DirectResponse``: answered here;
- ``NoRoute``: 404, or with ``outboundTrafficPolicy: ALLOW_ANY`` and a host that is not
  a mesh service, passed through to where the client meant it to go (``host:port`` of
  the authority, plaintext);
- ``CONNECT host:port`` (HTTPS through the proxy): a tunnel to the destination when
  ALLOW_ANY, else 403.

The path forwarded is the normalised one routing and authorization saw
(``view.target``), never the raw target.

TCP: a connection to ``127.0.0.1:LOCALPORT`` is for the TCP service NAME (resolved like
a host in this sidecar's namespace); ``route_tcp`` gives its weighted clusters, the
balancer an endpoint, and the bytes are relayed over mTLS to that endpoint's sidecar,
with half-close.
"""

from __future__ import annotations

import time

import trio

from sidecar.lb import PASSTHROUGH, Choice
from sidecar.protocol import Headers, Request, Response
from sidecar.proxy.config import ClusterInfo, ProxyConfig, ProxyState
from sidecar.proxy.exchange import (
    Downstream,
    Plan,
    ProxyContext,
    Target,
    forward,
    local_reply,
    serve_http,
)
from sidecar.proxy.forwarding import request_fields, response_fields
from sidecar.proxy.inbound import body_is_chunked, upgrade_of
from sidecar.proxy.report import PLAINTEXT, SOURCE, RequestFacts
from sidecar.proxy.streams import TcpStream
from sidecar.proxy.tunnel import relay
from sidecar.proxy.upstream import ConnectFailure, Upstream
from sidecar.routing import (
    DirectResponse,
    Forward,
    HeaderEdits,
    NoRoute,
    Redirect,
    RequestView,
    pick_cluster,
    rewritten_authority,
    rewritten_target,
    route,
    route_tcp,
)
from sidecar.routing.request import split_authority
from sidecar.telemetry import Service

__all__ = ["OutboundListener", "TcpUpstreamListener", "destination_of"]

CONNECT_TIMEOUT_S = 10.0
TCP_CONNECT_ATTEMPTS = 3
_LOOPBACK = frozenset(("127.0.0.1", "localhost", "::1", "0.0.0.0", ""))  # noqa: S104


def destination_of(authority: str, default_port: int = 80) -> tuple[str, int] | None:
    """``host[:port]`` -> ``(host, port)`` (IPv6 without brackets); None when there is
    no host."""
    host, port = split_authority(authority)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None  # a port that is not a number
    if not host:
        return None
    return host, port if port is not None else default_port


class OutboundListener:
    """Handles the connections of the outbound HTTP port (see the module docstring)."""

    def __init__(self, ctx: ProxyContext, state: ProxyState, *, listen_port: int) -> None:
        self.ctx = ctx
        self.state = state
        self.listen_port = listen_port

    async def connection(self, tcp: TcpStream, peer: tuple[str, int]) -> None:
        ds = Downstream(tcp, peer[0], peer[1], self.listen_port, limits=self.ctx.limits)
        await serve_http(self.ctx, ds, self.handle)

    async def handle(self, ds: Downstream, request: Request) -> None:
        started = time.perf_counter()
        config = self.state.current.value  # read once: this request's rules to the end
        ctx = self.ctx
        facts = RequestFacts()
        try:
            if config is None:
                facts.status = 503
                facts.details = "no_config"
                facts.sent = await local_reply(
                    ds, 503, b"the sidecar has no config yet", draining=ctx.draining
                )
                return
            if request.method == b"CONNECT":
                await self._connect(ds, request, config, facts)
                return
            view = RequestView.from_head(request.method, request.target,
                                         request.headers.fields, port=self.listen_port)  # fmt: skip
            decision = route(config.table, view)
            kind = type(decision)
            if kind is Forward:
                await self._forward(ds, request, view, decision, config, facts)  # type: ignore[arg-type]
            elif kind is NoRoute:
                assert isinstance(decision, NoRoute)
                if decision.vhost_name is None and config.table.allow_any:
                    await self._passthrough(ds, request, view, facts)
                else:
                    facts.status = decision.status
                    facts.flag("NR")
                    facts.details = "route_not_found"
                    facts.service = Service.from_host(view.authority)
                    facts.sent = await local_reply(ds, decision.status, draining=ctx.draining)
            elif kind is Redirect:
                assert isinstance(decision, Redirect)
                facts.service = Service.from_host(view.authority)
                facts.status = decision.status
                facts.route_name = decision.route_name
                extra = (
                    (b"location", decision.location.encode("latin-1")),
                    *_edited(config, decision.response_header_ops),
                )
                facts.sent = await local_reply(
                    ds, decision.status, extra=extra, draining=ctx.draining
                )
            else:
                assert isinstance(decision, DirectResponse)
                facts.service = Service.from_host(view.authority)
                facts.status = decision.status
                facts.route_name = decision.route_name
                facts.sent = await local_reply(
                    ds,
                    decision.status,
                    decision.body,
                    extra=_edited(config, decision.response_header_ops),
                    draining=ctx.draining,
                )
        finally:
            if ctx.telemetry.telemetry is not None:
                ctx.telemetry.request(
                    SOURCE,
                    facts,
                    started,
                    ds.received,
                    method=request.method,
                    target=request.target,
                    authority=request.headers.get(b"host") or b"",
                    user_agent=request.headers.get(b"user-agent"),
                    request_id=request.headers.get(b"x-request-id"),
                    peer_address=f"{ds.peer_ip}:{ds.peer_port}",
                    start_time=time.time(),
                )

    async def _forward(
        self,
        ds: Downstream,
        request: Request,
        view: RequestView,
        decision: Forward,
        config: ProxyConfig,
        facts: RequestFacts,
    ) -> None:
        ctx = self.ctx
        rng = ctx.rng
        wc = pick_cluster(decision, rng)
        info = config.clusters.get(wc.cluster)
        balancer = config.balancers.get(wc.cluster)
        facts.route_name = decision.route_name
        facts.cluster = wc.cluster
        if info is None or balancer is None:  # meshd's checks make this unreachable
            facts.status = 503
            facts.flag("UH")
            facts.sent = await local_reply(ds, 503, b"no healthy upstream", draining=ctx.draining)
            return
        facts.service = info.service
        upgrade = upgrade_of(request)
        fields, _ = request_fields(
            request.headers,
            rewritten_authority(decision, view).encode("latin-1"),
            ds.peer_ip.encode("latin-1"),
            b"http",
            config.edits(wc.request_header_ops),
            chunked=body_is_chunked(request),
            upgrade=upgrade,
        )
        upstream = Request(
            request.method,
            rewritten_target(decision, view).encode("latin-1"),
            Headers.trusted(fields),
        )
        plan = Plan(
            upstream,
            lambda tried: None,
            rule=decision.retries,
            budget=info.budget,
            timeout_s=decision.timeout_ms / 1000.0 if decision.timeout_ms else None,
            response_edits=config.edits(wc.response_header_ops),
            upgrade=upgrade is not None,
        )
        source_ip = ds.peer_ip

        # Must not refer to ``plan``: a cycle would leave every request's objects to the
        # cyclic garbage collector (a set-cookie travels on the Target instead).
        def choose(tried: list[object]) -> Target | None:
            choice = balancer.choose(rng, view, source_ip, tried)  # type: ignore[arg-type]
            if choice is None:
                return None
            if choice is PASSTHROUGH:
                where = destination_of(view.authority)
                return None if where is None else Target(where[0], where[1])
            assert isinstance(choice, Choice)
            return _target(info, choice)

        plan.choose = choose
        await forward(ctx, ds, plan, facts)

    async def _passthrough(
        self, ds: Downstream, request: Request, view: RequestView, facts: RequestFacts
    ) -> None:
        """ALLOW_ANY: a host that is no mesh service goes where the client meant it to."""
        ctx = self.ctx
        facts.service = Service.from_host(view.authority)
        facts.cluster = "PassthroughCluster"
        where = destination_of(view.authority)
        if where is None or (where[0] in _LOOPBACK and where[1] == self.listen_port):
            facts.status = 404
            facts.flag("NR")
            facts.sent = await local_reply(ds, 404, b"no route", draining=ctx.draining)
            return
        upgrade = upgrade_of(request)
        fields, _ = request_fields(
            request.headers,
            view.authority.encode("latin-1"),
            ds.peer_ip.encode("latin-1"),
            b"http",
            chunked=body_is_chunked(request),
            upgrade=upgrade,
        )
        target = Target(where[0], where[1], connect_timeout_s=CONNECT_TIMEOUT_S)
        upstream = Request(request.method, view.target.encode("latin-1"), Headers.trusted(fields))
        plan = Plan(upstream, lambda tried: None if tried else target, upgrade=upgrade is not None)
        await forward(ctx, ds, plan, facts)

    async def _connect(
        self, ds: Downstream, request: Request, config: ProxyConfig, facts: RequestFacts
    ) -> None:
        """``CONNECT host:port``: a byte tunnel to the destination (ALLOW_ANY only)."""
        ctx = self.ctx
        authority = request.target.decode("latin-1")
        facts.service = Service.from_host(authority)
        facts.cluster = "PassthroughCluster"
        if not config.table.allow_any:
            facts.status = 403
            facts.flag("NR")
            facts.sent = await local_reply(
                ds, 403, b"CONNECT is not allowed: outboundTrafficPolicy is REGISTRY_ONLY",
                close=True,
            )  # fmt: skip
            return
        where = destination_of(authority, default_port=0)
        if where is None or not where[1]:
            facts.status = 400
            facts.sent = await local_reply(ds, 400, b"CONNECT needs host:port", close=True)
            return
        try:
            up = await ctx.pools.connect(where[0], where[1], secure=False,
                                         connect_timeout_s=CONNECT_TIMEOUT_S)  # fmt: skip
        except ConnectFailure as exc:
            facts.status = 503
            facts.flag("UF")
            facts.sent = await local_reply(
                ds, 503, exc.reason.encode("latin-1", "replace"), close=True
            )
            return
        facts.upstream_host = f"{where[0]}:{where[1]}"
        facts.policy = PLAINTEXT
        try:
            head = ds.conn.send(
                Response(200, Headers.trusted(response_fields(Headers.trusted(()))))
            )
            await ds.send(head)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            up.close()
            facts.flag("DC")
            return
        facts.status = 200
        sent_up, received = await relay(ds.stream, up.stream, a_first=ds.conn.trailing_data)
        facts.sent = len(head) + received
        ds.received += sent_up


def _edited(config: ProxyConfig, ops: object) -> tuple[tuple[bytes, bytes], ...]:
    """The fields a local reply gets from a route's response header operations (only
    what ``set`` and ``add`` append: a local reply has nothing to remove)."""
    if not isinstance(ops, HeaderEdits) or ops.empty:
        return ()
    return tuple(pair for _, append in config.edits(ops) for pair in append)


def _target(info: ClusterInfo, choice: Choice) -> Target:
    ep = choice.endpoint
    secure = info.secure and ep.identity is not None
    expected = info.expected
    if secure and not expected:
        expected = frozenset((ep.identity,))  # type: ignore[arg-type]
    peer = info.peers.get((ep.address, ep.port))
    target = Target(
        ep.address,
        ep.port,
        secure=secure,
        expected=expected,
        connect_timeout_s=info.connect_timeout_s,
        load=choice.load,
        key=ep,
    )
    if peer is not None:
        target.peer = peer
    if choice.set_cookie is not None:
        target.extra = ((b"set-cookie", choice.set_cookie.header_value().encode("latin-1")),)
    return target


class TcpUpstreamListener:
    """``--upstream NAME[:PORT]=LOCALPORT``: every connection to the local port is relayed
    to an endpoint of the TCP service NAME."""

    def __init__(self, ctx: ProxyContext, state: ProxyState, name: str, port: int | None) -> None:
        self.ctx = ctx
        self.state = state
        self.name = name
        self.port = port
        self.unrouted = 0

    async def connection(self, tcp: TcpStream, peer: tuple[str, int]) -> None:
        config = self.state.current.value
        if config is None:
            return
        service = config.tcp_service(self.name, self.port)
        decision = route_tcp(config.table, service.name, service.port) if service else None
        if decision is None or not decision.clusters:
            self.unrouted += 1
            return  # no TCP route: close (Envoy's BlackHole)
        ctx = self.ctx
        wc = pick_cluster(decision, ctx.rng)
        info = config.clusters.get(wc.cluster)
        balancer = config.balancers.get(wc.cluster)
        if info is None or balancer is None:
            return
        tried: list[object] = []
        up: Upstream | None = None
        target: Target | None = None
        for _ in range(TCP_CONNECT_ATTEMPTS):
            choice = balancer.choose(ctx.rng, None, peer[0], tried)  # type: ignore[arg-type]
            if not isinstance(choice, Choice):
                break
            tried.append(choice.endpoint)
            target = _target(info, choice)
            try:
                up = await ctx.pools.connect(
                    target.host,
                    target.port,
                    secure=target.secure,
                    expected=target.expected,
                    connect_timeout_s=target.connect_timeout_s,
                )
            except ConnectFailure:
                continue
            break
        if up is None or target is None:
            return
        sink = ctx.telemetry
        labels = sink.tcp_labels(SOURCE, target.peer, info.service, target.secure)
        sink.tcp_opened(labels)
        if target.load is not None:
            target.load.active += 1
        try:
            received, sent = await relay(
                tcp,
                up.stream,
                progress=lambda received, sent: sink.tcp_transferred(labels, sent, received),
            )
        finally:
            if target.load is not None:
                target.load.active -= 1
        sink.tcp_closed(labels, sent, received)
