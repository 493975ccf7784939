"""The proxy's compiled configuration: :class:`ProxyConfig`, built ONCE per applied
snapshot and then only read.

Everything a request would otherwise recompute is done here, outside the request path:
the route table (``sidecar.routing``), the balancers (``sidecar.lb``), the compiled
authorization policies, a per-cluster :class:`ClusterInfo` (TLS mode, the identities a
server may present, its retry budget, telemetry labels), the effective inbound mTLS
mode, and header operations as bytes.

:class:`ProxyState` holds the current one in a :class:`registry.latest.Latest`. A
request reads ``state.current.value`` ONCE when it starts and keeps that object to the
end, so a config swap never changes the rules under a request in flight: the old
config lives as long as a request holds it. :meth:`ProxyState.follow` rebuilds it
whenever the :class:`~sidecar.config_store.ConfigStore` applies a new snapshot, then
tells the connection pools which endpoints are gone (they drain).

Retry budgets and endpoint loads outlive configs (one per cluster, one per endpoint):
a swap under load must not forget how many requests and retries are active.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from random import Random
from typing import Literal

import trio

from meshd.compile.snapshot import Cluster, InboundConfig, ProxySnapshot, TcpService
from registry.latest import Latest
from sidecar.config_store import AppliedConfig, ConfigStore
from sidecar.filters.authz import CompiledAuthz, compile_authz
from sidecar.lb import Balancers, LoadRegistry
from sidecar.protocol.errors import LocalProtocolError
from sidecar.protocol.headers import check_field
from sidecar.routing import HeaderEdits, RetryBudget, RouteTable, compile_table
from sidecar.telemetry import Service, Workload

log = logging.getLogger("sidecar.proxy")

MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
Address = tuple[str, int]

BytesEdits = tuple[tuple[frozenset[bytes], tuple[tuple[bytes, bytes], ...]], ...]
""":class:`~sidecar.routing.HeaderEdits` as bytes: ``(drop, append)`` steps."""

NO_BYTES_EDITS: BytesEdits = ()

RAW_PROTOCOLS = frozenset(("tcp", "http2", "grpc"))
"""Inbound protocols relayed as bytes: TCP, and HTTP/2 (gRPC) until the proxy speaks
HTTP/2 (an h2c client and server still talk through the mTLS tunnel)."""


class RetryBudgets:
    """One :class:`RetryBudget` per cluster, kept across configs (the counts of active
    requests and retries must survive a swap). Rebuilt only when the mesh's budget
    settings change."""

    __slots__ = ("_budgets", "_settings")

    def __init__(self) -> None:
        self._budgets: dict[str, RetryBudget] = {}
        self._settings: tuple[float, int] = (20.0, 3)

    def configure(self, percent: float, min_concurrency: int) -> None:
        if (percent, min_concurrency) != self._settings:
            self._settings = (percent, min_concurrency)
            self._budgets.clear()

    def get(self, cluster: str) -> RetryBudget:
        budget = self._budgets.get(cluster)
        if budget is None:
            budget = self._budgets[cluster] = RetryBudget(*self._settings)
        return budget

    def prune(self, keep: Iterable[str]) -> None:
        wanted = set(keep)
        for name in [
            n for n, b in self._budgets.items() if n not in wanted and not b.active_requests
        ]:
            del self._budgets[name]


@dataclass(frozen=True, slots=True, eq=False)
class ClusterInfo:
    """What the proxy needs of one cluster per request, precomputed. ``secure``: mesh
    mTLS to endpoints that have an identity (tls_mode ISTIO_MUTUAL); ``expected``: the
    SPIFFE IDs its servers may present; ``peers``: each endpoint's telemetry labels."""

    cluster: Cluster
    service: Service
    secure: bool
    expected: frozenset[str]
    connect_timeout_s: float
    budget: RetryBudget
    peers: Mapping[Address, Workload]
    name_bytes: bytes


