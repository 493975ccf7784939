"""VirtualService routes -> snapshot routes, for one port of one service.

Choices where Istio leaves room (also in the report of the compiler):

- Routes keep the VirtualService's order; the first match wins and a request no route
  matches gets 404 at the sidecar (no catch-all is appended).
- A route or TCP route whose every match names another ``port`` does not apply to this
  port; the remaining matches lose their ``port`` (it is implied by the virtual host).
  When no route of the VirtualService applies to a port, that port gets the default
  route, as if there were no VirtualService for it.
- A route without a ``name`` is named by its place: ``http[2]``.
- A destination without a port takes the destination service's only port, else the
  port being routed (Istio's rule).
- Retries: without ``retries`` meshd applies :data:`DEFAULT_RETRIES` (2 attempts on
  connect-failure, refused-stream or a 503: Istio's default minus its gRPC-only
  conditions, which the sidecar does not implement); ``attempts: 0`` (or absent)
  disables retries; without ``retryOn`` the default conditions apply. Status codes in
  ``retryOn`` go to ``retry_on_status``; ``retriable-status-codes`` is implied by them.
- A timeout of ``0s`` means none (Istio's meaning).
- Header names are lowercased; header operations and matches are sorted by name so the
  output does not depend on the order keys were written in.
- Zero-weight destinations are dropped; a single remaining destination gets 100.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

from meshd.compile import snapshot as s
from meshd.compile.clusters import cluster_name
from meshd.compile.errors import RuleError
from meshd.schema.base import duration_ms
from meshd.schema.networking import (
    Destination,
    HeaderOperations,
    Headers,
    HTTPBody,
    HTTPMatchRequest,
    HTTPRetry,
    HTTPRoute,
    StringMatch,
    VirtualService,
)
from registry.model import Protocol

DEFAULT_RETRIES = s.RetryPolicy(
    attempts=2,
    per_try_timeout_ms=None,
    retry_on=("connect-failure", "refused-stream"),
    retry_on_status=(503,),
)
"""meshd's retry policy for routes that do not set ``retries``."""

_RETRIABLE_STATUS_CODES = "retriable-status-codes"

PortList = tuple[tuple[int, Protocol], ...]


@dataclass(frozen=True, slots=True)
class ClusterRef:
    """A cluster a route forwards to, with what a stand-in for it needs."""

    name: str
    host: str
    port: int
    subset: str | None
    protocol: Protocol


@dataclass(frozen=True, slots=True)
class Destinations:
    """How the destination hosts written in one VirtualService resolve: raw host ->
    (resolved host, that service's ports; empty when no service has that name)."""

    hosts: Mapping[str, tuple[str, PortList]]


def default_route(cluster: str) -> s.Route:
    """The route of a service without VirtualService: everything to its default cluster."""
    action = s.ForwardAction(clusters=(s.WeightedCluster(cluster, 100),), retries=DEFAULT_RETRIES)
    return s.Route(name="default", matches=(), action=action)


def default_tcp_route(cluster: str) -> s.TcpRoute:
    return s.TcpRoute(clusters=(s.WeightedCluster(cluster, 100),))


# --- HTTP ------------------------------------------------------------------------------------


def http_routes(
    vs: VirtualService, port: int, dests: Destinations, refs: list[ClusterRef]
) -> tuple[s.Route, ...]:
    """The routes of ``vs`` that apply to ``port``; clusters they name are added to ``refs``."""
    out: list[s.Route] = []
    for i, route in enumerate(vs.spec.http):
        matches = _route_matches(route.match, port)
        if matches is None:
            continue
        request_ops, response_ops = header_ops(route.headers)
        out.append(
            s.Route(
                name=route.name or f"http[{i}]",
                matches=matches,
                action=_action(route, port, dests, refs),
                request_headers=request_ops,
                response_headers=response_ops,
            )
        )
    return tuple(out)


def _route_matches(matches: list[HTTPMatchRequest], port: int) -> tuple[s.RouteMatch, ...] | None:
    if not matches:
        return ()
    out = tuple(_route_match(m) for m in matches if m.port is None or m.port == port)
    return out or None


