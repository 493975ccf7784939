"""Authorization with Istio's semantics: the examples of Istio's AuthorizationPolicy
documentation, the compiler's golden policies, and properties."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshd.compile import snapshot as s
from sidecar.filters.authz import (
    ALLOW,
    Allow,
    Attributes,
    CompiledAuthz,
    Deny,
    compile_authz,
    evaluate,
)
from sidecar.routing import Headers
from tests.routing.goldens import snapshot

# --- building policies the way the compiler emits them ----------------------------------


def exact(*values: str) -> tuple[s.ValueMatch, ...]:
    return tuple(s.ValueMatch("exact", v) for v in values)


def istio(*values: str) -> tuple[s.ValueMatch, ...]:
    """Istio's string syntax: ``*``, ``abc*``, ``*abc``, else exact."""
    out = []
    for v in values:
        if v == "*":
            out.append(s.ValueMatch("any"))
        elif v.endswith("*"):
            out.append(s.ValueMatch("prefix", v[:-1]))
        elif v.startswith("*"):
            out.append(s.ValueMatch("suffix", v[1:]))
        else:
            out.append(s.ValueMatch("exact", v))
    return tuple(out)


def cidr(*blocks: str) -> tuple[s.ValueMatch, ...]:
    return tuple(s.ValueMatch("cidr", b) for b in blocks)


def c(attribute: str, values: tuple[s.ValueMatch, ...], negate: bool = False) -> s.Constraint:
    return s.Constraint(attribute, values, negate)


def policy(name: str, action: str, *rules: s.AuthzRule) -> s.AuthzPolicy:
    return s.AuthzPolicy(name, action, rules)  # type: ignore[arg-type]


def req(
    principal: str | None = "spiffe://cluster.local/ns/foo/sa/sleep",
    ip: str = "198.18.0.5",
    method: str = "GET",
    path: str = "/",
    host: str = "httpbin.foo",
    port: int = 8000,
    headers: dict[str, str] | None = None,
) -> Attributes:
    return Attributes.for_request(
        peer_spiffe_id=principal,
        source_ip=ip,
        method=method,
        path=path,
        host=host,
        port=port,
        headers=Headers.of(headers or {}),
    )


def allowed(compiled: CompiledAuthz, attrs: Attributes) -> bool:
    return isinstance(evaluate(compiled, attrs), Allow)


PLAINTEXT = None

# --- Istio's documentation examples ------------------------------------------------------


def test_no_policy_allows_everything() -> None:
    compiled = compile_authz([])
    assert compiled.empty
    assert evaluate(compiled, req()) is ALLOW
    assert evaluate(compiled, req(principal=PLAINTEXT)) is ALLOW


def test_allow_get_from_a_namespace() -> None:
    """ALLOW from namespaces ["foo"] to methods ["GET"]."""
    compiled = compile_authz(
        [
            policy(
                "foo/allow-get",
                "ALLOW",
                s.AuthzRule(
                    sources=((c("source.namespace", exact("foo")),),),
                    operations=((c("request.method", exact("GET")),),),
                ),
            )
        ]
    )
    assert allowed(compiled, req())
    assert not allowed(compiled, req(method="POST"))
    assert not allowed(compiled, req(principal="spiffe://cluster.local/ns/bar/sa/sleep"))
    assert not allowed(compiled, req(principal=PLAINTEXT))  # no namespace without mTLS
    denied = evaluate(compiled, req(method="POST"))
    assert isinstance(denied, Deny)
    assert (denied.policy, denied.rule) == (None, None)
    assert "no ALLOW policy matched" in denied.reason
    assert denied.details == "rbac_access_denied_matched_policy[none]"


def test_deny_by_path_prefix() -> None:
    compiled = compile_authz(
        [
            policy(
                "foo/deny-admin",
                "DENY",
                s.AuthzRule(operations=((c("request.path", istio("/admin*")),),)),
            )
        ]
    )
    assert not allowed(compiled, req(path="/admin"))
    assert not allowed(compiled, req(path="/admin/users"))
    assert allowed(compiled, req(path="/public"))
    assert allowed(compiled, req(path="/Admin"))  # paths are case-sensitive (as in Istio)
    denied = evaluate(compiled, req(path="/admin/x"))
    assert isinstance(denied, Deny)
    assert (denied.policy, denied.rule) == ("foo/deny-admin", 0)
    assert denied.details == "rbac_access_denied_matched_policy[ns[foo]-policy[deny-admin]-rule[0]]"


def test_deny_everything_but_health_checks_with_not_paths() -> None:
    compiled = compile_authz(
        [
            policy(
                "foo/deny-not-healthz",
                "DENY",
                s.AuthzRule(operations=((c("request.path", exact("/healthz"), negate=True),),)),
            )
        ]
    )
    assert allowed(compiled, req(path="/healthz"))
    assert not allowed(compiled, req(path="/"))
    assert not allowed(compiled, req(path="/healthz/x"))


