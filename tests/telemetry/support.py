"""Helpers of the telemetry tests: workloads and records to feed :class:`Telemetry`,
and a strict reader of Prometheus text format 0.0.4 that checks what
``prometheus_client``'s parser forgives (TYPE before a family's samples, each family in
one block, no duplicate series, a line feed after the last line)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from sidecar.telemetry import (
    Reporter,
    RequestRecord,
    SecurityPolicy,
    Service,
    Telemetry,
    Workload,
)

LOCAL_PRINCIPAL = "spiffe://cluster.local/ns/default/sa/productpage"
PEER_PRINCIPAL = "spiffe://cluster.local/ns/shop/sa/reviews"
REVIEWS = Service.from_host("reviews.shop.svc.cluster.local")
PEER = Workload.from_labels("reviews", "shop", PEER_PRINCIPAL, {"app": "reviews", "version": "v2"})

# Istio's standard labels (istio.io docs/reference/config/metrics; istio/proxy
# istio_stats.cc): the spec the rendering is held to.
ISTIO_HTTP_LABELS = {
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
}
ISTIO_TCP_LABELS = ISTIO_HTTP_LABELS - {"response_code", "grpc_response_status"}

ENVOY_BUCKETS = [
    "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000",
    "10000", "30000", "60000", "300000", "600000", "1800000", "3600000", "+Inf",
]  # fmt: skip


def telemetry(**kwargs: Any) -> Telemetry:
    return Telemetry("productpage", "default", LOCAL_PRINCIPAL, labels={"version": "v1"}, **kwargs)


def request(**overrides: Any) -> RequestRecord:
    values: dict[str, Any] = {
        "reporter": Reporter.SOURCE,
        "peer": PEER,
        "service": REVIEWS,
        "response_code": 200,
        "duration_ms": 3.0,
        "request_bytes": 100,
        "response_bytes": 2000,
        "connection_security_policy": SecurityPolicy.MUTUAL_TLS,
    }
    values.update(overrides)
    return RequestRecord(**values)


_SAMPLE = re.compile(
    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\\n]|\\[\\\"n])*\",?)*)\})?"
    r" (?P<value>[-+]?(?:[0-9.eE+-]+|Inf|NaN))"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("",), "gauge": ("",)}


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


@dataclass
class Family:
    name: str
    type: str
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def select(self, suffix: str = "", **labels: str) -> list[tuple[dict[str, str], float]]:
        return [
            (lab, value)
            for name, lab, value in self.samples
            if name == self.name + suffix and all(lab.get(k) == v for k, v in labels.items())
        ]

    def value(self, suffix: str = "", **labels: str) -> float:
        found = self.select(suffix, **labels)
        assert len(found) == 1, f"{self.name}{suffix} {labels}: {len(found)} samples"
        return found[0][1]


def parse_strict(text: str) -> dict[str, Family]:
    """Read ``text`` line by line, asserting the exposition format's rules; then check
    that ``prometheus_client`` reads the same samples."""
    assert text.endswith("\n"), "the text must end with a line feed"
    families: dict[str, Family] = {}
    current: Family | None = None
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for line in text[:-1].split("\n"):  # LF only: other line breaks are label text
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in families, f"{name} appears in two blocks"
            current = families[name] = Family(name, "", help_text)
            assert help_text, f"{name} has an empty HELP"
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            if current is None or current.name != name:  # HELP is optional
                assert name not in families, f"{name} appears in two blocks"
                current = families[name] = Family(name, "", "")
            assert not current.samples, f"TYPE {name} after its samples"
            assert kind in _SUFFIXES, kind
            current.type = kind
        else:
            match = _SAMPLE.fullmatch(line)
            assert match, f"not a sample line: {line!r}"
            assert current is not None, f"sample before HELP: {line}"
            assert current.type, f"sample before TYPE: {line}"
            name = match["name"]
            assert any(name == current.name + s for s in _SUFFIXES[current.type]), (
                f"{name} is not part of {current.name} ({current.type})"
            )
            labels = {k: unescape(v) for k, v in _LABEL.findall(match["labels"] or "")}
            identity = (name, tuple(sorted(labels.items())))
            assert identity not in seen, f"duplicate series {identity}"
            seen.add(identity)
            current.samples.append((name, labels, float(match["value"])))
    _agrees_with_prometheus_client(text, families)
    return families


def _agrees_with_prometheus_client(text: str, families: dict[str, Family]) -> None:
    theirs = {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    ours = {
        (name, tuple(sorted(labels.items())), value)
        for f in families.values()
        for name, labels, value in f.samples
    }
    assert theirs == ours
