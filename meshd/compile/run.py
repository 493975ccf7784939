"""One compile, part by part: the catalog of services, one outbound config per scope
(assembled from per-service pieces), one inbound config per distinct workload
setting, one snapshot per proxy. Every part is looked up in :class:`Memos` first;
what is built is put there for the next compile.

Memo keys, and why they are enough (everything a part is a function of):

- registry service: ``(namespace, name, instances, shadowed names)`` (instances by
  equality);
- ServiceEntry services: the ServiceEntry object;
- piece: the ServiceDef, VirtualService and DestinationRule objects, whether the scope
  is the service's namespace, and how the VirtualService's destination hosts resolve
  (host and ports);
- outbound: the Sidecar object, ``allow_any`` and the pieces (objects, in order);
- compiled AuthorizationPolicy: the policy object;
- inbound: ports, protocol, mTLS mode and port modes, compiled policies (objects);
- snapshot: proxy id, service, namespace, identity, inbound and outbound objects.

Settings are not in any key: a new CompileSettings clears every memo.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from meshd.compile import authz, mtls
from meshd.compile import snapshot as s
from meshd.compile.catalog import (
    ServiceDef,
    registry_service,
    service_entry_services,
    spiffe_id,
)
from meshd.compile.check import check_header
from meshd.compile.errors import RuleError
from meshd.compile.inbound import CompiledPolicy, InboundPart, build_inbound
from meshd.compile.index import RuleIndex
from meshd.compile.memo import Memo
from meshd.compile.outbound import ScopeOutbound, ServicePiece, assemble, build_piece
from meshd.compile.routes import Destinations, PortList
from meshd.compile.scope import Egress, allow_any, egress_of
from meshd.compile.versioning import snapshot_version
from meshd.schema.base import Resource, ResourceKey
from meshd.schema.hosts import service_fqdn
from meshd.schema.networking import Sidecar, VirtualService
from meshd.schema.security import AuthorizationPolicy
from meshd.schema.visibility import exported_to
from registry.model import Instance, RegistryView

if TYPE_CHECKING:
    from meshd.compile.compiler import CompileSettings

Shaped = tuple[frozenset[ResourceKey], frozenset[ResourceKey]]
"""The resources that shaped a proxy's outbound config, and its inbound config."""


@dataclass(slots=True)
class Memos:
    """Everything a Compiler remembers between compiles."""

    services: Memo[ServiceDef] = field(default_factory=Memo)
    entries: Memo[tuple[ServiceDef, ...]] = field(default_factory=Memo)
    pieces: Memo[ServicePiece] = field(default_factory=Memo)
    outbounds: Memo[ScopeOutbound] = field(default_factory=Memo)
    policies: Memo[CompiledPolicy] = field(default_factory=Memo)
    inbounds: Memo[InboundPart] = field(default_factory=Memo)
    snapshots: Memo[s.ProxySnapshot] = field(default_factory=Memo)

    def all(self) -> Iterator[Memo[Any]]:
        for f in fields(self):
            yield getattr(self, f.name)


@dataclass(frozen=True, slots=True)
class RunOutput:
    snapshots: dict[str, s.ProxySnapshot]
    errors: dict[str, tuple[str, ...]]
    shaped_by: dict[str, Shaped]


