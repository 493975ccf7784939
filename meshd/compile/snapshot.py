"""The compiled configuration of one sidecar: the contract between meshd's compiler
and the sidecar.

Frozen, slotted dataclasses and nothing else: the sidecar imports this module (it
must never import pydantic or FastAPI) and decodes the wire form with
``meshd.compile.codec`` into these same classes. Every field here is enforced by
the sidecar; a field of a rule that the sidecar cannot enforce is rejected when the
rule is applied, so it never gets this far.

Units are explicit in names (``_ms``). Header names are lowercase. Tuples, not
lists, so a snapshot can be shared between proxies and hashed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

SCHEMA_VERSION = 1
"""Bumped when the wire form changes incompatibly; a sidecar NACKs a schema it does not know."""

# --- request matching --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StringMatch:
    """``regex`` is a full match in Python ``re`` syntax (the RE2 subset Istio allows)."""

    kind: Literal["exact", "prefix", "regex"]
    value: str
    ignore_case: bool = False


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """``match`` None means "header present". ``invert`` comes from Istio's ``withoutHeaders``:
    the condition holds when the header does not match."""

    name: str
    match: StringMatch | None = None
    invert: bool = False


@dataclass(frozen=True, slots=True)
class QueryParamMatch:
    name: str
    match: StringMatch | None = None


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """All set conditions must hold (Istio ``HTTPMatchRequest``)."""

    name: str = ""
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: tuple[HeaderMatch, ...] = ()
    query_params: tuple[QueryParamMatch, ...] = ()
    port: int | None = None


# --- what a route does -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderOps:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.set or self.add or self.remove)


NO_HEADER_OPS = HeaderOps()


@dataclass(frozen=True, slots=True)
class WeightedCluster:
    cluster: str
    weight: int
    request_headers: HeaderOps = NO_HEADER_OPS
    response_headers: HeaderOps = NO_HEADER_OPS


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``retry_on`` holds Envoy's conditions (``5xx``, ``gateway-error``, ``connect-failure``,
    ``reset``, ``retriable-4xx``, ``refused-stream``); ``retry_on_status`` the bare status
    codes Istio lets users list in ``retryOn``."""

    attempts: int
    per_try_timeout_ms: int | None = None
    retry_on: tuple[str, ...] = ("connect-failure", "refused-stream", "gateway-error")
    retry_on_status: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Rewrite:
    """``uri`` replaces the matched prefix (or the whole path after an exact match);
    ``uri_regex`` is ``(pattern, substitution)`` applied to the path."""

    uri: str | None = None
    uri_regex: tuple[str, str] | None = None
    authority: str | None = None


@dataclass(frozen=True, slots=True)
class ForwardAction:
    TAG: ClassVar[str] = "forward"
    clusters: tuple[WeightedCluster, ...]
    timeout_ms: int | None = None
    retries: RetryPolicy | None = None
    rewrite: Rewrite | None = None


@dataclass(frozen=True, slots=True)
class RedirectAction:
    TAG: ClassVar[str] = "redirect"
    uri: str | None = None
    authority: str | None = None
    port: int | None = None
    scheme: str | None = None
    status: int = 301


@dataclass(frozen=True, slots=True)
class DirectResponseAction:
    TAG: ClassVar[str] = "direct_response"
    status: int
    body: str | None = None


RouteAction = ForwardAction | RedirectAction | DirectResponseAction


@dataclass(frozen=True, slots=True)
class Route:
    """One Istio ``HTTPRoute``. ``matches`` are alternatives (any may hold); none means
    every request."""

    name: str
    matches: tuple[RouteMatch, ...]
    action: RouteAction
    request_headers: HeaderOps = NO_HEADER_OPS
    response_headers: HeaderOps = NO_HEADER_OPS


@dataclass(frozen=True, slots=True)
class VirtualHost:
    """The routes of one service as seen by an outbound proxy. ``domains`` are every Host
    value that selects it (short name in the same namespace, ``name.ns``, ``name.ns.svc``,
    the FQDN; each also with ``:port``). First matching route wins; ``source`` names the
    VirtualService the routes came from (None: the default route to the service)."""

    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]
    source: str | None = None


@dataclass(frozen=True, slots=True)
class TcpRoute:
    """One Istio ``TCPRoute``: ``port`` None matches every port of the service."""

    clusters: tuple[WeightedCluster, ...]
    port: int | None = None


@dataclass(frozen=True, slots=True)
class TcpService:
    """A TCP service reachable through a per-upstream listener of the sidecar."""

    name: str
    port: int
    routes: tuple[TcpRoute, ...]
    source: str | None = None


