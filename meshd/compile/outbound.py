"""Outbound configuration: one piece per service as seen from a namespace, and the
assembly of the pieces a scope sees into one shared :class:`OutboundConfig`.

A piece holds one service's virtual hosts (one per HTTP port), TCP services (one per
TCP port) and clusters, with the digest of that content. The assembled outbound's
digest combines the pieces' digests, so it is never re-serialised as a whole.

Domains of a registry service's virtual host on port P: the FQDN, ``name.ns.svc``,
``name.ns`` and, in scopes of the service's own namespace, ``name``, each with
``:P``; the port-less forms go only on the service's lowest HTTP port (so a bare Host
names one virtual host). A name a ServiceEntry declares literally (``name.ns`` say) is
the ServiceEntry's, not an alias of the registry service. A ServiceEntry host has the
domains ``host`` (lowest HTTP port) and ``host:P``.

A route may forward to a cluster the scope does not have (a service the scope cannot
see, a subset no visible DestinationRule defines, a service that left the registry).
The assembly then adds an empty stand-in cluster of that name, so the snapshot stays
coherent and such requests get 503 from the sidecar, as Istio answers for an unknown
cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshd.compile import snapshot as s
from meshd.compile.catalog import ServiceDef
from meshd.compile.check import check_outbound_links, check_outbound_parts
from meshd.compile.clusters import cluster_name, port_clusters
from meshd.compile.errors import RuleError
from meshd.compile.routes import (
    ClusterRef,
    Destinations,
    default_route,
    default_tcp_route,
    http_routes,
    tcp_routes,
)
from meshd.compile.versioning import combine, digest_of
from meshd.schema.base import ResourceKey
from meshd.schema.networking import DestinationRule, VirtualService


@dataclass(frozen=True, slots=True)
class ServicePiece:
    """What one service contributes to an outbound config. ``needs`` are clusters its
    routes name that it does not define itself; ``sources`` the resources that shaped it;
    ``errors`` why it cannot be served (then it is empty)."""

    host: str
    virtual_hosts: tuple[s.VirtualHost, ...]
    tcp_services: tuple[s.TcpService, ...]
    clusters: tuple[s.Cluster, ...]
    needs: tuple[ClusterRef, ...]
    sources: frozenset[ResourceKey]
    errors: tuple[str, ...]
    digest: str


def build_piece(
    svc: ServiceDef,
    vs: VirtualService | None,
    dr: DestinationRule | None,
    same_namespace: bool,
    dests: Destinations,
) -> ServicePiece:
    """One service as seen from a namespace (``same_namespace``: the service's own),
    routed by ``vs`` and with the subsets and policies of ``dr``.

    Never raises: a rule that cannot be translated, or a bug, gives a piece with an
    error, so the proxies that see it keep their last good snapshot and the error is
    reported for them."""
    sources = {k for k in (svc.source, vs.key if vs else None, dr.key if dr else None) if k}
    try:
        return _build_piece(
            svc, vs, dr, same_namespace=same_namespace, dests=dests, sources=sources
        )
    except Exception as exc:  # reported per proxy, see the docstring
        return _failed(
            svc,
            sources,
            f"internal error compiling {svc.host}: {exc!r}; this is a bug in meshd, "
            "please report it with the rules involved",
        )


def _build_piece(
    svc: ServiceDef,
    vs: VirtualService | None,
    dr: DestinationRule | None,
    *,
    same_namespace: bool,
    dests: Destinations,
    sources: set[ResourceKey],
) -> ServicePiece:
    try:
        clusters = [c for port in svc.ports for c in port_clusters(svc, port, dr)]
    except RuleError as exc:
        assert dr is not None
        return _failed(svc, sources, f"{dr.key}: {exc.detail}")
    try:
        vhosts, tcps, refs, used_vs = _listeners(svc, vs, same_namespace, dests)
    except RuleError as exc:
        assert vs is not None
        return _failed(svc, sources, f"{vs.key}: {exc.detail}")
    if vs is not None and not used_vs:
        sources.discard(vs.key)
    own = {c.name for c in clusters}
    needs: dict[str, ClusterRef] = {}
    for ref in refs:
        if ref.name not in own:
            needs.setdefault(ref.name, ref)
    cluster_tuple = tuple(clusters)
    errors = check_outbound_parts(vhosts, tcps, cluster_tuple)
    return ServicePiece(
        host=svc.host,
        virtual_hosts=vhosts,
        tcp_services=tcps,
        clusters=cluster_tuple,
        needs=tuple(sorted(needs.values(), key=lambda r: r.name)),
        sources=frozenset(sources),
        errors=tuple(errors),
        digest=digest_of((vhosts, tcps, cluster_tuple)),
    )


def _failed(svc: ServiceDef, sources: set[ResourceKey], error: str) -> ServicePiece:
    return ServicePiece(svc.host, (), (), (), (), frozenset(sources), (error,), "")


def _listeners(
    svc: ServiceDef, vs: VirtualService | None, same_namespace: bool, dests: Destinations
) -> tuple[tuple[s.VirtualHost, ...], tuple[s.TcpService, ...], list[ClusterRef], bool]:
    refs: list[ClusterRef] = []
    vhosts: list[s.VirtualHost] = []
    tcps: list[s.TcpService] = []
    used_vs = False
    names = [svc.host, *svc.aliases]
    if same_namespace and svc.short_name:
        names.append(svc.short_name)
    lowest_http = next((p.number for p in svc.ports if p.is_http), None)
    source = f"{vs.metadata.namespace}/{vs.metadata.name}" if vs is not None else None
    for port in svc.ports:
        default = cluster_name(port.number, None, svc.host)
        if port.is_http:
            routes = http_routes(vs, port.number, dests, refs) if vs is not None else ()
            used_vs = used_vs or bool(routes)
            domains: list[str] = []
            for name in names:
                if port.number == lowest_http:
                    domains.append(name)
                domains.append(f"{name}:{port.number}")
            vhosts.append(
                s.VirtualHost(
                    name=f"{svc.host}:{port.number}",
                    domains=tuple(domains),
                    routes=routes or (default_route(default),),
                    source=source if routes else None,
                )
            )
        else:
            tcp = tcp_routes(vs, port.number, dests, refs) if vs is not None else ()
            used_vs = used_vs or bool(tcp)
            tcps.append(
                s.TcpService(
                    name=svc.host,
                    port=port.number,
                    routes=tcp or (default_tcp_route(default),),
                    source=source if tcp else None,
                )
            )
    return tuple(vhosts), tuple(tcps), refs, used_vs


@dataclass(frozen=True, slots=True)
class ScopeOutbound:
    """The outbound config of one scope, why it may not be served, and what shaped it."""

    outbound: s.OutboundConfig
    errors: tuple[str, ...]
    sources: frozenset[ResourceKey]


def assemble(
    pieces: Sequence[ServicePiece], allow_any: bool, extra_sources: frozenset[ResourceKey]
) -> ScopeOutbound:
    """Concatenate pieces (already in host order), add stand-ins for missing clusters, run
    the cross-piece checks."""
    vhosts = tuple(vh for p in pieces for vh in p.virtual_hosts)
    tcps = tuple(t for p in pieces for t in p.tcp_services)
    clusters = [c for p in pieces for c in p.clusters]
    provided = {c.name for c in clusters}
    missing: dict[str, ClusterRef] = {}
    for p in pieces:
        for ref in p.needs:
            if ref.name not in provided:
                missing.setdefault(ref.name, ref)
    stand_ins = sorted(missing.values(), key=lambda r: r.name)
    clusters.extend(
        s.Cluster(
            name=r.name,
            service=r.host,
            port=r.port,
            subset=r.subset,
            protocol=r.protocol,
            endpoints=(),
        )
        for r in stand_ins
    )
    digest = combine(
        [
            *(p.digest for p in pieces),
            f"allow_any={allow_any}",
            *(digest_of(r) for r in stand_ins),
        ]
    )
    outbound = s.OutboundConfig(
        virtual_hosts=vhosts,
        tcp_services=tcps,
        clusters=tuple(clusters),
        allow_any=allow_any,
        digest=digest,
    )
    errors = [e for p in pieces for e in p.errors]
    errors.extend(check_outbound_links(outbound))
    sources = frozenset(extra_sources.union(*(p.sources for p in pieces)))
    return ScopeOutbound(outbound, tuple(errors), sources)
