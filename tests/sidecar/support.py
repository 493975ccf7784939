"""Shared helpers of the sidecar tests: a small coherent snapshot, broken variants of
it, settings pointing at a temp state dir, and a fake workload identity for tests where
the real one (:class:`sidecar.identity.IdentityManager`) is not the point."""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from meshd.compile import codec
from meshd.compile import snapshot as s
from sidecar.identity import IdentityError, IdentityStats
from sidecar.settings import Settings, build_settings

PROXY = "reviews-0a1b2c3d.default"
FQDN = "reviews.default.svc.cluster.local"
SPIFFE = "spiffe://cluster.local/ns/default/sa/reviews"
CLUSTER = f"outbound|9080||{FQDN}"


JOIN_TOKEN = "mjt_test-join-token"


def make_snapshot(
    version: str = "v1",
    proxy_id: str = PROXY,
    *,
    endpoints: int = 1,
    trust_roots: tuple[str, ...] = (),
    trust_bundle: str = "",
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
        trust_roots=trust_roots,
        trust_bundle=trust_bundle,
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
        "token": JOIN_TOKEN,
        "ca_file": str(state_dir / "meshd-ca.pem"),
        "id": PROXY,
        "state_dir": str(state_dir),
    }
    raw.update(overrides)
    return build_settings(raw)


@dataclass
class FakeIdentity:
    """Stands in for :class:`sidecar.identity.IdentityManager` where the agent or the
    admin port is tested: a certificate that expires in ``seconds_left`` (None: no
    certificate yet), the trust roots the agent handed over, and a TLS context for the
    control client that tests replace to simulate a renewal."""

    seconds_left: float | None = 3600.0
    last_error: str | None = None
    renewals: int = 0
    refuse_roots: str = ""
    on_update: Callable[[], None] = lambda: None
    context: ssl.SSLContext = field(default_factory=lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    roots_updates: list[tuple[tuple[str, ...], str]] = field(default_factory=list)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    async def update_roots(self, roots: Sequence[str], trust_bundle: str = "") -> bool:
        self.on_update()
        if self.refuse_roots:
            raise IdentityError(f"refusing the new trust roots: {self.refuse_roots}")
        self.roots_updates.append((tuple(roots), trust_bundle))
        return True

    def control_plane_context(self) -> ssl.SSLContext:
        return self.context

    def stats(self) -> IdentityStats:
        held = self.seconds_left is not None
        return IdentityStats(
            spiffe_id=SPIFFE if held else None,
            serial="1a2b" if held else None,
            not_after=self.now + timedelta(seconds=self.seconds_left or 0) if held else None,
            seconds_to_expiry=self.seconds_left,
            trust_bundle="0123456789abcdef" if held else "",
            roots=1 if held else 0,
            renewals_total=self.renewals,
            renewal_failures_total=0,
            last_error=self.last_error,
        )

    def prometheus_lines(self) -> list[str]:
        return [
            "# TYPE mesh_sidecar_certificate_renewals_total counter",
            f"mesh_sidecar_certificate_renewals_total {self.renewals}",
        ]