def _route_match(m: HTTPMatchRequest) -> s.RouteMatch:
    headers = [s.HeaderMatch(name.lower(), string_match(sm)) for name, sm in m.headers.items()] + [
        s.HeaderMatch(name.lower(), string_match(sm), invert=True)
        for name, sm in m.without_headers.items()
    ]
    headers.sort(key=lambda h: (h.name, h.invert))
    query = sorted(
        (s.QueryParamMatch(name, string_match(sm)) for name, sm in m.query_params.items()),
        key=lambda q: q.name,
    )
    return s.RouteMatch(
        name=m.name or "",
        uri=string_match(m.uri, ignore_case=bool(m.ignore_uri_case)),
        scheme=string_match(m.scheme),
        method=string_match(m.method),
        authority=string_match(m.authority),
        headers=tuple(headers),
        query_params=tuple(query),
    )


def string_match(sm: StringMatch | None, *, ignore_case: bool = False) -> s.StringMatch | None:
    """None for an absent or empty match (``{}``: presence only, for headers and query
    parameters). ``ignoreUriCase`` applies to exact and prefix matches only, as in Istio."""
    if sm is None:
        return None
    if sm.exact is not None:
        return s.StringMatch("exact", sm.exact, ignore_case)
    if sm.prefix is not None:
        return s.StringMatch("prefix", sm.prefix, ignore_case)
    if sm.regex is not None:
        return s.StringMatch("regex", sm.regex)
    return None


def _action(
    route: HTTPRoute, port: int, dests: Destinations, refs: list[ClusterRef]
) -> s.RouteAction:
    if route.redirect is not None:
        r = route.redirect
        return s.RedirectAction(
            uri=r.uri,
            authority=r.authority,
            port=r.port,
            scheme=r.scheme,
            status=r.redirect_code or 301,
        )
    if route.direct_response is not None:
        d = route.direct_response
        return s.DirectResponseAction(status=d.status, body=_body(d.body))
    if not route.route:
        raise RuleError("a route needs one of 'route', 'redirect' or 'directResponse'")
    weighted = weighted_clusters(
        [(d.destination, d.weight, d.headers) for d in route.route], port, dests, refs, "http"
    )
    rewrite = None
    if route.rewrite is not None:
        rw = route.rewrite
        regex = rw.uri_regex_rewrite
        rewrite = s.Rewrite(
            uri=rw.uri,
            uri_regex=(regex.match, regex.rewrite) if regex is not None else None,
            authority=rw.authority,
        )
    return s.ForwardAction(
        clusters=weighted,
        timeout_ms=_timeout_ms(route.timeout),
        retries=retry_policy(route.retries),
        rewrite=rewrite,
    )


def _body(body: HTTPBody | None) -> str | None:
    if body is None:
        return None
    if body.string is not None:
        return body.string
    raw = body.bytes or ""
    try:
        return base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise RuleError(
            "directResponse.body.bytes must decode to UTF-8 text (the sidecar sends text "
            "bodies); use body.string"
        ) from exc


def _timeout_ms(timeout: str | None) -> int | None:
    if timeout is None:
        return None
    ms = duration_ms(timeout)
    return None if ms <= 0 else max(1, round(ms))


def retry_policy(retries: HTTPRetry | None) -> s.RetryPolicy | None:
    if retries is None:
        return DEFAULT_RETRIES
    if not retries.attempts or retries.attempts <= 0:
        return None
    per_try = None
    if retries.per_try_timeout is not None:
        ms = duration_ms(retries.per_try_timeout)
        per_try = None if ms <= 0 else max(1, round(ms))
    retry_on, statuses = DEFAULT_RETRIES.retry_on, DEFAULT_RETRIES.retry_on_status
    if retries.retry_on is not None and retries.retry_on.strip():
        conditions: list[str] = []
        codes: list[int] = []
        for part in retries.retry_on.split(","):
            token = part.strip()
            if not token or token == _RETRIABLE_STATUS_CODES:
                continue
            if token.isdecimal():
                if int(token) not in codes:
                    codes.append(int(token))
            elif token not in conditions:
                conditions.append(token)
        retry_on, statuses = tuple(conditions), tuple(sorted(codes))
    return s.RetryPolicy(
        attempts=retries.attempts,
        per_try_timeout_ms=per_try,
        retry_on=retry_on,
        retry_on_status=statuses,
    )


