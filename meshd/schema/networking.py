"""``networking.istio.io/v1``: VirtualService, DestinationRule, ServiceEntry, Sidecar.

Every field of Istio's v1 API is modelled, with Istio's message names as class names
and Istio's one-line meaning as each field's docstring (the generated reference in
``docs/reference/resources.md`` is built from them). A field meshd does not enforce is
declared with :func:`~meshd.schema.base.unsupported`; an enum value it does not
enforce is listed with :func:`enum_field`. Semantic rules that need more than one
field live in :mod:`meshd.schema.validate`.

This module also holds the pieces the security kinds share (:class:`IstioResource`,
:class:`IstioMessage`, :class:`TypeWorkloadSelector`), so that the dependency runs
one way: ``security`` imports ``networking``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Generic, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from meshd.schema.base import Duration, Resource, SpecT, StrictModel, unsupported

UNSUPPORTED_VALUES_KEY = "x-meshd-unsupported-values"
NOTE_KEY = "x-meshd-note"

# --- shared building blocks ----------------------------------------------------------------


class IstioMessage(StrictModel):
    """Base of every Istio message. Strict: a string where Kubernetes expects an integer
    (``weight: "80"``) or a boolean (``ignoreUriCase: "yes"``) is an error, as it is for
    the Kubernetes API server, instead of being coerced."""

    model_config = ConfigDict(strict=True, use_attribute_docstrings=True)


class IstioResource(Resource[SpecT], Generic[SpecT]):
    """An Istio resource. ``apiVersion`` must name the kind's group and one of its
    ``versions``; it is stored as the first of them (``v1``), so ``v1beta1`` and
    ``v1alpha3`` documents are accepted as aliases and read back as ``v1``."""

    model_config = ConfigDict(strict=True)

    group: ClassVar[str]
    versions: ClassVar[tuple[str, ...]]

    @field_validator("api_version")
    @classmethod
    def _stored_version(cls, value: str) -> str:
        group, _, version = value.partition("/")
        if group != cls.group or version not in cls.versions:
            stored = f"{cls.group}/{cls.versions[0]}"
            aliases = ", ".join(cls.versions[1:])
            raise ValueError(
                f"apiVersion {value!r} is not served for this kind: use {stored}"
                + (f" ({aliases} also accepted)" if aliases else "")
            )
        return f"{cls.group}/{cls.versions[0]}"


def enum_field(unsupported_values: Mapping[str, str], note: str | None = None) -> Any:
    """An optional enum field some of whose values meshd does not implement; applying one
    of them is rejected with the field path and the reason given here."""
    extra: dict[str, Any] = {UNSUPPORTED_VALUES_KEY: dict(unsupported_values)}
    if note is not None:
        extra[NOTE_KEY] = note
    return Field(default=None, json_schema_extra=extra)


def noted(note: str, **kwargs: Any) -> Any:
    """A supported field with a restriction worth stating in the reference."""
    return Field(json_schema_extra={NOTE_KEY: note}, **kwargs)


def unsupported_values(model: type[BaseModel], name: str) -> Mapping[str, str]:
    extra = model.model_fields[name].json_schema_extra
    if isinstance(extra, dict):
        values = extra.get(UNSUPPORTED_VALUES_KEY)
        if isinstance(values, dict):
            return {str(k): str(v) for k, v in values.items()}
    return {}


def field_note(model: type[BaseModel], name: str) -> str | None:
    extra = model.model_fields[name].json_schema_extra
    if isinstance(extra, dict):
        note = extra.get(NOTE_KEY)
        if isinstance(note, str):
            return note
    return None


# Istio regexes are RE2, which has neither lookaround nor backreferences. Python's `re`
# has both, and a sidecar matching untrusted paths against them could backtrack badly.
_NOT_RE2 = re.compile(r"\(\?[=!]|\(\?<[=!]|\(\?P=|\(\?\(|\\[1-9]")


def check_regex(text: str) -> str:
    """``text`` if it is a valid RE2-style regular expression; ValueError saying why not."""
    if _NOT_RE2.search(text):
        raise ValueError(
            f"invalid regular expression {text!r}: lookaround, backreferences and "
            "conditionals are not allowed (Istio regexes use RE2 syntax)"
        )
    try:
        re.compile(text)
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        raise ValueError(f"invalid regular expression {text!r}: {exc}") from None
    return text


def _port_key(value: object) -> object:
    # JSON object keys are strings; a port-keyed map arrives as {"8080": ...}.
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return value


Regex = Annotated[str, AfterValidator(check_regex)]
"""A regular expression in RE2 syntax (checked with Python ``re``)."""
PortNumber = Annotated[int, Field(ge=1, le=65535)]
PortKey = Annotated[int, BeforeValidator(_port_key), Field(ge=1, le=65535)]
UInt32 = Annotated[int, Field(ge=0, le=4294967295)]
Int32 = Annotated[int, Field(ge=-2147483648, le=2147483647)]
NonNegInt32 = Annotated[int, Field(ge=0, le=2147483647)]


class TypeWorkloadSelector(IstioMessage):
    """Selects the workloads a policy applies to by their labels (Istio's
    ``istio.type.v1beta1.WorkloadSelector``)."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    """Labels a workload must carry (all of them) to be selected."""


class WorkloadSelector(IstioMessage):
    """Selects workloads by their labels (Istio's ``networking.v1alpha3.WorkloadSelector``)."""

    labels: dict[str, str] = Field(default_factory=dict)
    """Labels a workload must carry (all of them) to be selected."""


class PortSelector(IstioMessage):
    """Selects a port of a service."""

    number: PortNumber
    """A valid port number."""


class Percent(IstioMessage):
    """A percentage in the range 0.0 to 100.0."""

    value: float
    """The percentage."""


class Destination(IstioMessage):
    """The service (and optionally subset and port) a request or connection is sent to."""

    host: str
    """The name of a service from the service registry (a short name is resolved in the
    rule's namespace)."""
    subset: str | None = None
    """The name of a subset of the service, defined by a DestinationRule."""
    port: PortSelector | None = None
    """The port of the service; required only when the service exposes several ports."""


# --- VirtualService ------------------------------------------------------------------------


class StringMatch(IstioMessage):
    """How to match a string: exactly, by prefix, or by an RE2 regex (one of them)."""

    exact: str | None = None
    """Exact string match."""
    prefix: str | None = None
    """Prefix-based match."""
    regex: Regex | None = None
    """RE2-style regex-based match (the whole value must match)."""

    @model_validator(mode="after")
    def _at_most_one(self) -> StringMatch:
        chosen = [n for n in ("exact", "prefix", "regex") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError(
                "set only one of 'exact', 'prefix' or 'regex' "
                f"(found {', '.join(repr(n) for n in chosen)})"
            )
        return self


class HeaderOperations(IstioMessage):
    """Header manipulation: set, add or remove headers."""

    set: dict[str, str] = Field(default_factory=dict)
    """Overwrite the headers named by the keys with the given values."""
    add: dict[str, str] = Field(default_factory=dict)
    """Append the given values to the headers named by the keys."""
    remove: list[str] = Field(default_factory=list)
    """Remove the named headers."""


class Headers(IstioMessage):
    """Message headers and the manipulations applied to them."""

    request: HeaderOperations | None = None
    """Header manipulation rules to apply before forwarding a request to the destination."""
    response: HeaderOperations | None = None
    """Header manipulation rules to apply before returning a response to the caller."""


class HTTPMatchRequest(IstioMessage):
    """Conditions on a request, all of which must hold for the rule to apply."""

    name: str | None = None
    """The name assigned to a match; concatenated with the route's name in logs."""
    uri: StringMatch | None = None
    """URI (path) to match."""
    scheme: StringMatch | None = None
    """URI scheme to match."""
    method: StringMatch | None = None
    """HTTP method to match."""
    authority: StringMatch | None = None
    """HTTP authority (Host) to match."""
    headers: dict[str, StringMatch] = Field(default_factory=dict)
    """Headers to match (lowercase names); an empty match (``{}``) checks only presence."""
    port: PortNumber | None = None
    """The port of the addressed host this match applies to."""
    source_labels: dict[str, str] | None = unsupported(
        "matching on the caller's labels is not implemented yet"
    )
    """Labels the calling workload must carry for the rule to apply."""
    gateways: list[str] | None = unsupported("meshd has no gateways")
    """Names of gateways where the rule should be applied."""
    query_params: dict[str, StringMatch] = Field(default_factory=dict)
    """Query parameters to match; an empty match checks only presence."""
    ignore_uri_case: bool | None = None
    """Whether the URI match is case-insensitive (exact and prefix matches only)."""
    without_headers: dict[str, StringMatch] = Field(default_factory=dict)
    """Headers that must NOT match (same syntax as ``headers``)."""
    source_namespace: str | None = unsupported(
        "matching on the caller's namespace is not implemented yet"
    )
    """Namespace the calling workload must run in for the rule to apply."""
    stat_prefix: str | None = unsupported("per-route statistics prefixes are not implemented yet")
    """The human readable prefix to use when emitting statistics for this route."""


class HTTPRouteDestination(IstioMessage):
    """One weighted destination of an HTTP route."""

    destination: Destination
    """Where the request is forwarded."""
    weight: NonNegInt32 | None = None
    """The share of traffic (out of 100) sent to this destination."""
    headers: Headers | None = None
    """Header manipulation applied when this destination is chosen."""


class RouteDestination(IstioMessage):
    """One weighted destination of a TCP or TLS route."""

    destination: Destination
    """Where the connection is forwarded."""
    weight: NonNegInt32 | None = None
    """The share of connections (out of 100) sent to this destination."""


class HTTPRedirect(IstioMessage):
    """Answer with a redirect instead of forwarding the request."""

    uri: str | None = None
    """Replace the path of the URL with this value."""
    authority: str | None = None
    """Replace the authority (host) of the URL with this value."""
    port: PortNumber | None = None
    """Replace the port of the URL with this value."""
    derive_port: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None = unsupported(
        "deriving the redirect port is not implemented yet; set 'port'"
    )
    """Set the port dynamically: the protocol's default or the request's port."""
    scheme: str | None = None
    """Replace the scheme of the URL with this value (``http`` or ``https``)."""
    redirect_code: int | None = None
    """The HTTP status of the redirect response (a 3xx; default 301)."""

    @model_validator(mode="after")
    def _one_port(self) -> HTTPRedirect:
        if self.port is not None and self.derive_port is not None:
            raise ValueError("set only one of 'port' or 'derivePort'")
        return self


class HTTPBody(IstioMessage):
    """The body of a direct response: text or base64-encoded bytes (one of them)."""

    string: str | None = None
    """Response body as a string."""
    bytes: str | None = None
    """Response body as base64-encoded bytes."""

    @model_validator(mode="after")
    def _exactly_one(self) -> HTTPBody:
        if (self.string is None) == (self.bytes is None):
            raise ValueError("set exactly one of 'string' or 'bytes'")
        if self.bytes is not None:
            try:
                base64.b64decode(self.bytes, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("'bytes' must be base64-encoded") from None
        return self


class HTTPDirectResponse(IstioMessage):
    """Answer with a fixed response instead of forwarding the request."""

    status: int
    """The HTTP status of the response."""
    body: HTTPBody | None = None
    """The body of the response."""


class Delegate(IstioMessage):
    """A VirtualService whose routes are used in place of this route's."""

    name: str | None = None
    """Name of the delegate VirtualService."""
    namespace: str | None = None
    """Namespace of the delegate VirtualService (default: this rule's)."""


class RegexRewrite(IstioMessage):
    """Rewrite the path with a regex and a substitution."""

    match: Regex
    """RE2-style regex matched against the path."""
    rewrite: str
    """The replacement for the matched portions (``\\1`` refers to capture groups)."""


class HTTPRewrite(IstioMessage):
    """Rewrite the request's path or authority before forwarding it."""

    uri: str | None = None
    """Replace the matched path (or prefix) with this value."""
    authority: str | None = None
    """Replace the authority (Host header) with this value."""
    uri_regex_rewrite: RegexRewrite | None = None
    """Rewrite the path with a regex."""


class HTTPRetry(IstioMessage):
    """How often and when a failed request is retried."""

    attempts: Int32 | None = None
    """Number of retries for a request (0 disables retries)."""
    per_try_timeout: Duration | None = None
    """Timeout of each attempt, the first one included."""
    retry_on: str | None = noted(
        "conditions meshd implements: `5xx`, `gateway-error`, `connect-failure`, `reset`, "
        "`retriable-4xx`, `refused-stream`, `retriable-status-codes` and status codes",
        default=None,
    )
    """Comma-separated conditions under which to retry (Envoy's names or HTTP status codes)."""
    retry_remote_localities: bool | None = unsupported("meshd has no localities")
    """Whether retries may go to endpoints in other localities."""
    retry_ignore_previous_hosts: bool | None = unsupported(
        "choosing retry hosts is not configurable yet"
    )
    """Whether retries avoid the hosts already tried."""
    backoff: Duration | None = unsupported("retry backoff is not configurable yet")
    """Minimum time between retry attempts."""


class FaultDelay(IstioMessage):
    """Delay requests before forwarding them (Istio's ``HTTPFaultInjection.Delay``)."""

    fixed_delay: Duration | None = None
    """Add a fixed delay before forwarding the request."""
    exponential_delay: Duration | None = None
    """Add an exponentially distributed delay with this mean."""
    percentage: Percent | None = None
    """Percentage of requests to delay."""
    percent: int | None = None
    """Percentage of requests to delay (0-100; deprecated, use ``percentage``)."""


class FaultAbort(IstioMessage):
    """Abort requests with an error (Istio's ``HTTPFaultInjection.Abort``)."""

    http_status: int | None = None
    """HTTP status code to abort the request with."""
    grpc_status: str | None = None
    """gRPC status code to abort the request with."""
    http2_error: str | None = None
    """HTTP/2 error to abort the request with."""
    percentage: Percent | None = None
    """Percentage of requests to abort."""


class HTTPFaultInjection(IstioMessage):
    """Faults injected into requests, to test the resilience of callers."""

    delay: FaultDelay | None = None
    """Delay requests before forwarding them."""
    abort: FaultAbort | None = None
    """Abort requests and answer with an error."""


class HTTPMirrorPolicy(IstioMessage):
    """Send a copy of the traffic to another destination."""

    destination: Destination
    """The target of the copies."""
    percentage: Percent | None = None
    """Percentage of the traffic to copy (default 100)."""


class CorsPolicy(IstioMessage):
    """Cross-Origin Resource Sharing policy."""

    allow_origins: list[StringMatch] | None = None
    """Origins allowed to make requests."""
    allow_origin: list[str] | None = None
    """Origins allowed to make requests (deprecated, use ``allowOrigins``)."""
    allow_methods: list[str] | None = None
    """HTTP methods allowed to access the resource."""
    allow_headers: list[str] | None = None
    """HTTP headers that can be used when requesting the resource."""
    expose_headers: list[str] | None = None
    """HTTP headers the browsers are allowed to access."""
    max_age: Duration | None = None
    """How long the results of a preflight request can be cached."""
    allow_credentials: bool | None = None
    """Whether the caller may send the actual request with credentials."""
    unmatched_preflights: Literal["UNSPECIFIED", "FORWARD", "IGNORE"] | None = None
    """Whether preflight requests from disallowed origins are forwarded upstream."""


class HTTPRoute(IstioMessage):
    """Match conditions and actions for routing HTTP/1.1, HTTP/2 and gRPC traffic."""

    name: str | None = None
    """The name of the route, for debugging; logged with the match's name."""
    match: list[HTTPMatchRequest] = Field(default_factory=list)
    """Conditions for the rule to apply: any of them (each one's conditions all hold)."""
    route: list[HTTPRouteDestination] = Field(default_factory=list)
    """Destinations to forward to, with weights; one of ``route``, ``redirect`` or
    ``directResponse``."""
    redirect: HTTPRedirect | None = None
    """Answer with a redirect."""
    direct_response: HTTPDirectResponse | None = None
    """Answer with a fixed response."""
    delegate: Delegate | None = unsupported("delegate VirtualServices are not implemented yet")
    """Use the routes of another VirtualService."""
    rewrite: HTTPRewrite | None = None
    """Rewrite the path or authority before forwarding."""
    timeout: Duration | None = None
    """Timeout for the whole request, retries included."""
    retries: HTTPRetry | None = None
    """Retry policy."""
    fault: HTTPFaultInjection | None = unsupported("fault injection is not implemented yet")
    """Faults to inject into requests."""
    mirror: Destination | None = unsupported("traffic mirroring is not implemented yet")
    """Send a copy of each request to this destination."""
    mirrors: list[HTTPMirrorPolicy] | None = unsupported("traffic mirroring is not implemented yet")
    """Send copies of requests to these destinations."""
    mirror_percentage: Percent | None = unsupported("traffic mirroring is not implemented yet")
    """Percentage of requests copied to ``mirror``."""
    mirror_percent: UInt32 | None = unsupported("traffic mirroring is not implemented yet")
    """Percentage of requests copied to ``mirror`` (deprecated, use ``mirrorPercentage``)."""
    cors_policy: CorsPolicy | None = unsupported("CORS policies are not implemented yet")
    """Cross-Origin Resource Sharing policy."""
    headers: Headers | None = None
    """Header manipulation rules for requests and responses."""


class L4MatchAttributes(IstioMessage):
    """Conditions on a TCP connection."""

    destination_subnets: list[str] | None = unsupported(
        "matching the destination subnet is not implemented yet"
    )
    """IPv4 or IPv6 destination addresses (with optional prefix length)."""
    port: PortNumber | None = None
    """The port of the addressed host this match applies to."""
    source_labels: dict[str, str] | None = unsupported(
        "matching on the caller's labels is not implemented yet"
    )
    """Labels the calling workload must carry for the rule to apply."""
    gateways: list[str] | None = unsupported("meshd has no gateways")
    """Names of gateways where the rule should be applied."""
    source_namespace: str | None = unsupported(
        "matching on the caller's namespace is not implemented yet"
    )
    """Namespace the calling workload must run in for the rule to apply."""


class TCPRoute(IstioMessage):
    """Match conditions and actions for routing opaque TCP traffic."""

    match: list[L4MatchAttributes] = Field(default_factory=list)
    """Conditions for the rule to apply: any of them."""
    route: list[RouteDestination] = Field(default_factory=list)
    """Destinations to forward the connection to, with weights."""


class TLSMatchAttributes(IstioMessage):
    """Conditions on a TLS connection (by SNI)."""

    sni_hosts: list[str] = Field(default_factory=list)
    """SNI values to match."""
    destination_subnets: list[str] | None = None
    """IPv4 or IPv6 destination addresses (with optional prefix length)."""
    port: PortNumber | None = None
    """The port of the addressed host this match applies to."""
    source_labels: dict[str, str] | None = None
    """Labels the calling workload must carry for the rule to apply."""
    gateways: list[str] | None = None
    """Names of gateways where the rule should be applied."""
    source_namespace: str | None = None
    """Namespace the calling workload must run in for the rule to apply."""


class TLSRoute(IstioMessage):
    """Match conditions and actions for routing unterminated TLS traffic by SNI."""

    match: list[TLSMatchAttributes] = Field(default_factory=list)
    """Conditions for the rule to apply: any of them."""
    route: list[RouteDestination] = Field(default_factory=list)
    """Destinations to forward the connection to, with weights."""


class VirtualServiceSpec(IstioMessage):
    """Traffic routing rules applied when a host is addressed: each rule matches traffic
    of one protocol and sends it to a destination service (or subset of it)."""

    hosts: list[str] = noted("no wildcards yet", default_factory=list)
    """The destination hosts the rules apply to (a short name is resolved in the rule's
    namespace)."""
    gateways: list[str] = noted("only `mesh` (meshd has no gateways)", default_factory=list)
    """Gateways and sidecars that apply these routes; ``mesh`` means every sidecar."""
    http: list[HTTPRoute] = Field(default_factory=list)
    """Ordered route rules for HTTP traffic; the first matching rule is used."""
    tls: list[TLSRoute] | None = unsupported(
        "TLS (SNI) routing is not implemented yet; route the port as TCP"
    )
    """Ordered route rules for unterminated TLS traffic."""
    tcp: list[TCPRoute] = Field(default_factory=list)
    """Ordered route rules for opaque TCP traffic; the first matching rule is used."""
    export_to: list[str] = Field(default_factory=list)
    """Namespaces this VirtualService is visible to: ``.`` its own, ``*`` all (default)."""


class VirtualService(IstioResource[VirtualServiceSpec]):
    """Traffic routing rules for a host."""

    group: ClassVar[str] = "networking.istio.io"
    versions: ClassVar[tuple[str, ...]] = ("v1", "v1beta1", "v1alpha3")
    kind: Literal["VirtualService"]


# --- DestinationRule -----------------------------------------------------------------------


class HTTPCookieAttribute(IstioMessage):
    """An attribute of a generated cookie (Istio's ``HTTPCookie.Attribute``)."""

    name: str
    """The name of the cookie attribute."""
    value: str | None = None
    """The value of the cookie attribute."""


class HTTPCookie(IstioMessage):
    """A cookie used as the hash key of consistent-hash load balancing."""

    name: str
    """Name of the cookie."""
    path: str | None = None
    """Path to set for the cookie."""
    ttl: Duration | None = None
    """Lifetime of the cookie; if set, the cookie is generated when absent (0s: a session
    cookie)."""
    attributes: list[HTTPCookieAttribute] | None = unsupported(
        "cookie attributes are not implemented yet"
    )
    """Additional attributes of the generated cookie."""


class RingHash(IstioMessage):
    """Ring (modulo) hash settings."""

    minimum_ring_size: UInt32 | None = None
    """The minimum number of virtual nodes on the hash ring (default 1024)."""


class MagLev(IstioMessage):
    """Maglev hash settings."""

    table_size: UInt32 | None = None
    """The table size for Maglev hashing (a prime; default 65537)."""


class ConsistentHashLB(IstioMessage):
    """Consistent-hash load balancing: soft session affinity keyed by a header, a cookie,
    the source IP or a query parameter (exactly one)."""

    http_header_name: str | None = None
    """Hash on the value of this HTTP header."""
    http_cookie: HTTPCookie | None = None
    """Hash on this HTTP cookie."""
    use_source_ip: bool | None = None
    """Hash on the source IP address."""
    http_query_parameter_name: str | None = None
    """Hash on the value of this query parameter."""
    ring_hash: RingHash | None = unsupported(
        "choosing the hash algorithm is not implemented; meshd uses a ring hash sized by "
        "'minimumRingSize'"
    )
    """Use the ring (modulo) hash algorithm."""
    maglev: MagLev | None = unsupported("Maglev hashing is not implemented yet")
    """Use the Maglev hash algorithm."""
    minimum_ring_size: UInt32 | None = None
    """The minimum number of virtual nodes on the hash ring (default 1024; Istio deprecates
    it in favour of ``ringHash``)."""

    @model_validator(mode="after")
    def _one_key(self) -> ConsistentHashLB:
        chosen = [
            alias
            for alias, value in (
                ("httpHeaderName", self.http_header_name),
                ("httpCookie", self.http_cookie),
                ("useSourceIp", self.use_source_ip or None),
                ("httpQueryParameterName", self.http_query_parameter_name),
            )
            if value is not None
        ]
        if len(chosen) != 1:
            raise ValueError(
                "set exactly one hash key: 'httpHeaderName', 'httpCookie', "
                "'useSourceIp: true' or 'httpQueryParameterName'"
                + (f" (found {', '.join(repr(c) for c in chosen)})" if chosen else "")
            )
        if self.ring_hash is not None and self.maglev is not None:
            raise ValueError("set only one of 'ringHash' or 'maglev'")
        return self


class Distribute(IstioMessage):
    """How traffic from one locality is spread over others
    (Istio's ``LocalityLoadBalancerSetting.Distribute``)."""

    from_: str | None = Field(default=None, alias="from")
    """Originating locality, ``region/zone/sub_zone``."""
    to: dict[str, UInt32] | None = None
    """Upstream localities and the share of traffic each gets (summing to 100)."""


class Failover(IstioMessage):
    """Where traffic fails over to when a region is unhealthy
    (Istio's ``LocalityLoadBalancerSetting.Failover``)."""

    from_: str | None = Field(default=None, alias="from")
    """Originating region."""
    to: str | None = None
    """Destination region."""


class LocalityLoadBalancerSetting(IstioMessage):
    """Locality-weighted load balancing."""

    distribute: list[Distribute] | None = None
    """Explicit weights across localities."""
    failover: list[Failover] | None = None
    """Regions traffic fails over to."""
    failover_priority: list[str] | None = None
    """Ordered labels used to sort endpoints for priority-based failover."""
    enabled: bool | None = None
    """Enable locality load balancing."""


class WarmupConfiguration(IstioMessage):
    """Slow start: new endpoints get progressively more traffic."""

    duration: Duration
    """How long a new endpoint stays in warmup."""
    minimum_percent: float | None = None
    """Traffic share a new endpoint starts with."""
    aggression: float | None = None
    """How fast traffic grows over the warmup."""


class LoadBalancerSettings(IstioMessage):
    """Load balancing policy: a simple algorithm or consistent hashing (one of them)."""

    simple: (
        Literal[
            "UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"
        ]
        | None
    ) = noted("`LEAST_CONN` is Istio's deprecated name of `LEAST_REQUEST`", default=None)
    """A standard load balancing algorithm that needs no tuning."""
    consistent_hash: ConsistentHashLB | None = None
    """Consistent-hash load balancing (session affinity)."""
    locality_lb_setting: LocalityLoadBalancerSetting | None = unsupported(
        "locality load balancing is not implemented; meshd has no localities"
    )
    """Locality load balancer settings (replaces the mesh-wide ones)."""
    warmup_duration_secs: Duration | None = unsupported("slow start is not implemented yet")
    """Warmup duration of new endpoints (deprecated, use ``warmup``)."""
    warmup: WarmupConfiguration | None = unsupported("slow start is not implemented yet")
    """Warmup (slow start) of new endpoints."""

    @model_validator(mode="after")
    def _one_policy(self) -> LoadBalancerSettings:
        if self.simple is not None and self.consistent_hash is not None:
            raise ValueError("set only one of 'simple' or 'consistentHash'")
        return self


class TcpKeepalive(IstioMessage):
    """TCP keepalive settings (Istio's ``TCPSettings.TcpKeepalive``)."""

    probes: UInt32 | None = None
    """Unanswered probes before the connection is considered dead."""
    time: Duration | None = None
    """Idle time before the first probe."""
    interval: Duration | None = None
    """Time between probes."""


class TCPSettings(IstioMessage):
    """Connection pool settings common to HTTP and TCP upstreams."""

    max_connections: Int32 | None = None
    """Maximum number of HTTP/1 or TCP connections to a destination host."""
    connect_timeout: Duration | None = None
    """TCP connection timeout."""
    tcp_keepalive: TcpKeepalive | None = None
    """Enable TCP keepalives with these settings."""
    max_connection_duration: Duration | None = None
    """Maximum lifetime of a connection."""
    idle_timeout: Duration | None = None
    """Idle timeout of TCP connections."""


class HTTPSettings(IstioMessage):
    """Connection pool settings of HTTP/1.1, HTTP/2 and gRPC upstreams."""

    http1_max_pending_requests: Int32 | None = None
    """Maximum number of requests queued while waiting for a connection."""
    http2_max_requests: Int32 | None = None
    """Maximum number of active requests to a destination."""
    max_requests_per_connection: Int32 | None = None
    """Maximum number of requests per connection (1 disables keepalive)."""
    max_retries: Int32 | None = None
    """Maximum number of outstanding retries to all hosts of a cluster."""
    idle_timeout: Duration | None = None
    """Idle timeout of upstream connections."""
    h2_upgrade_policy: Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"] | None = None
    """Whether HTTP/1.1 connections are upgraded to HTTP/2."""
    use_client_protocol: bool | None = None
    """Keep the client's protocol when connecting upstream."""
    max_concurrent_streams: Int32 | None = None
    """Maximum number of concurrent streams on one HTTP/2 connection."""


class ConnectionPoolSettings(IstioMessage):
    """Limits on the connections and requests to each upstream host."""

    tcp: TCPSettings | None = None
    """Settings common to HTTP and TCP upstream connections."""
    http: HTTPSettings | None = None
    """HTTP connection pool settings."""


class OutlierDetection(IstioMessage):
    """Circuit breaking: eject hosts that keep failing from the load balancing pool."""

    consecutive_errors: Int32 | None = None
    """Errors before a host is ejected (deprecated)."""
    split_external_local_origin_errors: bool | None = None
    """Count locally originated failures separately from upstream errors."""
    consecutive_local_origin_failures: UInt32 | None = None
    """Consecutive locally originated failures before ejection."""
    consecutive_gateway_errors: UInt32 | None = None
    """Consecutive gateway errors (502, 503, 504) before ejection."""
    consecutive_5xx_errors: UInt32 | None = Field(default=None, alias="consecutive5xxErrors")
    """Consecutive 5xx errors before ejection."""
    interval: Duration | None = None
    """Time between ejection sweeps."""
    base_ejection_time: Duration | None = None
    """Minimum ejection duration."""
    max_ejection_percent: Int32 | None = None
    """Maximum percentage of hosts that can be ejected."""
    min_health_percent: Int32 | None = None
    """Outlier detection is active only while this percentage of hosts is healthy."""


_TLS_FILES = "TLS origination (SIMPLE or MUTUAL) is not implemented yet"


class ClientTLSSettings(IstioMessage):
    """TLS settings of connections to the upstream service."""

    mode: Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"] | None = enum_field(
        {
            "SIMPLE": "TLS origination is not implemented yet; meshd speaks mesh mTLS "
            "(ISTIO_MUTUAL) or plaintext (DISABLE)",
            "MUTUAL": "TLS origination with user certificates is not implemented yet; meshd "
            "speaks mesh mTLS (ISTIO_MUTUAL) or plaintext (DISABLE)",
        }
    )
    """Whether and how connections to the upstream are secured with TLS."""
    client_certificate: str | None = unsupported(_TLS_FILES)
    """Path of the client certificate (MUTUAL)."""
    private_key: str | None = unsupported(_TLS_FILES)
    """Path of the client's private key (MUTUAL)."""
    ca_certificates: str | None = unsupported(_TLS_FILES)
    """Path of the CA certificates that verify the server's certificate."""
    credential_name: str | None = unsupported(_TLS_FILES)
    """Name of the secret holding the client's certificates."""
    subject_alt_names: list[str] | None = unsupported(_TLS_FILES)
    """Names the server's certificate must carry."""
    sni: str | None = unsupported(_TLS_FILES)
    """SNI to present in the TLS handshake."""
    insecure_skip_verify: bool | None = unsupported(_TLS_FILES)
    """Skip verifying the server's certificate."""
    ca_crl: str | None = unsupported(_TLS_FILES)
    """Path of the certificate revocation list."""


class PortTrafficPolicy(IstioMessage):
    """Traffic policy of one port of the service (Istio's ``TrafficPolicy.PortTrafficPolicy``)."""

    port: PortSelector | None = None
    """The port this policy applies to."""
    load_balancer: LoadBalancerSettings | None = None
    """Load balancing policy."""
    connection_pool: ConnectionPoolSettings | None = None
    """Connection pool limits."""
    outlier_detection: OutlierDetection | None = None
    """Ejection of unhealthy hosts."""
    tls: ClientTLSSettings | None = None
    """TLS settings of upstream connections."""


class TunnelSettings(IstioMessage):
    """Tunnel TCP over HTTP CONNECT or POST (Istio's ``TrafficPolicy.TunnelSettings``)."""

    protocol: str | None = None
    """Tunnel protocol: CONNECT (default) or POST."""
    target_host: str
    """Host the connection is tunneled to."""
    target_port: UInt32
    """Port the connection is tunneled to."""


class ProxyProtocol(IstioMessage):
    """PROXY protocol sent to the upstream (Istio's ``TrafficPolicy.ProxyProtocol``)."""

    version: Literal["V1", "V2"] | None = None
    """The PROXY protocol version."""


class RetryBudget(IstioMessage):
    """Limit on concurrent retries relative to active requests
    (Istio's ``TrafficPolicy.RetryBudget``)."""

    percent: float | None = None
    """Concurrent retries as a percentage of active and pending requests."""
    min_retry_concurrency: UInt32 | None = None
    """Minimum retry concurrency allowed."""


class TrafficPolicy(IstioMessage):
    """Policies for traffic to a destination: load balancing, connection limits, outlier
    detection and TLS."""

    load_balancer: LoadBalancerSettings | None = None
    """Load balancing policy."""
    connection_pool: ConnectionPoolSettings | None = unsupported(
        "connection pool limits are not implemented yet"
    )
    """Limits on the connections and requests to each upstream host."""
    outlier_detection: OutlierDetection | None = unsupported(
        "outlier detection is not implemented yet"
    )
    """Ejection of unhealthy hosts from the load balancing pool."""
    tls: ClientTLSSettings | None = None
    """TLS settings of upstream connections."""
    port_level_settings: list[PortTrafficPolicy] | None = unsupported(
        "per-port traffic policies are not implemented yet"
    )
    """Traffic policies of individual ports (override the ones above)."""
    tunnel: TunnelSettings | None = unsupported("tunneling TCP over HTTP is not implemented")
    """Tunnel TCP connections over HTTP CONNECT or POST."""
    proxy_protocol: ProxyProtocol | None = unsupported(
        "sending the PROXY protocol is not implemented"
    )
    """Send the PROXY protocol to the upstream."""
    retry_budget: RetryBudget | None = unsupported(
        "per-destination retry budgets are not implemented yet; meshd applies its mesh-wide budget"
    )
    """Limit on concurrent retries relative to active requests."""


class Subset(IstioMessage):
    """A named subset of the endpoints of a service (a version, say), selected by labels."""

    name: str
    """Name of the subset, referenced by route destinations."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels an endpoint must carry to belong to the subset."""
    traffic_policy: TrafficPolicy | None = None
    """Traffic policy of the subset (overrides the DestinationRule's)."""


class DestinationRuleSpec(IstioMessage):
    """Policies applied to traffic for a service after routing: load balancing, TLS, and
    the subsets routes can send to."""

    host: str = noted("no wildcards yet")
    """The name of a service from the service registry (a short name is resolved in the
    rule's namespace)."""
    traffic_policy: TrafficPolicy | None = None
    """Traffic policy applied to every subset (unless a subset overrides it)."""
    subsets: list[Subset] = Field(default_factory=list)
    """Named subsets of the service."""
    export_to: list[str] = Field(default_factory=list)
    """Namespaces this rule is visible to: ``.`` its own, ``*`` all (default)."""
    workload_selector: TypeWorkloadSelector | None = unsupported(
        "per-workload DestinationRules are not implemented yet"
    )
    """Apply the rule only to the workloads (in its namespace) with these labels."""


class DestinationRule(IstioResource[DestinationRuleSpec]):
    """Policies for traffic to a service after routing."""

    group: ClassVar[str] = "networking.istio.io"
    versions: ClassVar[tuple[str, ...]] = ("v1", "v1beta1", "v1alpha3")
    kind: Literal["DestinationRule"]


# --- ServiceEntry --------------------------------------------------------------------------


class ServicePort(IstioMessage):
    """A port of a service."""

    number: PortNumber
    """The port number."""
    protocol: str | None = noted(
        "required; `HTTP`, `HTTP2`, `GRPC` or `TCP` (meshd does not sniff protocols)",
        default=None,
    )
    """The protocol on the port: HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP or TLS."""
    name: str
    """Name of the port."""
    target_port: PortNumber | None = None
    """The port on the endpoints traffic is sent to (default: ``number``)."""


class WorkloadEntry(IstioMessage):
    """One endpoint of a service: an address, its ports and labels."""

    address: str | None = None
    """Address of the endpoint (an IP, or a DNS name with DNS resolution), without port."""
    ports: dict[str, PortNumber] = Field(default_factory=dict)
    """Endpoint ports by service port name (default: the service port)."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels of the endpoint (subsets select by them)."""
    network: str | None = unsupported("meshd has a single network")
    """Network of the endpoint, for multi-network meshes."""
    locality: str | None = unsupported("meshd has no localities")
    """Locality of the endpoint, ``region/zone/subzone``."""
    weight: UInt32 | None = None
    """Load balancing weight of the endpoint."""
    service_account: str | None = None
    """Service account of the endpoint's workload, if it runs a sidecar."""


class ServiceEntrySpec(IstioMessage):
    """Adds a service to meshd's registry: an external API, or instances the registry does
    not know about."""

    hosts: list[str] = noted("no wildcards yet", default_factory=list)
    """The hosts of the service."""
    addresses: list[str] | None = unsupported(
        "virtual IPs are not implemented yet; meshd routes by host name"
    )
    """Virtual IP addresses of the service."""
    ports: list[ServicePort] = Field(default_factory=list)
    """The ports of the service."""
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] | None = None
    """Whether the service is outside the mesh (default) or part of it."""
    resolution: Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"] | None = (
        enum_field(
            {
                "NONE": "forwarding to the original destination address is not implemented "
                "yet; use STATIC or DNS",
                "DYNAMIC_DNS": "dynamic DNS resolution of wildcard hosts is not implemented yet",
            },
            note="required (Istio's default NONE is not implemented)",
        )
    )
    """How the addresses of the endpoints are found: STATIC (the listed IPs), DNS,
    DNS_ROUND_ROBIN, NONE."""
    endpoints: list[WorkloadEntry] = Field(default_factory=list)
    """The endpoints of the service."""
    workload_selector: WorkloadSelector | None = unsupported(
        "selecting WorkloadEntries is not implemented yet; list the endpoints"
    )
    """Select the service's workloads by label (MESH_INTERNAL only)."""
    export_to: list[str] = Field(default_factory=list)
    """Namespaces this service is visible to: ``.`` its own, ``*`` all (default)."""
    subject_alt_names: list[str] = Field(default_factory=list)
    """Identities the service's certificates must carry (verified by callers)."""