def test_allow_principals() -> None:
    compiled = compile_authz(
        [
            policy(
                "foo/allow-sleep",
                "ALLOW",
                s.AuthzRule(
                    sources=((c("source.principal", exact("cluster.local/ns/foo/sa/sleep")),),)
                ),
            )
        ]
    )
    assert allowed(compiled, req())
    assert not allowed(compiled, req(principal="spiffe://cluster.local/ns/foo/sa/other"))
    assert not allowed(compiled, req(principal=PLAINTEXT))


def test_require_mtls_with_not_principals_star() -> None:
    """Istio's "deny plaintext" example: DENY from notPrincipals ["*"]."""
    compiled = compile_authz(
        [
            policy(
                "foo/require-mtls",
                "DENY",
                s.AuthzRule(sources=((c("source.principal", istio("*"), negate=True),),)),
            )
        ]
    )
    assert not allowed(compiled, req(principal=PLAINTEXT))
    assert allowed(compiled, req())


def test_ip_blocks_with_cidrs() -> None:
    compiled = compile_authz(
        [
            policy(
                "foo/deny-range",
                "DENY",
                s.AuthzRule(sources=((c("source.ip", cidr("198.18.99.0/24", "2001:db8::/32")),),)),
            ),
            policy(
                "foo/allow-lab",
                "ALLOW",
                s.AuthzRule(sources=((c("source.ip", cidr("198.18.0.0/15", "2001:db8::/32")),),)),
            ),
        ]
    )
    assert allowed(compiled, req(ip="198.18.0.5"))
    assert allowed(compiled, req(ip="198.19.255.255"))
    assert allowed(compiled, req(ip="::ffff:198.18.0.5"))  # v4-mapped on a dual-stack socket
    assert not allowed(compiled, req(ip="198.18.99.7"))  # DENY beats ALLOW
    assert not allowed(compiled, req(ip="2001:db8::1"))
    assert not allowed(compiled, req(ip="10.0.0.1"))  # no ALLOW rule
    assert not allowed(compiled, req(ip="not-an-ip"))


def test_not_ip_blocks() -> None:
    compiled = compile_authz(
        [
            policy(
                "foo/deny-outside",
                "DENY",
                s.AuthzRule(sources=((c("source.ip", cidr("198.18.0.0/16"), negate=True),),)),
            )
        ]
    )
    assert allowed(compiled, req(ip="198.18.3.4"))
    assert not allowed(compiled, req(ip="203.0.113.1"))


def test_headers_in_when() -> None:
    compiled = compile_authz(
        [
            policy(
                "foo/allow-versions",
                "ALLOW",
                s.AuthzRule(conditions=(c("request.headers[version]", exact("v1", "v2")),)),
            )
        ]
    )
    assert allowed(compiled, req(headers={"Version": "v1"}))
    assert not allowed(compiled, req(headers={"version": "v3"}))
    assert not allowed(compiled, req())  # absent header: no value matches


def test_not_values_on_an_absent_header_hold() -> None:
    compiled = compile_authz(
        [
            policy(
                "foo/deny-untraced",
                "DENY",
                s.AuthzRule(
                    conditions=(c("request.headers[x-trace-id]", istio("*"), negate=True),)
                ),
            )
        ]
    )
    assert not allowed(compiled, req())
    assert allowed(compiled, req(headers={"x-trace-id": ""}))  # present, even empty


def test_an_allow_policy_without_rules_denies_everything() -> None:
    compiled = compile_authz([policy("foo/allow-nothing", "ALLOW")])
    assert not allowed(compiled, req())
    assert not allowed(compiled, req(principal=PLAINTEXT))


def test_a_deny_policy_without_rules_denies_nothing() -> None:
    assert allowed(compile_authz([policy("foo/deny-nothing", "DENY")]), req())


def test_an_empty_rule_allows_everything() -> None:
    compiled = compile_authz(
        [policy("foo/allow-nothing", "ALLOW"), policy("foo/allow-all", "ALLOW", s.AuthzRule())]
    )
    assert allowed(compiled, req(principal=PLAINTEXT, method="DELETE"))


def test_deny_beats_allow() -> None:
    compiled = compile_authz(
        [
            policy("foo/allow-all", "ALLOW", s.AuthzRule()),
            policy(
                "foo/deny-delete",
                "DENY",
                s.AuthzRule(operations=((c("request.method", exact("DELETE")),),)),
            ),
        ]
    )
    assert allowed(compiled, req(method="GET"))
    denied = evaluate(compiled, req(method="DELETE"))
    assert isinstance(denied, Deny)
    assert denied.policy == "foo/deny-delete"


