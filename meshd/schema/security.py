"""``security.istio.io/v1``: PeerAuthentication, AuthorizationPolicy, RequestAuthentication.

Conventions as in :mod:`meshd.schema.networking`. Each spec defaults to an empty one,
as Istio allows ``spec: {}`` (and an AuthorizationPolicy with an empty spec allows
nothing: with ALLOW semantics and no rules, no request matches).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from meshd.schema.base import Duration, unsupported
from meshd.schema.networking import (
    IstioMessage,
    IstioResource,
    PortKey,
    TypeWorkloadSelector,
    enum_field,
    noted,
)

WorkloadSelector = TypeWorkloadSelector
"""Istio's ``istio.type.v1beta1.WorkloadSelector`` (``matchLabels``), as the security kinds
name it."""

_TARGET_REF = (
    "targetRef selects Kubernetes Gateway API objects, which meshd does not have; use selector"
)
_JWT = "JWT authentication is not implemented yet"

# --- PeerAuthentication ---------------------------------------------------------------------


class MutualTLS(IstioMessage):
    """Mutual TLS settings of a workload's inbound connections."""

    mode: Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"] | None = None
    """UNSET inherits from the namespace or mesh (PERMISSIVE if none); DISABLE accepts
    plaintext only; PERMISSIVE accepts plaintext and mTLS; STRICT requires mTLS."""


class PeerAuthenticationSpec(IstioMessage):
    """Which connections a workload accepts: mutual TLS required, optional or off. A policy
    in the root namespace without a selector applies to the whole mesh, one without a
    selector to its namespace, one with a selector to the selected workloads."""

    selector: TypeWorkloadSelector | None = None
    """Workloads (in the policy's namespace) the policy applies to; none means all of them."""
    mtls: MutualTLS | None = None
    """Mutual TLS settings (default: inherit)."""
    port_level_mtls: dict[PortKey, MutualTLS] = noted(
        "needs a selector, as in Istio", default_factory=dict
    )
    """Mutual TLS settings of individual workload ports (only with a selector)."""


class PeerAuthentication(IstioResource[PeerAuthenticationSpec]):
    """Mutual TLS requirements for incoming connections."""

    group: ClassVar[str] = "security.istio.io"
    versions: ClassVar[tuple[str, ...]] = ("v1", "v1beta1")
    kind: Literal["PeerAuthentication"]
    spec: PeerAuthenticationSpec = Field(default_factory=PeerAuthenticationSpec)


# --- AuthorizationPolicy --------------------------------------------------------------------


class PolicyTargetReference(IstioMessage):
    """A reference to a Kubernetes object a policy attaches to (Istio's
    ``istio.type.v1beta1.PolicyTargetReference``)."""

    group: str | None = None
    """The API group of the target."""
    kind: str
    """The kind of the target."""
    name: str
    """The name of the target."""
    namespace: str | None = None
    """The namespace of the target (must be the policy's)."""


class Source(IstioMessage):
    """Who sends the request: all set fields must match (each one matches if any of its
    values does; ``notX`` fields match if none does)."""

    principals: list[str] = Field(default_factory=list)
    """Peer identities (``<trust-domain>/ns/<namespace>/sa/<service-account>``) from mTLS."""
    not_principals: list[str] = Field(default_factory=list)
    """Negative match of peer identities."""
    request_principals: list[str] | None = unsupported(_JWT)
    """Request identities (``<iss>/<sub>``) from the JWT."""
    not_request_principals: list[str] | None = unsupported(_JWT)
    """Negative match of request identities."""
    namespaces: list[str] = Field(default_factory=list)
    """Namespaces of the peer (from its mTLS identity)."""
    not_namespaces: list[str] = Field(default_factory=list)
    """Negative match of namespaces."""
    service_accounts: list[str] = Field(default_factory=list)
    """Service accounts of the peer, ``<namespace>/<name>`` (or ``<name>`` in the policy's
    namespace), from its mTLS identity."""
    not_service_accounts: list[str] = Field(default_factory=list)
    """Negative match of service accounts."""
    ip_blocks: list[str] = Field(default_factory=list)
    """Source IP addresses or CIDR blocks (of the connection)."""
    not_ip_blocks: list[str] = Field(default_factory=list)
    """Negative match of source IP blocks."""
    remote_ip_blocks: list[str] | None = unsupported(
        "meshd has no gateways or trusted proxies, so the remote IP is the source IP; use ipBlocks"
    )
    """Original client IPs (from X-Forwarded-For or the PROXY protocol)."""
    not_remote_ip_blocks: list[str] | None = unsupported(
        "meshd has no gateways or trusted proxies, so the remote IP is the source IP; "
        "use notIpBlocks"
    )
    """Negative match of original client IPs."""


class Operation(IstioMessage):
    """What the request does: all set fields must match (each one matches if any of its
    values does; ``notX`` fields match if none does)."""

    hosts: list[str] = Field(default_factory=list)
    """Hosts (Host header), with ``*`` allowed at the start or end."""
    not_hosts: list[str] = Field(default_factory=list)
    """Negative match of hosts."""
    ports: list[str] = Field(default_factory=list)
    """Destination ports of the connection."""
    not_ports: list[str] = Field(default_factory=list)
    """Negative match of ports."""
    methods: list[str] = Field(default_factory=list)
    """HTTP methods (gRPC requests are always POST)."""
    not_methods: list[str] = Field(default_factory=list)
    """Negative match of methods."""
    paths: list[str] = Field(default_factory=list)
    """Request paths, with ``*`` allowed at the start or end."""
    not_paths: list[str] = Field(default_factory=list)
    """Negative match of paths."""


class From(IstioMessage):
    """A source of requests (Istio's ``Rule.From``)."""

    source: Source | None = None
    """The source the rule matches."""


