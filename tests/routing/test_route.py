"""route(table, request) -> RouteDecision, from tables: the golden snapshots the compiler
emits, and small hand-made configs for each matcher and decision kind."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.compile import snapshot as s
from sidecar.routing import (
    DirectResponse,
    Forward,
    Headers,
    NoRoute,
    Redirect,
    RequestView,
    RouteTable,
    compile_table,
    pick_cluster,
    rewritten_authority,
    rewritten_target,
    route,
    route_tcp,
)
from tests.routing.goldens import snapshot, snapshots


def view(
    target: str = "/",
    host: str = "svc",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    port: int = 15001,
    scheme: str = "http",
) -> RequestView:
    raw = [(b"host", host.encode())] + [
        (k.encode(), v.encode()) for k, v in (headers or {}).items()
    ]
    return RequestView.from_head(method, target, raw, port=port, scheme=scheme)


def describe(decision: object) -> tuple[object, ...]:
    """A decision as a comparable tuple: kind and what matters for it."""
    if isinstance(decision, Forward):
        return ("forward", decision.route_name, tuple(c.cluster for c in decision.clusters))
    if isinstance(decision, Redirect):
        return ("redirect", decision.status, decision.location)
    if isinstance(decision, DirectResponse):
        return ("direct", decision.status, decision.body)
    assert isinstance(decision, NoRoute)
    return ("none", decision.status, decision.vhost_name)


# --- the golden snapshots --------------------------------------------------------------

SHOP = "shop.default.svc.cluster.local"
V1, V2 = f"outbound|8080|v1|{SHOP}", f"outbound|8080|v2|{SHOP}"


@pytest.fixture(scope="module")
def shop_table() -> RouteTable:
    return compile_table(snapshot("route-features", "client-1.default").outbound)


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        # redirect: exact uri; Location from the action, query kept
        (
            view("/old-cart?x=1", "shop"),
            ("redirect", 308, "https://shop.example.com:8443/cart?x=1"),
        ),
        (view("/old-cart/", "shop"), ("forward", "rest", (V1, V2))),  # exact is exact
        # direct responses: a method match, a bytes body decoded by the compiler
        (view("/tea/pot", "shop:8080", "BREW"), ("direct", 418, b"I'm a teapot")),
        (view("/tea/pot", "shop:8080", "GET"), ("forward", "rest", (V1, V2))),
        (view("/maintenance/x", "shop.default"), ("direct", 503, b"down for maintenance\n")),
        # api-v2, first alternative: ignoreUriCase prefix, a regex header, withoutHeaders,
        # a query parameter exact and one present
        (
            view("/api/V2/x?debug=1&trace", "SHOP", headers={"X-Canary": "true"}),
            ("forward", "api-v2", (V2,)),
        ),
        (
            view("/api/v2/x?debug=1&trace", "shop", headers={"x-canary": "true", "x-legacy": "1"}),
            ("forward", "rest", (V1, V2)),
        ),
        (
            view("/api/v2/x?debug=1", "shop", headers={"x-canary": "true"}),
            ("forward", "rest", (V1, V2)),
        ),
        (
            view("/api/v2/x?debug=2&trace", "shop", headers={"x-canary": "true"}),
            ("forward", "rest", (V1, V2)),
        ),
        (
            view("/api/v2/x?debug=1&trace", "shop", headers={"x-canary": "truely"}),
            ("forward", "rest", (V1, V2)),
        ),
        # api-v2, second alternative: authority prefix and scheme
        (view("/anything", "beta.x", scheme="https"), ("none", 404, None)),  # no such host
        # regex route: full match only
        (view("/items/42", "shop"), ("forward", "regex-rewrite", (V1,))),
        (view("/items/42/reviews", "shop"), ("forward", "rest", (V1, V2))),
        # the second port's virtual host has the port-only route
        (
            view("/whatever", "shop:9000"),
            ("forward", "admin-port", (f"outbound|9000||{SHOP}",)),
        ),
        (
            view("/", "shop.default.svc.cluster.local:9000"),
            ("forward", "admin-port", (f"outbound|9000||{SHOP}",)),
        ),
        # unknown hosts and ports
        (view("/", "shop:9999"), ("none", 404, None)),
        (view("/", "elsewhere.example.com"), ("none", 404, None)),
    ],
)
def test_route_features(
    shop_table: RouteTable, req: RequestView, expected: tuple[object, ...]
) -> None:
    assert describe(route(shop_table, req)) == expected


def test_route_features_forward_details(shop_table: RouteTable) -> None:
    req = view("/API/v2/items?debug=1&trace", "shop", headers={"x-canary": "yes"})
    d = route(shop_table, req)
    assert isinstance(d, Forward)
    assert (d.vhost_name, d.timeout_ms) == (f"{SHOP}:8080", 1500)
    assert d.retries is not None
    assert (d.retries.attempts, d.retries.per_try_timeout_ms) == (3, 500)
    assert rewritten_target(d, req) == "/v2/items?debug=1&trace"
    assert rewritten_authority(d, req) == "shop-internal"
    (wc,) = d.clusters
    # destination-level then route-level request operations, route-level response ones
    assert wc.request_header_ops.steps == (
        (frozenset({"x-subset"}), (("x-subset", "v2"),)),
        (frozenset({"x-route", "cookie"}), (("x-route", "api-v2"),)),
    )
    assert wc.response_header_ops.steps == ((frozenset(), (("via", "meshd"),)),)
    assert d.response_header_ops == wc.response_header_ops


def test_route_features_regex_rewrite(shop_table: RouteTable) -> None:
    req = view("/items/42?z=1", "shop")
    d = route(shop_table, req)
    assert isinstance(d, Forward)
    assert d.retries is None  # attempts: 0
    # the substitution brings its own query: the request's is appended with '&'
    assert rewritten_target(d, req) == "/catalog/item?id=42&z=1"
    assert rewritten_authority(d, req) == "shop"


def test_bookinfo_header_match_and_split() -> None:
    table = compile_table(snapshot("bookinfo", "productpage-v1-1.default").outbound)
    reviews = "reviews.default.svc.cluster.local"
    jason = route(table, view("/reviews/1", "reviews:9080", headers={"end-user": "jason"}))
    assert describe(jason) == ("forward", "http[0]", (f"outbound|9080|v2|{reviews}",))
    other = route(table, view("/reviews/1", "reviews", headers={"end-user": "json"}))
    assert describe(other) == (
        "forward",
        "http[1]",
        (f"outbound|9080|v1|{reviews}", f"outbound|9080|v3|{reviews}"),
    )
    assert table.allow_any is True


@pytest.mark.parametrize(
    "scenario",
    sorted(
        [
            "bookinfo",
            "defaults-only",
            "exportto",
            "route-features",
            "sidecar-scope",
            "serviceentry-external",
            "tcp",
        ]
    ),
)
def test_every_domain_of_every_golden_snapshot_routes_to_its_virtual_host(scenario: str) -> None:
    for snap in snapshots(scenario).values():
        table = compile_table(snap.outbound)
        for vh in snap.outbound.virtual_hosts:
            for domain in vh.domains:
                d = route(table, view("/", domain, method="BREW"))
                name = d.vhost_name
                assert name == vh.name, (snap.proxy_id, domain, d)


def test_tcp_routes() -> None:
    table = compile_table(snapshot("tcp", "app-1.default").outbound)
    mysql = route_tcp(table, "mysql.default.svc.cluster.local", 3306)
    assert mysql is not None
    assert [(c.cluster.split("|")[2], c.weight) for c in mysql.clusters] == [("v1", 75), ("v2", 25)]
    rng = random.Random(7)
    counts = Counter(pick_cluster(mysql, rng).cluster.split("|")[2] for _ in range(4000))
    assert abs(counts["v1"] / 4000 - 0.75) < 0.03
    assert route_tcp(table, "mysql.default.svc.cluster.local", 1) is None


# --- hand-made tables: one matcher at a time --------------------------------------------

OK = s.ForwardAction((s.WeightedCluster("ok", 100),))


def table_of(
    *routes: s.Route,
    domains: tuple[str, ...] = ("svc", "svc:80", "svc:8080", "[2001:db8::1]:8080"),
) -> RouteTable:
    vh = s.VirtualHost("svc:80", domains, routes)
    return compile_table(s.OutboundConfig((vh,), (), (), allow_any=False))


def matches(m: s.RouteMatch, req: RequestView) -> bool:
    table = table_of(s.Route("r", (m,), OK))
    return isinstance(route(table, req), Forward)


def sm(kind: str, value: str, ignore_case: bool = False) -> s.StringMatch:
    return s.StringMatch(kind, value, ignore_case)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("match", "req", "expected"),
    [
        # uri: exact, prefix, regex (a full match of the path without its query)
        (s.RouteMatch(uri=sm("exact", "/a")), view("/a?x=1"), True),
        (s.RouteMatch(uri=sm("exact", "/a")), view("/a/"), False),
        (s.RouteMatch(uri=sm("exact", "/A", True)), view("/a"), True),
        (s.RouteMatch(uri=sm("prefix", "/api")), view("/api/v1"), True),
        (s.RouteMatch(uri=sm("prefix", "/api")), view("/apis"), True),  # Envoy: plain prefix
        (s.RouteMatch(uri=sm("prefix", "/api")), view("/API"), False),
        (s.RouteMatch(uri=sm("prefix", "/API", True)), view("/api/x"), True),
        (s.RouteMatch(uri=sm("prefix", "/API", True)), view("/ap"), False),
        (s.RouteMatch(uri=sm("regex", "/u/[0-9]+")), view("/u/12"), True),
        (s.RouteMatch(uri=sm("regex", "/u/[0-9]+")), view("/u/12/x"), False),
        (s.RouteMatch(uri=sm("regex", "/u/[0-9]+")), view("/x/u/12"), False),
        (s.RouteMatch(uri=sm("regex", "/u/[0-9]+")), view("/u/12?q=1"), True),
        # method (case-sensitive), scheme and authority (case-insensitive)
        (s.RouteMatch(method=sm("exact", "POST")), view(method="POST"), True),
        (s.RouteMatch(method=sm("exact", "POST")), view(method="post"), False),
        (s.RouteMatch(method=sm("regex", "GET|HEAD")), view(method="HEAD"), True),
        (s.RouteMatch(scheme=sm("exact", "https")), view(scheme="https"), True),
        (s.RouteMatch(scheme=sm("exact", "HTTPS")), view(scheme="https"), True),
        (s.RouteMatch(scheme=sm("exact", "https")), view(), False),
        (s.RouteMatch(authority=sm("exact", "SVC")), view(host="svc"), True),
        (s.RouteMatch(authority=sm("prefix", "svc:")), view(host="svc:80"), True),
        (s.RouteMatch(authority=sm("prefix", "svc:")), view(host="svc"), False),
        (s.RouteMatch(authority=sm("regex", "svc(:80)?")), view(host="Svc:80"), True),
        # headers: value, present, withoutHeaders (invert), regex, repeated values joined
        (
            s.RouteMatch(headers=(s.HeaderMatch("x-a", sm("exact", "1")),)),
            view(headers={"X-A": "1"}),
            True,
        ),
        (
            s.RouteMatch(headers=(s.HeaderMatch("x-a", sm("exact", "1")),)),
            view(headers={"x-a": "2"}),
            False,
        ),
        (s.RouteMatch(headers=(s.HeaderMatch("x-a", sm("exact", "1")),)), view(), False),
        (
            s.RouteMatch(headers=(s.HeaderMatch("x-a", sm("prefix", "ab")),)),
            view(headers={"x-a": "abc"}),
            True,
        ),
        (
            s.RouteMatch(headers=(s.HeaderMatch("x-a", sm("regex", "v[12]")),)),
            view(headers={"x-a": "v2"}),
            True,
        ),
        (
            s.RouteMatch(headers=(s.HeaderMatch("x-a", sm("regex", "v[12]")),)),
            view(headers={"x-a": "v22"}),
            False,
        ),
        (s.RouteMatch(headers=(s.HeaderMatch("x-a"),)), view(headers={"x-a": ""}), True),
        (s.RouteMatch(headers=(s.HeaderMatch("x-a"),)), view(), False),
        (s.RouteMatch(headers=(s.HeaderMatch("x-a", invert=True),)), view(), True),
        (
            s.RouteMatch(headers=(s.HeaderMatch("x-a", invert=True),)),
            view(headers={"x-a": "1"}),
            False,
        ),
        (
            s.RouteMatch(headers=(s.HeaderMatch("x-a", sm("exact", "1"), invert=True),)),
            view(headers={"x-a": "2"}),
            True,
        ),
        (
            s.RouteMatch(headers=(s.HeaderMatch("x-a", sm("exact", "1"), invert=True),)),
            view(headers={"x-a": "1"}),
            False,
        ),
        (
            s.RouteMatch(headers=(s.HeaderMatch("x-a", sm("exact", "1"), invert=True),)),
            view(),
            True,
        ),
        # query parameters: exact, regex, present
        (
            s.RouteMatch(query_params=(s.QueryParamMatch("v", sm("exact", "1")),)),
            view("/?v=1"),
            True,
        ),
        (
            s.RouteMatch(query_params=(s.QueryParamMatch("v", sm("exact", "1")),)),
            view("/?v=10"),
            False,
        ),
        (s.RouteMatch(query_params=(s.QueryParamMatch("v", sm("exact", "1")),)), view("/"), False),
        (
            s.RouteMatch(query_params=(s.QueryParamMatch("v", sm("regex", "[0-9]+")),)),
            view("/?v=10"),
            True,
        ),
        (s.RouteMatch(query_params=(s.QueryParamMatch("v"),)), view("/?v"), True),
        (s.RouteMatch(query_params=(s.QueryParamMatch("v"),)), view("/?w=1"), False),
        # the listener port
        (s.RouteMatch(port=15001), view(), True),
        (s.RouteMatch(port=8080), view(), False),
        # every condition must hold
        (s.RouteMatch(uri=sm("prefix", "/a"), method=sm("exact", "GET")), view("/a"), True),
        (s.RouteMatch(uri=sm("prefix", "/a"), method=sm("exact", "PUT")), view("/a"), False),
        # an alternative with no condition matches everything
        (s.RouteMatch(), view("/anything", method="DELETE"), True),
    ],
)
def test_matchers(match: s.RouteMatch, req: RequestView, expected: bool) -> None:
    assert matches(match, req) is expected


def test_alternatives_any_first_route_wins_and_no_match_is_404() -> None:
    table = table_of(
        s.Route(
            "ab",
            (s.RouteMatch(uri=sm("exact", "/a")), s.RouteMatch(uri=sm("exact", "/b"))),
            s.ForwardAction((s.WeightedCluster("ab", 100),)),
        ),
        s.Route("a-again", (s.RouteMatch(uri=sm("prefix", "/a")),), OK),
    )
    assert describe(route(table, view("/a"))) == ("forward", "ab", ("ab",))
    assert describe(route(table, view("/b"))) == ("forward", "ab", ("ab",))
    assert describe(route(table, view("/ax"))) == ("forward", "a-again", ("ok",))
    none = route(table, view("/c"))
    assert isinstance(none, NoRoute)
    assert (none.status, none.vhost_name) == (404, "svc:80")
    unknown = route(table, view("/a", host="other"))
    assert isinstance(unknown, NoRoute)
    assert unknown.vhost_name is None
    assert table.allow_any is False
    assert [vh.name for vh in table.virtual_hosts] == ["svc:80"]


def test_a_view_built_by_hand_with_an_uppercase_authority_still_routes() -> None:
    table = table_of(s.Route("r", (), OK))
    assert isinstance(route(table, RequestView(authority="SVC:80")), Forward)


# --- redirects ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "req", "location"),
    [
        (s.RedirectAction(uri="/new"), view("/old?q=1", "svc"), "http://svc/new?q=1"),
        (s.RedirectAction(uri="/new?x=2"), view("/old?q=1", "svc"), "http://svc/new?x=2"),
        (
            s.RedirectAction(authority="other.example"),
            view("/p?q", "svc:8080"),
            "http://other.example/p?q",
        ),
        (s.RedirectAction(authority="other:81"), view("/p", "svc"), "http://other:81/p"),
        (s.RedirectAction(port=8443), view("/p", "svc:80"), "http://svc:8443/p"),
        (s.RedirectAction(port=80), view("/p", "svc:8080"), "http://svc/p"),  # default port omitted
        (s.RedirectAction(scheme="https"), view("/p", "svc:8080"), "https://svc/p"),  # port dropped
        (s.RedirectAction(scheme="https", port=8443), view("/p", "svc"), "https://svc:8443/p"),
        (
            s.RedirectAction(scheme="http"),
            view("/p", "svc:8080"),
            "http://svc:8080/p",
        ),  # same scheme
        (
            s.RedirectAction(status=302),
            view("/p", "[2001:db8::1]:8080"),
            "http://[2001:db8::1]:8080/p",
        ),
        (
            s.RedirectAction(
                uri="/x", authority="a.example", port=9443, scheme="https", status=307
            ),
            view("/p?q=1", "svc"),
            "https://a.example:9443/x?q=1",
        ),
    ],
)
def test_redirects(action: s.RedirectAction, req: RequestView, location: str) -> None:
    table = table_of(s.Route("r", (), action, response_headers=s.HeaderOps(set=(("x", "1"),))))
    d = route(table, req)
    assert isinstance(d, Redirect)
    assert (d.status, d.location) == (action.status, location)
    assert d.route_name == "r"
    assert not d.response_header_ops.empty


def test_direct_response_without_body() -> None:
    d = route(table_of(s.Route("r", (), s.DirectResponseAction(204))), view())
    assert isinstance(d, DirectResponse)
    assert (d.status, d.body) == (204, b"")


# --- rewrites ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "rewrite", "req", "target", "authority"),
    [
        # prefix match: the matched prefix is replaced (Envoy's prefix_rewrite)
        (
            s.RouteMatch(uri=sm("prefix", "/api/")),
            s.Rewrite(uri="/v2/"),
            view("/api/x?q=1"),
            "/v2/x?q=1",
            "svc",
        ),
        (s.RouteMatch(uri=sm("prefix", "/api")), s.Rewrite(uri="/"), view("/api/x"), "//x", "svc"),
        (
            s.RouteMatch(uri=sm("prefix", "/API", True)),
            s.Rewrite(uri="/b"),
            view("/api/x"),
            "/b/x",
            "svc",
        ),
        # exact or regex match, or no uri match: the whole path is replaced
        (
            s.RouteMatch(uri=sm("exact", "/old")),
            s.Rewrite(uri="/new"),
            view("/old?q"),
            "/new?q",
            "svc",
        ),
        (s.RouteMatch(uri=sm("regex", "/o.d")), s.Rewrite(uri="/new"), view("/old"), "/new", "svc"),
        (
            s.RouteMatch(method=sm("exact", "GET")),
            s.Rewrite(uri="/new"),
            view("/old/x"),
            "/new",
            "svc",
        ),
        # regex substitution, RE2 syntax: \1 a group, \0 the match, \\ a backslash
        (
            None,
            s.Rewrite(uri_regex=(r"^/u/([0-9]+)$", r"/users/\1")),
            view("/u/7?a"),
            "/users/7?a",
            "svc",
        ),
        (None, s.Rewrite(uri_regex=(r"[0-9]+", r"<\0>")), view("/a1/b22"), "/a<1>/b<22>", "svc"),
        (None, s.Rewrite(uri_regex=(r"/x", r"/\\y")), view("/x"), "/\\y", "svc"),
        (None, s.Rewrite(uri_regex=(r"/(x)", r"/\2\1")), view("/x"), "/x", "svc"),  # no group 2
        (
            None,
            s.Rewrite(uri_regex=(r"/(a)?b", r"/[\1]")),
            view("/b"),
            "/[]",
            "svc",
        ),  # unmatched group
        (None, s.Rewrite(uri_regex=(r"nomatch", r"x")), view("/p"), "/p", "svc"),
        # authority only
        (None, s.Rewrite(authority="internal:8080"), view("/p?q"), "/p?q", "internal:8080"),
    ],
)
def test_rewrites(
    match: s.RouteMatch | None, rewrite: s.Rewrite, req: RequestView, target: str, authority: str
) -> None:
    action = s.ForwardAction((s.WeightedCluster("c", 100),), rewrite=rewrite)
    d = route(table_of(s.Route("r", (match,) if match else (), action)), req)
    assert isinstance(d, Forward)
    assert rewritten_target(d, req) == target
    assert rewritten_authority(d, req) == authority


def test_no_rewrite_keeps_target() -> None:
    req = view("/p?q=1")
    d = route(table_of(s.Route("r", (), OK)), req)
    assert isinstance(d, Forward)
    assert d.rewrite is None
    assert (rewritten_target(d, req), rewritten_authority(d, req)) == ("/p?q=1", "svc")


# --- weighted destinations ---------------------------------------------------------------


def split(*weights: int) -> Forward:
    action = s.ForwardAction(tuple(s.WeightedCluster(f"c{i}", w) for i, w in enumerate(weights)))
    d = route(table_of(s.Route("r", (), action)), view())
    assert isinstance(d, Forward)
    return d


def test_an_80_20_split_measures_within_3_percent_over_2000_picks() -> None:
    d = split(80, 20)
    rng = random.Random(2024)
    counts = Counter(pick_cluster(d, rng).cluster for _ in range(2000))
    assert abs(counts["c0"] / 2000 - 0.80) <= 0.03
    assert abs(counts["c1"] / 2000 - 0.20) <= 0.03


def test_weights_cumulate_and_zero_weights_are_never_picked() -> None:
    d = split(50, 0, 50)
    assert [c.cumulative for c in d.clusters] == [50, 50, 100]
    rng = random.Random(1)
    assert "c1" not in {pick_cluster(d, rng).cluster for _ in range(2000)}


def test_single_destination_and_all_zero_weights() -> None:
    rng = random.Random(1)
    assert pick_cluster(split(100), rng).cluster == "c0"
    assert pick_cluster(split(0), rng).cluster == "c0"


def test_seeded_picks_are_reproducible() -> None:
    d = split(34, 33, 33)
    a = [pick_cluster(d, random.Random(5)).cluster for _ in range(3)]
    b = [pick_cluster(d, random.Random(5)).cluster for _ in range(3)]
    assert a == b


# --- never raises ------------------------------------------------------------------------

TABLES = [
    compile_table(snap.outbound)
    for scenario in ("route-features", "bookinfo")
    for snap in snapshots(scenario).values()
]
HOSTS = sorted({d for t in TABLES for d in t.hosts})

text = st.text(max_size=30)


@settings(max_examples=300, deadline=None)
@given(
    table=st.sampled_from(TABLES),
    method=st.sampled_from(["GET", "POST", "BREW", ""]) | text,
    path=st.sampled_from(["/", "/old-cart", "/tea", "/api/v2/", "/items/1"]) | text,
    query=st.sampled_from(["", "debug=1&trace", "%zz=%", "a&&=&"]) | text,
    authority=st.sampled_from(HOSTS) | text,
    port=st.integers(0, 70000),
    scheme=st.sampled_from(["http", "https"]) | text,
    headers=st.dictionaries(
        st.sampled_from(["x-canary", "x-legacy", "end-user", "cookie"]) | text, text, max_size=4
    ),
)
def test_route_never_raises(
    table: RouteTable,
    method: str,
    path: str,
    query: str,
    authority: str,
    port: int,
    scheme: str,
    headers: dict[str, str],
) -> None:
    req = RequestView(method, path, query, authority, port, scheme, Headers.of(headers))
    d = route(table, req)
    assert isinstance(d, Forward | Redirect | DirectResponse | NoRoute)
    if isinstance(d, Forward):
        pick_cluster(d, random.Random(0))
        rewritten_target(d, req)
        rewritten_authority(d, req)
