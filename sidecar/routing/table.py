"""An :class:`~meshd.compile.snapshot.OutboundConfig` compiled for routing: :class:`RouteTable`.

Compiled once when a snapshot is applied, then only read (share it freely; swap it
atomically). Everything a request would otherwise recompute is done here:

- the virtual host of every domain sits in one dict (domains are lowercase, each with
  and without its port, as the compiler emits them);
- each route becomes one entry per match alternative (as Istio makes one Envoy route per
  ``HTTPMatchRequest``), holding a path predicate (plain ``str`` operations for exact and
  prefix, a compiled ``re`` pattern's ``fullmatch`` for regex), the other conditions as
  small predicates, and the decision it returns;
- ``Forward`` and ``DirectResponse`` decisions are built here, once, and returned as they
  are: routing a request allocates nothing but the redirects it builds;
- header operations are folded into :class:`HeaderEdits` (destination level first, then
  route level, Envoy's order), retry policies into :class:`~sidecar.routing.retry.RetryRule`,
  rewrites into :class:`RewriteRule`.

The decision types live here too; :mod:`sidecar.routing.route` matches requests against
the table.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from meshd.compile import snapshot as s
from sidecar.routing.request import RequestView, split_authority
from sidecar.routing.retry import RetryRule, compile_retry

__all__ = [
    "NO_EDITS",
    "DirectResponse",
    "Forward",
    "HeaderEdits",
    "NoRoute",
    "Redirect",
    "RewriteRule",
    "RouteDecision",
    "RouteTable",
    "TcpForward",
    "VirtualHostTable",
    "WeightedCluster",
    "apply_header_ops",
    "compile_header_ops",
    "compile_table",
]

# --- header operations -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """Header operations ready to apply: one ``(drop, append)`` step per level. ``drop``
    holds the names removed and the names set (a set replaces every value); ``append``
    the pairs set and then the pairs added. Names are lowercase."""

    steps: tuple[tuple[frozenset[str], tuple[tuple[str, str], ...]], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.steps


NO_EDITS = HeaderEdits()


def compile_header_ops(*levels: s.HeaderOps) -> HeaderEdits:
    """Fold ``levels`` (applied in this order) into one :class:`HeaderEdits`. Within a
    level Envoy removes first, then sets and adds."""
    steps = []
    for ops in levels:
        if ops.empty:
            continue
        drop = frozenset(ops.remove) | frozenset(name for name, _ in ops.set)
        append = tuple(ops.set) + tuple(ops.add)
        steps.append((drop, append))
    return HeaderEdits(tuple(steps)) if steps else NO_EDITS


def apply_header_ops(
    headers: Sequence[tuple[str, str]], ops: s.HeaderOps | HeaderEdits
) -> list[tuple[str, str]]:
    """``headers`` with ``ops`` applied: ``set`` replaces every value of a header,
    ``add`` appends one, ``remove`` deletes every value. Names in ``headers`` may be in
    any case; they are compared lowercased. Returns a new list."""
    edits = ops if isinstance(ops, HeaderEdits) else compile_header_ops(ops)
    out = list(headers)
    for drop, append in edits.steps:
        if drop:
            out = [(n, v) for n, v in out if n.lower() not in drop]
        if append:
            out.extend(append)
    return out


# --- decisions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WeightedCluster:
    """One destination of a :class:`Forward`. ``cumulative`` is the sum of the weights
    up to and including this one (for :func:`~sidecar.routing.route.pick_cluster`);
    ``request_header_ops``/``response_header_ops`` are this destination's operations
    followed by the route's, so they are all the caller applies."""

    cluster: str
    weight: int
    cumulative: int
    request_header_ops: HeaderEdits = NO_EDITS
    response_header_ops: HeaderEdits = NO_EDITS


