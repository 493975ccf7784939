"""What the proxy tells telemetry: who the peer is, which service was called, how the
request or connection ended. Pure data, built once where it can be (a :class:`Workload`
per peer certificate or endpoint, a :class:`Service` per cluster) so the per-request
record only carries references and a few numbers.

The label values follow Istio's standard metrics (istio/proxy
``source/extensions/filters/http/istio_stats/istio_stats.cc``; istio.io
``docs/reference/config/metrics``): ``"unknown"`` where a value is missing,
``"latest"`` for a missing canonical revision, Envoy's short response flags, ``"-"``
when there is none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

UNKNOWN = "unknown"
LATEST = "latest"  # Istio's canonical revision when a workload declares none

# Label keys a workload's labels (``--labels``) may carry, in Istio's order of preference.
APP_LABELS = ("app", "app.kubernetes.io/name")
VERSION_LABELS = ("version", "app.kubernetes.io/version")
CANONICAL_NAME_LABEL = "service.istio.io/canonical-name"
CANONICAL_REVISION_LABEL = "service.istio.io/canonical-revision"


class Reporter(StrEnum):
    """Which proxy reports: ``source`` is the client's sidecar (outbound), ``destination``
    the server's (inbound)."""

    SOURCE = "source"
    DESTINATION = "destination"


class SecurityPolicy(StrEnum):
    """``connection_security_policy``: ``mutual_tls`` when the peer was authenticated
    by its mesh certificate, ``none`` for plaintext (PERMISSIVE inbound, DISABLE
    clusters), ``unknown`` when the proxy cannot tell (Istio reports ``unknown`` on
    every source-side series; meshd's client sidecar verifies the server's SPIFFE ID,
    so it reports what it saw)."""

    MUTUAL_TLS = "mutual_tls"
    NONE = "none"
    UNKNOWN = "unknown"


class ResponseFlag(StrEnum):
    """Envoy's short response flags (``%RESPONSE_FLAGS%``) that meshd's proxy sets.
    Several flags join with commas (:func:`response_flags`); none is ``-``."""

    NONE = "-"
    NO_ROUTE = "NR"  # no route for the request (404), or no TCP route
    NO_HEALTHY_UPSTREAM = "UH"  # the cluster has no endpoint (503)
    UPSTREAM_CONNECTION_FAILURE = "UF"  # connect or TLS handshake to the upstream failed (503)
    UPSTREAM_OVERFLOW = "UO"  # circuit breaking / connection pool full (503)
    UPSTREAM_REQUEST_TIMEOUT = "UT"  # the route's timeout or a per-try timeout fired (504)
    UPSTREAM_RETRY_LIMIT_EXCEEDED = "URX"  # the retries ran out (or the retry budget)
    UPSTREAM_REMOTE_RESET = "UR"  # the upstream reset the stream (503)
    UPSTREAM_CONNECTION_TERMINATION = "UC"  # the upstream closed the connection early (503)
    UPSTREAM_PROTOCOL_ERROR = "UPE"  # the upstream answered something that is not HTTP
    DOWNSTREAM_CONNECTION_TERMINATION = "DC"  # the client went away before the response
    DOWNSTREAM_PROTOCOL_ERROR = "DPE"  # the client sent a malformed request (400)
    LOCAL_RESET = "LR"  # the proxy reset the connection itself
    STREAM_IDLE_TIMEOUT = "SI"  # an idle timeout closed the stream
    UNAUTHORIZED = "UAEX"  # denied by AuthorizationPolicy (403); Envoy's ext-authz flag
    FAULT_INJECTED = "FI"  # aborted by fault injection
    DELAY_INJECTED = "DI"  # delayed by fault injection


def response_flags(*flags: ResponseFlag | str) -> str:
    """Envoy's form of several flags: ``"UT,URX"``; ``"-"`` when there is none."""
    present = [str(f) for f in flags if f and f != ResponseFlag.NONE]
    return ",".join(present) if present else ResponseFlag.NONE.value


def _first(labels: Mapping[str, str], keys: Iterable[str]) -> str:
    for key in keys:
        value = labels.get(key)
        if value:
            return value
    return ""


def namespace_of(principal: str) -> str:
    """The namespace in a SPIFFE ID (``spiffe://td/ns/<ns>/sa/<sa>``), ``""`` when the
    ID has none. Lenient on purpose, as Istio's proxy is: telemetry never raises."""
    start = principal.find("/ns/")
    if start < 0:
        return ""
    start += 4
    end = principal.find("/", start)
    return principal[start:] if end < 0 else principal[start:end]