class ServiceEntry(IstioResource[ServiceEntrySpec]):
    """A service added to the registry."""

    group: ClassVar[str] = "networking.istio.io"
    versions: ClassVar[tuple[str, ...]] = ("v1", "v1beta1", "v1alpha3")
    kind: Literal["ServiceEntry"]


# --- Sidecar -------------------------------------------------------------------------------


class SidecarPort(IstioMessage):
    """A port of a sidecar listener."""

    number: UInt32 | None = None
    """The port number."""
    protocol: str | None = None
    """The protocol on the port."""
    name: str | None = None
    """Name of the port."""
    target_port: UInt32 | None = None
    """The port on the endpoints traffic is sent to."""


class TLSCertificate(IstioMessage):
    """One server certificate (Istio's ``ServerTLSSettings.TLSCertificate``)."""

    server_certificate: str | None = None
    """Path of the server certificate."""
    private_key: str | None = None
    """Path of the server's private key."""
    ca_certificates: str | None = None
    """Path of the CA certificates that verify clients."""


class ServerTLSSettings(IstioMessage):
    """TLS settings of a listener."""

    https_redirect: bool | None = None
    """Redirect plain HTTP requests to HTTPS."""
    mode: (
        Literal[
            "PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"
        ]
        | None
    ) = None
    """How the listener secures connections."""
    server_certificate: str | None = None
    """Path of the server certificate."""
    private_key: str | None = None
    """Path of the server's private key."""
    ca_certificates: str | None = None
    """Path of the CA certificates that verify clients."""
    ca_crl: str | None = None
    """Path of the certificate revocation list."""
    credential_name: str | None = None
    """Name of the secret holding the certificates."""
    credential_names: list[str] | None = None
    """Names of secrets holding certificates (at most two)."""
    tls_certificates: list[TLSCertificate] | None = None
    """Server certificates (at most two)."""
    subject_alt_names: list[str] | None = None
    """Names a client's certificate must carry."""
    verify_certificate_spki: list[str] | None = None
    """Base64 SHA-256 hashes of the SPKIs of authorized client certificates."""
    verify_certificate_hash: list[str] | None = None
    """Hex SHA-256 hashes of authorized client certificates."""
    min_protocol_version: Literal["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"] | None = (
        None
    )
    """Minimum TLS version."""
    max_protocol_version: Literal["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"] | None = (
        None
    )
    """Maximum TLS version."""
    cipher_suites: list[str] | None = None
    """Allowed cipher suites."""
    ca_cert_credential_name: str | None = None
    """Name of the secret holding the CA certificates (mutual TLS)."""