@dataclass(frozen=True, slots=True)
class RewriteRule:
    """How a :class:`Forward` rewrites the request (see
    :func:`~sidecar.routing.route.rewritten_target`).

    ``path_kind``: ``prefix`` replaces the first ``prefix_len`` characters of the path
    (the prefix the route matched) with ``replacement``; ``path`` replaces the whole path
    (after an exact or regex match, or no uri match); ``regex`` substitutes every match
    of ``pattern`` in the path with ``template`` (RE2's ``\\0``-``\\9`` references);
    None leaves the path alone. ``authority``, when set, replaces the Host."""

    path_kind: Literal["prefix", "path", "regex"] | None = None
    prefix_len: int = 0
    replacement: str = ""
    pattern: re.Pattern[str] | None = None
    template: tuple[str | int, ...] = ()
    authority: str | None = None


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the request upstream: pick one of ``clusters`` (``pick_cluster``), apply
    its header operations and the rewrite, and bound the whole exchange by
    ``timeout_ms`` (None: no route timeout), retrying per ``retries`` (None: never).
    ``request_header_ops``/``response_header_ops`` are the route-level operations alone
    (already folded into every cluster's)."""

    route_name: str
    vhost_name: str
    clusters: tuple[WeightedCluster, ...]
    total_weight: int
    timeout_ms: int | None = None
    retries: RetryRule | None = None
    rewrite: RewriteRule | None = None
    request_header_ops: HeaderEdits = NO_EDITS
    response_header_ops: HeaderEdits = NO_EDITS
    match_name: str = ""


@dataclass(frozen=True, slots=True)
class Redirect:
    """Answer ``status`` with ``Location: location`` (no upstream)."""

    status: int
    location: str
    route_name: str = ""
    vhost_name: str = ""
    response_header_ops: HeaderEdits = NO_EDITS


@dataclass(frozen=True, slots=True)
class DirectResponse:
    """Answer ``status`` with ``body`` (empty: no body) and no upstream."""

    status: int
    body: bytes = b""
    route_name: str = ""
    vhost_name: str = ""
    response_header_ops: HeaderEdits = NO_EDITS


@dataclass(frozen=True, slots=True)
class NoRoute:
    """Nothing routes the request. ``vhost_name`` None means no virtual host has the
    request's authority: the caller passes it through when ``RouteTable.allow_any``
    (Istio's ALLOW_ANY) and answers ``status`` otherwise; with a virtual host, no route
    of it matched and the answer is ``status`` (404)."""

    status: int = 404
    reason: str = ""
    vhost_name: str | None = None


RouteDecision = Forward | Redirect | DirectResponse | NoRoute


@dataclass(frozen=True, slots=True)
class TcpForward:
    """Where a TCP connection to ``service:port`` goes (``pick_cluster`` works on it)."""

    service: str
    port: int
    clusters: tuple[WeightedCluster, ...]
    total_weight: int


# --- the compiled table ------------------------------------------------------------------

Predicate = Callable[[RequestView], bool]
StrPredicate = Callable[[str], object]


@dataclass(frozen=True, slots=True)
class RedirectTemplate:
    """A redirect route: the Location depends on the request, so it is built per request
    (:meth:`build`)."""

    action: s.RedirectAction
    route_name: str
    vhost_name: str
    response_header_ops: HeaderEdits

    def build(self, req: RequestView) -> Redirect:
        a = self.action
        scheme = a.scheme or req.scheme
        port: int | None
        if a.authority is not None:
            host, port = split_authority(a.authority)
        else:
            host, port = split_authority(req.authority)
            if a.scheme is not None and a.scheme != req.scheme:
                port = None  # a scheme change drops the old scheme's port
        if a.port is not None:
            port = a.port
        if port is not None and port == _DEFAULT_PORTS.get(scheme):
            port = None
        if a.uri is not None:
            path = a.uri
            if "?" not in path and req.query:
                path = f"{path}?{req.query}"
        else:
            path = req.target
        netloc = host if port is None else f"{host}:{port}"
        return Redirect(
            a.status, f"{scheme}://{netloc}{path}", self.route_name, self.vhost_name,
            self.response_header_ops,
        )  # fmt: skip


_DEFAULT_PORTS = {"http": 80, "https": 443}

Target = Forward | DirectResponse | RedirectTemplate
Entry = tuple[StrPredicate | None, tuple[Predicate, ...], Target]


@dataclass(frozen=True, slots=True)
class VirtualHostTable:
    """One virtual host's routes, compiled: ``entries`` in order, first match wins."""

    name: str
    entries: tuple[Entry, ...]
    no_route: NoRoute
    source: str | None = None


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Everything :func:`~sidecar.routing.route.route` needs. ``hosts`` maps every
    domain (lowercase, with and without port) to its virtual host; ``allow_any`` is
    Istio's ``outboundTrafficPolicy: ALLOW_ANY`` (pass unknown hosts through);
    ``tcp`` maps ``(service, port)`` to where TCP connections go."""

    hosts: dict[str, VirtualHostTable]
    allow_any: bool
    no_vhost: NoRoute
    tcp: dict[tuple[str, int], TcpForward]
    digest: str = ""

    @property
    def virtual_hosts(self) -> tuple[VirtualHostTable, ...]:
        seen: dict[str, VirtualHostTable] = {}
        for vh in self.hosts.values():
            seen.setdefault(vh.name, vh)
        return tuple(seen.values())


def compile_table(outbound: s.OutboundConfig) -> RouteTable:
    """Compile ``outbound`` (a snapshot that passed ``meshd.compile.check``)."""
    hosts: dict[str, VirtualHostTable] = {}
    for vh in outbound.virtual_hosts:
        compiled = _compile_vhost(vh)
        for domain in vh.domains:
            hosts.setdefault(domain.lower(), compiled)
    tcp: dict[tuple[str, int], TcpForward] = {}
    for ts in outbound.tcp_services:
        tr = next((r for r in ts.routes if r.port is None or r.port == ts.port), None)
        if tr is not None:
            clusters, total = _weighted(tr.clusters, ())
            tcp[(ts.name, ts.port)] = TcpForward(ts.name, ts.port, clusters, total)
    return RouteTable(
        hosts=hosts,
        allow_any=outbound.allow_any,
        no_vhost=NoRoute(404, "no virtual host matches the request's authority", None),
        tcp=tcp,
        digest=outbound.digest,
    )


def _compile_vhost(vh: s.VirtualHost) -> VirtualHostTable:
    entries: list[Entry] = []
    for route in vh.routes:
        alternatives: Iterable[s.RouteMatch | None] = route.matches or (None,)
        for m in alternatives:
            target = _target(vh.name, route, m)
            if m is None:
                entries.append((None, (), target))
            else:
                entries.append((_path_predicate(m.uri), _predicates(m), target))
    no_route = NoRoute(404, f"no route of {vh.name} matches the request", vh.name)
    return VirtualHostTable(vh.name, tuple(entries), no_route, vh.source)


def _target(vhost: str, route: s.Route, m: s.RouteMatch | None) -> Target:
    action = route.action
    if isinstance(action, s.RedirectAction):
        return RedirectTemplate(
            action, route.name, vhost, compile_header_ops(route.response_headers)
        )
    if isinstance(action, s.DirectResponseAction):
        body = action.body.encode() if action.body else b""
        return DirectResponse(
            action.status, body, route.name, vhost, compile_header_ops(route.response_headers)
        )
    clusters, total = _weighted(action.clusters, (route.request_headers, route.response_headers))
    return Forward(
        route_name=route.name,
        vhost_name=vhost,
        clusters=clusters,
        total_weight=total,
        timeout_ms=action.timeout_ms,
        retries=compile_retry(action.retries) if action.retries is not None else None,
        rewrite=_rewrite(action.rewrite, m),
        request_header_ops=compile_header_ops(route.request_headers),
        response_header_ops=compile_header_ops(route.response_headers),
        match_name=m.name if m is not None else "",
    )


def _weighted(
    clusters: tuple[s.WeightedCluster, ...], route_ops: tuple[s.HeaderOps, ...] | tuple[()]
) -> tuple[tuple[WeightedCluster, ...], int]:
    out: list[WeightedCluster] = []
    total = 0
    for wc in clusters:
        weight = max(wc.weight, 0)
        total += weight
        if route_ops:
            req_ops, resp_ops = route_ops
            request = compile_header_ops(wc.request_headers, req_ops)
            response = compile_header_ops(wc.response_headers, resp_ops)
        else:
            request = compile_header_ops(wc.request_headers)
            response = compile_header_ops(wc.response_headers)
        out.append(WeightedCluster(wc.cluster, weight, total, request, response))
    return tuple(out), total


# --- rewrites ----------------------------------------------------------------------------


def _rewrite(rw: s.Rewrite | None, m: s.RouteMatch | None) -> RewriteRule | None:
    if rw is None:
        return None
    authority = rw.authority or None
    if rw.uri_regex is not None:
        pattern, substitution = rw.uri_regex
        return RewriteRule(
            "regex", pattern=re.compile(pattern), template=_template(substitution),
            authority=authority,
        )  # fmt: skip
    if rw.uri is not None:
        uri = m.uri if m is not None else None
        if uri is not None and uri.kind == "prefix":
            return RewriteRule("prefix", len(uri.value), rw.uri, authority=authority)
        return RewriteRule("path", 0, rw.uri, authority=authority)
    if authority is None:
        return None
    return RewriteRule(authority=authority)


def _template(substitution: str) -> tuple[str | int, ...]:
    """RE2 rewrite syntax: ``\\0``-``\\9`` name a group (0 the whole match), ``\\\\`` is
    a backslash; any other character is literal."""
    parts: list[str | int] = []
    text: list[str] = []
    i, n = 0, len(substitution)
    while i < n:
        c = substitution[i]
        if c == "\\" and i + 1 < n:
            nxt = substitution[i + 1]
            if nxt.isdigit():
                if text:
                    parts.append("".join(text))
                    text.clear()
                parts.append(int(nxt))
                i += 2
                continue
            if nxt == "\\":
                text.append("\\")
                i += 2
                continue
        text.append(c)
        i += 1
    if text:
        parts.append("".join(text))
    return tuple(parts)


# --- matchers ----------------------------------------------------------------------------


def _string_predicate(sm: s.StringMatch, *, lowered_input: bool = False) -> StrPredicate:
    """A predicate on a string for ``sm``. ``lowered_input``: the input is already
    lowercase and the match is case-insensitive (authority, scheme)."""
    value = sm.value
    ignore_case = sm.ignore_case or lowered_input
    if sm.kind == "regex":
        return re.compile(value, re.IGNORECASE if ignore_case else 0).fullmatch
    if ignore_case:
        low = value.lower()
        if sm.kind == "exact":
            if lowered_input:
                return low.__eq__
            return lambda v: v.lower() == low
        if lowered_input:
            return lambda v: v.startswith(low)
        n = len(value)
        return lambda v: v[:n].lower() == low
    if sm.kind == "exact":
        return value.__eq__
    return lambda v: v.startswith(value)


def _path_predicate(uri: s.StringMatch | None) -> StrPredicate | None:
    return None if uri is None else _string_predicate(uri)


def _predicates(m: s.RouteMatch) -> tuple[Predicate, ...]:
    preds: list[Predicate] = []
    if m.method is not None:
        preds.append(_attr_predicate("method", _string_predicate(m.method)))
    if m.authority is not None:
        preds.append(
            _attr_predicate("authority", _string_predicate(m.authority, lowered_input=True))
        )
    if m.scheme is not None:
        preds.append(_attr_predicate("scheme", _string_predicate(m.scheme, lowered_input=True)))
    if m.port is not None:
        preds.append(_port_predicate(m.port))
    preds.extend(_header_predicate(h) for h in m.headers)
    preds.extend(_query_predicate(q) for q in m.query_params)
    return tuple(preds)


def _attr_predicate(attr: Literal["method", "authority", "scheme"], sp: StrPredicate) -> Predicate:
    if attr == "method":
        return lambda r: bool(sp(r.method))
    if attr == "authority":
        return lambda r: bool(sp(r.authority))
    return lambda r: bool(sp(r.scheme.lower()))


def _port_predicate(port: int) -> Predicate:
    return lambda r: r.port == port


def _header_predicate(h: s.HeaderMatch) -> Predicate:
    name = h.name
    if h.match is None:
        if h.invert:
            return lambda r: r.headers.get(name) is None
        return lambda r: r.headers.get(name) is not None
    sp = _string_predicate(h.match)
    if h.invert:
        return lambda r: (v := r.headers.get(name)) is None or not sp(v)
    return lambda r: (v := r.headers.get(name)) is not None and bool(sp(v))


def _query_predicate(q: s.QueryParamMatch) -> Predicate:
    name = q.name
    if q.match is None:
        return lambda r: r.query_param(name) is not None
    sp = _string_predicate(q.match)
    return lambda r: (v := r.query_param(name)) is not None and bool(sp(v))