class CompileRun:
    """One compile: builds every proxy's snapshot, taking what it can from ``memos``."""

    def __init__(
        self,
        memos: Memos,
        resources: Sequence[Resource[Any]],
        registry: RegistryView,
        settings: CompileSettings,
        mesh_text: str,
    ) -> None:
        self.memos = memos
        self.mesh_text = mesh_text
        self.registry = registry
        self.settings = settings
        self.td = settings.mesh.trust_domain
        self.suffix = settings.mesh.domain_suffix
        self.root = settings.root_namespace
        self.index = RuleIndex.build(resources, self.root, self.suffix)
        self.catalog: dict[str, list[ServiceDef]] = {}
        self.ports: dict[str, PortList] = {}
        self.hosts: list[str] = []
        self.dest_sigs: dict[int, tuple[tuple[str, tuple[str, PortList]], ...]] = {}

    # --- catalog -----------------------------------------------------------------------------

    def build_catalog(self) -> None:
        se_hosts = self.index.se_hosts
        memo = self.memos.services
        for (ns, name), instances in self.registry.services.items():
            if not instances:
                continue
            shadowed = (
                frozenset(a for a in (f"{name}.{ns}.svc", f"{name}.{ns}", name) if a in se_hosts)
                if se_hosts
                else frozenset()
            )
            key = (ns, name, instances, shadowed)
            svc = memo.get(key)
            if svc is None:
                svc = memo.put(
                    key,
                    None,
                    registry_service(
                        ns,
                        name,
                        instances,
                        trust_domain=self.td,
                        domain_suffix=self.suffix,
                        shadowed=shadowed,
                    ),
                )
            if svc.ports:
                self.catalog[svc.host] = [svc]
        entries = self.memos.entries
        for se in self.index.service_entries:
            ekey = id(se)
            defs = entries.get(ekey)
            if defs is None:
                defs = entries.put(ekey, se, service_entry_services(se, self.td))
            for d in defs:
                found = self.catalog.setdefault(d.host, [])
                if all(other.source != d.source for other in found):
                    found.append(d)
        self.hosts = sorted(self.catalog)
        self.ports = {
            h: tuple((p.number, p.protocol) for p in defs[0].ports)
            for h, defs in self.catalog.items()
        }

    def destinations(self, vs: VirtualService) -> tuple[tuple[str, tuple[str, PortList]], ...]:
        sig = self.dest_sigs.get(id(vs))
        if sig is None:
            ns = vs.metadata.namespace
            raw = {d.destination.host for r in vs.spec.http for d in r.route}
            raw.update(d.destination.host for r in vs.spec.tcp for d in r.route)
            resolved = []
            for host in sorted(raw):
                fqdn = self.index.resolve(host, ns)
                resolved.append((host, (fqdn, self.ports.get(fqdn, ()))))
            sig = self.dest_sigs[id(vs)] = tuple(resolved)
        return sig

    # --- outbound ----------------------------------------------------------------------------

    def scope(self, namespace: str, sidecar: Sidecar | None) -> ScopeOutbound:
        egress = egress_of(sidecar, namespace)
        pieces = list(self._pieces(namespace, egress))
        allow = allow_any(sidecar)
        key = (id(sidecar), allow, tuple(map(id, pieces)))
        memo = self.memos.outbounds
        found = memo.get(key)
        if found is None:
            extra = frozenset((sidecar.key,)) if sidecar is not None else frozenset()
            found = memo.put(key, (sidecar, pieces), assemble(pieces, allow, extra))
        return found

    def _pieces(self, namespace: str, egress: Egress | None) -> Iterator[ServicePiece]:
        index = self.index
        memo = self.memos.pieces
        for host in self.hosts:
            svc = self._visible(self.catalog[host], namespace, egress)
            if svc is None:
                continue
            names = svc.names
            vs = index.virtual_service(host, svc.namespace, names, namespace, egress)
            dr = index.destination_rule(host, svc.namespace, namespace)
            same_ns = svc.namespace == namespace and svc.short_name is not None
            sig = self.destinations(vs) if vs is not None else ()
            key = (id(svc), id(vs), id(dr), same_ns, sig)
            piece = memo.get(key)
            if piece is None:
                dests = Destinations(dict(sig))
                piece = memo.put(key, (svc, vs, dr), build_piece(svc, vs, dr, same_ns, dests))
            yield piece

    @staticmethod
    def _visible(
        candidates: list[ServiceDef], namespace: str, egress: Egress | None
    ) -> ServiceDef | None:
        """The first candidate for a host (the registry service, else ServiceEntries by
        ``namespace/name``) that ``namespace`` may see."""
        for svc in candidates:
            if svc.source is not None and not exported_to(svc.export_to, svc.namespace, namespace):
                continue
            if egress is not None and not egress.allows(svc.namespace, svc.names):
                continue
            return svc
        return None

    # --- inbound -----------------------------------------------------------------------------

    def inbound(
        self, inst: Instance, labels: frozenset[tuple[str, str]]
    ) -> tuple[InboundPart, frozenset[ResourceKey]]:
        ns = inst.namespace
        index = self.index
        pas = mtls.applicable(
            index.peer_auth.get(ns, ()), index.peer_auth.get(self.root, ()), labels, ns == self.root
        )
        mode, port_mtls = mtls.resolve(*pas, default=self.settings.default_mtls_mode)
        aps = authz.applicable(
            index.authz.get(ns, ()), index.authz.get(self.root, ()), ns, labels, self.root
        )
        compiled = tuple(self._policy(ap) for ap in aps)
        key = (inst.port, inst.app_port, inst.protocol, mode, port_mtls, tuple(map(id, compiled)))
        memo = self.memos.inbounds
        found = memo.get(key)
        if found is None:
            found = memo.put(key, compiled, build_inbound(inst, mode, port_mtls, compiled))
        sources = frozenset(r.key for r in (*pas, *aps) if r is not None)
        return found, sources

    def _policy(self, ap: AuthorizationPolicy) -> CompiledPolicy:
        memo = self.memos.policies
        found = memo.get(id(ap))
        if found is None:
            try:
                value: CompiledPolicy = authz.compile_policy(ap, self.td)
            except RuleError as exc:
                value = f"{ap.key}: {exc.detail}"
            except Exception as exc:  # a bug: fail the proxies it selects, say so
                value = (
                    f"{ap.key}: internal error: {exc!r}; this is a bug in meshd, please report it"
                )
            found = memo.put(id(ap), ap, value)
        return found

    # --- proxies -----------------------------------------------------------------------------

    def run(self) -> RunOutput:
        self.build_catalog()
        sidecars = self.index.sidecars
        assert sidecars is not None
        scopes: dict[tuple[str, int], ScopeOutbound] = {}
        snapshots: dict[str, s.ProxySnapshot] = {}
        errors: dict[str, tuple[str, ...]] = {}
        shaped: dict[str, Shaped] = {}
        smemo = self.memos.snapshots
        settings = self.settings
        for (ns, name), instances in sorted(self.registry.services.items()):
            fqdn = service_fqdn(name, ns, self.suffix)
            for inst in instances:
                if not inst.meshed or inst.id in shaped:
                    continue
                labels = frozenset(inst.labels)
                sidecar = sidecars.for_workload(ns, labels)
                skey = (ns, id(sidecar))
                scope = scopes.get(skey)
                if scope is None:
                    scope = scopes[skey] = self.scope(ns, sidecar)
                inbound, in_sources = self.inbound(inst, labels)
                shaped[inst.id] = (scope.sources, in_sources)
                problems = scope.errors + inbound.errors
                if problems:
                    errors[inst.id] = problems
                    continue
                identity = spiffe_id(self.td, ns, inst.account)
                key = (inst.id, fqdn, ns, identity, id(inbound.config), id(scope.outbound))
                snap = smemo.get(key)
                if snap is None:
                    outbound = scope.outbound
                    version = snapshot_version(
                        proxy_id=inst.id,
                        service=fqdn,
                        namespace=ns,
                        identity=identity,
                        inbound_digest=inbound.digest,
                        outbound_digest=outbound.digest,
                        trust_bundle=settings.trust_bundle,
                        mesh=self.mesh_text,
                    )
                    snap = s.ProxySnapshot(
                        proxy_id=inst.id,
                        version=version,
                        service=fqdn,
                        namespace=ns,
                        identity=identity,
                        inbound=inbound.config,
                        outbound=outbound,
                        trust_bundle=settings.trust_bundle,
                        trust_roots=settings.trust_roots,
                        mesh=settings.mesh,
                    )
                    smemo.put(key, (inbound, outbound), snap)
                header_errors = check_header(snap)
                if header_errors:
                    errors[inst.id] = tuple(header_errors)
                    continue
                snapshots[inst.id] = snap
        return RunOutput(snapshots, errors, shaped)