CaptureMode = Literal["DEFAULT", "IPTABLES", "NONE"]


class IstioIngressListener(IstioMessage):
    """A listener of the sidecar for inbound traffic to the workload."""

    port: SidecarPort
    """The port of the listener."""
    bind: str | None = None
    """The IP address the listener binds to."""
    capture_mode: CaptureMode | None = None
    """How traffic reaches the listener."""
    default_endpoint: str | None = None
    """Where traffic is forwarded (``127.0.0.1:PORT``, ``0.0.0.0:PORT`` or a Unix socket)."""
    tls: ServerTLSSettings | None = None
    """TLS termination for traffic from outside the mesh."""
    connection_pool: ConnectionPoolSettings | None = None
    """Limits on the connections the listener accepts."""


class IstioEgressListener(IstioMessage):
    """A listener of the sidecar for outbound traffic, and the services it can reach."""

    port: SidecarPort | None = unsupported("per-port egress listeners are not implemented yet")
    """The port of the listener (default: every port of the imported services)."""
    bind: str | None = unsupported("egress listener addresses are not configurable yet")
    """The IP address or Unix socket the listener binds to."""
    capture_mode: CaptureMode | None = unsupported("meshd does not capture traffic with iptables")
    """How traffic reaches the listener."""
    hosts: list[str] = noted("no wildcard host names yet", default_factory=list)
    """Services the workload can reach, as ``namespace/dnsName`` (``*``, ``.`` and ``~`` are
    allowed as namespace; ``*`` as name)."""