@dataclass(frozen=True, slots=True)
class Workload:
    """One end of a request, with the values of Istio's ``source_*`` / ``destination_*``
    workload labels. Build it once (per peer certificate, per endpoint, at start for the
    local workload) and reuse it: :attr:`key` is computed here, not per request."""

    name: str = UNKNOWN
    namespace: str = UNKNOWN
    principal: str = UNKNOWN  # the SPIFFE ID, spiffe://<trust-domain>/ns/<ns>/sa/<sa>
    app: str = UNKNOWN
    version: str = UNKNOWN
    canonical_service: str = UNKNOWN
    canonical_revision: str = LATEST
    cluster: str = UNKNOWN
    key: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = (
            self.name,
            self.namespace,
            self.principal,
            self.app,
            self.version,
            self.canonical_service,
            self.canonical_revision,
            self.cluster,
        )
        normal = (
            *(v or UNKNOWN for v in key[:-2]),
            self.canonical_revision or LATEST,
            self.cluster or UNKNOWN,
        )
        object.__setattr__(self, "key", normal)

    @classmethod
    def from_labels(
        cls,
        name: str,
        namespace: str,
        principal: str = "",
        labels: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        *,
        cluster: str = "",
    ) -> Workload:
        """A workload from meshd's registration data (service, namespace, SPIFFE ID and
        ``--labels``), derived as Istio derives it from pod labels:

        - app: ``app``, else ``app.kubernetes.io/name``, else the workload name (a meshd
          workload is one service, which is what the ``app`` label names in Kubernetes);
        - version: ``version``, else ``app.kubernetes.io/version``, else ``unknown``;
        - canonical service: ``service.istio.io/canonical-name``, else the app;
        - canonical revision: ``service.istio.io/canonical-revision``, else the version,
          else ``latest`` (what Istio's injector defaults it to).
        """
        values = dict(labels)
        app = _first(values, APP_LABELS) or name
        version = _first(values, VERSION_LABELS)
        return cls(
            name=name or UNKNOWN,
            namespace=namespace or UNKNOWN,
            principal=principal or UNKNOWN,
            app=app or UNKNOWN,
            version=version or UNKNOWN,
            canonical_service=values.get(CANONICAL_NAME_LABEL) or app or UNKNOWN,
            canonical_revision=values.get(CANONICAL_REVISION_LABEL) or version or LATEST,
            cluster=cluster or UNKNOWN,
        )

    @classmethod
    def from_principal(cls, principal: str) -> Workload:
        """A peer known only by its certificate (an inbound mTLS connection): the
        principal and the namespace in it; the rest ``unknown``."""
        if not principal:
            return UNKNOWN_WORKLOAD
        return cls(principal=principal, namespace=namespace_of(principal) or UNKNOWN)


UNKNOWN_WORKLOAD = Workload()


@dataclass(frozen=True, slots=True)
class Service:
    """The destination service: ``destination_service`` (the host, an FQDN such as
    ``reviews.default.svc.cluster.local``), ``destination_service_name`` and
    ``destination_service_namespace``. Build one per cluster when the table is compiled."""

    host: str = UNKNOWN
    name: str = UNKNOWN
    namespace: str = UNKNOWN
    key: tuple[str, str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = (self.host or UNKNOWN, self.name or UNKNOWN, self.namespace or UNKNOWN)
        object.__setattr__(self, "key", key)

    @classmethod
    def from_host(cls, host: str) -> Service:
        """From a service host: ``reviews.default.svc.cluster.local`` gives name
        ``reviews`` and namespace ``default``; any other host (a ServiceEntry, a Host
        header nothing matched) is its own name, as Istio reports it, with namespace
        ``unknown``. A port is dropped."""
        if not host:
            return UNKNOWN_SERVICE
        if host.startswith("["):  # [v6]:port
            bare = host[: host.find("]") + 1] or host
        else:
            bare = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        parts = bare.split(".")
        if len(parts) > 3 and parts[2] == "svc" and parts[0] and parts[1]:
            return cls(bare, parts[0], parts[1])
        return cls(bare, bare, UNKNOWN)


UNKNOWN_SERVICE = Service()


class RequestRecord(NamedTuple):
    """One finished HTTP request, as the proxy reports it to :meth:`Telemetry.record`.

    A NamedTuple, not a frozen dataclass: it is built once per request on the hot path,
    and a frozen dataclass sets each field through ``object.__setattr__`` (about 2.5 µs
    for these fields against 0.6 µs here, CPython 3.11; ``python -m
    sidecar.telemetry.bench`` prints both). It is as immutable, and has no ``__dict__``.

    The first fields label the metrics; the rest only feed the access log, so the proxy
    may leave them at their defaults when it runs without ``--access-log``.
    """

    reporter: Reporter
    peer: Workload  # the other end: the server for SOURCE, the client for DESTINATION
    service: Service
    response_code: int  # 0 when no response was sent
    duration_ms: float  # from the first byte of the request to the last of the response
    request_bytes: int = 0  # bytes received from the downstream (head and body)
    response_bytes: int = 0  # bytes sent to the downstream (head and body)
    response_flags: str = ResponseFlag.NONE  # a ResponseFlag, or several joined
    connection_security_policy: SecurityPolicy = SecurityPolicy.UNKNOWN
    request_protocol: str = "http"  # "http" or "grpc"
    grpc_response_status: str = ""  # the grpc-status code for gRPC, else ""
    # --- the access log only ---
    start_time: float = 0.0  # time.time() when the request started
    method: str | None = None
    authority: str | None = None
    path: str | None = None  # the request target as received (before any rewrite)
    protocol: str | None = None  # "HTTP/1.1", "HTTP/1.0", "HTTP/2"
    user_agent: str | None = None
    request_id: str | None = None  # x-request-id
    x_forwarded_for: str | None = None
    route_name: str | None = None
    upstream_cluster: str | None = None  # "outbound|9080|v1|reviews.default.svc.cluster.local"
    upstream_host: str | None = None  # "198.18.0.7:15006"
    upstream_local_address: str | None = None
    downstream_local_address: str | None = None
    downstream_remote_address: str | None = None
    requested_server_name: str | None = None  # SNI on an inbound TLS connection
    upstream_service_time_ms: float | None = None  # time spent waiting on the upstream
    upstream_request_attempts: int = 1  # 1 + retries
    response_code_details: str | None = None  # why the proxy answered itself
    upstream_transport_failure_reason: str | None = None  # a TLS failure, for one


@dataclass(frozen=True, slots=True)
class TcpLabels:
    """The labels of one proxied TCP connection: build it when the connection is set up
    and pass the same object to :meth:`Telemetry.tcp_opened` and
    :meth:`Telemetry.tcp_closed` (``request_protocol`` is always ``tcp``)."""

    reporter: Reporter
    peer: Workload
    service: Service
    connection_security_policy: SecurityPolicy = SecurityPolicy.UNKNOWN
    response_flags: str = ResponseFlag.NONE
