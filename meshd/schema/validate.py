"""Semantic validation of resources: pure functions returning every problem found.

- :func:`validate_resource` checks one resource on its own: fields meshd does not
  enforce, then the rules that span several fields (weights sum to 100, one action
  per route, valid header names, ...).
- :func:`validate_set` checks the whole candidate state (the stored resources with a
  batch applied): referenced subsets exist, no two rules claim one host, at most one
  namespace-wide PeerAuthentication per namespace.

Paths use the wire (camelCase) names: ``spec.http[0].route[1].weight``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from meshd.errors import FieldError
from meshd.schema.base import Resource, ResourceKey, StrictModel, duration_ms, find_unsupported
from meshd.schema.hosts import resolve_host, split_service_fqdn
from meshd.schema.networking import (
    Destination,
    DestinationRule,
    HeaderOperations,
    Headers,
    HTTPMatchRequest,
    HTTPRoute,
    ServiceEntry,
    Sidecar,
    TCPRoute,
    TrafficPolicy,
    VirtualService,
    unsupported_values,
)
from meshd.schema.security import (
    AuthorizationPolicy,
    Condition,
    Operation,
    PeerAuthentication,
    Source,
)
from meshd.schema.visibility import pick_destination_rule


@dataclass(frozen=True, slots=True)
class MeshNames:
    """The mesh-wide names validation depends on: how short hosts are completed and
    which namespace holds mesh-wide policies."""

    domain_suffix: str = "cluster.local"
    root_namespace: str = "istio-system"


# --- helpers shared by the checks ----------------------------------------------------------

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_HEADER_VALUE = re.compile(r"[\r\n\x00]")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_HOST = re.compile(
    r"^(?=.{1,253}\Z)[A-Za-z0-9_]([-A-Za-z0-9_]*[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9_]([-A-Za-z0-9_]*[A-Za-z0-9])?)*\.?\Z"
)
_WILDCARD_HOSTS = "wildcard hosts are not supported yet"
_NATURAL = re.compile(r"(\d+)")


def _natural(error: FieldError) -> tuple[Any, ...]:
    parts = _NATURAL.split(error.field)
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), error.message)


class _Errors:
    """Collects the errors of one resource."""

    def __init__(self, resource: str | None) -> None:
        self.resource = resource
        self.items: list[FieldError] = []

    def add(self, field: str, message: str) -> None:
        self.items.append(FieldError(field, message, self.resource))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and 1 <= int(text) <= 65535


def _is_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _check_host(errors: _Errors, path: str, host: str) -> None:
    if not host:
        errors.add(path, "host must not be empty")
    elif "*" in host:
        errors.add(path, f"host {host!r} is not supported: {_WILDCARD_HOSTS}")
    elif _is_ip(host):
        errors.add(path, f"{host!r} is an IP address; hosts are service or DNS names")
    elif not _HOST.match(host):
        errors.add(
            path,
            f"invalid host {host!r}: use a DNS name such as 'reviews', 'reviews.default' or "
            "'reviews.default.svc.cluster.local'",
        )


def _check_export_to(errors: _Errors, path: str, values: list[str]) -> None:
    for i, value in enumerate(values):
        if value not in (".", "*", "~") and not _DNS_LABEL.match(value):
            errors.add(
                f"{path}[{i}]",
                f"invalid exportTo entry {value!r}: use '.', '*', '~' or a namespace name",
            )
    if len(values) > 1 and ("*" in values or "~" in values):
        errors.add(path, "'*' and '~' cannot be combined with other exportTo entries")


def _check_header_name(errors: _Errors, path: str, name: str) -> None:
    if not _TOKEN.match(name):
        errors.add(
            path,
            f"invalid header name {name!r}: use letters, digits and !#$%&'*+-.^_`|~ only",
        )


def _check_header_ops(errors: _Errors, path: str, ops: HeaderOperations) -> None:
    for alias, mapping in (("set", ops.set), ("add", ops.add)):
        for name, value in mapping.items():
            where = f"{path}.{alias}[{name!r}]"
            _check_header_name(errors, where, name)
            if _BAD_HEADER_VALUE.search(value):
                errors.add(where, "header values must not contain CR, LF or NUL characters")
    for k, name in enumerate(ops.remove):
        _check_header_name(errors, f"{path}.remove[{k}]", name)


def _check_headers(errors: _Errors, path: str, headers: Headers | None) -> None:
    if headers is None:
        return
    if headers.request is not None:
        _check_header_ops(errors, f"{path}.request", headers.request)
    if headers.response is not None:
        _check_header_ops(errors, f"{path}.response", headers.response)


def _check_positive(errors: _Errors, path: str, duration: str | None, what: str) -> None:
    if duration is not None and duration_ms(duration) <= 0:
        errors.add(path, f"{what} must be positive; omit it instead of setting {duration!r}")


def _check_weights(errors: _Errors, path: str, weights: list[int | None]) -> None:
    if len(weights) == 1:
        weight = weights[0]
        if weight not in (None, 0, 100):
            errors.add(
                f"{path}[0].weight",
                f"a single destination receives all traffic: its weight must be absent, "
                f"0 or 100, not {weight}",
            )
    elif len(weights) > 1:
        total = sum(w or 0 for w in weights)
        if total != 100:
            errors.add(path, f"weights sum to {total}; they must sum to 100")


def _check_destination(errors: _Errors, path: str, destination: Destination) -> None:
    _check_host(errors, f"{path}.host", destination.host)
    subset = destination.subset
    if subset is not None and not _DNS_LABEL.match(subset):
        errors.add(f"{path}.subset", f"invalid subset name {subset!r}")


def _check_wildcard_value(errors: _Errors, path: str, value: str) -> None:
    """Istio's authorization strings: exact, ``*`` alone, or one ``*`` at the start or end."""
    stars = value.count("*")
    if not value:
        errors.add(path, "value must not be empty")
    elif stars > 1 or (stars == 1 and not (value.startswith("*") or value.endswith("*"))):
        errors.add(
            path, f"invalid value {value!r}: '*' is only allowed alone, or at the start or end"
        )


