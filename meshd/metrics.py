"""The control plane's own metrics (``/metrics``), one registry per app instance."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.compile_seconds = Histogram(
            "meshd_compile_duration_seconds",
            "Time to compile every proxy's snapshot",
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.snapshots_changed = Counter(
            "meshd_snapshots_changed_total", "Proxy snapshots that got a new version", registry=r
        )
        self.proxies_with_errors = Gauge(
            "meshd_proxies_invalid_config",
            "Proxies whose newest config failed validation",
            registry=r,
        )
        self.push_to_ack = Histogram(
            "meshd_push_ack_seconds",
            "Time from a new snapshot version to the proxy's ACK",
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.nacks = Counter("meshd_xds_nacks_total", "Snapshots proxies rejected", registry=r)
        self.applies = Counter(
            "meshd_resource_writes_total", "Resource writes by outcome", ["outcome"], registry=r
        )
        self.certs_issued = Counter(
            "meshd_certificates_issued_total",
            "Workload certificates signed, by how the caller authenticated",
            ["via"],
            registry=r,
        )
        self.sign_seconds = Histogram(
            "meshd_sign_duration_seconds",
            "Time to sign a certificate, CA call included",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.cert_expiry = Gauge(
            "meshd_proxy_certificate_expiry_timestamp_seconds",
            "When each proxy's newest certificate expires (Unix time)",
            ["proxy"],
            registry=r,
        )
        self.proxies_connected = Gauge(
            "meshd_proxies_connected",
            "Proxies with a config watch open or recently seen",
            registry=r,
        )

    def observe_compile(self, seconds: float, changed: int, errors: int) -> None:
        self.compile_seconds.observe(seconds)
        self.snapshots_changed.inc(changed)
        self.proxies_with_errors.set(errors)

    def observe_sign(self, seconds: float, via: str) -> None:
        self.sign_seconds.observe(seconds)
        self.certs_issued.labels(via).inc()

    def observe_ack(self, seconds: float) -> None:
        self.push_to_ack.observe(seconds)

    def render(self, refresh: Callable[[], None] | None = None) -> bytes:
        if refresh is not None:
            refresh()
        return generate_latest(self.registry)
