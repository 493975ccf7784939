"""``route(table, request) -> RouteDecision``: the routing core, a pure function.

Istio's VirtualService semantics on a :class:`~sidecar.routing.table.RouteTable`:

1. the virtual host is the one whose domains hold the request's authority exactly
   (lowercase; the compiler lists each name with and without its port). None:
   :class:`NoRoute` with ``vhost_name=None`` (the caller passes the request through when
   ``table.allow_any``);
2. its routes are tried in order; a route matches when any of its match alternatives
   holds (a route without matches always does), an alternative when every condition it
   sets holds; the first match decides;
3. no route matches: :class:`NoRoute` (404).

Helpers the proxy calls after a :class:`Forward`: :func:`pick_cluster` (weighted
choice with an injected ``random.Random``), :func:`rewritten_target` and
:func:`rewritten_authority`.
"""

from __future__ import annotations

from random import Random
from re import Match

from sidecar.routing.request import RequestView
from sidecar.routing.table import (
    DirectResponse,
    Forward,
    NoRoute,
    Redirect,
    RedirectTemplate,
    RewriteRule,
    RouteDecision,
    RouteTable,
    TcpForward,
    VirtualHostTable,
    WeightedCluster,
    apply_header_ops,
)

__all__ = [
    "DirectResponse",
    "Forward",
    "NoRoute",
    "Redirect",
    "RouteDecision",
    "apply_header_ops",
    "find_virtual_host",
    "pick_cluster",
    "rewritten_authority",
    "rewritten_target",
    "route",
    "route_tcp",
]


def find_virtual_host(table: RouteTable, authority: str) -> VirtualHostTable | None:
    vh = table.hosts.get(authority)
    if vh is None:
        low = authority.lower()
        if low != authority:
            vh = table.hosts.get(low)
    return vh


def route(table: RouteTable, request: RequestView) -> RouteDecision:
    """The decision for ``request``. Never raises for any request view."""
    vh = table.hosts.get(request.authority)
    if vh is None:
        vh = find_virtual_host(table, request.authority)
        if vh is None:
            return table.no_vhost
    path = request.path
    for path_pred, preds, target in vh.entries:
        if path_pred is not None and not path_pred(path):
            continue
        matched = True
        for pred in preds:
            if not pred(request):
                matched = False
                break
        if matched:
            if type(target) is RedirectTemplate:
                return target.build(request)
            return target  # type: ignore[return-value]  # Forward | DirectResponse
    return vh.no_route


def route_tcp(table: RouteTable, service: str, port: int) -> TcpForward | None:
    """Where a TCP connection for ``service:port`` goes (None: no TCP route)."""
    return table.tcp.get((service, port))


def pick_cluster(decision: Forward | TcpForward, rng: Random) -> WeightedCluster:
    """One of ``decision.clusters``, each with probability weight / total weight (a
    zero weight is never picked). One ``rng.random()`` call; O(n) over a handful."""
    clusters = decision.clusters
    if len(clusters) == 1 or decision.total_weight <= 0:
        return clusters[0]
    x = rng.random() * decision.total_weight
    for wc in clusters:
        if x < wc.cumulative:
            return wc
    return clusters[-1]


def rewritten_target(decision: Forward, request: RequestView) -> str:
    """The request-target (path and query) to send upstream after the route's rewrite.

    ``uri`` replaces the prefix the route matched (a prefix match), else the whole path;
    ``uri_regex`` substitutes every match in the path. The query is kept; when the new
    path brings its own query, the original one is appended with ``&``."""
    rw = decision.rewrite
    if rw is None or rw.path_kind is None:
        return request.target
    path = _rewrite_path(rw, request.path)
    query = request.query
    if not query:
        return path
    return f"{path}&{query}" if "?" in path else f"{path}?{query}"


def _rewrite_path(rw: RewriteRule, path: str) -> str:
    kind = rw.path_kind
    if kind == "prefix":
        return rw.replacement + path[rw.prefix_len :]
    if kind == "path":
        return rw.replacement
    assert rw.pattern is not None
    template = rw.template

    def expand(m: Match[str]) -> str:
        out: list[str] = []
        for part in template:
            if isinstance(part, int):
                try:
                    out.append(m.group(part) or "")
                except IndexError:  # a group the pattern lacks: RE2 would reject it
                    continue
            else:
                out.append(part)
        return "".join(out)

    return rw.pattern.sub(expand, path)


def rewritten_authority(decision: Forward, request: RequestView) -> str:
    """The Host to send upstream (the rewrite's authority, else the request's)."""
    rw = decision.rewrite
    if rw is not None and rw.authority is not None:
        return rw.authority
    return request.authority
