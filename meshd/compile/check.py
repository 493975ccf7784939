"""Coherence check of a compiled snapshot.

Pure and free of pydantic: the sidecar runs it too, on what it decoded, before it
swaps a new table in. An empty list means coherent. Messages say where the problem
is (``outbound.virtual_hosts[reviews...:9080].routes[http[0]]: ...``).

The checks are split so the compiler can run them on the pieces it builds (each
piece once, however many proxies share it) and the cheap cross-piece checks on each
assembled outbound; :func:`check_snapshot` runs them all.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from functools import lru_cache

from meshd.compile import snapshot as s

PORT_MIN, PORT_MAX = 1, 65535

KNOWN_RETRY_ON = frozenset(
    {"5xx", "gateway-error", "connect-failure", "reset", "retriable-4xx", "refused-stream"}
)
"""The retry conditions the sidecar implements (see ``snapshot.RetryPolicy``)."""

KNOWN_ATTRIBUTES = frozenset(
    {
        "source.principal",
        "source.namespace",
        "source.ip",
        "request.method",
        "request.path",
        "request.host",
        "destination.port",
    }
)
_HEADER_ATTRIBUTE = re.compile(r"^request\.headers\[[!#$%&'*+\-.^_`|~0-9a-z]+\]$")


def check_snapshot(snapshot: s.ProxySnapshot) -> list[str]:
    """Every incoherence in ``snapshot``; empty when it may be served."""
    return [
        *check_header(snapshot),
        *check_inbound(snapshot.inbound),
        *check_outbound(snapshot.outbound),
    ]


def check_header(snapshot: s.ProxySnapshot) -> list[str]:
    """The snapshot's own fields (not its inbound or outbound config)."""
    errors: list[str] = []
    if not snapshot.version:
        errors.append("version: is empty")
    if not snapshot.proxy_id:
        errors.append("proxy_id: is empty")
    if not snapshot.identity.startswith("spiffe://"):
        errors.append(f"identity: {snapshot.identity!r} is not a SPIFFE ID")
    if snapshot.schema != s.SCHEMA_VERSION:
        errors.append(f"schema: {snapshot.schema} is not {s.SCHEMA_VERSION}")
    return errors


def check_outbound(outbound: s.OutboundConfig) -> list[str]:
    return [
        *check_outbound_parts(outbound.virtual_hosts, outbound.tcp_services, outbound.clusters),
        *check_outbound_links(outbound),
    ]


# --- local checks: each item on its own ----------------------------------------------------


def check_outbound_parts(
    virtual_hosts: Iterable[s.VirtualHost],
    tcp_services: Iterable[s.TcpService],
    clusters: Iterable[s.Cluster],
) -> list[str]:
    """Checks that need nothing but the items themselves (the compiler runs these once
    per piece)."""
    errors: list[str] = []
    for vh in virtual_hosts:
        errors.extend(_check_virtual_host(vh))
    for ts in tcp_services:
        where = f"outbound.tcp_services[{ts.name}:{ts.port}]"
        errors.extend(_check_port(where + ".port", ts.port))
        if not ts.routes:
            errors.append(f"{where}: has no routes")
        for i, tr in enumerate(ts.routes):
            errors.extend(_check_weights(f"{where}.routes[{i}]", tr.clusters))
            if tr.port is not None:
                errors.extend(_check_port(f"{where}.routes[{i}].port", tr.port))
    for c in clusters:
        errors.extend(_check_cluster(c))
    return errors


def _check_virtual_host(vh: s.VirtualHost) -> Iterator[str]:
    where = f"outbound.virtual_hosts[{vh.name}]"
    if not vh.domains:
        yield f"{where}: has no domains"
    if len(set(vh.domains)) != len(vh.domains):
        yield f"{where}.domains: lists a domain twice"
    for domain in vh.domains:
        if domain != domain.lower() or not domain or " " in domain:
            yield f"{where}.domains: {domain!r} is not a lowercase host name"
        _, sep, port = domain.rpartition(":")
        if sep and (not port.isdigit() or not PORT_MIN <= int(port) <= PORT_MAX):
            yield f"{where}.domains: {domain!r} has no valid port"
    for route in vh.routes:
        yield from _check_route(f"{where}.routes[{route.name}]", route)