def _service_parts(host: str) -> tuple[str, str]:
    """``reviews.default.svc.cluster.local`` -> (``reviews``, ``default``)."""
    parts = host.split(".")
    if len(parts) > 3 and parts[2] == "svc":
        return parts[0], parts[1]
    return host, ""


def _peer_workload(cluster: Cluster, identity: str | None) -> Workload:
    name, namespace = _service_parts(cluster.service)
    return Workload(
        name=name,
        namespace=namespace or "unknown",
        principal=identity or "unknown",
        app=name,
        canonical_service=name,
    )


def effective_mode(inbound: InboundConfig) -> MtlsMode:
    """The mTLS mode of the app's port: ``portLevelMtls`` for it, else the workload's."""
    for port, mode in inbound.port_mtls:
        if port == inbound.app_port:
            return mode
    return inbound.mtls_mode


def tcp_candidates(name: str, namespace: str, suffix: str) -> tuple[str, ...]:
    """The service hosts ``--upstream NAME`` may mean, most specific first, as a host is
    resolved in the sidecar's namespace: ``db`` -> ``db.<ns>.svc.<suffix>``; ``db.ns``
    -> ``db.ns.svc.<suffix>``; ``db.ns.svc`` -> ``db.ns.svc.<suffix>``; anything else
    (an FQDN, a ServiceEntry host) as written."""
    host = name.lower().rstrip(".")
    dots = host.count(".")
    if dots == 0:
        return (f"{host}.{namespace}.svc.{suffix}", host)
    if dots == 1:
        return (f"{host}.svc.{suffix}", host)
    if dots == 2 and host.endswith(".svc"):
        return (f"{host}.{suffix}", host)
    return (host,)


@dataclass(frozen=True, slots=True, eq=False)
class ProxyConfig:
    """One applied snapshot, compiled for the proxy. Immutable; share it freely."""

    snapshot: ProxySnapshot
    table: RouteTable
    balancers: Balancers
    clusters: Mapping[str, ClusterInfo]
    authz: CompiledAuthz
    inbound_mode: MtlsMode
    inbound_raw: bool
    endpoints: frozenset[Address]
    local_service: Service
    _edits: dict[int, BytesEdits] = field(default_factory=dict, repr=False)
    _tcp: dict[tuple[str, int | None], TcpService | None] = field(default_factory=dict, repr=False)

    @property
    def version(self) -> str:
        return self.snapshot.version

    @property
    def inbound(self) -> InboundConfig:
        return self.snapshot.inbound

    def edits(self, ops: HeaderEdits) -> BytesEdits:
        """``ops`` as bytes (converted once per config; invalid fields dropped)."""
        if ops.empty:
            return NO_BYTES_EDITS
        key = id(ops)  # the table keeps ``ops`` alive as long as this config
        done = self._edits.get(key)
        if done is None:
            done = self._edits[key] = _bytes_edits(ops)
        return done

    def tcp_service(self, name: str, port: int | None) -> TcpService | None:
        """The TCP service ``--upstream NAME[:PORT]`` names (memoised per config): the
        first candidate host (:func:`tcp_candidates`) with a TCP service on ``port``, or
        with exactly one port when ``port`` is None."""
        key = (name, port)
        if key in self._tcp:
            return self._tcp[key]
        found: TcpService | None = None
        snap = self.snapshot
        services = snap.outbound.tcp_services
        for host in tcp_candidates(name, snap.namespace, snap.mesh.domain_suffix):
            matching = [t for t in services if t.name == host and (port is None or t.port == port)]
            if len(matching) == 1 or (matching and port is not None):
                found = matching[0]
                break
            if matching:
                log.warning(
                    "--upstream %s: %s has TCP ports %s; name one as %s:PORT=LOCALPORT",
                    name,
                    host,
                    ", ".join(str(t.port) for t in matching),
                    name,
                )
                break
        self._tcp[key] = found
        return found


