"""The snapshot wire form round-trips exactly and rejects what it cannot read."""

from __future__ import annotations

import dataclasses

import pytest

from meshd.compile import codec
from meshd.compile import snapshot as s


def sample() -> s.ProxySnapshot:
    cluster = s.Cluster(
        name="outbound|9080|v1|reviews.default.svc.cluster.local",
        service="reviews.default.svc.cluster.local",
        port=9080,
        subset="v1",
        protocol="http",
        endpoints=(s.Endpoint("127.0.0.1", 15006, "spiffe://cluster.local/ns/default/sa/reviews"),),
        lb=s.LoadBalancer("ROUND_ROBIN", s.ConsistentHash("header", "x-user")),
        expected_identities=("spiffe://cluster.local/ns/default/sa/reviews",),
    )
    routes = (
        s.Route(
            name="jason",
            matches=(
                s.RouteMatch(headers=(s.HeaderMatch("end-user", s.StringMatch("exact", "jason")),)),
            ),
            action=s.ForwardAction(
                clusters=(s.WeightedCluster(cluster.name, 100),),
                timeout_ms=500,
                retries=s.RetryPolicy(3, 200, ("5xx",), (503,)),
                rewrite=s.Rewrite(uri_regex=("^/a/(.*)$", "/b/\\1")),
            ),
            request_headers=s.HeaderOps(set=(("x-a", "1"),), remove=("x-b",)),
        ),
        s.Route(name="moved", matches=(), action=s.RedirectAction(uri="/new", status=302)),
        s.Route(name="teapot", matches=(), action=s.DirectResponseAction(418, "short and stout")),
    )
    outbound = s.OutboundConfig(
        virtual_hosts=(s.VirtualHost("reviews.default.svc.cluster.local", ("reviews",), routes),),
        tcp_services=(
            s.TcpService(
                "db.default.svc.cluster.local", 5432, (s.TcpRoute((s.WeightedCluster("c", 100),)),)
            ),
        ),
        clusters=(cluster,),
        digest="abc",
    )
    inbound = s.InboundConfig(
        port=15006,
        app_port=9080,
        protocol="http",
        port_mtls=((9080, "PERMISSIVE"),),
        authz=(
            s.AuthzPolicy(
                "deny-get",
                "DENY",
                (
                    s.AuthzRule(
                        operations=(
                            (s.Constraint("request.method", (s.ValueMatch("exact", "GET"),)),),
                        )
                    ),
                ),
            ),
        ),
    )
    return s.ProxySnapshot(
        proxy_id="reviews-1.default",
        version="v1",
        service="reviews.default.svc.cluster.local",
        namespace="default",
        identity="spiffe://cluster.local/ns/default/sa/reviews",
        inbound=inbound,
        outbound=outbound,
    )


def test_round_trip_is_exact() -> None:
    snap = sample()
    raw = codec.dumps(snap)
    assert codec.loads(s.ProxySnapshot, raw) == snap
    assert codec.dumps(codec.loads(s.ProxySnapshot, raw)) == raw


def test_tagged_union_is_written_with_its_tag() -> None:
    plain = codec.to_plain(sample())
    actions = [r["action"] for r in plain["outbound"]["virtual_hosts"][0]["routes"]]
    assert [next(iter(a)) for a in actions] == ["forward", "redirect", "direct_response"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(extra=1), "unknown field"),
        (lambda d: d.pop("proxy_id"), "missing field"),
        (lambda d: d["inbound"].update(port="15006"), "inbound.port: expected int"),
        (lambda d: d["inbound"].update(mtls_mode="LOOSE"), "not one of"),
        (
            lambda d: d["outbound"]["virtual_hosts"][0]["routes"][0].update(
                action={"teleport": {}}
            ),
            "unknown variant",
        ),
    ],
)
def test_decoding_rejects_with_the_path(mutate: object, message: str) -> None:
    plain = codec.to_plain(sample())
    mutate(plain)  # type: ignore[operator]
    with pytest.raises(codec.CodecError, match=message):
        codec.from_plain(s.ProxySnapshot, plain)


def test_chunked_encoding_equals_plain_encoding() -> None:
    from meshd.xds.encode import SnapshotEncoder

    snap = sample()
    snap = dataclasses.replace(snap, trust_bundle="d1", trust_roots=("-----BEGIN A-----\n", "B"))
    other = dataclasses.replace(snap, proxy_id="reviews-2.default", version="v2")
    encoder = SnapshotEncoder()
    docs = encoder.encode_all({snap.proxy_id: snap, other.proxy_id: other})
    for s_ in (snap, other):
        assert b"".join(docs[s_.proxy_id].chunks) == codec.dumps(s_)
    # The shared outbound is encoded once and the very same bytes go to both proxies.
    assert docs[snap.proxy_id].chunks[1] is docs[other.proxy_id].chunks[1]
    again = encoder.encode_all({snap.proxy_id: snap})
    assert again[snap.proxy_id] is docs[snap.proxy_id], "an unchanged version is not re-encoded"
