"""The services a proxy may call, in one shape whatever their origin: a registry
service (instances that registered) or a ServiceEntry host.

A :class:`ServiceDef` is built once per distinct input (the same instances, the same
ServiceEntry object) and reused as the very same object, so later stages can key their
memos on its identity.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from meshd.compile import snapshot as s
from meshd.schema.base import ResourceKey
from meshd.schema.hosts import service_fqdn
from meshd.schema.networking import ServiceEntry, ServicePort
from registry.model import Instance, Protocol

HTTP_PROTOCOLS = frozenset({"http", "http2", "grpc"})


def spiffe_id(trust_domain: str, namespace: str, account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{account}"


@dataclass(frozen=True, slots=True)
class Backend:
    """One endpoint candidate and the labels subsets select it by."""

    endpoint: s.Endpoint
    labels: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True, slots=True)
class PortDef:
    """One port of a service as clients name it, with its healthy backends (sorted)."""

    number: int
    protocol: Protocol
    backends: tuple[Backend, ...] = ()

    @property
    def is_http(self) -> bool:
        return self.protocol in HTTP_PROTOCOLS


@dataclass(frozen=True, slots=True)
class ServiceDef:
    """A callable service.

    ``host`` is its canonical name (the FQDN of a registry service, the literal host of a
    ServiceEntry); ``namespace`` the namespace it belongs to (the ServiceEntry's for a
    ServiceEntry host); ``short_name`` the single-label name callers in that namespace
    may use (registry services only). ``aliases`` are the other names the Host header may
    carry (``name.ns.svc``, ``name.ns``) minus any that a ServiceEntry declares
    literally. ``export_to`` is the ServiceEntry's ``exportTo`` as written (registry
    services are visible everywhere). ``mesh_internal`` decides the default TLS mode
    (ISTIO_MUTUAL vs DISABLE).
    """

    host: str
    namespace: str
    ports: tuple[PortDef, ...]
    short_name: str | None = None
    aliases: tuple[str, ...] = ()
    mesh_internal: bool = True
    resolution: Literal["STATIC", "DNS"] = "STATIC"
    subject_alt_names: tuple[str, ...] = ()
    export_to: tuple[str, ...] = ()
    source: ResourceKey | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the service answers to in its own namespace."""
        short = (self.short_name,) if self.short_name else ()
        return (self.host, *self.aliases, *short)


def registry_service(
    namespace: str,
    name: str,
    instances: Iterable[Instance],
    *,
    trust_domain: str,
    domain_suffix: str,
    shadowed: frozenset[str] = frozenset(),
) -> ServiceDef:
    """A registry service. Its ports are the app ports its instances registered (healthy
    or not, so a service whose instances are all down still exists and answers 503); a
    port's protocol is the one its lowest-id instance declared. Backends are the healthy
    instances on that port: a meshed one is reached at its sidecar's inbound port with its
    SPIFFE identity, an unmeshed one at its app port in plaintext."""
    protocols: dict[int, Protocol] = {}
    backends: dict[int, list[Backend]] = {}
    for inst in sorted(instances, key=lambda i: i.id):
        protocols.setdefault(inst.app_port, inst.protocol)
        group = backends.setdefault(inst.app_port, [])
        if not inst.healthy:
            continue
        identity = spiffe_id(trust_domain, inst.namespace, inst.account) if inst.meshed else None
        endpoint = s.Endpoint(inst.address, inst.port, identity, 1, inst.id)
        group.append(Backend(endpoint, frozenset(inst.labels)))
    ports = tuple(
        PortDef(number, protocols[number], tuple(sorted(backends[number], key=_backend_order)))
        for number in sorted(protocols)
    )
    aliases = tuple(
        a for a in (f"{name}.{namespace}.svc", f"{name}.{namespace}") if a not in shadowed
    )
    return ServiceDef(
        host=service_fqdn(name, namespace, domain_suffix),
        namespace=namespace,
        ports=ports,
        short_name=None if name in shadowed else name,
        aliases=aliases,
    )


def _backend_order(b: Backend) -> tuple[str, int, str]:
    return (b.endpoint.address, b.endpoint.port, b.endpoint.instance)


_SE_PROTOCOLS: dict[str, Protocol] = {"HTTP": "http", "HTTP2": "http2", "GRPC": "grpc"}


def se_protocol(port: ServicePort) -> Protocol:
    """HTTP, HTTP2 and GRPC are routed by request; every other protocol (TCP, and TLS or
    HTTPS that the app itself speaks) is proxied as opaque TCP."""
    return _SE_PROTOCOLS.get((port.protocol or "TCP").upper(), "tcp")


def service_entry_services(se: ServiceEntry, trust_domain: str) -> tuple[ServiceDef, ...]:
    """One :class:`ServiceDef` per host of a ServiceEntry, all with the same ports and
    endpoints.

    Endpoints: STATIC takes the listed endpoints' addresses; DNS and DNS_ROUND_ROBIN
    resolve the listed addresses when connecting, or the host itself when none are
    listed. An endpoint's port is its ``ports[<service port name>]``, else the service
    port's ``targetPort``, else its number. A MESH_INTERNAL endpoint with a
    ``serviceAccount`` has that account's SPIFFE identity (mTLS to it); others are
    plaintext.
    """
    spec = se.spec
    internal = spec.location == "MESH_INTERNAL"
    dns = spec.resolution in ("DNS", "DNS_ROUND_ROBIN")
    sans = tuple(sorted(set(spec.subject_alt_names)))
    out: list[ServiceDef] = []
    for raw_host in spec.hosts:
        host = raw_host.lower().rstrip(".")
        ports: dict[int, PortDef] = {}
        for p in sorted(spec.ports, key=lambda p: p.number):
            backends = _se_backends(se, p, host, trust_domain if internal else None)
            if not backends and dns and not spec.endpoints:
                backends = (Backend(s.Endpoint(host, p.target_port or p.number)),)
            ports.setdefault(p.number, PortDef(p.number, se_protocol(p), backends))
        out.append(
            ServiceDef(
                host=host,
                namespace=se.metadata.namespace,
                ports=tuple(ports.values()),
                mesh_internal=internal,
                resolution="DNS" if dns else "STATIC",
                subject_alt_names=sans,
                export_to=tuple(spec.export_to),
                source=se.key,
            )
        )
    return tuple(out)


def _se_backends(
    se: ServiceEntry, port: ServicePort, host: str, trust_domain: str | None
) -> tuple[Backend, ...]:
    """``trust_domain`` None: the service is outside the mesh (no identities)."""
    default_port = port.target_port or port.number
    backends = []
    for we in se.spec.endpoints:
        identity = None
        if trust_domain is not None and we.service_account:
            identity = spiffe_id(trust_domain, se.metadata.namespace, we.service_account)
        endpoint = s.Endpoint(
            address=we.address or host,
            port=we.ports.get(port.name, default_port),
            identity=identity,
            weight=we.weight or 1,
        )
        backends.append(Backend(endpoint, frozenset(we.labels.items())))
    return tuple(sorted(backends, key=_backend_order))