class To(IstioMessage):
    """An operation on the workload (Istio's ``Rule.To``)."""

    operation: Operation | None = None
    """The operation the rule matches."""


class Condition(IstioMessage):
    """An extra condition on a request attribute."""

    key: str = noted(
        "`request.headers[<name>]`, `source.ip`, `source.namespace`, `source.principal`, "
        "`destination.port`"
    )
    """The attribute, e.g. ``request.headers[version]`` or ``source.ip``."""
    values: list[str] = Field(default_factory=list)
    """Values the attribute may have (any of them)."""
    not_values: list[str] = Field(default_factory=list)
    """Values the attribute may not have."""


class Rule(IstioMessage):
    """Matches requests from a list of sources doing a list of operations, subject to a
    list of conditions: any source, any operation and every condition."""

    from_: list[From] = Field(default_factory=list, alias="from")
    """Sources of the request (none: any source)."""
    to: list[To] = Field(default_factory=list)
    """Operations of the request (none: any operation)."""
    when: list[Condition] = Field(default_factory=list)
    """Extra conditions, all of which must hold."""


class ExtensionProvider(IstioMessage):
    """An external authorizer (Istio's ``AuthorizationPolicy.ExtensionProvider``)."""

    name: str | None = None
    """Name of the provider in the mesh configuration."""


class AuthorizationPolicySpec(IstioMessage):
    """Access control for workloads. DENY policies are evaluated first; then, if any ALLOW
    policy selects the workload, a request must match one of their rules. A policy with
    no rules matches nothing, so an ALLOW policy without rules denies every request."""

    selector: TypeWorkloadSelector | None = None
    """Workloads (in the policy's namespace) the policy applies to; none means all of them
    (and the whole mesh for a policy in the root namespace)."""
    target_ref: PolicyTargetReference | None = unsupported(_TARGET_REF)
    """A Kubernetes Gateway API object the policy attaches to."""
    target_refs: list[PolicyTargetReference] | None = unsupported(_TARGET_REF)
    """Kubernetes Gateway API objects the policy attaches to."""
    rules: list[Rule] = Field(default_factory=list)
    """Rules that match requests (any of them)."""
    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] | None = enum_field(
        {"CUSTOM": "external authorization is not implemented yet"}
    )
    """What a match means: ALLOW (default), DENY, AUDIT (log only) or CUSTOM."""
    provider: ExtensionProvider | None = unsupported(
        "external authorization is not implemented yet"
    )
    """The external authorizer of a CUSTOM policy."""


class AuthorizationPolicy(IstioResource[AuthorizationPolicySpec]):
    """Access control for workloads."""

    group: ClassVar[str] = "security.istio.io"
    versions: ClassVar[tuple[str, ...]] = ("v1", "v1beta1")
    kind: Literal["AuthorizationPolicy"]
    spec: AuthorizationPolicySpec = Field(default_factory=AuthorizationPolicySpec)


# --- RequestAuthentication ------------------------------------------------------------------


class JWTHeader(IstioMessage):
    """A header a JWT is read from."""

    name: str
    """The header name."""
    prefix: str | None = None
    """A prefix stripped before decoding the token (e.g. ``Bearer``)."""


class ClaimToHeader(IstioMessage):
    """Copy a claim of a verified JWT into a request header."""

    header: str
    """Name of the header to create."""
    claim: str
    """Name of the claim to copy."""


class JWTRule(IstioMessage):
    """How to verify the JWTs of one issuer."""

    issuer: str | None = None
    """The issuer of the JWT."""
    audiences: list[str] | None = None
    """Audiences allowed to access."""
    jwks_uri: str | None = None
    """URL of the issuer's public key set."""
    jwks_uri_proto: str | None = Field(default=None, alias="jwks_uri")
    """URL of the issuer's public key set (the proto's original JSON name)."""
    jwks: str | None = None
    """The issuer's public key set (JWKS), inline."""
    from_headers: list[JWTHeader] | None = None
    """Headers the JWT is read from (default: ``Authorization: Bearer``)."""
    from_params: list[str] | None = None
    """Query parameters the JWT is read from."""
    from_cookies: list[str] | None = None
    """Cookies the JWT is read from."""
    output_payload_to_header: str | None = None
    """Header the verified payload is written to."""
    output_claim_to_headers: list[ClaimToHeader] | None = None
    """Claims copied into headers."""
    forward_original_token: bool | None = None
    """Keep the token in the request forwarded upstream."""
    space_delimited_claims: list[str] | None = None
    """Claims treated as space-delimited strings."""
    timeout: Duration | None = None
    """Timeout of fetching the JWKS."""


class RequestAuthenticationSpec(IstioMessage):
    """Which request credentials (JWTs) a workload accepts."""

    selector: TypeWorkloadSelector | None = None
    """Workloads (in the policy's namespace) the policy applies to; none means all of them."""
    target_ref: PolicyTargetReference | None = unsupported(_TARGET_REF)
    """A Kubernetes Gateway API object the policy attaches to."""
    target_refs: list[PolicyTargetReference] | None = unsupported(_TARGET_REF)
    """Kubernetes Gateway API objects the policy attaches to."""
    jwt_rules: list[JWTRule] | None = unsupported(_JWT)
    """JWT issuers whose tokens the workload accepts."""


class RequestAuthentication(IstioResource[RequestAuthenticationSpec]):
    """Request authentication (JWT) for workloads."""

    group: ClassVar[str] = "security.istio.io"
    versions: ClassVar[tuple[str, ...]] = ("v1", "v1beta1")
    kind: Literal["RequestAuthentication"]
    spec: RequestAuthenticationSpec = Field(default_factory=RequestAuthenticationSpec)