def _check_route(where: str, route: s.Route) -> Iterator[str]:
    for i, m in enumerate(route.matches):
        yield from _check_match(f"{where}.matches[{i}]", m)
    yield from _check_header_ops(f"{where}.request_headers", route.request_headers)
    yield from _check_header_ops(f"{where}.response_headers", route.response_headers)
    action = route.action
    if isinstance(action, s.ForwardAction):
        yield from _check_weights(f"{where}.forward", action.clusters)
        for wc in action.clusters:
            yield from _check_header_ops(f"{where}.forward[{wc.cluster}]", wc.request_headers)
            yield from _check_header_ops(f"{where}.forward[{wc.cluster}]", wc.response_headers)
        if action.timeout_ms is not None and action.timeout_ms <= 0:
            yield f"{where}.forward.timeout_ms: must be positive (None disables the timeout)"
        if action.retries is not None:
            yield from _check_retries(f"{where}.forward.retries", action.retries)
        if action.rewrite is not None and action.rewrite.uri_regex is not None:
            yield from _check_regex(
                f"{where}.forward.rewrite.uri_regex", action.rewrite.uri_regex[0]
            )
    elif isinstance(action, s.RedirectAction):
        if not 300 <= action.status <= 399:
            yield f"{where}.redirect.status: {action.status} is not a redirect status"
        if action.port is not None:
            yield from _check_port(f"{where}.redirect.port", action.port)
    elif not 200 <= action.status <= 599:
        yield f"{where}.direct_response.status: {action.status} is not an HTTP status"


def _check_match(where: str, m: s.RouteMatch) -> Iterator[str]:
    for name in ("uri", "scheme", "method", "authority"):
        sm = getattr(m, name)
        if sm is not None:
            yield from _check_string_match(f"{where}.{name}", sm)
    for h in m.headers:
        if h.name != h.name.lower() or not h.name:
            yield f"{where}.headers[{h.name}]: header names must be lowercase"
        if h.match is not None:
            yield from _check_string_match(f"{where}.headers[{h.name}]", h.match)
    for q in m.query_params:
        if q.match is not None:
            yield from _check_string_match(f"{where}.query_params[{q.name}]", q.match)
    if m.port is not None:
        yield from _check_port(f"{where}.port", m.port)


def _check_string_match(where: str, sm: s.StringMatch) -> Iterator[str]:
    if sm.kind == "regex":
        yield from _check_regex(where, sm.value)


def _check_regex(where: str, pattern: str) -> Iterator[str]:
    try:
        re.compile(pattern)
    except re.error as exc:
        yield f"{where}: regex {pattern!r} does not compile: {exc}"


def _check_header_ops(where: str, ops: s.HeaderOps) -> Iterator[str]:
    names = [n for n, _ in ops.set] + [n for n, _ in ops.add] + list(ops.remove)
    for name in names:
        if not name or name != name.lower():
            yield f"{where}: header name {name!r} must be non-empty and lowercase"


def _check_retries(where: str, retries: s.RetryPolicy) -> Iterator[str]:
    if retries.attempts < 1:
        yield f"{where}.attempts: must be at least 1 (no retries is None)"
    if retries.per_try_timeout_ms is not None and retries.per_try_timeout_ms <= 0:
        yield f"{where}.per_try_timeout_ms: must be positive"
    unknown = sorted(set(retries.retry_on) - KNOWN_RETRY_ON)
    if unknown:
        yield f"{where}.retry_on: the sidecar does not implement {unknown}"
    for code in retries.retry_on_status:
        if not 100 <= code <= 599:
            yield f"{where}.retry_on_status: {code} is not an HTTP status"


def _check_weights(where: str, clusters: tuple[s.WeightedCluster, ...]) -> Iterator[str]:
    if not clusters:
        yield f"{where}: forwards to no cluster"
        return
    if any(wc.weight < 0 for wc in clusters):
        yield f"{where}: a weight is negative"
    if len(clusters) > 1:
        total = sum(wc.weight for wc in clusters)
        if total != 100:
            yield f"{where}: weights sum to {total}, not 100"
    if len({wc.cluster for wc in clusters}) != len(clusters):
        yield f"{where}: names a cluster twice"


def _check_cluster(c: s.Cluster) -> Iterator[str]:
    where = f"outbound.clusters[{c.name}]"
    yield from _check_port(f"{where}.port", c.port)
    if c.connect_timeout_ms <= 0:
        yield f"{where}.connect_timeout_ms: must be positive"
    for ep in c.endpoints:
        yield from _check_port(f"{where}.endpoints[{ep.address}]", ep.port)
        if ep.weight < 1:
            yield f"{where}.endpoints[{ep.address}]: weight must be at least 1"
        if c.resolution == "STATIC" and not _is_ip(ep.address):
            yield f"{where}.endpoints: {ep.address!r} is not an IP address (STATIC resolution)"
    if c.tls_mode == "ISTIO_MUTUAL":
        for ep in c.endpoints:
            if (
                ep.identity is not None
                and c.expected_identities
                and (ep.identity not in c.expected_identities)
            ):
                yield f"{where}.endpoints[{ep.address}]: identity {ep.identity} is not expected"
    ch = c.lb.consistent_hash
    if ch is not None and ch.kind in ("header", "cookie", "query_param") and not ch.name:
        yield f"{where}.lb.consistent_hash: {ch.kind} hashing needs a name"


