"""Rendering of tables, YAML and summaries: pure functions, no server."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from meshd.ctl import output
from tests.ctl.bookinfo import REVIEWS_DESTINATION_RULE, REVIEWS_VIRTUAL_SERVICE

NOW = 1_700_000_000.0


def stored(text: str, revision: int = 1, namespace: str = "default") -> dict[str, Any]:
    """A resource as the server returns it."""
    body: dict[str, Any] = yaml.safe_load(text)
    body["metadata"] = {
        **body["metadata"],
        "namespace": namespace,
        "resourceVersion": str(revision),
    }
    return body


def resource(
    kind: str, name: str, spec: dict[str, Any], group: str = "security.istio.io"
) -> dict[str, Any]:
    return {
        "apiVersion": f"{group}/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "2"},
        "spec": spec,
    }


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_table_aligns_columns_three_spaces_apart() -> None:
    text = output.table(["NAME", "REVISION"], [["reviews", "3"], ["a", "12"]])
    assert lines(text) == ["NAME      REVISION", "reviews   3", "a         12"]


def test_table_of_no_rows_is_the_header() -> None:
    assert output.table(["NAME", "STATE"], []) == "NAME   STATE\n"


def test_virtualservice_table_shows_hosts() -> None:
    text = output.resources_table([stored(REVIEWS_VIRTUAL_SERVICE, 3)], all_namespaces=False)
    assert lines(text) == ["NAME      REVISION   HOSTS", "reviews   3          reviews"]


def test_all_namespaces_adds_the_namespace_column() -> None:
    items = [
        stored(REVIEWS_VIRTUAL_SERVICE, 1, "bookinfo"),
        stored(REVIEWS_VIRTUAL_SERVICE, 4, "default"),
    ]
    rows = [line.split() for line in lines(output.resources_table(items, all_namespaces=True))]
    assert rows == [
        ["NAMESPACE", "NAME", "REVISION", "HOSTS"],
        ["bookinfo", "reviews", "1", "reviews"],
        ["default", "reviews", "4", "reviews"],
    ]


def test_destinationrule_table_shows_host_and_subsets() -> None:
    text = output.resources_table([stored(REVIEWS_DESTINATION_RULE)], all_namespaces=False)
    assert [line.split() for line in lines(text)] == [
        ["NAME", "REVISION", "HOST", "SUBSETS"],
        ["reviews", "1", "reviews", "v1,v2,v3"],
    ]


@pytest.mark.parametrize(
    ("item", "header", "value"),
    [
        (resource("AuthorizationPolicy", "deny", {"action": "DENY"}), "ACTION", "DENY"),
        (resource("AuthorizationPolicy", "allow-nothing", {}), "ACTION", "ALLOW"),
        (resource("PeerAuthentication", "strict", {"mtls": {"mode": "STRICT"}}), "MODE", "STRICT"),
        (resource("PeerAuthentication", "inherit", {}), "MODE", "UNSET"),
        (
            resource("RequestAuthentication", "jwt", {"jwtRules": [{"issuer": "https://idp"}]}),
            "ISSUERS",
            "https://idp",
        ),
        (
            resource(
                "ServiceEntry",
                "ext",
                {"hosts": ["a.example.com", "b.example.com"]},
                "networking.istio.io",
            ),
            "HOSTS",
            "a.example.com,b.example.com",
        ),
        (
            resource(
                "Sidecar",
                "default",
                {"egress": [{"hosts": ["./*", "istio-system/*"]}]},
                "networking.istio.io",
            ),
            "EGRESS",
            "./*,istio-system/*",
        ),
    ],
)
def test_kind_specific_columns(item: dict[str, Any], header: str, value: str) -> None:
    head, row = lines(output.resources_table([item], all_namespaces=False))
    headers = head.split()
    assert header in headers
    assert row.split()[headers.index(header)] == value


def test_serviceentry_shows_istio_defaults_for_location_and_resolution() -> None:
    item = resource("ServiceEntry", "ext", {"hosts": ["a.example.com"]}, "networking.istio.io")
    _, row = lines(output.resources_table([item], all_namespaces=False))
    assert row.split()[-2:] == ["MESH_EXTERNAL", "NONE"]


def test_unknown_kind_gets_the_generic_columns() -> None:
    item = resource("LocalRateLimit", "rl", {"x": 1}, "mesh.meshd.io")
    assert lines(output.resources_table([item], all_namespaces=False))[0].split() == [
        "NAME",
        "REVISION",
    ]


def test_a_mixed_list_gets_a_kind_column() -> None:
    items = [stored(REVIEWS_DESTINATION_RULE), stored(REVIEWS_VIRTUAL_SERVICE)]
    text = output.resources_table(items, all_namespaces=False)
    assert [line.split() for line in lines(text)] == [
        ["KIND", "NAME", "REVISION"],
        ["destinationrule.networking.istio.io", "reviews", "1"],
        ["virtualservice.networking.istio.io", "reviews", "1"],
    ]


def test_yaml_of_a_list_is_reappliable_multi_document_yaml() -> None:
    items = [stored(REVIEWS_DESTINATION_RULE, 2), stored(REVIEWS_VIRTUAL_SERVICE, 5)]
    text = output.resources_yaml(items)
    docs = list(yaml.safe_load_all(text))
    assert len(docs) == 2
    assert text.startswith("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n")
    for doc, original in zip(
        docs, (REVIEWS_DESTINATION_RULE, REVIEWS_VIRTUAL_SERVICE), strict=True
    ):
        expected = yaml.safe_load(original)
        expected["metadata"]["namespace"] = "default"
        assert doc == expected  # no resourceVersion: re-applying is not a compare-and-set


def test_yaml_of_no_resources_is_empty() -> None:
    assert output.resources_yaml([]) == ""


def test_exportable_keeps_the_rest_of_metadata() -> None:
    item = stored(REVIEWS_VIRTUAL_SERVICE, 3)
    item["metadata"]["labels"] = {"app": "reviews"}
    out = output.exportable(item)
    assert out["metadata"] == {
        "name": "reviews",
        "namespace": "default",
        "labels": {"app": "reviews"},
    }
    assert item["metadata"]["resourceVersion"] == "3"  # the input is not changed


def test_names_are_kind_dot_group_slash_name() -> None:
    assert (
        output.names([stored(REVIEWS_VIRTUAL_SERVICE)])
        == "virtualservice.networking.istio.io/reviews\n"
    )
    assert output.type_name("List", "v1") == "list"


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (0.2, "just now"),
        (5, "5s ago"),
        (119, "119s ago"),
        (600, "10m ago"),
        (3 * 3600, "3h ago"),
        (3 * 86400, "3d ago"),
    ],
)
def test_ago(delta: float, text: str) -> None:
    assert output.ago(NOW - delta, NOW) == text


def test_ago_of_nothing_is_never() -> None:
    assert output.ago(None, NOW) == "never"
    assert output.when(None, NOW) == "never"


def test_when_is_local_time_and_age() -> None:
    expected = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(NOW - 300))
    assert output.when(NOW - 300, NOW) == f"{expected} (5m ago)"


PROXIES: list[dict[str, Any]] = [
    {
        "proxy": "productpage-1.default",
        "service": "productpage",
        "namespace": "default",
        "state": "SYNCED",
        "connected": True,
        "lastSeen": NOW - 3,
        "version": "0123456789abcdef",
        "sentVersion": "0123456789abcdef",
        "ackedVersion": "0123456789abcdef",
        "nack": None,
        "errors": [],
    },
    {
        "proxy": "reviews-2.default",
        "service": "reviews",
        "namespace": "default",
        "state": "NACKED",
        "connected": False,
        "lastSeen": NOW - 600,
        "version": "fedcba9876543210",
        "sentVersion": "fedcba9876543210",
        "ackedVersion": "1111222233334444",
        "nack": {"version": "fedcba9876543210", "reason": "unknown filter 'x'"},
        "errors": [],
    },
    {
        "proxy": "ratings-1.default",
        "service": None,
        "namespace": None,
        "state": "ERROR",
        "connected": False,
        "lastSeen": None,
        "version": None,
        "sentVersion": None,
        "ackedVersion": None,
        "nack": None,
        "errors": ["VirtualService default/ratings: subset v9 does not exist"],
    },
]


def test_proxies_table() -> None:
    rows = lines(output.proxies_table(PROXIES, NOW))
    assert rows[0].split() == ["NAME", "SERVICE", "STATE", "VERSION", "ACKED", "LAST", "SEEN"]
    assert rows[1].split() == [
        "productpage-1.default",
        "productpage.default",
        "SYNCED",
        "01234567",
        "01234567",
        "3s",
        "ago",
    ]
    assert rows[2].split() == [
        "reviews-2.default",
        "reviews.default",
        "NACKED",
        "fedcba98",
        "11112222",
        "10m",
        "ago",
        "(disconnected)",
    ]
    assert rows[3].split() == ["ratings-1.default", "-", "ERROR", "-", "-", "never"]


@pytest.mark.parametrize(
    ("service", "namespace", "text"),
    [
        ("reviews", "default", "reviews.default"),
        ("reviews.default.svc.cluster.local", "default", "reviews.default"),
        ("reviews.default", "default", "reviews.default"),
        ("api.example.com", "default", "api.example.com"),
        ("reviews", None, "reviews"),
        (None, "default", "-"),
    ],
)
def test_service_name(service: str | None, namespace: str | None, text: str) -> None:
    assert output.service_name(service, namespace) == text


def test_proxies_table_of_an_empty_mesh_is_the_header() -> None:
    assert output.proxies_table([], NOW) == "NAME   SERVICE   STATE   VERSION   ACKED   LAST SEEN\n"


def test_proxy_notes_list_nacks_and_errors() -> None:
    assert output.proxy_notes(PROXIES) == [
        "reviews-2.default: NACKED version fedcba98: unknown filter 'x'",
        "ratings-1.default: error: VirtualService default/ratings: subset v9 does not exist",
    ]


def test_history_table() -> None:
    items = [
        {
            "revision": 1,
            "operation": "create",
            "actor": "bootstrap",
            "at": NOW - 7200,
            "resource": {},
        },
        {"revision": 2, "operation": "delete", "actor": "ci", "at": NOW - 60, "resource": None},
    ]
    rows = lines(output.history_table(items, NOW))
    assert rows[0].split() == ["REVISION", "OPERATION", "ACTOR", "WHEN"]
    assert rows[1].split()[:3] == ["1", "create", "bootstrap"]
    assert rows[1].endswith("(2h ago)")
    assert rows[2].split()[:3] == ["2", "delete", "ci"]
    assert rows[2].endswith("(60s ago)")


def test_describe_text() -> None:
    history = [
        {"revision": r, "operation": "update", "actor": "ci", "at": NOW - 100 + r, "resource": {}}
        for r in range(1, 8)
    ]
    text = output.describe_text(
        stored(REVIEWS_VIRTUAL_SERVICE, 7),
        history,
        ["productpage-1.default", "reviews-1.default"],
        NOW,
    )
    assert text.startswith("Name:        reviews\nNamespace:   default\n")
    assert "Kind:        VirtualService (networking.istio.io/v1)\n" in text
    assert "Revision:    7\n" in text
    assert "Labels:      <none>\n" in text
    assert "\nSpec:\n  hosts:\n  - reviews\n" in text
    assert "History (latest 5 of 7):" in text
    history_rows = text.split("History (latest 5 of 7):\n")[1].split("Affects")[0].splitlines()
    assert [row.split()[0] for row in history_rows] == ["REVISION", "7", "6", "5", "4", "3"]
    assert text.endswith("Affects: 2 proxies\n  productpage-1.default\n  reviews-1.default\n")


def test_describe_text_of_a_resource_affecting_nothing() -> None:
    text = output.describe_text(stored(REVIEWS_DESTINATION_RULE), [], [], NOW)
    assert text.endswith("History (latest 0 of 0):\nAffects: 0 proxies\n")


def test_services_table() -> None:
    items = [
        {
            "name": "reviews",
            "namespace": "default",
            "instances": [
                {
                    "id": "reviews-1",
                    "protocol": "http",
                    "labels": {"version": "v1"},
                    "healthy": True,
                },
                {
                    "id": "reviews-2",
                    "protocol": "http",
                    "labels": {"version": "v2"},
                    "healthy": False,
                },
            ],
        },
        {
            "name": "db",
            "namespace": "default",
            "instances": [{"id": "db-1", "protocol": "tcp", "labels": {}}],
        },
    ]
    assert [line.split() for line in lines(output.services_table(items, all_namespaces=False))] == [
        ["NAME", "INSTANCES", "PROTOCOL", "VERSIONS"],
        ["reviews", "1/2", "http", "v1,v2"],
        ["db", "1/1", "tcp", "<none>"],
    ]


def test_tokens_table_never_needs_the_secret() -> None:
    items = [
        {
            "id": "abc",
            "name": "ci",
            "role": "editor",
            "created_at": NOW - 30,
            "created_by": "bootstrap",
        }
    ]
    rows = lines(output.tokens_table(items, NOW))
    assert rows[0].split() == ["ID", "NAME", "ROLE", "CREATED", "CREATED", "BY"]
    assert rows[1].split()[:3] == ["abc", "ci", "editor"]
    assert rows[1].rstrip().endswith("(30s ago)   bootstrap")


V1, V2, V3 = (f"outbound|9080|{v}|reviews.default.svc.cluster.local" for v in ("v1", "v2", "v3"))

SNAPSHOT: dict[str, Any] = {
    "proxy_id": "productpage-1.default",
    "version": "0123456789abcdef",
    "service": "productpage",
    "namespace": "default",
    "identity": "spiffe://cluster.local/ns/default/sa/productpage",
    "inbound": {
        "port": 15006,
        "app_port": 9080,
        "protocol": "http",
        "mtls_mode": "STRICT",
        "port_mtls": [[9090, "PERMISSIVE"]],
        "authz": [{"name": "default/allow-gw", "action": "ALLOW", "rules": []}],
    },
    "outbound": {
        "virtual_hosts": [
            {
                "name": "reviews.default.svc.cluster.local",
                "domains": [
                    "reviews",
                    "reviews:9080",
                    "reviews.default",
                    "reviews.default.svc",
                    "reviews.default.svc.cluster.local",
                    "reviews.default.svc.cluster.local:9080",
                ],
                "routes": [
                    {
                        "name": "jason",
                        "matches": [
                            {
                                "name": "",
                                "uri": None,
                                "headers": [
                                    {
                                        "name": "end-user",
                                        "match": {
                                            "kind": "exact",
                                            "value": "jason",
                                            "ignore_case": False,
                                        },
                                        "invert": False,
                                    }
                                ],
                                "query_params": [],
                                "port": None,
                            }
                        ],
                        "action": {
                            "forward": {
                                "clusters": [
                                    {
                                        "cluster": V2,
                                        "weight": 100,
                                    }
                                ],
                                "timeout_ms": 2000,
                                "retries": {"attempts": 3},
                                "rewrite": None,
                            }
                        },
                    },
                    {
                        "name": "",
                        "matches": [],
                        "action": {
                            "forward": {
                                "clusters": [
                                    {
                                        "cluster": V1,
                                        "weight": 80,
                                    },
                                    {
                                        "cluster": V3,
                                        "weight": 20,
                                    },
                                ]
                            }
                        },
                    },
                    {
                        "name": "old",
                        "matches": [
                            {
                                "uri": {"kind": "prefix", "value": "/old"},
                                "method": {"kind": "exact", "value": "GET"},
                            }
                        ],
                        "action": {"redirect": {"uri": "/new", "status": 301}},
                    },
                    {
                        "name": "",
                        "matches": [{"uri": {"kind": "exact", "value": "/down"}}],
                        "action": {"direct_response": {"status": 503}},
                    },
                ],
                "source": "default/reviews",
            },
            {
                "name": "ratings.default.svc.cluster.local",
                "domains": ["ratings"],
                "routes": [],
                "source": None,
            },
        ],
        "tcp_services": [
            {
                "name": "mysql.default.svc.cluster.local",
                "port": 3306,
                "routes": [
                    {
                        "clusters": [
                            {
                                "cluster": "outbound|3306||mysql.default.svc.cluster.local",
                                "weight": 100,
                            }
                        ],
                        "port": None,
                    }
                ],
            }
        ],
        "clusters": [
            {
                "name": V1,
                "protocol": "http",
                "tls_mode": "ISTIO_MUTUAL",
                "lb": {"policy": "ROUND_ROBIN"},
                "endpoints": [{"address": "198.18.0.5", "port": 15006}],
            },
            {
                "name": V3,
                "protocol": "http",
                "tls_mode": "ISTIO_MUTUAL",
                "lb": {"policy": "LEAST_REQUEST"},
                "endpoints": [],
            },
        ],
        "allow_any": True,
    },
}


def test_proxy_summary() -> None:
    text = output.proxy_summary(SNAPSHOT)
    assert text.startswith(
        "Proxy:     productpage-1.default (service productpage.default)\n"
        "Version:   0123456789abcdef\n"
        "Identity:  spiffe://cluster.local/ns/default/sa/productpage\n"
    )
    assert "Inbound listener :15006 -> app 127.0.0.1:9080\n  protocol http, mTLS STRICT\n" in text
    assert "  port 9090: mTLS PERMISSIVE\n  authorization: ALLOW default/allow-gw\n" in text
    assert (
        "Outbound HTTP (the sidecar's --outbound-port): 2 virtual host(s); "
        "unknown hosts passthrough\n" in text
    )
    assert "  reviews.default.svc.cluster.local  [from VirtualService default/reviews]\n" in text
    assert (
        "    domains: reviews, reviews.default, reviews.default.svc, "
        "reviews.default.svc.cluster.local\n" in text
    )
    assert (
        '    route jason: header end-user exact "jason" -> '
        "outbound|9080|v2|reviews.default.svc.cluster.local (timeout 2000ms, retries 3)\n" in text
    )
    assert (
        "    route: * -> outbound|9080|v1|reviews.default.svc.cluster.local 80%, "
        "outbound|9080|v3|reviews.default.svc.cluster.local 20%\n" in text
    )
    assert '    route old: uri prefix "/old" and method exact "GET" redirect 301 -> /new\n' in text
    assert '    route: uri exact "/down" respond 503\n' in text
    assert "  ratings.default.svc.cluster.local  [default route]\n" in text
    assert (
        "Outbound TCP listeners: 1\n  mysql.default.svc.cluster.local:3306 -> "
        "outbound|3306||mysql.default.svc.cluster.local\n" in text
    )
    clusters = text.split("Clusters: 2\n")[1].splitlines()
    assert [row.split() for row in clusters] == [
        ["NAME", "PROTOCOL", "TLS", "LB", "ENDPOINTS"],
        [
            V1,
            "http",
            "ISTIO_MUTUAL",
            "ROUND_ROBIN",
            "1",
        ],
        [
            V3,
            "http",
            "ISTIO_MUTUAL",
            "LEAST_REQUEST",
            "0",
        ],
    ]


def test_proxy_summary_of_a_sparse_document_does_not_fail() -> None:
    text = output.proxy_summary({"proxy_id": "x"})
    assert "Clusters: 0" in text


# --- workload identity ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta", "text"),
    [(-30, "30s ago"), (0.5, "just now"), (90, "in 90s"), (3599, "in 59m"), (5 * 86400, "in 5d")],
)
def test_relative(delta: float, text: str) -> None:
    assert output.relative(NOW + delta, NOW) == text


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (20 * 3600, "in 20h"),
        (3600, "in 60m"),
        (3599, "in 59m (<1h)"),
        (30, "in 30s (<1h)"),
        (0, "EXPIRED just now"),
        (-300, "EXPIRED 5m ago"),
    ],
)
def test_expiry_flags_near_and_past(delta: float, text: str) -> None:
    assert output.expiry(NOW + delta, NOW) == text
    assert output.expiry(None, NOW) == "-"


def test_iso_seconds() -> None:
    assert output.iso_seconds("1970-01-01T00:01:00+00:00") == 60.0
    assert output.iso_seconds("1970-01-01T00:01:00") == 60.0  # naive: UTC
    assert output.iso_seconds(12) == 12.0
    assert output.iso_seconds("soon") is None


def test_join_tokens_table_never_needs_the_secret() -> None:
    text = output.join_tokens_table(
        [
            {
                "id": "3f9a",
                "service": "reviews",
                "namespace": "default",
                "spiffeId": "spiffe://cluster.local/ns/default/sa/reviews",
                "uses": "single",
                "used": False,
                "expires_at": NOW + 7200,
                "createdBy": "alice",
            }
        ],
        NOW,
    )
    assert lines(text)[1].split() == [
        "3f9a",
        "reviews",
        "default",
        "spiffe://cluster.local/ns/default/sa/reviews",
        "single",
        "no",
        "in",
        "2h",
        "alice",
    ]


def test_certs_table_of_a_sparse_answer_does_not_fail() -> None:
    text = output.certs_table({"items": [{"proxy": "", "rootTrusted": None}]}, NOW)
    assert lines(text)[1].split() == ["-", "-", "-", "-", "-"]
    assert output.certs_notes({}, NOW) == []


def test_rotation_events() -> None:
    base = {"old": "a" * 64, "new": "b" * 64, "digest": "d"}
    distributing = {"rotation": {**base, "phase": "distributing"}, "replicas": []}
    assert output.rotation_event(distributing, None) == (
        f"distributing: new root {'b' * 12} is in the bundle; waiting for the replicas to report"
    )
    reported = {**distributing, "replicas": [{"digest": "d", "lagging": 1}]}
    assert output.rotation_event(reported, None).endswith("; 1 proxy lacks it")
    switched = {"rotation": {**base, "phase": "switched", "retireAfter": NOW}}
    assert output.rotation_event(switched, distributing).startswith(
        f"switched: every proxy holds the new root; {'b' * 12} signs from now on; "
        f"the old root {'a' * 12} leaves the bundle at "
    )
    done = f"finished: the old root {'a' * 12} left the bundle"
    assert output.rotation_event({"rotation": None}, switched) == done
    # Another rotation already started: ours is over.
    other = {"rotation": {**base, "new": "c" * 64, "phase": "distributing"}}
    assert output.rotation_event(other, switched) == done


def test_ca_status_text_of_a_sparse_answer_does_not_fail() -> None:
    assert output.ca_status_text({}, NOW).splitlines() == [
        "Trust domain:  -",
        "Bundle:        digest -, 0 roots",
        "  ROOT   SIGNING   NOT AFTER",
        "Rotation:      none (meshctl ca rotate starts one)",
    ]