def test_audit_is_reported_and_never_decides() -> None:
    audit = policy(
        "foo/audit-delete",
        "AUDIT",
        s.AuthzRule(operations=((c("request.method", exact("DELETE")),),)),
    )
    only_audit = compile_authz([audit])
    assert evaluate(only_audit, req(method="DELETE")) == Allow(("foo/audit-delete",))
    assert evaluate(only_audit, req(method="GET")) is ALLOW
    with_deny = compile_authz(
        [
            audit,
            policy(
                "foo/deny-delete",
                "DENY",
                s.AuthzRule(operations=((c("request.method", exact("DELETE")),),)),
            ),
        ]
    )
    denied = evaluate(with_deny, req(method="DELETE"))
    assert isinstance(denied, Deny)
    assert denied.audited == ("foo/audit-delete",)
    nothing_allowed = evaluate(
        compile_authz([audit, policy("foo/allow-nothing", "ALLOW")]), req(method="DELETE")
    )
    assert isinstance(nothing_allowed, Deny)
    assert nothing_allowed.audited == ("foo/audit-delete",)


def test_hosts_are_case_insensitive_and_ports_exact() -> None:
    compiled = compile_authz(
        [
            policy(
                "foo/allow-host",
                "ALLOW",
                s.AuthzRule(
                    operations=(
                        (
                            c("request.host", istio("HTTPBIN.foo", "*.example.com")),
                            c("destination.port", exact("8000")),
                        ),
                    )
                ),
            )
        ]
    )
    assert allowed(compiled, req(host="httpbin.foo"))
    assert allowed(compiled, req(host="HttpBin.Foo"))
    assert allowed(compiled, req(host="api.Example.com"))
    assert not allowed(compiled, req(host="httpbin.foo:8000"))  # as in Istio: the port counts
    assert not allowed(compiled, req(host="httpbin.foo", port=9000))


def test_sources_are_alternatives_and_constraints_within_one_must_all_hold() -> None:
    rule = s.AuthzRule(
        sources=(
            (c("source.namespace", exact("foo")), c("source.principal", istio("*/sa/sleep"))),
            (c("source.namespace", exact("ops")),),
        ),
        operations=(
            (c("request.method", exact("GET")),),
            (c("request.path", istio("/public*")),),
        ),
    )
    compiled = compile_authz([policy("foo/mixed", "ALLOW", rule)])
    assert allowed(compiled, req(method="GET"))
    assert allowed(compiled, req(method="POST", path="/public/x"))
    assert not allowed(compiled, req(method="POST", path="/private"))
    assert not allowed(compiled, req(principal="spiffe://cluster.local/ns/foo/sa/web"))
    assert allowed(compiled, req(principal="spiffe://cluster.local/ns/ops/sa/any"))


def test_attributes_from_the_peer_identity() -> None:
    a = req(principal="spiffe://cluster.local/ns/shop/sa/cart")
    assert (a.principal, a.namespace) == ("cluster.local/ns/shop/sa/cart", "shop")
    odd = req(principal="spiffe://example.org/workload")
    assert (odd.principal, odd.namespace) == ("example.org/workload", None)
    plain = req(principal=PLAINTEXT)
    assert (plain.principal, plain.namespace) == (None, None)


def test_compile_from_inbound_config_and_unknown_attributes_never_match() -> None:
    inbound = s.InboundConfig(
        15006,
        8080,
        "http",
        authz=(
            policy("x/odd", "ALLOW", s.AuthzRule(conditions=(c("request.unknown", exact("1")),))),
        ),
    )
    compiled = compile_authz(inbound)
    assert not allowed(compiled, req())


# --- the compiler's golden policies ------------------------------------------------------


def golden(proxy: str) -> CompiledAuthz:
    return compile_authz(snapshot("authorization", proxy).inbound)


ORDERS = "spiffe://cluster.local/ns/{ns}/sa/{sa}"