@lru_cache(maxsize=65536)
def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_port(where: str, port: int) -> Iterator[str]:
    if not PORT_MIN <= port <= PORT_MAX:
        yield f"{where}: port {port} is out of range"


# --- cross checks: the outbound as a whole -------------------------------------------------


def check_outbound_links(outbound: s.OutboundConfig) -> list[str]:
    """Checks across pieces: unique cluster names, unique domains, unique TCP services,
    every route's clusters present."""
    errors: list[str] = []
    names: set[str] = set()
    for c in outbound.clusters:
        if c.name in names:
            errors.append(f"outbound.clusters[{c.name}]: defined twice")
        names.add(c.name)
    owner: dict[str, str] = {}
    for vh in outbound.virtual_hosts:
        for domain in vh.domains:
            other = owner.setdefault(domain, vh.name)
            if other != vh.name:
                errors.append(
                    f"outbound.virtual_hosts[{vh.name}].domains: {domain!r} also selects {other}"
                )
        for route in vh.routes:
            if isinstance(route.action, s.ForwardAction):
                where = f"outbound.virtual_hosts[{vh.name}].routes[{route.name}]"
                errors.extend(_missing(where, route.action.clusters, names))
    tcp: set[tuple[str, int]] = set()
    for ts in outbound.tcp_services:
        if (ts.name, ts.port) in tcp:
            errors.append(f"outbound.tcp_services[{ts.name}:{ts.port}]: defined twice")
        tcp.add((ts.name, ts.port))
        for i, tr in enumerate(ts.routes):
            where = f"outbound.tcp_services[{ts.name}:{ts.port}].routes[{i}]"
            errors.extend(_missing(where, tr.clusters, names))
    return errors


def _missing(where: str, clusters: Iterable[s.WeightedCluster], names: set[str]) -> Iterator[str]:
    for wc in clusters:
        if wc.cluster not in names:
            yield f"{where}: cluster {wc.cluster!r} is not in the snapshot"


# --- inbound ------------------------------------------------------------------------------


def check_inbound(inbound: s.InboundConfig) -> list[str]:
    errors: list[str] = []
    errors.extend(_check_port("inbound.port", inbound.port))
    errors.extend(_check_port("inbound.app_port", inbound.app_port))
    seen: set[int] = set()
    for port, _mode in inbound.port_mtls:
        errors.extend(_check_port("inbound.port_mtls", port))
        if port in seen:
            errors.append(f"inbound.port_mtls: port {port} is listed twice")
        seen.add(port)
    names: set[str] = set()
    for policy in inbound.authz:
        where = f"inbound.authz[{policy.name}]"
        if policy.name in names:
            errors.append(f"{where}: listed twice")
        names.add(policy.name)
        for i, rule in enumerate(policy.rules):
            constraints = [
                *(c for group in rule.sources for c in group),
                *(c for group in rule.operations for c in group),
                *rule.conditions,
            ]
            for c in constraints:
                errors.extend(_check_constraint(f"{where}.rules[{i}]", c))
    return errors


def _check_constraint(where: str, c: s.Constraint) -> Iterator[str]:
    if c.attribute not in KNOWN_ATTRIBUTES and not _HEADER_ATTRIBUTE.match(c.attribute):
        yield f"{where}: the sidecar does not know the attribute {c.attribute!r}"
    if not c.values:
        yield f"{where}: {c.attribute} has no values"
    for v in c.values:
        if v.kind == "cidr":
            if c.attribute != "source.ip":
                yield f"{where}: a CIDR only matches source.ip, not {c.attribute}"
            try:
                ipaddress.ip_network(v.value)
            except ValueError:
                yield f"{where}: {v.value!r} is not a CIDR block"
        elif c.attribute == "source.ip":
            yield f"{where}: source.ip values must be CIDR blocks"
        elif c.attribute == "destination.port" and v.kind == "exact" and not v.value.isdigit():
            yield f"{where}: destination.port {v.value!r} is not a port number"