# --- fields and values meshd does not enforce ----------------------------------------------


def find_unsupported_values(value: object, path: str = "") -> Iterator[FieldError]:
    """Every enum field in ``value`` (recursively) set to a value meshd does not enforce."""
    if isinstance(value, StrictModel):
        cls = type(value)
        for name, info in cls.model_fields.items():
            if name not in value.model_fields_set:
                continue
            field_value = getattr(value, name)
            alias = info.alias or name
            sub = f"{path}.{alias}" if path else alias
            reasons = unsupported_values(cls, name)
            if isinstance(field_value, str) and field_value in reasons:
                yield FieldError(
                    sub,
                    f"value {field_value!r} of '{alias}' is not supported: {reasons[field_value]}",
                )
            else:
                yield from find_unsupported_values(field_value, sub)
    elif isinstance(value, BaseModel):
        return
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from find_unsupported_values(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from find_unsupported_values(item, f"{path}[{key!r}]")


def unsupported_errors(resource: Resource[Any]) -> list[FieldError]:
    """Set fields and enum values of ``resource`` that meshd does not enforce, in path order."""
    label = str(resource.key)
    found = [*find_unsupported(resource), *find_unsupported_values(resource)]
    return sorted((FieldError(e.field, e.message, label) for e in found), key=_natural)


# --- VirtualService ------------------------------------------------------------------------

_RETRY_ON = frozenset(
    {
        "5xx",
        "gateway-error",
        "connect-failure",
        "reset",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
    }
)


def _check_match(errors: _Errors, path: str, match: HTTPMatchRequest) -> None:
    for alias, string_match in (
        ("uri", match.uri),
        ("scheme", match.scheme),
        ("method", match.method),
        ("authority", match.authority),
    ):
        if string_match is not None and (
            string_match.exact is None
            and string_match.prefix is None
            and string_match.regex is None
        ):
            errors.add(f"{path}.{alias}", "set one of 'exact', 'prefix' or 'regex'")
    for alias, headers in (("headers", match.headers), ("withoutHeaders", match.without_headers)):
        for name in headers:
            _check_header_name(errors, f"{path}.{alias}[{name!r}]", name)
    for name in match.query_params:
        if not name:
            errors.add(f"{path}.queryParams", "query parameter names must not be empty")
    if match.ignore_uri_case and match.uri is not None and match.uri.regex is not None:
        errors.add(
            f"{path}.ignoreUriCase",
            "'ignoreUriCase' applies to 'exact' and 'prefix' URI matches; "
            "write (?i) in the regex instead",
        )


def _check_http_route(errors: _Errors, path: str, route: HTTPRoute) -> None:
    actions = [
        name
        for name, present in (
            ("route", bool(route.route)),
            ("redirect", route.redirect is not None),
            ("directResponse", route.direct_response is not None),
        )
        if present
    ]
    if not actions:
        errors.add(path, "a route needs one of 'route', 'redirect' or 'directResponse'")
    elif len(actions) > 1:
        both = " and ".join(f"'{a}'" for a in actions)
        errors.add(path, f"{both} cannot be used together: a route does exactly one of them")
    elif actions[0] != "route":
        for name, value in (
            ("rewrite", route.rewrite),
            ("timeout", route.timeout),
            ("retries", route.retries),
        ):
            if value is not None:
                errors.add(
                    f"{path}.{name}",
                    f"'{name}' applies to forwarded requests only; "
                    f"it cannot be used with '{actions[0]}'",
                )

    for j, match in enumerate(route.match):
        _check_match(errors, f"{path}.match[{j}]", match)

    _check_weights(errors, f"{path}.route", [d.weight for d in route.route])
    for j, destination in enumerate(route.route):
        _check_destination(errors, f"{path}.route[{j}].destination", destination.destination)
        _check_headers(errors, f"{path}.route[{j}].headers", destination.headers)

    redirect = route.redirect
    if redirect is not None:
        code = redirect.redirect_code
        if code is not None and not 300 <= code <= 399:
            errors.add(
                f"{path}.redirect.redirectCode",
                f"redirectCode must be a 3xx status such as 301 or 308, not {code}",
            )
        if redirect.scheme is not None and redirect.scheme not in ("http", "https"):
            errors.add(f"{path}.redirect.scheme", "scheme must be 'http' or 'https'")
        if redirect.uri is not None and not redirect.uri.startswith("/"):
            errors.add(f"{path}.redirect.uri", "uri must be a path starting with '/'")

    direct = route.direct_response
    if direct is not None and not 200 <= direct.status <= 599:
        errors.add(
            f"{path}.directResponse.status",
            f"status must be between 200 and 599, not {direct.status}",
        )

    rewrite = route.rewrite
    if rewrite is not None:
        if rewrite.uri is not None and rewrite.uri_regex_rewrite is not None:
            errors.add(f"{path}.rewrite", "set either 'uri' or 'uriRegexRewrite', not both")
        if rewrite.uri is not None and any(
            m.uri is not None and m.uri.regex is not None for m in route.match
        ):
            errors.add(
                f"{path}.rewrite.uri",
                "'rewrite.uri' replaces a matched prefix and cannot follow a regex URI match; "
                "use 'uriRegexRewrite'",
            )

    _check_positive(errors, f"{path}.timeout", route.timeout, "timeout")
    retries = route.retries
    if retries is not None:
        if retries.attempts is not None and retries.attempts < 0:
            errors.add(f"{path}.retries.attempts", "attempts must be 0 or more")
        _check_positive(
            errors, f"{path}.retries.perTryTimeout", retries.per_try_timeout, "perTryTimeout"
        )
        if retries.retry_on is not None:
            for raw in retries.retry_on.split(","):
                condition = raw.strip()
                if condition in _RETRY_ON or (
                    condition.isascii() and condition.isdigit() and 100 <= int(condition) <= 599
                ):
                    continue
                errors.add(
                    f"{path}.retries.retryOn",
                    f"retry condition {condition!r} is not supported: meshd retries on "
                    f"{', '.join(sorted(_RETRY_ON))} and HTTP status codes",
                )
    _check_headers(errors, f"{path}.headers", route.headers)


def _check_tcp_route(errors: _Errors, path: str, route: TCPRoute) -> None:
    if not route.route:
        errors.add(f"{path}.route", "a TCP route needs at least one destination")
    _check_weights(errors, f"{path}.route", [d.weight for d in route.route])
    for j, destination in enumerate(route.route):
        _check_destination(errors, f"{path}.route[{j}].destination", destination.destination)


def _check_virtual_service(errors: _Errors, vs: VirtualService) -> None:
    spec = vs.spec
    if not spec.hosts:
        errors.add("spec.hosts", "at least one host is required")
    for i, host in enumerate(spec.hosts):
        _check_host(errors, f"spec.hosts[{i}]", host)
    for i, gateway in enumerate(spec.gateways):
        if gateway != "mesh":
            errors.add(f"spec.gateways[{i}]", "meshd has no gateways; only 'mesh' is allowed")
    _check_export_to(errors, "spec.exportTo", spec.export_to)
    if not spec.http and not spec.tcp:
        errors.add("spec", "a VirtualService needs 'http' or 'tcp' routes")
    names: dict[str, int] = {}
    for i, route in enumerate(spec.http):
        if route.name:
            if route.name in names:
                errors.add(
                    f"spec.http[{i}].name",
                    f"route name {route.name!r} is already used by spec.http[{names[route.name]}]",
                )
            else:
                names[route.name] = i
        _check_http_route(errors, f"spec.http[{i}]", route)
    for i, tcp in enumerate(spec.tcp):
        _check_tcp_route(errors, f"spec.tcp[{i}]", tcp)


# --- DestinationRule -----------------------------------------------------------------------


def _check_traffic_policy(errors: _Errors, path: str, policy: TrafficPolicy | None) -> None:
    if policy is None or policy.load_balancer is None:
        return
    hashing = policy.load_balancer.consistent_hash
    if hashing is None:
        return
    where = f"{path}.loadBalancer.consistentHash"
    if hashing.http_header_name is not None:
        _check_header_name(errors, f"{where}.httpHeaderName", hashing.http_header_name)
    if hashing.http_cookie is not None and not _TOKEN.match(hashing.http_cookie.name):
        errors.add(f"{where}.httpCookie.name", f"invalid cookie name {hashing.http_cookie.name!r}")
    if hashing.http_query_parameter_name == "":
        errors.add(f"{where}.httpQueryParameterName", "the parameter name must not be empty")
    if hashing.minimum_ring_size == 0:
        errors.add(f"{where}.minimumRingSize", "minimumRingSize must be at least 1")


def _check_destination_rule(errors: _Errors, dr: DestinationRule) -> None:
    spec = dr.spec
    _check_host(errors, "spec.host", spec.host)
    _check_export_to(errors, "spec.exportTo", spec.export_to)
    _check_traffic_policy(errors, "spec.trafficPolicy", spec.traffic_policy)
    seen: dict[str, int] = {}
    for i, subset in enumerate(spec.subsets):
        path = f"spec.subsets[{i}]"
        if not _DNS_LABEL.match(subset.name):
            errors.add(
                f"{path}.name",
                f"invalid subset name {subset.name!r}: use lowercase letters, digits and '-'",
            )
        elif subset.name in seen:
            errors.add(
                f"{path}.name",
                f"subset {subset.name!r} is already defined by spec.subsets[{seen[subset.name]}]",
            )
        else:
            seen[subset.name] = i
        _check_traffic_policy(errors, f"{path}.trafficPolicy", subset.traffic_policy)


# --- ServiceEntry --------------------------------------------------------------------------

_PROTOCOLS = ("HTTP", "HTTP2", "GRPC", "TCP")
_ISTIO_PROTOCOLS = ("HTTPS", "TLS", "MONGO", "MYSQL", "REDIS", "UDP", "GRPC-WEB")


def _check_service_entry(errors: _Errors, se: ServiceEntry) -> None:
    spec = se.spec
    if not spec.hosts:
        errors.add("spec.hosts", "at least one host is required")
    for i, host in enumerate(spec.hosts):
        _check_host(errors, f"spec.hosts[{i}]", host)
    if not spec.ports:
        errors.add("spec.ports", "at least one port is required")
    names: dict[str, int] = {}
    numbers: dict[int, int] = {}
    for i, port in enumerate(spec.ports):
        path = f"spec.ports[{i}]"
        if port.name in names:
            errors.add(
                f"{path}.name",
                f"port name {port.name!r} is already used by ports[{names[port.name]}]",
            )
        names.setdefault(port.name, i)
        if port.number in numbers:
            errors.add(
                f"{path}.number",
                f"port {port.number} is already declared by ports[{numbers[port.number]}]",
            )
        numbers.setdefault(port.number, i)
        protocol = port.protocol
        if protocol is None:
            errors.add(
                f"{path}.protocol",
                "protocol is required: meshd does not sniff protocols; "
                "use HTTP, HTTP2, GRPC or TCP",
            )
        elif protocol.upper() in _ISTIO_PROTOCOLS:
            errors.add(
                f"{path}.protocol",
                f"protocol {protocol!r} is not supported yet: meshd routes HTTP, HTTP2, GRPC and "
                "TCP; declare TLS traffic as TCP to pass it through unchanged",
            )
        elif protocol.upper() not in _PROTOCOLS:
            errors.add(
                f"{path}.protocol", f"unknown protocol {protocol!r}: use HTTP, HTTP2, GRPC or TCP"
            )

    if spec.resolution is None:
        errors.add(
            "spec.resolution",
            "resolution is required: Istio's default NONE (forward to the original address) "
            "is not implemented; use STATIC, DNS or DNS_ROUND_ROBIN",
        )
    if spec.resolution == "STATIC" and not spec.endpoints:
        errors.add("spec.endpoints", "resolution STATIC needs at least one endpoint")
    for i, endpoint in enumerate(spec.endpoints):
        path = f"spec.endpoints[{i}]"
        address = endpoint.address
        if address is None:
            errors.add(f"{path}.address", "address is required")
        elif address.startswith("unix://"):
            errors.add(f"{path}.address", "Unix domain socket endpoints are not supported")
        elif spec.resolution == "STATIC" and not _is_ip(address):
            errors.add(
                f"{path}.address",
                f"{address!r} is not an IP address: with resolution STATIC endpoints are IPs "
                "(use resolution DNS for host names)",
            )
        elif not _is_ip(address) and (not _HOST.match(address) or "*" in address):
            errors.add(f"{path}.address", f"invalid address {address!r}")
        for name in endpoint.ports:
            if name not in names:
                errors.add(f"{path}.ports[{name!r}]", f"no port named {name!r} in spec.ports")
    _check_export_to(errors, "spec.exportTo", spec.export_to)
    for i, san in enumerate(spec.subject_alt_names):
        if not san:
            errors.add(f"spec.subjectAltNames[{i}]", "subject alt names must not be empty")


# --- Sidecar -------------------------------------------------------------------------------


def _check_sidecar_host(errors: _Errors, path: str, text: str) -> None:
    namespace, slash, name = text.partition("/")
    if not slash or "/" in name:
        errors.add(
            path, f"invalid host {text!r}: use 'namespace/dnsName', e.g. './*' or 'istio-system/*'"
        )
        return
    if namespace not in (".", "*", "~") and not _DNS_LABEL.match(namespace):
        errors.add(path, f"invalid namespace {namespace!r}: use '.', '*', '~' or a namespace name")
    if name == "*":
        return
    if "*" in name:
        errors.add(
            path, f"host {text!r} is not supported: wildcard host names are not supported yet"
        )
    elif not _HOST.match(name):
        errors.add(path, f"invalid host name {name!r}")


def _check_sidecar(errors: _Errors, sidecar: Sidecar) -> None:
    spec = sidecar.spec
    if spec.workload_selector is not None and not spec.workload_selector.labels:
        errors.add("spec.workloadSelector.labels", "a workloadSelector needs at least one label")
    for i, listener in enumerate(spec.egress):
        path = f"spec.egress[{i}].hosts"
        if not listener.hosts:
            errors.add(path, "an egress listener needs at least one host")
        for j, host in enumerate(listener.hosts):
            _check_sidecar_host(errors, f"{path}[{j}]", host)


# --- security ------------------------------------------------------------------------------


def _check_peer_authentication(errors: _Errors, pa: PeerAuthentication) -> None:
    spec = pa.spec
    if spec.port_level_mtls and (spec.selector is None or not spec.selector.match_labels):
        errors.add(
            "spec.portLevelMtls",
            "portLevelMtls requires a selector with matchLabels: port-level settings apply "
            "to selected workloads only",
        )


_CONDITION_KEYS = ("source.ip", "source.namespace", "source.principal", "destination.port")
_UNSUPPORTED_KEYS: tuple[tuple[str, str], ...] = (
    ("remote.ip", "meshd has no gateways or trusted proxies; use source.ip"),
    ("request.auth.", "JWT authentication is not implemented yet"),
    ("destination.ip", "matching the destination IP is not implemented yet"),
    ("connection.sni", "matching the TLS SNI is not implemented yet"),
    ("experimental.", "experimental Envoy attributes are not available"),
)
_HEADER_KEY = re.compile(r"^request\.headers\[(.*)\]\Z")


def _check_source(errors: _Errors, path: str, source: Source) -> None:
    for alias, values in (
        ("principals", source.principals),
        ("notPrincipals", source.not_principals),
        ("namespaces", source.namespaces),
        ("notNamespaces", source.not_namespaces),
    ):
        for k, value in enumerate(values):
            _check_wildcard_value(errors, f"{path}.{alias}[{k}]", value)
    for alias, values in (
        ("serviceAccounts", source.service_accounts),
        ("notServiceAccounts", source.not_service_accounts),
    ):
        for k, value in enumerate(values):
            namespace, _, name = value.rpartition("/")
            if "*" in value or not name or (namespace and not _DNS_LABEL.match(namespace)):
                errors.add(
                    f"{path}.{alias}[{k}]",
                    f"invalid service account {value!r}: use '<namespace>/<name>' or '<name>' "
                    "(no wildcards)",
                )
    for alias, values in (("ipBlocks", source.ip_blocks), ("notIpBlocks", source.not_ip_blocks)):
        for k, value in enumerate(values):
            if not _is_cidr(value):
                errors.add(
                    f"{path}.{alias}[{k}]",
                    f"invalid IP block {value!r}: use an address or CIDR such as 10.0.0.0/16",
                )


def _check_operation(errors: _Errors, path: str, operation: Operation) -> None:
    for alias, values in (
        ("hosts", operation.hosts),
        ("notHosts", operation.not_hosts),
        ("methods", operation.methods),
        ("notMethods", operation.not_methods),
        ("paths", operation.paths),
        ("notPaths", operation.not_paths),
    ):
        for k, value in enumerate(values):
            _check_wildcard_value(errors, f"{path}.{alias}[{k}]", value)
    for alias, values in (("ports", operation.ports), ("notPorts", operation.not_ports)):
        for k, value in enumerate(values):
            if not _is_port(value):
                errors.add(f"{path}.{alias}[{k}]", f"invalid port {value!r}: use a number 1-65535")


def _check_condition(errors: _Errors, path: str, condition: Condition) -> None:
    key = condition.key
    header = _HEADER_KEY.match(key)
    if header is not None:
        _check_header_name(errors, f"{path}.key", header.group(1))
    elif key not in _CONDITION_KEYS:
        reason = next((why for prefix, why in _UNSUPPORTED_KEYS if key.startswith(prefix)), None)
        if reason is not None:
            errors.add(f"{path}.key", f"condition key {key!r} is not supported: {reason}")
        else:
            errors.add(
                f"{path}.key",
                f"unknown condition key {key!r}: use request.headers[<name>], "
                f"{', '.join(_CONDITION_KEYS)} (methods, paths, hosts and ports belong in "
                "'to.operation')",
            )
        return
    if not condition.values and not condition.not_values:
        errors.add(path, "a condition needs 'values' or 'notValues'")
    for alias, values in (("values", condition.values), ("notValues", condition.not_values)):
        for k, value in enumerate(values):
            where = f"{path}.{alias}[{k}]"
            if key == "source.ip":
                if not _is_cidr(value):
                    errors.add(where, f"invalid IP block {value!r}: use an address or CIDR")
            elif key == "destination.port":
                if not _is_port(value):
                    errors.add(where, f"invalid port {value!r}: use a number 1-65535")
            else:
                _check_wildcard_value(errors, where, value)


def _check_authorization_policy(errors: _Errors, ap: AuthorizationPolicy) -> None:
    for i, rule in enumerate(ap.spec.rules):
        path = f"spec.rules[{i}]"
        for j, source in enumerate(rule.from_):
            where = f"{path}.from[{j}].source"
            if source.source is None or not source.source.model_fields_set:
                errors.add(where, "a source must set at least one field")
            else:
                _check_source(errors, where, source.source)
        for j, target in enumerate(rule.to):
            where = f"{path}.to[{j}].operation"
            if target.operation is None or not target.operation.model_fields_set:
                errors.add(where, "an operation must set at least one field")
            else:
                _check_operation(errors, where, target.operation)
        for j, condition in enumerate(rule.when):
            _check_condition(errors, f"{path}.when[{j}]", condition)


_CHECKS: Mapping[type[Any], Callable[[_Errors, Any], None]] = {
    VirtualService: _check_virtual_service,
    DestinationRule: _check_destination_rule,
    ServiceEntry: _check_service_entry,
    Sidecar: _check_sidecar,
    PeerAuthentication: _check_peer_authentication,
    AuthorizationPolicy: _check_authorization_policy,
}


def validate_resource(resource: Resource[Any]) -> list[FieldError]:
    """Every problem of ``resource`` on its own: first the fields and values meshd does not
    enforce; if there are none, the rules spanning several fields. Each error names the
    resource (``VirtualService default/reviews``)."""
    found = unsupported_errors(resource)
    if found:
        return found
    errors = _Errors(str(resource.key))
    check = _CHECKS.get(type(resource))
    if check is not None:
        check(errors, resource)
    return errors.items


# --- the whole set -------------------------------------------------------------------------


class DestinationRuleIndex:
    """Which DestinationRule configures a host for callers in a namespace. Istio's lookup
    order: the callers' namespace, then the host's namespace (a mesh service's, or for a
    ServiceEntry host the ServiceEntry's), then the root namespace, then any other
    namespace in lexical order; each only if the rule is exported to the callers.
    Within one namespace the first rule given wins (two are an error of the set)."""

    def __init__(
        self,
        rules: Iterable[DestinationRule],
        names: MeshNames = MeshNames(),
        literal_hosts: Container[str] = frozenset(),
        host_namespaces: Mapping[str, str] | None = None,
    ) -> None:
        self._names = names
        self._host_namespaces = host_namespaces or {}
        self._by_host: dict[str, list[DestinationRule]] = {}
        for rule in rules:
            namespace = rule.metadata.namespace
            fqdn = resolve_host(rule.spec.host, namespace, names.domain_suffix, literal_hosts)
            self._by_host.setdefault(fqdn, []).append(rule)

    def lookup(self, fqdn: str, namespace: str) -> DestinationRule | None:
        """The rule for ``fqdn`` (a resolved host) as seen from ``namespace``."""
        service = split_service_fqdn(fqdn, self._names.domain_suffix)
        host_namespace = service[0] if service else self._host_namespaces.get(fqdn)
        return pick_destination_rule(
            self._by_host.get(fqdn, ()), namespace, host_namespace, self._names.root_namespace
        )


def _subset_error(
    fqdn: str, subset: str, namespace: str, rule: DestinationRule | None
) -> str | None:
    if rule is None:
        return (
            f"subset {subset!r} of host {fqdn!r} is not defined: no DestinationRule for this "
            f"host is visible in namespace {namespace!r}"
        )
    defined = [s.name for s in rule.spec.subsets]
    if subset in defined:
        return None
    listing = ", ".join(defined) if defined else "no subsets"
    return (
        f"subset {subset!r} of host {fqdn!r} is not defined: DestinationRule "
        f"{rule.metadata.namespace}/{rule.metadata.name} defines {listing}"
    )


def validate_set(
    resources: Iterable[Resource[Any]],
    settings: MeshNames = MeshNames(),
    *,
    changed: Collection[ResourceKey] = (),
) -> list[FieldError]:
    """Problems between resources of the candidate state (stored resources with a batch
    applied). When two resources conflict, the error goes on the newer one: a resource
    in ``changed`` (the batch) is newer than one that is not; otherwise the later one in
    ``resources`` is."""
    given = list(resources)
    changed_keys = set(changed)
    items = [r for _, r in sorted(enumerate(given), key=lambda p: (p[1].key in changed_keys, p[0]))]
    vss = [r for r in items if isinstance(r, VirtualService)]
    drs = [r for r in items if isinstance(r, DestinationRule)]
    entries = sorted(
        (r for r in items if isinstance(r, ServiceEntry)),
        key=lambda se: (se.metadata.namespace, se.metadata.name),
    )
    host_namespaces: dict[str, str] = {}
    for se in entries:
        for host in se.spec.hosts:
            host_namespaces.setdefault(host.lower().rstrip("."), se.metadata.namespace)
    literal = frozenset(host_namespaces)
    suffix = settings.domain_suffix
    errors: list[FieldError] = []

    index = DestinationRuleIndex(drs, settings, literal, host_namespaces)
    for vs in vss:
        namespace = vs.metadata.namespace
        label = str(vs.key)
        routes: list[tuple[str, list[Destination]]] = [
            (f"spec.http[{i}]", [d.destination for d in r.route])
            for i, r in enumerate(vs.spec.http)
        ] + [
            (f"spec.tcp[{i}]", [d.destination for d in r.route]) for i, r in enumerate(vs.spec.tcp)
        ]
        for path, destinations in routes:
            for j, destination in enumerate(destinations):
                if destination.subset is None:
                    continue
                fqdn = resolve_host(destination.host, namespace, suffix, literal)
                message = _subset_error(
                    fqdn, destination.subset, namespace, index.lookup(fqdn, namespace)
                )
                if message is not None:
                    errors.append(
                        FieldError(f"{path}.route[{j}].destination.subset", message, label)
                    )

    claimed: dict[tuple[str, str], tuple[VirtualService, int]] = {}
    for vs in vss:
        namespace = vs.metadata.namespace
        for i, host in enumerate(vs.spec.hosts):
            fqdn = resolve_host(host, namespace, suffix, literal)
            previous = claimed.setdefault((namespace, fqdn), (vs, i))
            other, k = previous
            if other is vs:
                if k != i:
                    errors.append(
                        FieldError(
                            f"spec.hosts[{i}]",
                            f"host {fqdn!r} is listed twice (also spec.hosts[{k}])",
                            str(vs.key),
                        )
                    )
                continue
            errors.append(
                FieldError(
                    f"spec.hosts[{i}]",
                    f"host {fqdn!r} is already routed by VirtualService "
                    f"{namespace}/{other.metadata.name}: only one VirtualService per namespace "
                    "may claim a host; merge their routes into one",
                    str(vs.key),
                )
            )

    configured: dict[tuple[str, str], DestinationRule] = {}
    for dr in drs:
        namespace = dr.metadata.namespace
        fqdn = resolve_host(dr.spec.host, namespace, suffix, literal)
        first = configured.setdefault((namespace, fqdn), dr)
        if first is not dr:
            errors.append(
                FieldError(
                    "spec.host",
                    f"host {fqdn!r} is already configured by DestinationRule "
                    f"{namespace}/{first.metadata.name}: only one DestinationRule per namespace "
                    "may configure a host; merge them",
                    str(dr.key),
                )
            )

    wide: dict[str, PeerAuthentication] = {}
    for pa in (r for r in items if isinstance(r, PeerAuthentication)):
        if pa.spec.selector is not None and pa.spec.selector.match_labels:
            continue
        namespace = pa.metadata.namespace
        first_pa = wide.setdefault(namespace, pa)
        if first_pa is not pa:
            scope = (
                "the mesh-wide PeerAuthentication"
                if namespace == settings.root_namespace
                else f"the namespace-wide PeerAuthentication of {namespace!r}"
            )
            errors.append(
                FieldError(
                    "spec.selector",
                    f"{namespace}/{first_pa.metadata.name} is already {scope}; give this one a "
                    "selector or merge the two",
                    str(pa.key),
                )
            )

    scoped: dict[str, Sidecar] = {}
    for sidecar in (r for r in items if isinstance(r, Sidecar)):
        if sidecar.spec.workload_selector is not None:
            continue
        namespace = sidecar.metadata.namespace
        first_sidecar = scoped.setdefault(namespace, sidecar)
        if first_sidecar is not sidecar:
            errors.append(
                FieldError(
                    "spec.workloadSelector",
                    f"{namespace}/{first_sidecar.metadata.name} is already the Sidecar of "
                    f"namespace {namespace!r} (the one without a workloadSelector); give this one "
                    "a workloadSelector or merge the two",
                    str(sidecar.key),
                )
            )
    return errors