def test_golden_orders() -> None:
    orders = golden("orders-1.default")
    frontend = ORDERS.format(ns="default", sa="frontend")
    ok = req(frontend, "198.18.0.10", "GET", "/orders/7", "orders.default.svc.cluster.local", 8080)
    assert evaluate(orders, ok) is ALLOW
    assert allowed(orders, req(frontend, "198.18.0.10", "HEAD", "/x/health", "orders:8080", 8080))
    # not a listed method, path or host
    assert not allowed(orders, req(frontend, "198.18.0.10", "POST", "/orders", "orders", 8080))
    assert not allowed(orders, req(frontend, "198.18.0.10", "GET", "/admin", "orders", 8080))
    assert not allowed(orders, req(frontend, "198.18.0.10", "GET", "/orders", "other", 8080))
    # serviceAccounts checkout (same namespace) and batch/reporter
    checkout = ORDERS.format(ns="default", sa="checkout")
    assert allowed(orders, req(checkout, "198.18.0.10", "GET", "/orders", "orders", 8080))
    reporter = ORDERS.format(ns="batch", sa="reporter")
    assert allowed(orders, req(reporter, "198.18.0.10", "GET", "/orders", "orders", 8080))
    # ops: anything but DELETE on 8080, not from a canary
    ops = ORDERS.format(ns="ops", sa="deployer")
    assert allowed(orders, req(ops, "198.18.0.10", "PUT", "/anything", "x", 8080))
    assert not allowed(orders, req(ops, "198.18.0.10", "DELETE", "/anything", "x", 8080))
    assert not allowed(orders, req(ops, "198.18.0.10", "PUT", "/anything", "x", 9090))
    canary = ORDERS.format(ns="ops", sa="canary")
    assert not allowed(orders, req(canary, "198.18.0.10", "PUT", "/anything", "x", 8080))
    # AUDIT of DELETE is reported, whatever the decision
    audited = evaluate(orders, req(ops, "198.18.0.10", "DELETE", "/anything", "x", 8080))
    assert audited.audited == ("istio-system/audit-orders",)


def test_golden_mesh_wide_denials() -> None:
    orders = golden("orders-1.default")
    frontend = ORDERS.format(ns="default", sa="frontend")
    quarantined = evaluate(orders, req(frontend, "198.18.99.3", "GET", "/orders", "orders", 8080))
    assert isinstance(quarantined, Deny)
    assert (quarantined.policy, quarantined.rule) == ("istio-system/quarantine", 0)
    single = evaluate(orders, req(frontend, "198.18.98.7", "GET", "/orders", "orders", 8080))
    assert isinstance(single, Deny)
    # /admin* without a trace header: rule 1 of quarantine
    metrics = golden("metrics-1.istio-system")
    admin = evaluate(metrics, req(frontend, "198.18.0.10", "GET", "/admin/x", "metrics", 80))
    assert isinstance(admin, Deny)
    assert (admin.policy, admin.rule) == ("istio-system/quarantine", 1)
    traced = req(frontend, "198.18.0.10", "GET", "/admin/x", "metrics", 80, {"x-trace-id": "t"})
    assert evaluate(metrics, traced) is ALLOW
    # block-user: mallory from outside 198.18.0.0/16
    fe = golden("frontend-1.default")
    mallory = {"end-user": "mallory"}
    inside = req(frontend, "198.18.0.10", "GET", "/", "frontend", 8080, mallory)
    assert evaluate(fe, inside) is ALLOW
    outside = req(frontend, "203.0.113.9", "GET", "/", "frontend", 8080, mallory)
    assert isinstance(evaluate(fe, outside), Deny)
    v6 = req(frontend, "2001:db8::1", "GET", "/", "frontend", 8080, mallory)
    assert evaluate(fe, v6) is ALLOW


def test_golden_secure_namespace() -> None:
    """deny-all (an ALLOW policy without rules) plus allow-same-namespace with an empty
    rule: the empty rule opens the workload to everyone (not quarantined)."""
    vault = golden("vault-1.secure")
    assert allowed(vault, req(ORDERS.format(ns="other", sa="x"), "198.18.0.10"))
    assert allowed(vault, req(PLAINTEXT, "198.18.0.10"))
    assert not allowed(vault, req(PLAINTEXT, "198.18.99.1"))


# --- properties --------------------------------------------------------------------------

ANY_TEXT = st.text(max_size=20)


@given(
    principal=st.none() | st.sampled_from(["spiffe://cluster.local/ns/ops/sa/x"]) | ANY_TEXT,
    ip=st.none() | st.sampled_from(["198.18.99.1", "2001:db8::1", "::ffff:1.2.3.4"]) | ANY_TEXT,
    method=ANY_TEXT,
    path=ANY_TEXT,
    host=ANY_TEXT,
    port=st.integers(0, 70000),
    headers=st.dictionaries(
        st.sampled_from(["end-user", "x-trace-id"]) | ANY_TEXT, ANY_TEXT, max_size=3
    ),
)
def test_evaluate_never_raises(
    principal: str | None,
    ip: str | None,
    method: str,
    path: str,
    host: str,
    port: int,
    headers: dict[str, str],
) -> None:
    attrs = Attributes.for_request(
        peer_spiffe_id=principal,
        source_ip=ip,
        method=method,
        path=path,
        host=host,
        port=port,
        headers=Headers.of(headers),
    )
    for proxy in ("orders-1.default", "vault-1.secure", "frontend-1.default"):
        decision = evaluate(golden(proxy), attrs)
        assert isinstance(decision, Allow | Deny)
