"""Shared helpers of the sidecar tests: a small coherent snapshot, broken variants of
it, and settings pointing at a temp state dir."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from meshd.compile import codec
from meshd.compile import snapshot as s
from sidecar.settings import Settings, build_settings

PROXY = "reviews-0a1b2c3d.default"
FQDN = "reviews.default.svc.cluster.local"
SPIFFE = "spiffe://cluster.local/ns/default/sa/reviews"
CLUSTER = f"outbound|9080||{FQDN}"


def make_snapshot(
    version: str = "v1", proxy_id: str = PROXY, *, endpoints: int = 1
) -> s.ProxySnapshot:
    cluster = s.Cluster(
        name=CLUSTER,
        service=FQDN,
        port=9080,
        subset=None,
        protocol="http",
        endpoints=tuple(
            s.Endpoint(f"127.0.0.{i + 1}", 15006, identity=SPIFFE, instance=f"reviews-{i}.default")
            for i in range(endpoints)
        ),
        expected_identities=(SPIFFE,),
    )
    route = s.Route(
        name="default",
        matches=(),
        action=s.ForwardAction(clusters=(s.WeightedCluster(CLUSTER, 100),)),
    )
    vhost = s.VirtualHost(
        name=f"{FQDN}:9080",
        domains=(FQDN, f"{FQDN}:9080", "reviews", "reviews:9080"),
        routes=(route,),
    )
    return s.ProxySnapshot(
        proxy_id=proxy_id,
        version=version,
        service=FQDN,
        namespace="default",
        identity=SPIFFE,
        inbound=s.InboundConfig(port=15006, app_port=9080, protocol="http"),
        outbound=s.OutboundConfig(virtual_hosts=(vhost,), tcp_services=(), clusters=(cluster,)),
    )


def dangling_route_snapshot(version: str = "bad", proxy_id: str = PROXY) -> s.ProxySnapshot:
    """Decodes fine but is incoherent: its route forwards to a cluster it lacks."""
    good = make_snapshot(version, proxy_id)
    return dataclasses.replace(good, outbound=dataclasses.replace(good.outbound, clusters=()))


def encode(snapshot: s.ProxySnapshot) -> bytes:
    return codec.dumps(snapshot)


def make_settings(state_dir: Path, **overrides: str) -> Settings:
    raw: dict[str, str | None] = {
        "service": "reviews",
        "app_port": "9080",
        "token": "tok",
        "id": PROXY,
        "state_dir": str(state_dir),
    }
    raw.update(overrides)
    return build_settings(raw)
