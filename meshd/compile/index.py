"""The rules of one compile, sorted and indexed for the lookups the compiler makes.

Built afresh each compile (a few microseconds per resource); everything here is in a
deterministic order (by namespace, then name), so the result never depends on the
order resources were given in.

Which VirtualService routes a host, as seen from namespace N (Istio's sidecar rule,
made deterministic): among the VirtualServices for that host that are exported to N
(and imported by N's Sidecar), the one in N, else the one in the host's own namespace
(a ServiceEntry host's own namespace is the ServiceEntry's), else the lexically first
``namespace/name``.

Which DestinationRule configures a host, as seen from N: the first exported to N in
N, then the host's namespace, then the root namespace, then any other namespace in
lexical order (the same order validation checks subsets against).

A VirtualService host that names no service the proxy can see (neither a registry
service nor a ServiceEntry host) adds nothing: meshd routes by known hosts only, and
the VirtualService takes effect when such a service appears.

``exportTo``: absent or ``*`` everywhere, ``.`` the rule's own namespace, ``~``
nowhere, else the listed namespaces; a rule is always visible in its own namespace
unless it says ``~`` (as validation treats it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshd.compile.scope import Egress, SidecarIndex
from meshd.schema.base import Resource
from meshd.schema.hosts import resolve_host
from meshd.schema.networking import DestinationRule, ServiceEntry, Sidecar, VirtualService
from meshd.schema.security import AuthorizationPolicy, PeerAuthentication
from meshd.schema.visibility import exported_to, pick_destination_rule


def _order(r: Resource[Any]) -> tuple[str, str]:
    return (r.metadata.namespace, r.metadata.name)


@dataclass(slots=True)
class RuleIndex:
    root_namespace: str
    domain_suffix: str
    service_entries: list[ServiceEntry] = field(default_factory=list)
    se_hosts: frozenset[str] = frozenset()
    vs_by_host: dict[str, list[VirtualService]] = field(default_factory=dict)
    dr_by_host: dict[str, list[DestinationRule]] = field(default_factory=dict)
    sidecars: SidecarIndex | None = None
    peer_auth: dict[str, list[PeerAuthentication]] = field(default_factory=dict)
    authz: dict[str, list[AuthorizationPolicy]] = field(default_factory=dict)

    @classmethod
    def build(
        cls, resources: Iterable[Resource[Any]], root_namespace: str, domain_suffix: str
    ) -> RuleIndex:
        index = cls(root_namespace, domain_suffix)
        vss: list[VirtualService] = []
        drs: list[DestinationRule] = []
        sidecars: list[Sidecar] = []
        for r in sorted(resources, key=_order):
            if isinstance(r, VirtualService):
                vss.append(r)
            elif isinstance(r, DestinationRule):
                drs.append(r)
            elif isinstance(r, ServiceEntry):
                index.service_entries.append(r)
            elif isinstance(r, Sidecar):
                sidecars.append(r)
            elif isinstance(r, PeerAuthentication):
                index.peer_auth.setdefault(r.metadata.namespace, []).append(r)
            elif isinstance(r, AuthorizationPolicy):
                index.authz.setdefault(r.metadata.namespace, []).append(r)
            # RequestAuthentication: meshd does not implement JWTs yet, and validation
            # rejects the fields that would need them, so it shapes nothing.
        index.se_hosts = frozenset(
            h.lower().rstrip(".") for se in index.service_entries for h in se.spec.hosts
        )
        for vs in vss:
            if vs.spec.gateways and "mesh" not in vs.spec.gateways:
                continue
            seen: set[str] = set()
            for host in vs.spec.hosts:
                fqdn = index.resolve(host, vs.metadata.namespace)
                if fqdn not in seen:
                    seen.add(fqdn)
                    index.vs_by_host.setdefault(fqdn, []).append(vs)
        for dr in drs:
            fqdn = index.resolve(dr.spec.host, dr.metadata.namespace)
            index.dr_by_host.setdefault(fqdn, []).append(dr)
        index.sidecars = SidecarIndex.build(sidecars, root_namespace)
        return index

    def resolve(self, host: str, namespace: str) -> str:
        return resolve_host(host, namespace, self.domain_suffix, self.se_hosts)

    def virtual_service(
        self,
        host: str,
        host_namespace: str,
        names: Sequence[str],
        scope_namespace: str,
        egress: Egress | None,
    ) -> VirtualService | None:
        candidates = self.vs_by_host.get(host)
        if not candidates:
            return None
        best: VirtualService | None = None
        best_rank = 3
        for vs in candidates:
            ns = vs.metadata.namespace
            if not exported_to(vs.spec.export_to, ns, scope_namespace):
                continue
            if egress is not None and not egress.allows(ns, names):
                continue
            rank = 0 if ns == scope_namespace else 1 if ns == host_namespace else 2
            if rank < best_rank:
                best, best_rank = vs, rank
        return best

    def destination_rule(
        self, host: str, host_namespace: str, scope_namespace: str
    ) -> DestinationRule | None:
        return pick_destination_rule(
            self.dr_by_host.get(host, ()), scope_namespace, host_namespace, self.root_namespace
        )