def header_ops(headers: Headers | None) -> tuple[s.HeaderOps, s.HeaderOps]:
    if headers is None:
        return s.NO_HEADER_OPS, s.NO_HEADER_OPS
    return _ops(headers.request), _ops(headers.response)


def _ops(ops: HeaderOperations | None) -> s.HeaderOps:
    if ops is None or not (ops.set or ops.add or ops.remove):
        return s.NO_HEADER_OPS
    return s.HeaderOps(
        set=tuple(sorted((k.lower(), v) for k, v in ops.set.items())),
        add=tuple(sorted((k.lower(), v) for k, v in ops.add.items())),
        remove=tuple(sorted({k.lower() for k in ops.remove})),
    )


# --- destinations ----------------------------------------------------------------------------


def weighted_clusters(
    destinations: list[tuple[Destination, int | None, Headers | None]],
    port: int,
    dests: Destinations,
    refs: list[ClusterRef],
    fallback_protocol: Protocol,
) -> tuple[s.WeightedCluster, ...]:
    """Weighted clusters of one route: zero weights dropped, a lone destination at 100,
    several at their weights (which validation made sum to 100)."""
    if len(destinations) > 1:
        kept = [d for d in destinations if d[1]]
        destinations = kept or destinations
    single = len(destinations) == 1
    out: dict[str, s.WeightedCluster] = {}
    for destination, weight, headers in destinations:
        ref = _resolve(destination, port, dests, fallback_protocol)
        refs.append(ref)
        request_ops, response_ops = header_ops(headers)
        wc = s.WeightedCluster(
            cluster=ref.name,
            weight=100 if single else weight or 0,
            request_headers=request_ops,
            response_headers=response_ops,
        )
        previous = out.get(ref.name)
        if previous is not None:
            if (previous.request_headers, previous.response_headers) != (request_ops, response_ops):
                raise RuleError(
                    f"a route names the destination {ref.name} twice with different headers; "
                    "merge them into one destination"
                )
            wc = s.WeightedCluster(ref.name, previous.weight + wc.weight, request_ops, response_ops)
        out[ref.name] = wc
    clusters = tuple(out.values())
    if len(clusters) == 1 and clusters[0].weight != 100:
        only = clusters[0]
        clusters = (
            s.WeightedCluster(only.cluster, 100, only.request_headers, only.response_headers),
        )
    total = sum(wc.weight for wc in clusters)
    if total != 100:
        raise RuleError(f"destination weights sum to {total}; they must sum to 100")
    return clusters


def _resolve(
    destination: Destination, port: int, dests: Destinations, fallback_protocol: Protocol
) -> ClusterRef:
    host, ports = dests.hosts.get(destination.host, (destination.host, ()))
    if destination.port is not None:
        number = destination.port.number
    elif len(ports) == 1:
        number = ports[0][0]
    else:
        number = port
    protocol = next((p for n, p in ports if n == number), fallback_protocol)
    subset = destination.subset
    return ClusterRef(cluster_name(number, subset, host), host, number, subset, protocol)


# --- TCP -------------------------------------------------------------------------------------


def tcp_routes(
    vs: VirtualService, port: int, dests: Destinations, refs: list[ClusterRef]
) -> tuple[s.TcpRoute, ...]:
    """The TCP routes of ``vs`` that apply to ``port`` (empty: none does)."""
    out: list[s.TcpRoute] = []
    for route in vs.spec.tcp:
        if route.match and not any(m.port is None or m.port == port for m in route.match):
            continue
        if not route.route:
            raise RuleError("a TCP route needs at least one destination")
        clusters = weighted_clusters(
            [(d.destination, d.weight, None) for d in route.route], port, dests, refs, "tcp"
        )
        out.append(s.TcpRoute(clusters=clusters))
    return tuple(out)
