"""What a proxy may see: the Sidecar resource that applies to it and its egress hosts.

Sidecar precedence (Istio's): a Sidecar in the workload's namespace whose
``workloadSelector`` matches the workload's labels, else the namespace's Sidecar
without selector, else the root namespace's Sidecar without selector, else none
(everything visible, ALLOW_ANY). Among several that match at one level the
lexically first name wins (validation rejects two namespace-wide ones).

Egress hosts are ``namespace/dnsName``: namespace ``*`` any, ``.`` the workload's
namespace, ``~`` none, else a name; dnsName ``*`` any host of that namespace, else a
host name. A dnsName matches a service by its canonical host or any name it answers
to in that namespace (``./reviews`` selects the namespace's ``reviews``). A host is
visible when some egress host matches the namespace it is defined in (the service's,
or the ServiceEntry's) and its name. VirtualServices are imported the same way: by
their own namespace and the host they route.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from meshd.schema.networking import Sidecar


@dataclass(frozen=True, slots=True)
class Egress:
    """Compiled egress hosts of one scope: ``(namespace or "*", name or "*")`` pairs."""

    hosts: tuple[tuple[str, str], ...]

    def allows(self, namespace: str, names: Iterable[str]) -> bool:
        for ns, name in self.hosts:
            if ns not in ("*", namespace):
                continue
            if name == "*":
                return True
            if name.startswith("*."):
                if any(n.endswith(name[1:]) for n in names):
                    return True
            elif name in names:
                return True
        return False


def egress_of(sidecar: Sidecar | None, scope_namespace: str) -> Egress | None:
    """None: no restriction (no Sidecar, or one without egress listeners)."""
    if sidecar is None or not sidecar.spec.egress:
        return None
    hosts: list[tuple[str, str]] = []
    for listener in sidecar.spec.egress:
        for text in listener.hosts:
            ns, slash, name = text.partition("/")
            if not slash:
                ns, name = "*", text
            if ns == "~":
                continue
            if ns == ".":
                ns = scope_namespace
            hosts.append((ns, name.lower().rstrip(".")))
    return Egress(tuple(hosts))


def allow_any(sidecar: Sidecar | None) -> bool:
    """Istio's ``outboundTrafficPolicy``: REGISTRY_ONLY blocks unknown hosts; the default
    (no Sidecar, no policy, or ALLOW_ANY) passes them through."""
    if sidecar is None or sidecar.spec.outbound_traffic_policy is None:
        return True
    return sidecar.spec.outbound_traffic_policy.mode != "REGISTRY_ONLY"


@dataclass(frozen=True, slots=True)
class SidecarIndex:
    """Sidecars by namespace: the one without selector, and those with one (by name)."""

    namespace_wide: Mapping[str, Sidecar]
    selecting: Mapping[str, Sequence[Sidecar]]
    root_namespace: str

    @classmethod
    def build(cls, sidecars: Iterable[Sidecar], root_namespace: str) -> SidecarIndex:
        wide: dict[str, Sidecar] = {}
        selecting: dict[str, list[Sidecar]] = {}
        for sc in sorted(sidecars, key=lambda r: (r.metadata.namespace, r.metadata.name)):
            sel = sc.spec.workload_selector
            if sel is not None and sel.labels:
                selecting.setdefault(sc.metadata.namespace, []).append(sc)
            else:
                wide.setdefault(sc.metadata.namespace, sc)
        return cls(wide, selecting, root_namespace)

    def for_workload(self, namespace: str, labels: frozenset[tuple[str, str]]) -> Sidecar | None:
        for sc in self.selecting.get(namespace, ()):
            sel = sc.spec.workload_selector
            assert sel is not None
            if sel.labels.items() <= labels:
                return sc
        found = self.namespace_wide.get(namespace)
        if found is None:
            found = self.namespace_wide.get(self.root_namespace)
        return found
