"""Rules + registry view -> one coherent ProxySnapshot per sidecar.

Entry points: :func:`compile_mesh` (pure) and :class:`Compiler` (the same result,
reusing the work of its previous call). Every meshed registry instance is one proxy,
its id the proxy id.

How the work is shared and reused:

- Each service is compiled into a *piece* per distinct view of it (same service
  definition, same VirtualService and DestinationRule, same namespace-or-not, same
  destination ports): virtual hosts, TCP services, clusters and a digest.
- Proxies of one namespace with the same Sidecar form a *scope*; a scope's outbound
  config is assembled from its pieces and shared by all its proxies (and by every
  scope with the very same pieces).
- Inbound configs are shared by proxies with the same ports, mTLS and policies.
- A snapshot is rebuilt only when its inbound or outbound object changed.

Unchanged inputs are recognised by identity (the control plane passes the same parsed
resource objects until a resource changes) or, for registry instances, by equality.
Memo entries hold their inputs so an ``id()`` cannot be reused while they live, and
entries the last compile did not use are dropped after it. New settings reset it all.

Where each semantic choice is written down: which services a proxy sees and their
endpoints (:mod:`~meshd.compile.catalog`); which VirtualService and DestinationRule
apply, ``exportTo`` (:mod:`~meshd.compile.index`); Sidecar scoping
(:mod:`~meshd.compile.scope`); domains and stand-in clusters
(:mod:`~meshd.compile.outbound`); routes, retries, timeouts
(:mod:`~meshd.compile.routes`); load balancing and TLS (:mod:`~meshd.compile.clusters`);
mTLS (:mod:`~meshd.compile.mtls`); authorization (:mod:`~meshd.compile.authz`);
versions (:mod:`~meshd.compile.versioning`); memo keys (:mod:`~meshd.compile.run`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshd.compile import snapshot as s
from meshd.compile.mtls import Mode as MtlsMode
from meshd.compile.run import CompileRun, Memos, Shaped
from meshd.compile.versioning import mesh_fingerprint
from meshd.schema.base import Resource, ResourceKey
from registry.model import RegistryView


@dataclass(frozen=True, slots=True)
class CompileSettings:
    """Mesh-wide inputs of the compile. ``trust_roots`` are the PEM roots every proxy
    must trust and ``trust_bundle`` their digest; ``default_mtls_mode`` applies where no
    PeerAuthentication says otherwise."""

    mesh: s.MeshSettings = field(default_factory=s.MeshSettings)
    root_namespace: str = "istio-system"
    default_mtls_mode: MtlsMode = "STRICT"
    trust_bundle: str = ""
    trust_roots: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CompileStats:
    """What a compile built afresh and what it reused, by kind of part, and how many
    proxies got a version different from the previous compile's."""

    pieces_built: int = 0
    pieces_reused: int = 0
    outbounds_built: int = 0
    outbounds_reused: int = 0
    inbounds_built: int = 0
    inbounds_reused: int = 0
    snapshots_built: int = 0
    snapshots_reused: int = 0
    versions_changed: int = 0

    @property
    def parts_rebuilt(self) -> int:
        return self.pieces_built + self.outbounds_built + self.inbounds_built + self.snapshots_built

    @property
    def parts_reused(self) -> int:
        return (
            self.pieces_reused
            + self.outbounds_reused
            + self.inbounds_reused
            + self.snapshots_reused
        )


@dataclass(frozen=True, slots=True)
class CompileResult:
    """``snapshots``: every proxy whose snapshot is coherent. ``errors``: every proxy whose
    new snapshot is not (it has no entry in ``snapshots``; keep serving its previous
    one). ``changed``: proxies whose version differs from the previous compile's (new
    ones included). ``shaped_by``: per proxy, the sets of resources that shaped its
    outbound and its inbound config (see :meth:`dependents`)."""

    snapshots: Mapping[str, s.ProxySnapshot]
    errors: Mapping[str, tuple[str, ...]]
    stats: CompileStats
    changed: frozenset[str] = frozenset()
    shaped_by: Mapping[str, Shaped] = field(default_factory=dict)

    def dependents(self, key: ResourceKey) -> frozenset[str]:
        """The proxies whose snapshot ``key`` shaped: a VirtualService, DestinationRule or
        ServiceEntry that applies to a service the proxy sees, the Sidecar that scopes
        it, a PeerAuthentication or AuthorizationPolicy that applies to its workload.
        Proxies whose snapshot failed are included."""
        key = ResourceKey(*key)
        return frozenset(
            pid for pid, groups in self.shaped_by.items() if any(key in g for g in groups)
        )


def compile_mesh(
    resources: Sequence[Resource[Any]], registry: RegistryView, settings: CompileSettings
) -> CompileResult:
    """Every proxy's snapshot from scratch. Pure: equal inputs give equal results."""
    return Compiler().compile(resources, registry, settings)


class Compiler:
    """Incremental compiler: :meth:`compile` returns what :func:`compile_mesh` would,
    reusing every part whose inputs did not change since the previous call (the very
    same objects). Not thread-safe: one compile at a time."""

    def __init__(self) -> None:
        self._settings: CompileSettings | None = None
        self._mesh_text = ""
        self._memos = Memos()
        self._versions: dict[str, str] = {}

    def compile(
        self,
        resources: Sequence[Resource[Any]],
        registry: RegistryView,
        settings: CompileSettings,
    ) -> CompileResult:
        memos = self._memos
        if settings != self._settings:
            for memo in memos.all():
                memo.clear()
            self._settings = settings
            self._mesh_text = mesh_fingerprint(settings.mesh)
        try:
            out = CompileRun(memos, resources, registry, settings, self._mesh_text).run()
            previous = self._versions
            changed = frozenset(
                pid for pid, snap in out.snapshots.items() if previous.get(pid) != snap.version
            )
            # A proxy whose new snapshot failed is still served its previous one.
            versions = {pid: previous[pid] for pid in out.errors if pid in previous}
            versions.update((pid, snap.version) for pid, snap in out.snapshots.items())
            self._versions = versions
            stats = CompileStats(
                pieces_built=memos.pieces.built,
                pieces_reused=memos.pieces.reused,
                outbounds_built=memos.outbounds.built,
                outbounds_reused=memos.outbounds.reused,
                inbounds_built=memos.inbounds.built,
                inbounds_reused=memos.inbounds.reused,
                snapshots_built=memos.snapshots.built,
                snapshots_reused=memos.snapshots.reused,
                versions_changed=len(changed),
            )
            return CompileResult(out.snapshots, out.errors, stats, changed, out.shaped_by)
        finally:
            for memo in memos.all():
                memo.sweep()