# --- upstreams ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one instance is reached. ``identity`` is the SPIFFE ID its sidecar presents;
    None means the instance has no sidecar (or is outside the mesh): plaintext."""

    address: str
    port: int
    identity: str | None = None
    weight: int = 1
    instance: str = ""


@dataclass(frozen=True, slots=True)
class ConsistentHash:
    kind: Literal["header", "cookie", "source_ip", "query_param"]
    name: str = ""
    cookie_ttl_ms: int | None = None
    cookie_path: str | None = None
    minimum_ring_size: int = 1024


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    policy: Literal["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "PASSTHROUGH"] = "ROUND_ROBIN"
    consistent_hash: ConsistentHash | None = None


DEFAULT_LB = LoadBalancer()


@dataclass(frozen=True, slots=True)
class Cluster:
    """An upstream: one service port, optionally narrowed to a DestinationRule subset.
    Named as Istio names them: ``outbound|9080|v1|reviews.default.svc.cluster.local``.
    ``tls_mode`` ISTIO_MUTUAL means mesh mTLS, verifying that the server presents one of
    ``expected_identities``; DISABLE means plaintext. ``resolution`` DNS means endpoint
    addresses are host names resolved when connecting."""

    name: str
    service: str
    port: int
    subset: str | None
    protocol: Literal["http", "http2", "grpc", "tcp"]
    endpoints: tuple[Endpoint, ...]
    lb: LoadBalancer = DEFAULT_LB
    tls_mode: Literal["ISTIO_MUTUAL", "DISABLE"] = "ISTIO_MUTUAL"
    expected_identities: tuple[str, ...] = ()
    resolution: Literal["STATIC", "DNS"] = "STATIC"
    connect_timeout_ms: int = 10_000


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    """Everything one proxy may call. Shared by every proxy with the same view (same
    namespace and Sidecar scope), so ``digest`` identifies it; ``allow_any`` is Istio's
    ``outboundTrafficPolicy: ALLOW_ANY`` (unknown hosts pass through)."""

    virtual_hosts: tuple[VirtualHost, ...]
    tcp_services: tuple[TcpService, ...]
    clusters: tuple[Cluster, ...]
    allow_any: bool = True
    digest: str = ""


# --- inbound: what reaches this proxy's app ----------------------------------------------


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """Istio's authorization string syntax, pre-parsed: ``exact`` ("GET"), ``prefix``
    ("/api/*"), ``suffix`` ("*.example.com"), ``any`` ("*": present). For ``source.ip``
    ``kind`` is ``cidr``."""

    kind: Literal["exact", "prefix", "suffix", "any", "cidr"]
    value: str = ""


@dataclass(frozen=True, slots=True)
class Constraint:
    """One attribute test. ``attribute`` is one of ``source.principal``,
    ``source.namespace``, ``source.ip``, ``request.method``, ``request.path``,
    ``request.host``, ``destination.port``, ``request.headers[<name>]``. It holds when the
    value matches any of ``values``; ``negate`` turns it around (Istio's ``notX``)."""

    attribute: str
    values: tuple[ValueMatch, ...]
    negate: bool = False


@dataclass(frozen=True, slots=True)
class AuthzRule:
    """Holds when any of ``sources`` holds (or there are none), any of ``operations``
    holds (or none), and every one of ``conditions``. Each source/operation is a tuple of
    constraints that must all hold."""

    sources: tuple[tuple[Constraint, ...], ...] = ()
    operations: tuple[tuple[Constraint, ...], ...] = ()
    conditions: tuple[Constraint, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthzPolicy:
    """One AuthorizationPolicy that selects this workload. Evaluation (Istio's order): any
    DENY policy whose rule holds denies; then, if any ALLOW policy exists, some ALLOW rule
    must hold. An ALLOW policy with no rules allows nothing."""

    name: str
    action: Literal["ALLOW", "DENY", "AUDIT"]
    rules: tuple[AuthzRule, ...]


@dataclass(frozen=True, slots=True)
class InboundConfig:
    """``port`` is where the sidecar accepts peers; ``app_port`` where the app listens on
    127.0.0.1. ``mtls_mode`` comes from PeerAuthentication (mesh, namespace, workload;
    the most specific wins), ``port_mtls`` from its ``portLevelMtls``."""

    port: int
    app_port: int
    protocol: Literal["http", "http2", "grpc", "tcp"]
    mtls_mode: Literal["STRICT", "PERMISSIVE", "DISABLE"] = "STRICT"
    port_mtls: tuple[tuple[int, Literal["STRICT", "PERMISSIVE", "DISABLE"]], ...] = ()
    authz: tuple[AuthzPolicy, ...] = ()


# --- the whole snapshot ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeshSettings:
    trust_domain: str = "cluster.local"
    domain_suffix: str = "cluster.local"
    retry_budget_percent: float = 20.0
    retry_budget_min_concurrency: int = 3


@dataclass(frozen=True, slots=True)
class ProxySnapshot:
    """One sidecar's whole configuration. ``version`` is a content hash: equal versions
    mean equal configuration. ``trust_roots`` are the PEM roots the proxy must trust
    (several during a root rotation) and ``trust_bundle`` their digest; they travel in
    the snapshot so that an ACK means the proxy holds them."""

    proxy_id: str
    version: str
    service: str
    namespace: str
    identity: str
    inbound: InboundConfig
    outbound: OutboundConfig
    trust_bundle: str = ""
    trust_roots: tuple[str, ...] = ()
    mesh: MeshSettings = field(default_factory=MeshSettings)
    schema: int = SCHEMA_VERSION
