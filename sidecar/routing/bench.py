"""Micro-benchmark of the decision cores: ``python -m sidecar.routing.bench``.

Builds a table of 100 virtual hosts (each with the route shapes a VirtualService
typically has: exact and prefix matches, a regex, a header match, a method match, a
weighted catch-all) and prints microseconds per call for ``route()`` on several request
shapes, and for the per-request work around it (building the request view, picking a
cluster and an endpoint, classifying a retry, authorization). Not a test: numbers
depend on the machine; compare runs on one machine before and after a change.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from meshd.compile import snapshot as s
from sidecar.filters.authz import Attributes, compile_authz, evaluate
from sidecar.lb.balancers import LoadRegistry, build_balancer
from sidecar.microbench import best_seconds_per_call
from sidecar.routing.request import RequestView
from sidecar.routing.retry import Failure, compile_retry, should_retry
from sidecar.routing.route import pick_cluster, rewritten_target, route
from sidecar.routing.table import Forward, compile_table

VHOSTS = 100


def _vhost(i: int) -> tuple[s.VirtualHost, list[s.Cluster]]:
    name = f"svc{i}.default.svc.cluster.local"
    v1, v2 = f"outbound|8080|v1|{name}", f"outbound|8080|v2|{name}"
    fwd = s.ForwardAction((s.WeightedCluster(v1, 100),), retries=s.RetryPolicy(2))
    routes = (
        s.Route("exact", (s.RouteMatch(uri=s.StringMatch("exact", "/healthz")),), fwd),
        s.Route(
            "canary",
            (
                s.RouteMatch(
                    uri=s.StringMatch("prefix", "/api/"),
                    headers=(s.HeaderMatch("x-canary", s.StringMatch("exact", "yes")),),
                ),
            ),
            s.ForwardAction((s.WeightedCluster(v2, 100),)),
        ),
        s.Route(
            "items",
            (s.RouteMatch(uri=s.StringMatch("regex", r"/items/[0-9]+")),),
            s.ForwardAction(
                (s.WeightedCluster(v1, 100),), rewrite=s.Rewrite(uri_regex=(r"/items/", "/i/"))
            ),
        ),
        s.Route(
            "writes",
            (
                s.RouteMatch(
                    uri=s.StringMatch("prefix", "/api/"), method=s.StringMatch("exact", "POST")
                ),
            ),
            fwd,
        ),
        s.Route(
            "old",
            (s.RouteMatch(uri=s.StringMatch("prefix", "/old/")),),
            s.RedirectAction(uri="/new/"),
        ),
        s.Route(
            "split",
            (),
            s.ForwardAction((s.WeightedCluster(v1, 80), s.WeightedCluster(v2, 20))),
        ),
    )
    domains = (name, f"{name}:8080", f"svc{i}", f"svc{i}:8080", f"svc{i}.default")
    eps = tuple(s.Endpoint(f"198.18.{i}.{k}", 15006) for k in range(1, 4))
    clusters = [
        s.Cluster(v1, name, 8080, "v1", "http", eps),
        s.Cluster(v2, name, 8080, "v2", "http", eps, lb=s.LoadBalancer("LEAST_REQUEST")),
    ]
    return s.VirtualHost(f"{name}:8080", domains, routes), clusters


def _outbound() -> s.OutboundConfig:
    vhosts, clusters = [], []
    for i in range(VHOSTS):
        vh, cs = _vhost(i)
        vhosts.append(vh)
        clusters.extend(cs)
    return s.OutboundConfig(tuple(vhosts), (), tuple(clusters))


def _per_call_us(fn: Callable[[], object], seconds: float) -> float:
    return best_seconds_per_call(fn, seconds, first_n=1000) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=0.3, help="time per measurement")
    args = parser.parse_args()

    outbound = _outbound()
    start = time.perf_counter()
    table = compile_table(outbound)
    compile_ms = (time.perf_counter() - start) * 1e3
    rng = random.Random(1)  # noqa: S311  (load-balancing draws, not secrets)
    host = b"svc57.default.svc.cluster.local:8080"

    def view(target: bytes, *extra: tuple[bytes, bytes]) -> RequestView:
        raw = [(b"host", host), (b"user-agent", b"bench"), (b"accept", b"*/*"), *extra]
        return RequestView.from_head(b"GET", target, raw, port=15001)

    heads = {
        "first route (exact /healthz)": view(b"/healthz"),
        "header match (x-canary)": view(b"/api/users", (b"x-canary", b"yes")),
        "regex route (/items/42)": view(b"/items/42"),
        "catch-all split (6th route)": view(b"/other/path?q=1"),
        "redirect (builds Location)": view(b"/old/page"),
        "unknown host": RequestView("GET", "/", "", "nowhere.example", 15001),
    }
    print(f"route table: {VHOSTS} virtual hosts, {len(table.hosts)} domains, "
          f"compiled in {compile_ms:.1f} ms")  # fmt: skip
    print("µs per call (best of 3):")
    for label, req in heads.items():
        us = _per_call_us(lambda req=req: route(table, req), args.seconds)  # type: ignore[misc]
        print(f"  route(): {label:<32} {us:6.2f}")

    raw = [(b"host", host), (b"user-agent", b"bench"), (b"accept", b"*/*")]
    us = _per_call_us(
        lambda: RequestView.from_head(b"GET", b"/api/users?id=7", raw, port=15001), args.seconds
    )
    print(f"  RequestView.from_head (3 headers)        {us:6.2f}")
    canary = [*raw, (b"x-canary", b"yes")]

    def head_and_route() -> object:
        req = RequestView.from_head(b"GET", b"/api/users?id=7", canary, port=15001)
        return route(table, req)

    us = _per_call_us(head_and_route, args.seconds)
    print(f"  from_head + route() on a header match    {us:6.2f}")
    split = route(table, heads["catch-all split (6th route)"])
    assert isinstance(split, Forward)
    us = _per_call_us(lambda: pick_cluster(split, rng), args.seconds)
    print(f"  pick_cluster (80/20)                     {us:6.2f}")
    items_req = heads["regex route (/items/42)"]
    items = route(table, items_req)
    assert isinstance(items, Forward)
    us = _per_call_us(lambda: rewritten_target(items, items_req), args.seconds)
    print(f"  rewritten_target (regex)                 {us:6.2f}")

    loads = LoadRegistry()
    for c in outbound.clusters[:2]:
        balancer = build_balancer(c, loads, rng)
        us = _per_call_us(lambda b=balancer: b.choose(rng), args.seconds)  # type: ignore[misc]
        print(f"  choose(): {c.lb.policy:<30} {us:6.2f}")
    hashed = s.Cluster(
        "hash", "h", 80, None, "http", outbound.clusters[0].endpoints,
        lb=s.LoadBalancer(consistent_hash=s.ConsistentHash("header", "x-user")),
    )  # fmt: skip
    hb = build_balancer(hashed, loads)
    hreq = view(b"/", (b"x-user", b"alice"))
    us = _per_call_us(lambda: hb.choose(rng, hreq), args.seconds)
    print(f"  choose(): consistent hash on a header    {us:6.2f}")

    rule = compile_retry(s.RetryPolicy(2, retry_on=("5xx", "retriable-4xx")))
    us = _per_call_us(lambda: should_retry(rule, 503), args.seconds)
    print(f"  should_retry (status)                    {us:6.2f}")
    us = _per_call_us(lambda: should_retry(rule, Failure.RESET), args.seconds)
    print(f"  should_retry (reset)                     {us:6.2f}")

    deny_admin = s.AuthzRule(
        operations=((s.Constraint("request.path", (s.ValueMatch("prefix", "/admin"),)),),)
    )
    allow_web = s.AuthzRule(
        sources=((s.Constraint("source.namespace", (s.ValueMatch("exact", "web"),)),),),
        operations=((s.Constraint("request.method", (s.ValueMatch("exact", "GET"),)),),),
    )
    authz = compile_authz(
        [
            s.AuthzPolicy("default/deny-admin", "DENY", (deny_admin,)),
            s.AuthzPolicy("default/allow-frontend", "ALLOW", (allow_web,)),
        ]
    )
    attrs = Attributes.for_request(
        peer_spiffe_id="spiffe://cluster.local/ns/web/sa/frontend",
        source_ip="198.18.0.9",
        method="GET",
        path="/api/users",
        host="svc57",
        port=15006,
    )
    us = _per_call_us(lambda: evaluate(authz, attrs), args.seconds)
    print(f"  authz evaluate (1 DENY + 1 ALLOW)        {us:6.2f}")


if __name__ == "__main__":
    main()