class OutboundTrafficPolicy(IstioMessage):
    """What the sidecar does with traffic to hosts it does not know."""

    mode: Literal["REGISTRY_ONLY", "ALLOW_ANY"] | None = None
    """REGISTRY_ONLY blocks unknown hosts; ALLOW_ANY (default) passes them through."""
    egress_proxy: Destination | None = unsupported("an egress proxy is not implemented yet")
    """Send traffic to unknown hosts through this service."""


class SidecarSpec(IstioMessage):
    """Narrows what a sidecar sees and accepts: the services its workload can reach and how
    unknown hosts are treated."""

    workload_selector: WorkloadSelector | None = None
    """Workloads (in the Sidecar's namespace) it applies to; none means every workload of
    the namespace without a more specific Sidecar."""
    ingress: list[IstioIngressListener] | None = unsupported(
        "inbound listener configuration is not implemented yet"
    )
    """Listeners for inbound traffic to the workload."""
    egress: list[IstioEgressListener] = Field(default_factory=list)
    """Listeners for outbound traffic and the services each can reach."""
    inbound_connection_pool: ConnectionPoolSettings | None = unsupported(
        "inbound connection limits are not implemented yet"
    )
    """Limits on the inbound connections the sidecar accepts."""
    outbound_traffic_policy: OutboundTrafficPolicy | None = None
    """How traffic to unknown hosts is treated."""


class Sidecar(IstioResource[SidecarSpec]):
    """The scope of a sidecar: what its workload can reach."""

    group: ClassVar[str] = "networking.istio.io"
    versions: ClassVar[tuple[str, ...]] = ("v1", "v1beta1", "v1alpha3")
    kind: Literal["Sidecar"]