def _bytes_edits(ops: HeaderEdits) -> BytesEdits:
    steps = []
    for drop, append in ops.steps:
        pairs = []
        for name, value in append:
            try:
                pairs.append(check_field(name, value))
            except LocalProtocolError as exc:
                log.warning("header operation on %r skipped: %s", name, exc)
        steps.append((frozenset(n.lower().encode("latin-1") for n in drop), tuple(pairs)))
    return tuple(steps)


def compile_config(
    snapshot: ProxySnapshot,
    loads: LoadRegistry,
    budgets: RetryBudgets,
    rng: Random | None = None,
) -> ProxyConfig:
    """Compile ``snapshot`` (one that passed ``decode_snapshot``): a few milliseconds
    for a hundred services."""
    outbound = snapshot.outbound
    budgets.configure(
        snapshot.mesh.retry_budget_percent, snapshot.mesh.retry_budget_min_concurrency
    )
    clusters: dict[str, ClusterInfo] = {}
    endpoints: set[Address] = set()
    for cluster in outbound.clusters:
        peers = {}
        for ep in cluster.endpoints:
            endpoints.add((ep.address, ep.port))
            peers[(ep.address, ep.port)] = _peer_workload(cluster, ep.identity)
        clusters[cluster.name] = ClusterInfo(
            cluster=cluster,
            service=Service.from_host(cluster.service),
            secure=cluster.tls_mode == "ISTIO_MUTUAL",
            expected=frozenset(cluster.expected_identities),
            connect_timeout_s=max(cluster.connect_timeout_ms, 1) / 1000.0,
            budget=budgets.get(cluster.name),
            peers=peers,
            name_bytes=cluster.name.encode("latin-1", "replace"),
        )
    inbound = snapshot.inbound
    return ProxyConfig(
        snapshot=snapshot,
        table=compile_table(outbound),
        balancers=Balancers(outbound.clusters, loads, rng),
        clusters=clusters,
        authz=compile_authz(inbound),
        inbound_mode=effective_mode(inbound),
        inbound_raw=inbound.protocol in RAW_PROTOCOLS,
        endpoints=frozenset(endpoints),
        local_service=Service.from_host(snapshot.service),
    )


class ProxyState:
    """The current :class:`ProxyConfig` (None until the first snapshot), and what must
    outlive it: endpoint loads and retry budgets."""

    def __init__(self, rng: Random | None = None) -> None:
        self.current: Latest[ProxyConfig | None] = Latest(None)
        self.loads = LoadRegistry()
        self.budgets = RetryBudgets()
        self.rng = rng or Random()  # noqa: S311 — load balancing, not secrets
        self.swaps = 0

    def apply(self, snapshot: ProxySnapshot) -> ProxyConfig:
        """Compile ``snapshot`` and make it current."""
        config = compile_config(snapshot, self.loads, self.budgets, self.rng)
        self.current.set(config)
        self.swaps += 1
        self.loads.prune(snapshot.outbound.clusters)
        self.budgets.prune(config.clusters)
        return config

    async def follow(
        self,
        store: ConfigStore,
        on_swap: Callable[[ProxyConfig], object] = lambda _: None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep :attr:`current` in step with ``store`` until cancelled; ``on_swap`` runs
        after each swap (the pools drain endpoints that are gone)."""
        started = False
        async with aclosing(store.current.watch()) as updates:
            async for applied in updates:
                self._take(applied, on_swap)
                if not started:
                    started = True
                    task_status.started()

    def _take(
        self, applied: AppliedConfig | None, on_swap: Callable[[ProxyConfig], object]
    ) -> None:
        if applied is None:
            return
        current = self.current.value
        if current is not None and current.snapshot is applied.snapshot:
            return  # the same snapshot confirmed by meshd: nothing to rebuild
        try:
            config = self.apply(applied.snapshot)
        except Exception:  # a snapshot that passed validation and still fails: keep the old
            log.exception(
                "cannot compile config version %s for the proxy; keeping version %s",
                applied.version,
                current.version if current else "none",
            )
            return
        on_swap(config)
