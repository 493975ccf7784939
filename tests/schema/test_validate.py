"""Single-resource validation: every rule names the field it is about."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from meshd.errors import ValidationFailed
from meshd.schema.networking import VirtualService
from meshd.schema.parse import parse_resource
from meshd.schema.validate import validate_resource

Doc = dict[str, Any]


def _vs(http: list[Doc] | None = None, **spec: Any) -> Doc:
    route = [{"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "bookinfo"},
        "spec": {"hosts": ["reviews"], "http": route if http is None else http, **spec},
    }


def _dr(**spec: Any) -> Doc:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews"},
        "spec": {"host": "reviews", **spec},
    }


def _se(**spec: Any) -> Doc:
    base: Doc = {
        "hosts": ["api.example.com"],
        "ports": [{"number": 443, "name": "tcp", "protocol": "TCP"}],
        "resolution": "DNS",
    }
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "api"},
        "spec": base | spec,
    }


def _sidecar(**spec: Any) -> Doc:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": "default"},
        "spec": spec,
    }


def _security(kind: str, **spec: Any) -> Doc:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": kind,
        "metadata": {"name": "policy", "namespace": "foo"},
        "spec": spec,
    }


def _ap(rules: list[Doc], **spec: Any) -> Doc:
    return _security("AuthorizationPolicy", rules=rules, **spec)


def _dest(subset: str, weight: int | None = None) -> Doc:
    out: Doc = {"destination": {"host": "reviews", "subset": subset}}
    if weight is not None:
        out["weight"] = weight
    return out


FORWARD = [_dest("v1")]

CASES: list[tuple[str, Doc, str, str]] = [
    # VirtualService
    ("no hosts", _vs(hosts=[]), "spec.hosts", "at least one host is required"),
    ("wildcard host", _vs(hosts=["*.example.com"]), "spec.hosts[0]", "wildcard hosts are not"),
    ("ip host", _vs(hosts=["10.0.0.1"]), "spec.hosts[0]", "is an IP address"),
    ("bad host", _vs(hosts=["re views"]), "spec.hosts[0]", "invalid host 're views'"),
    (
        "gateway",
        _vs(gateways=["mesh", "istio-system/ingress"]),
        "spec.gateways[1]",
        "meshd has no gateways; only 'mesh' is allowed",
    ),
    ("export", _vs(exportTo=["Bad_NS"]), "spec.exportTo[0]", "invalid exportTo entry"),
    ("export mix", _vs(exportTo=["*", "."]), "spec.exportTo", "cannot be combined"),
    ("no routes", _vs(http=[]), "spec", "needs 'http' or 'tcp' routes"),
    ("no action", _vs([{"name": "x"}]), "spec.http[0]", "needs one of 'route', 'redirect'"),
    (
        "route and redirect",
        _vs([{"route": FORWARD, "redirect": {"uri": "/x"}}]),
        "spec.http[0]",
        "'route' and 'redirect' cannot be used together",
    ),
    (
        "rewrite with redirect",
        _vs([{"redirect": {"uri": "/x"}, "rewrite": {"uri": "/y"}}]),
        "spec.http[0].rewrite",
        "cannot be used with 'redirect'",
    ),
    (
        "timeout with direct response",
        _vs([{"directResponse": {"status": 404}, "timeout": "1s"}]),
        "spec.http[0].timeout",
        "applies to forwarded requests only",
    ),
    (
        "single weight",
        _vs([{"route": [_dest("v1", 50)]}]),
        "spec.http[0].route[0].weight",
        "its weight must be absent, 0 or 100, not 50",
    ),
    (
        "weights 110",
        _vs([{"route": [_dest("v1", 60), _dest("v2", 50)]}]),
        "spec.http[0].route",
        "weights sum to 110; they must sum to 100",
    ),
    (
        "weights absent",
        _vs([{"route": [_dest("v1"), _dest("v2")]}]),
        "spec.http[0].route",
        "weights sum to 0",
    ),
    (
        "duplicate names",
        _vs([{"name": "a", "route": FORWARD}, {"name": "a", "route": FORWARD}]),
        "spec.http[1].name",
        "already used by spec.http[0]",
    ),
    (
        "redirect code",
        _vs([{"redirect": {"uri": "/x", "redirectCode": 200}}]),
        "spec.http[0].redirect.redirectCode",
        "must be a 3xx status",
    ),
    (
        "redirect scheme",
        _vs([{"redirect": {"scheme": "ftp"}}]),
        "spec.http[0].redirect.scheme",
        "'http' or 'https'",
    ),
    (
        "direct status",
        _vs([{"directResponse": {"status": 700}}]),
        "spec.http[0].directResponse.status",
        "between 200 and 599, not 700",
    ),
    (
        "body oneof",
        _vs([{"directResponse": {"status": 200, "body": {}}}]),
        "spec.http[0].directResponse.body",
        "set exactly one of 'string' or 'bytes'",
    ),
    (
        "body base64",
        _vs([{"directResponse": {"status": 200, "body": {"bytes": "not base64!"}}}]),
        "spec.http[0].directResponse.body",
        "base64",
    ),
    (
        "empty uri match",
        _vs([{"match": [{"uri": {}}], "route": FORWARD}]),
        "spec.http[0].match[0].uri",
        "set one of 'exact', 'prefix' or 'regex'",
    ),
    (
        "header name",
        _vs([{"match": [{"headers": {"end user": {"exact": "x"}}}], "route": FORWARD}]),
        "spec.http[0].match[0].headers['end user']",
        "invalid header name 'end user'",
    ),
    (
        "without header name",
        _vs([{"match": [{"withoutHeaders": {":path": {}}}], "route": FORWARD}]),
        "spec.http[0].match[0].withoutHeaders[':path']",
        "invalid header name",
    ),
    (
        "ignore case regex",
        _vs([{"match": [{"uri": {"regex": "/a.*"}, "ignoreUriCase": True}], "route": FORWARD}]),
        "spec.http[0].match[0].ignoreUriCase",
        "write (?i) in the regex",
    ),
    (
        "header set name",
        _vs([{"route": FORWARD, "headers": {"request": {"set": {"x y": "1"}}}}]),
        "spec.http[0].headers.request.set['x y']",
        "invalid header name",
    ),
    (
        "header name injection",
        _vs([{"route": FORWARD, "headers": {"request": {"set": {"x\n": "1"}}}}]),
        "spec.http[0].headers.request.set['x\\n']",
        "invalid header name",
    ),
    ("host newline", _vs(hosts=["reviews\n"]), "spec.hosts[0]", "invalid host"),
    (
        "header value injection",
        _vs([{"route": FORWARD, "headers": {"response": {"add": {"x": "a\r\nb: c"}}}}]),
        "spec.http[0].headers.response.add['x']",
        "must not contain CR, LF or NUL",
    ),
    (
        "destination header remove",
        _vs([{"route": [{**_dest("v1"), "headers": {"request": {"remove": ["a:b"]}}}]}]),
        "spec.http[0].route[0].headers.request.remove[0]",
        "invalid header name",
    ),
    (
        "negative attempts",
        _vs([{"route": FORWARD, "retries": {"attempts": -1}}]),
        "spec.http[0].retries.attempts",
        "0 or more",
    ),
    (
        "zero timeout",
        _vs([{"route": FORWARD, "timeout": "0s"}]),
        "spec.http[0].timeout",
        "timeout must be positive",
    ),
    (
        "bad duration",
        _vs([{"route": FORWARD, "timeout": "10"}]),
        "spec.http[0].timeout",
        "invalid duration '10'",
    ),
    (
        "zero per-try timeout",
        _vs([{"route": FORWARD, "retries": {"attempts": 2, "perTryTimeout": "0ms"}}]),
        "spec.http[0].retries.perTryTimeout",
        "perTryTimeout must be positive",
    ),
    (
        "grpc retry condition",
        _vs([{"route": FORWARD, "retries": {"attempts": 2, "retryOn": "5xx,cancelled"}}]),
        "spec.http[0].retries.retryOn",
        "retry condition 'cancelled' is not supported",
    ),
    (
        "rewrite both",
        _vs(
            [
                {
                    "route": FORWARD,
                    "rewrite": {"uri": "/a", "uriRegexRewrite": {"match": "^/b", "rewrite": "/c"}},
                }
            ]
        ),
        "spec.http[0].rewrite",
        "either 'uri' or 'uriRegexRewrite'",
    ),
    (
        "prefix rewrite after regex",
        _vs([{"match": [{"uri": {"regex": "/a.*"}}], "route": FORWARD, "rewrite": {"uri": "/"}}]),
        "spec.http[0].rewrite.uri",
        "use 'uriRegexRewrite'",
    ),
    (
        "rewrite regex",
        _vs([{"route": FORWARD, "rewrite": {"uriRegexRewrite": {"match": "(", "rewrite": "/"}}}]),
        "spec.http[0].rewrite.uriRegexRewrite.match",
        "invalid regular expression '('",
    ),
    (
        "subset name",
        _vs([{"route": [_dest("V_1")]}]),
        "spec.http[0].route[0].destination.subset",
        "invalid subset name",
    ),
    (
        "destination port",
        _vs([{"route": [{"destination": {"host": "reviews", "port": {"number": 0}}}]}]),
        "spec.http[0].route[0].destination.port.number",
        "greater than or equal to 1",
    ),
    (
        "tcp without route",
        _vs(http=[], tcp=[{"match": [{"port": 27017}]}]),
        "spec.tcp[0].route",
        "needs at least one destination",
    ),
    (
        "tcp weights",
        _vs(http=[], tcp=[{"route": [_dest("v1", 10), _dest("v2", 10)]}]),
        "spec.tcp[0].route",
        "weights sum to 20",
    ),
    (
        "tcp source labels",
        _vs(http=[], tcp=[{"match": [{"sourceLabels": {"app": "x"}}], "route": FORWARD}]),
        "spec.tcp[0].match[0].sourceLabels",
        "is not supported: matching on the caller's labels",
    ),
    ("tls routes", _vs(tls=[{"match": [{"sniHosts": ["a"]}]}]), "spec.tls", "TLS (SNI) routing"),
    (
        "mirror",
        _vs([{"route": FORWARD, "mirror": {"host": "shadow"}}]),
        "spec.http[0].mirror",
        "traffic mirroring is not implemented yet",
    ),
    (
        "derive port",
        _vs([{"redirect": {"derivePort": "FROM_REQUEST_PORT"}}]),
        "spec.http[0].redirect.derivePort",
        "set 'port'",
    ),
    (
        "retry backoff",
        _vs([{"route": FORWARD, "retries": {"attempts": 2, "backoff": "1s"}}]),
        "spec.http[0].retries.backoff",
        "not supported",
    ),
    # DestinationRule
    ("dr wildcard", _dr(host="*.example.com"), "spec.host", "wildcard hosts are not supported"),
    (
        "dr subset names",
        _dr(subsets=[{"name": "v1"}, {"name": "v1"}]),
        "spec.subsets[1].name",
        "already defined by spec.subsets[0]",
    ),
    ("dr subset name", _dr(subsets=[{"name": "V1"}]), "spec.subsets[0].name", "invalid subset"),
    (
        "tls simple",
        _dr(trafficPolicy={"tls": {"mode": "SIMPLE"}}),
        "spec.trafficPolicy.tls.mode",
        "value 'SIMPLE' of 'mode' is not supported: TLS origination",
    ),
    (
        "tls files",
        _dr(trafficPolicy={"tls": {"mode": "ISTIO_MUTUAL", "sni": "a"}}),
        "spec.trafficPolicy.tls.sni",
        "not supported",
    ),
    (
        "outlier detection",
        _dr(subsets=[{"name": "v1", "trafficPolicy": {"outlierDetection": {}}}]),
        "spec.subsets[0].trafficPolicy.outlierDetection",
        "outlier detection is not implemented yet",
    ),
    (
        "two hash keys",
        _dr(
            trafficPolicy={
                "loadBalancer": {"consistentHash": {"useSourceIp": True, "httpHeaderName": "x"}}
            }
        ),
        "spec.trafficPolicy.loadBalancer.consistentHash",
        "set exactly one hash key",
    ),
    (
        "no hash key",
        _dr(trafficPolicy={"loadBalancer": {"consistentHash": {"useSourceIp": False}}}),
        "spec.trafficPolicy.loadBalancer.consistentHash",
        "set exactly one hash key",
    ),
    (
        "hash header",
        _dr(trafficPolicy={"loadBalancer": {"consistentHash": {"httpHeaderName": "x y"}}}),
        "spec.trafficPolicy.loadBalancer.consistentHash.httpHeaderName",
        "invalid header name",
    ),
    (
        "ring hash",
        _dr(
            trafficPolicy={"loadBalancer": {"consistentHash": {"useSourceIp": True, "maglev": {}}}}
        ),
        "spec.trafficPolicy.loadBalancer.consistentHash.maglev",
        "Maglev hashing is not implemented yet",
    ),
    (
        "simple and hash",
        _dr(
            trafficPolicy={
                "loadBalancer": {"simple": "RANDOM", "consistentHash": {"useSourceIp": True}}
            }
        ),
        "spec.trafficPolicy.loadBalancer",
        "set only one of 'simple' or 'consistentHash'",
    ),
    # ServiceEntry
    ("se no hosts", _se(hosts=[]), "spec.hosts", "at least one host"),
    ("se no ports", _se(ports=[]), "spec.ports", "at least one port"),
    ("se resolution", _se(resolution=None), "spec.resolution", "resolution is required"),
    ("se none", _se(resolution="NONE"), "spec.resolution", "value 'NONE' of 'resolution'"),
    ("se static", _se(resolution="STATIC"), "spec.endpoints", "needs at least one endpoint"),
    (
        "se static names",
        _se(resolution="STATIC", endpoints=[{"address": "db.example.com"}]),
        "spec.endpoints[0].address",
        "is not an IP address",
    ),
    (
        "se https",
        _se(ports=[{"number": 443, "name": "https", "protocol": "HTTPS"}]),
        "spec.ports[0].protocol",
        "declare TLS traffic as TCP",
    ),
    (
        "se no protocol",
        _se(ports=[{"number": 443, "name": "p"}]),
        "spec.ports[0].protocol",
        "protocol is required",
    ),
    (
        "se unknown protocol",
        _se(ports=[{"number": 443, "name": "p", "protocol": "QUIC"}]),
        "spec.ports[0].protocol",
        "unknown protocol 'QUIC'",
    ),
    (
        "se duplicate port",
        _se(
            ports=[
                {"number": 80, "name": "a", "protocol": "HTTP"},
                {"number": 80, "name": "b", "protocol": "TCP"},
            ]
        ),
        "spec.ports[1].number",
        "already declared by ports[0]",
    ),
    (
        "se endpoint port",
        _se(endpoints=[{"address": "a.example.com", "ports": {"http": 8080}}]),
        "spec.endpoints[0].ports['http']",
        "no port named 'http'",
    ),
    (
        "se unix",
        _se(endpoints=[{"address": "unix:///var/run/a.sock"}]),
        "spec.endpoints[0].address",
        "Unix domain socket",
    ),
    ("se addresses", _se(addresses=["240.0.0.1"]), "spec.addresses", "virtual IPs"),
    (
        "se network",
        _se(endpoints=[{"address": "a.example.com", "network": "n2"}]),
        "spec.endpoints[0].network",
        "single network",
    ),
    # Sidecar
    (
        "sidecar host form",
        _sidecar(egress=[{"hosts": ["reviews"]}]),
        "spec.egress[0].hosts[0]",
        "namespace/dnsName",
    ),
    (
        "sidecar wildcard",
        _sidecar(egress=[{"hosts": ["*/*.example.com"]}]),
        "spec.egress[0].hosts[0]",
        "wildcard host names are not supported yet",
    ),
    (
        "sidecar empty",
        _sidecar(egress=[{"hosts": []}]),
        "spec.egress[0].hosts",
        "at least one host",
    ),
    (
        "sidecar selector",
        _sidecar(workloadSelector={"labels": {}}),
        "spec.workloadSelector.labels",
        "at least one label",
    ),
    (
        "sidecar ingress",
        _sidecar(ingress=[{"port": {"number": 9080}, "defaultEndpoint": "127.0.0.1:8080"}]),
        "spec.ingress",
        "not supported",
    ),
    (
        "egress proxy",
        _sidecar(outboundTrafficPolicy={"mode": "ALLOW_ANY", "egressProxy": {"host": "egress"}}),
        "spec.outboundTrafficPolicy.egressProxy",
        "egress proxy",
    ),
    # PeerAuthentication
    (
        "port mtls without selector",
        _security("PeerAuthentication", portLevelMtls={"8080": {"mode": "DISABLE"}}),
        "spec.portLevelMtls",
        "requires a selector",
    ),
    (
        "port mtls port",
        _security(
            "PeerAuthentication", selector={"matchLabels": {"a": "b"}}, portLevelMtls={"0": {}}
        ),
        "spec.portLevelMtls['0']",
        "greater than or equal to 1",
    ),
    # AuthorizationPolicy
    (
        "custom",
        _ap([], action="CUSTOM"),
        "spec.action",
        "value 'CUSTOM' of 'action' is not supported",
    ),
    ("provider", _ap([], provider={"name": "opa"}), "spec.provider", "external authorization"),
    (
        "target ref",
        _ap([], targetRef={"kind": "Gateway", "name": "gw"}),
        "spec.targetRef",
        "use selector",
    ),
    (
        "ip blocks",
        _ap([{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}]),
        "spec.rules[0].from[0].source.ipBlocks[0]",
        "invalid IP block '10.0.0.0/33'",
    ),
    (
        "remote ip blocks",
        _ap([{"from": [{"source": {"remoteIpBlocks": ["10.0.0.0/8"]}}]}]),
        "spec.rules[0].from[0].source.remoteIpBlocks",
        "use ipBlocks",
    ),
    (
        "request principals",
        _ap([{"from": [{"source": {"requestPrincipals": ["*"]}}]}]),
        "spec.rules[0].from[0].source.requestPrincipals",
        "JWT authentication is not implemented yet",
    ),
    (
        "empty source",
        _ap([{"from": [{"source": {}}]}]),
        "spec.rules[0].from[0].source",
        "at least one field",
    ),
    ("no source", _ap([{"from": [{}]}]), "spec.rules[0].from[0].source", "at least one field"),
    (
        "service account",
        _ap([{"from": [{"source": {"serviceAccounts": ["ns/*"]}}]}]),
        "spec.rules[0].from[0].source.serviceAccounts[0]",
        "invalid service account",
    ),
    (
        "principal wildcard",
        _ap([{"from": [{"source": {"principals": ["cluster.local/*/sa/x"]}}]}]),
        "spec.rules[0].from[0].source.principals[0]",
        "only allowed alone, or at the start or end",
    ),
    (
        "ports",
        _ap([{"to": [{"operation": {"ports": ["http"]}}]}]),
        "spec.rules[0].to[0].operation.ports[0]",
        "invalid port 'http'",
    ),
    (
        "empty operation",
        _ap([{"to": [{"operation": {}}]}]),
        "spec.rules[0].to[0].operation",
        "at least one field",
    ),
    (
        "when key",
        _ap([{"when": [{"key": "request.method", "values": ["GET"]}]}]),
        "spec.rules[0].when[0].key",
        "unknown condition key 'request.method'",
    ),
    (
        "when jwt",
        _ap([{"when": [{"key": "request.auth.claims[iss]", "values": ["x"]}]}]),
        "spec.rules[0].when[0].key",
        "is not supported: JWT authentication",
    ),
    (
        "when remote ip",
        _ap([{"when": [{"key": "remote.ip", "values": ["10.0.0.1"]}]}]),
        "spec.rules[0].when[0].key",
        "use source.ip",
    ),
    (
        "when header name",
        _ap([{"when": [{"key": "request.headers[a b]", "values": ["x"]}]}]),
        "spec.rules[0].when[0].key",
        "invalid header name",
    ),
    (
        "when values",
        _ap([{"when": [{"key": "source.namespace"}]}]),
        "spec.rules[0].when[0]",
        "needs 'values'",
    ),
    (
        "when ip",
        _ap([{"when": [{"key": "source.ip", "notValues": ["nope"]}]}]),
        "spec.rules[0].when[0].notValues[0]",
        "invalid IP block",
    ),
    (
        "when port",
        _ap([{"when": [{"key": "destination.port", "values": ["99999"]}]}]),
        "spec.rules[0].when[0].values[0]",
        "invalid port",
    ),
    # RequestAuthentication
    (
        "jwt rules",
        _security("RequestAuthentication", jwtRules=[{"issuer": "https://example.com"}]),
        "spec.jwtRules",
        "JWT authentication is not implemented yet",
    ),
]


@pytest.mark.parametrize(("name", "doc", "path", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_rejected(name: str, doc: Doc, path: str, fragment: str) -> None:
    with pytest.raises(ValidationFailed) as exc:
        parse_resource(copy.deepcopy(doc))
    found = {e.field: e.message for e in exc.value.errors}
    assert path in found, f"{name}: expected an error on {path}, got {found}"
    assert fragment in found[path]


ACCEPTED: list[tuple[str, Doc]] = [
    ("mesh gateway", _vs(gateways=["mesh"])),
    ("single weight 100", _vs([{"route": [_dest("v1", 100)]}])),
    ("single weight 0", _vs([{"route": [_dest("v1", 0)]}])),
    ("header presence", _vs([{"match": [{"headers": {"x-debug": {}}}], "route": FORWARD}])),
    ("redirect 308", _vs([{"redirect": {"uri": "/new", "redirectCode": 308, "port": 8443}}])),
    ("bytes body", _vs([{"directResponse": {"status": 200, "body": {"bytes": "aGVsbG8="}}}])),
    ("status codes", _vs([{"route": FORWARD, "retries": {"attempts": 3, "retryOn": "503,reset"}}])),
    ("least conn", _dr(trafficPolicy={"loadBalancer": {"simple": "LEAST_CONN"}})),
    (
        "min ring",
        _dr(
            trafficPolicy={
                "loadBalancer": {
                    "consistentHash": {"httpQueryParameterName": "u", "minimumRingSize": 2048}
                }
            }
        ),
    ),
    ("tls disable", _dr(trafficPolicy={"tls": {"mode": "DISABLE"}})),
    ("static", _se(resolution="STATIC", endpoints=[{"address": "10.1.2.3", "labels": {"v": "1"}}])),
    ("lowercase protocol", _se(ports=[{"number": 80, "name": "http", "protocol": "http"}])),
    (
        "deny with wildcards",
        _ap(
            [{"to": [{"operation": {"paths": ["/admin*", "*/debug"], "hosts": ["*"]}}]}],
            action="DENY",
        ),
    ),
    (
        "audit",
        _ap(
            [{"from": [{"source": {"serviceAccounts": ["default/sleep", "sleep"]}}]}],
            action="AUDIT",
        ),
    ),
    ("when port", _ap([{"when": [{"key": "destination.port", "values": ["8080"]}]}])),
    (
        "request authentication selector",
        _security("RequestAuthentication", selector={"matchLabels": {"app": "x"}}),
    ),
]


@pytest.mark.parametrize(("name", "doc"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted(name: str, doc: Doc) -> None:
    parse_resource(copy.deepcopy(doc))


def test_semantic_checks_wait_for_unsupported_fields() -> None:
    doc = _vs(
        [{"route": [_dest("v1", 10), _dest("v2", 10)], "fault": {"abort": {"httpStatus": 500}}}]
    )
    with pytest.raises(ValidationFailed) as exc:
        parse_resource(doc)
    assert [e.field for e in exc.value.errors] == ["spec.http[0].fault"]


def test_unsupported_errors_come_in_path_order() -> None:
    mirror: Callable[[int], Doc] = lambda i: {"route": FORWARD, "mirror": {"host": f"m{i}"}}  # noqa: E731
    doc = _vs([mirror(i) for i in range(12)])
    with pytest.raises(ValidationFailed) as exc:
        parse_resource(doc)
    assert [e.field for e in exc.value.errors] == [f"spec.http[{i}].mirror" for i in range(12)]


def test_validate_resource_on_a_model_built_in_python() -> None:
    vs = VirtualService.model_validate(_vs([{"route": [_dest("v1", 30), _dest("v2", 30)]}]))
    errors = validate_resource(vs)
    assert [(e.field, e.resource) for e in errors] == [
        ("spec.http[0].route", "VirtualService bookinfo/reviews")
    ]
