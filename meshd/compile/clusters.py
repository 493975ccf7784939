"""Clusters of one service port: the default one (every healthy backend) and one per
DestinationRule subset (the healthy backends carrying the subset's labels).

Traffic policy per field: the subset's, else the DestinationRule's, else the default
(ROUND_ROBIN; ISTIO_MUTUAL for mesh services, DISABLE for MESH_EXTERNAL ServiceEntries).
With ISTIO_MUTUAL the sidecar verifies that the server presents one of
``expected_identities`` (the identities of the cluster's backends, plus a
ServiceEntry's ``subjectAltNames``); a backend without identity (an instance with no
sidecar) is reached in plaintext, as Istio's auto-mTLS does.
"""

from __future__ import annotations

from typing import Literal

from meshd.compile import snapshot as s
from meshd.compile.catalog import Backend, PortDef, ServiceDef
from meshd.compile.errors import RuleError
from meshd.schema.base import duration_ms
from meshd.schema.networking import DestinationRule, LoadBalancerSettings, TrafficPolicy

TlsMode = Literal["ISTIO_MUTUAL", "DISABLE"]

_SIMPLE: dict[str, Literal["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "PASSTHROUGH"]] = {
    "UNSPECIFIED": "ROUND_ROBIN",
    "ROUND_ROBIN": "ROUND_ROBIN",
    "LEAST_CONN": "LEAST_REQUEST",
    "LEAST_REQUEST": "LEAST_REQUEST",
    "RANDOM": "RANDOM",
    "PASSTHROUGH": "PASSTHROUGH",
}
DEFAULT_RING_SIZE = 1024


def cluster_name(port: int, subset: str | None, host: str) -> str:
    return f"outbound|{port}|{subset or ''}|{host}"


def port_clusters(svc: ServiceDef, port: PortDef, dr: DestinationRule | None) -> list[s.Cluster]:
    """The default cluster of ``port`` then one per subset of ``dr``, in the rule's order."""
    dr_policy = dr.spec.traffic_policy if dr is not None else None
    out = [_cluster(svc, port, None, port.backends, (dr_policy, None))]
    if dr is not None:
        for subset in dr.spec.subsets:
            wanted = frozenset(subset.labels.items())
            members = tuple(b for b in port.backends if wanted <= b.labels)
            out.append(
                _cluster(svc, port, subset.name, members, (dr_policy, subset.traffic_policy))
            )
    return out


def _cluster(
    svc: ServiceDef,
    port: PortDef,
    subset: str | None,
    backends: tuple[Backend, ...],
    policies: tuple[TrafficPolicy | None, TrafficPolicy | None],
) -> s.Cluster:
    """``policies``: the DestinationRule's and the subset's traffic policy."""
    dr_policy, subset_policy = policies
    lb_settings = _pick_lb(subset_policy) or _pick_lb(dr_policy)
    tls = _pick_tls(subset_policy) or _pick_tls(dr_policy)
    if tls is None:
        tls = "ISTIO_MUTUAL" if svc.mesh_internal else "DISABLE"
    endpoints = tuple(b.endpoint for b in backends)
    expected: tuple[str, ...] = ()
    if tls == "ISTIO_MUTUAL":
        ids = {e.identity for e in endpoints if e.identity is not None}
        expected = tuple(sorted(ids.union(svc.subject_alt_names)))
    return s.Cluster(
        name=cluster_name(port.number, subset, svc.host),
        service=svc.host,
        port=port.number,
        subset=subset,
        protocol=port.protocol,
        endpoints=endpoints,
        lb=load_balancer(lb_settings),
        tls_mode=tls,
        expected_identities=expected,
        resolution=svc.resolution,
    )


def _pick_lb(policy: TrafficPolicy | None) -> LoadBalancerSettings | None:
    return policy.load_balancer if policy is not None else None


def _pick_tls(policy: TrafficPolicy | None) -> TlsMode | None:
    if policy is None or policy.tls is None or policy.tls.mode is None:
        return None
    mode = policy.tls.mode
    if mode in ("DISABLE", "ISTIO_MUTUAL"):
        return mode
    raise RuleError(f"tls mode {mode} is not implemented (use ISTIO_MUTUAL or DISABLE)")


def load_balancer(settings: LoadBalancerSettings | None) -> s.LoadBalancer:
    """``LEAST_CONN`` is Istio's deprecated name of ``LEAST_REQUEST``; ``UNSPECIFIED`` and
    absent mean meshd's default, ROUND_ROBIN. Consistent hashing keeps the ROUND_ROBIN
    policy as the fallback for requests without the hash key."""
    if settings is None:
        return s.DEFAULT_LB
    ch = settings.consistent_hash
    if ch is None:
        policy = _SIMPLE[settings.simple or "UNSPECIFIED"]
        return s.DEFAULT_LB if policy == "ROUND_ROBIN" else s.LoadBalancer(policy)
    ring = ch.minimum_ring_size or DEFAULT_RING_SIZE
    if ch.http_header_name is not None:
        hashing = s.ConsistentHash("header", ch.http_header_name.lower(), minimum_ring_size=ring)
    elif ch.http_cookie is not None:
        cookie = ch.http_cookie
        ttl = None if cookie.ttl is None else round(duration_ms(cookie.ttl))
        hashing = s.ConsistentHash(
            "cookie",
            cookie.name,
            cookie_ttl_ms=ttl,
            cookie_path=cookie.path,
            minimum_ring_size=ring,
        )
    elif ch.http_query_parameter_name is not None:
        hashing = s.ConsistentHash(
            "query_param", ch.http_query_parameter_name, minimum_ring_size=ring
        )
    else:
        hashing = s.ConsistentHash("source_ip", minimum_ring_size=ring)
    return s.LoadBalancer("ROUND_ROBIN", hashing)
