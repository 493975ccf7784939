"""The Istio metrics: names, types, every standard label with the right values on both
sides, histogram buckets, TCP counters, escaping, and the series cap. Every rendering
is read back strictly (tests.telemetry.support.parse_strict) and by prometheus_client."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.telemetry import (
    DURATION_BUCKETS_MS,
    HTTP_LABEL_NAMES,
    SIZE_BUCKETS_BYTES,
    TCP_LABEL_NAMES,
    UNKNOWN_SERVICE,
    UNKNOWN_WORKLOAD,
    Reporter,
    RequestRecord,
    ResponseFlag,
    SecurityPolicy,
    Service,
    TcpLabels,
    Workload,
    response_flags,
)
from sidecar.telemetry.metrics import (
    HTTP_SERIES_PER_LABEL_SET,
    TCP_SERIES_PER_LABEL_SET,
    format_value,
)
from tests.telemetry.support import (
    ENVOY_BUCKETS,
    ISTIO_HTTP_LABELS,
    ISTIO_TCP_LABELS,
    LOCAL_PRINCIPAL,
    PEER,
    PEER_PRINCIPAL,
    REVIEWS,
    parse_strict,
    request,
    telemetry,
)

ISTIO_FAMILIES = {
    "istio_requests_total": "counter",
    "istio_request_duration_milliseconds": "histogram",
    "istio_request_bytes": "histogram",
    "istio_response_bytes": "histogram",
    "istio_tcp_sent_bytes_total": "counter",
    "istio_tcp_received_bytes_total": "counter",
    "istio_tcp_connections_opened_total": "counter",
    "istio_tcp_connections_closed_total": "counter",
}


def test_every_metric_has_help_and_type_even_before_traffic() -> None:
    families = parse_strict(telemetry().render())
    for name, kind in ISTIO_FAMILIES.items():
        assert families[name].type == kind
        assert families[name].samples == []
    assert families["mesh_sidecar_metric_series"].value() == 0
    assert families["mesh_sidecar_metric_series_dropped_total"].value() == 0
    assert "mesh_sidecar_access_log_write_errors_total" not in families  # no access log


def test_label_names_are_istios() -> None:
    assert set(HTTP_LABEL_NAMES) == ISTIO_HTTP_LABELS
    assert len(HTTP_LABEL_NAMES) == len(ISTIO_HTTP_LABELS)
    assert set(TCP_LABEL_NAMES) == ISTIO_TCP_LABELS
    t = telemetry()
    t.record(request())
    t.tcp_opened(TcpLabels(Reporter.SOURCE, PEER, REVIEWS))
    families = parse_strict(t.render())
    for name in ("istio_requests_total", "istio_request_duration_milliseconds"):
        for _, labels, _ in families[name].samples:
            assert set(labels) - {"le"} == ISTIO_HTTP_LABELS
    for _, labels, _ in families["istio_tcp_connections_opened_total"].samples:
        assert set(labels) == ISTIO_TCP_LABELS


def test_outbound_request_source_is_local_destination_is_peer() -> None:
    t = telemetry()
    t.record(request(response_flags=response_flags(ResponseFlag.UPSTREAM_REQUEST_TIMEOUT)))
    [(labels, value)] = parse_strict(t.render())["istio_requests_total"].select()
    assert value == 1
    assert labels == {
        "reporter": "source",
        "source_workload": "productpage",
        "source_workload_namespace": "default",
        "source_principal": LOCAL_PRINCIPAL,
        "source_app": "productpage",
        "source_version": "v1",
        "source_canonical_service": "productpage",
        "source_canonical_revision": "v1",
        "source_cluster": "unknown",
        "destination_workload": "reviews",
        "destination_workload_namespace": "shop",
        "destination_principal": PEER_PRINCIPAL,
        "destination_app": "reviews",
        "destination_version": "v2",
        "destination_service": "reviews.shop.svc.cluster.local",
        "destination_service_name": "reviews",
        "destination_service_namespace": "shop",
        "destination_canonical_service": "reviews",
        "destination_canonical_revision": "v2",
        "destination_cluster": "unknown",
        "request_protocol": "http",
        "response_code": "200",
        "grpc_response_status": "",
        "response_flags": "UT",
        "connection_security_policy": "mutual_tls",
    }


def test_inbound_request_source_is_peer_known_by_its_certificate() -> None:
    t = telemetry()
    caller = Workload.from_principal("spiffe://cluster.local/ns/web/sa/frontend")
    local_service = Service.from_host("productpage.default.svc.cluster.local")
    t.record(request(reporter=Reporter.DESTINATION, peer=caller, service=local_service))
    [(labels, _)] = parse_strict(t.render())["istio_requests_total"].select()
    assert labels["reporter"] == "destination"
    assert labels["source_principal"] == "spiffe://cluster.local/ns/web/sa/frontend"
    assert labels["source_workload_namespace"] == "web"
    for unknown in ("source_workload", "source_app", "source_version", "source_cluster"):
        assert labels[unknown] == "unknown"
    assert labels["source_canonical_revision"] == "latest"  # Istio's default revision
    assert labels["destination_workload"] == "productpage"
    assert labels["destination_principal"] == LOCAL_PRINCIPAL
    assert labels["destination_version"] == "v1"
    assert labels["destination_service"] == "productpage.default.svc.cluster.local"
    assert labels["destination_service_namespace"] == "default"


def test_no_response_no_route_and_unknown_everything() -> None:
    t = telemetry()
    t.record(
        request(
            peer=UNKNOWN_WORKLOAD,
            service=Service.from_host("nowhere.example:8080"),
            response_code=0,
            response_flags=response_flags(ResponseFlag.NO_ROUTE, "DC"),
            connection_security_policy=SecurityPolicy.NONE,
        )
    )
    [(labels, _)] = parse_strict(t.render())["istio_requests_total"].select()
    assert labels["response_code"] == "0"
    assert labels["response_flags"] == "NR,DC"
    assert labels["destination_service"] == labels["destination_service_name"] == "nowhere.example"
    assert labels["destination_service_namespace"] == "unknown"
    assert labels["destination_workload"] == labels["destination_principal"] == "unknown"
    assert labels["connection_security_policy"] == "none"


def test_each_label_value_makes_its_own_series_and_plain_strings_match_enums() -> None:
    t = telemetry()
    t.record(request())
    t.record(request(reporter="source", connection_security_policy="mutual_tls"))  # same series
    t.record(request(response_code=503, response_flags=ResponseFlag.UPSTREAM_REMOTE_RESET))
    t.record(request(connection_security_policy=SecurityPolicy.NONE))
    t.record(request(reporter=Reporter.DESTINATION))
    family = parse_strict(t.render())["istio_requests_total"]
    assert family.value(response_code="200", connection_security_policy="none") == 1
    assert family.value(response_code="200", reporter="source", response_flags="-",
                        connection_security_policy="mutual_tls") == 2  # fmt: skip
    assert family.value(response_code="503", response_flags="UR") == 1
    assert family.value(reporter="destination") == 1
    assert len(family.samples) == 4
    assert t.label_sets == 4
    assert t.series == 4 * HTTP_SERIES_PER_LABEL_SET


def test_duration_histogram_is_cumulative_with_envoys_buckets() -> None:
    assert list(DURATION_BUCKETS_MS) == list(SIZE_BUCKETS_BYTES)
    assert [format_value(b) for b in DURATION_BUCKETS_MS] == ENVOY_BUCKETS[:-1]
    durations = [0.2, 0.5, 0.51, 7.0, 7.0, 999.9, 3_600_000.0, 5_000_000.0]
    t = telemetry()
    for d in durations:
        t.record(request(duration_ms=d))
    family = parse_strict(t.render())["istio_request_duration_milliseconds"]
    buckets = family.select("_bucket")
    assert [labels["le"] for labels, _ in buckets] == ENVOY_BUCKETS
    counts = [value for _, value in buckets]
    assert counts == sorted(counts), "buckets must be cumulative"
    by_le = {labels["le"]: value for labels, value in buckets}
    for le, expected in {"0.5": 2, "1": 3, "5": 3, "10": 5, "1000": 6, "3600000": 7}.items():
        assert by_le[le] == expected, le  # le is inclusive: 0.5 counts in le="0.5"
    assert by_le["+Inf"] == len(durations)
    assert family.value("_count") == len(durations)
    assert family.value("_sum") == pytest.approx(sum(durations))
    assert parse_strict(t.render())["istio_requests_total"].value() == len(durations)


def test_request_and_response_size_histograms() -> None:
    t = telemetry()
    sizes = [(0, 0), (1, 900), (600, 1500), (70_000, 5_000_000)]
    for received, sent in sizes:
        t.record(request(request_bytes=received, response_bytes=sent))
    families = parse_strict(t.render())
    requests, responses = families["istio_request_bytes"], families["istio_response_bytes"]
    assert requests.value("_bucket", le="0.5") == 1
    assert requests.value("_bucket", le="1") == 2
    assert requests.value("_bucket", le="1000") == 3
    assert requests.value("_bucket", le="300000") == 4
    assert requests.value("_sum") == 70_601
    assert responses.value("_bucket", le="1000") == 2
    assert responses.value("_bucket", le="3600000") == 3
    assert responses.value("_bucket", le="+Inf") == 4
    assert responses.value("_sum") == 5_002_400
    for family in (requests, responses):
        assert family.value("_count") == len(sizes)
        assert [labels["le"] for labels, _ in family.select("_bucket")] == ENVOY_BUCKETS


def test_tcp_counters() -> None:
    t = telemetry()
    inbound = TcpLabels(
        Reporter.DESTINATION,
        Workload.from_principal("spiffe://cluster.local/ns/web/sa/db-client"),
        Service.from_host("productpage.default.svc.cluster.local"),
        SecurityPolicy.MUTUAL_TLS,
    )
    failed = dataclasses.replace(inbound, response_flags=ResponseFlag.UPSTREAM_CONNECTION_FAILURE)
    for _ in range(3):
        t.tcp_opened(inbound)
    t.tcp_transferred(inbound, sent=1000, received=10)  # a long-lived connection reports
    t.tcp_closed(inbound, sent=24, received=5)
    t.tcp_closed(inbound)
    t.tcp_opened(failed)
    t.tcp_closed(failed)
    families = parse_strict(t.render())
    ok = {"response_flags": "-"}
    assert families["istio_tcp_connections_opened_total"].value(**ok) == 3
    assert families["istio_tcp_connections_closed_total"].value(**ok) == 2
    assert families["istio_tcp_sent_bytes_total"].value(**ok) == 1024
    assert families["istio_tcp_received_bytes_total"].value(**ok) == 15
    assert families["istio_tcp_connections_opened_total"].value(response_flags="UF") == 1
    assert families["istio_tcp_connections_closed_total"].value(response_flags="UF") == 1
    [(labels, _)] = families["istio_tcp_sent_bytes_total"].select(**ok)
    assert labels["request_protocol"] == "tcp"
    assert labels["source_workload_namespace"] == "web"
    assert labels["destination_workload"] == "productpage"
    assert labels["connection_security_policy"] == "mutual_tls"
    assert families["istio_requests_total"].samples == []
    assert t.series == 2 * TCP_SERIES_PER_LABEL_SET


def test_series_cap_drops_new_label_sets_and_counts_them() -> None:
    t = telemetry(max_series=2 * HTTP_SERIES_PER_LABEL_SET + TCP_SERIES_PER_LABEL_SET)
    t.record(request(response_code=200))
    t.record(request(response_code=404))
    t.record(request(response_code=500))  # a third HTTP label set: no room
    t.record(request(response_code=500))
    t.tcp_opened(TcpLabels(Reporter.SOURCE, PEER, REVIEWS))  # TCP fits in what is left
    t.tcp_opened(TcpLabels(Reporter.DESTINATION, PEER, REVIEWS))  # no room
    t.record(request(response_code=200))  # existing label sets keep counting
    families = parse_strict(t.render())
    requests = families["istio_requests_total"]
    assert requests.value(response_code="200") == 2
    assert requests.value(response_code="404") == 1
    assert requests.select(response_code="500") == []
    assert families["mesh_sidecar_metric_series_dropped_total"].value() == 3
    assert families["mesh_sidecar_metric_series"].value() == t.max_series
    assert t.dropped == 3


def test_series_cap_zero_records_nothing_and_negative_is_refused() -> None:
    t = telemetry(max_series=0)
    t.record(request())
    t.tcp_closed(TcpLabels(Reporter.SOURCE, PEER, REVIEWS), 1, 1)
    assert t.dropped == 2
    assert t.series == 0
    with pytest.raises(ValueError, match="max_series"):
        telemetry(max_series=-1)


def test_label_values_are_escaped() -> None:
    nasty = 'we"ird\\name\nwith lines'
    peer = Workload(name=nasty, namespace="shop", principal='spiffe://x/ns/shop/sa/"q"')
    t = telemetry()
    t.record(request(peer=peer, service=Service('h"ost\\', "n\nn", "shop")))
    t.tcp_opened(TcpLabels(Reporter.SOURCE, peer, REVIEWS))
    text = t.render()
    assert 'destination_workload="we\\"ird\\\\name\\nwith lines"' in text
    families = parse_strict(text)  # one sample per line: no raw line feed leaked
    [(labels, _)] = families["istio_requests_total"].select()
    assert labels["destination_workload"] == nasty
    assert labels["destination_principal"] == 'spiffe://x/ns/shop/sa/"q"'
    assert labels["destination_service"] == 'h"ost\\'
    assert labels["destination_service_name"] == "n\nn"
    [(labels, _)] = families["istio_tcp_connections_opened_total"].select()
    assert labels["destination_workload"] == nasty


@settings(max_examples=60, deadline=None)
@given(name=st.text(min_size=1, max_size=20), version=st.text(max_size=10))
def test_any_label_text_round_trips(name: str, version: str) -> None:
    t = telemetry()
    t.record(request(peer=Workload.from_labels(name, "ns", "", {"version": version})))
    [(labels, _)] = parse_strict(t.render())["istio_requests_total"].select()
    assert labels["destination_workload"] == name
    assert labels["destination_version"] == (version or "unknown")


def test_record_is_immutable_and_has_no_dict() -> None:
    record = request()
    with pytest.raises(AttributeError):
        record.response_code = 500  # type: ignore[misc]
    assert not hasattr(record, "__dict__")
    assert record.response_flags == "-"
    assert record.upstream_request_attempts == 1


def test_workload_from_labels_follows_istio() -> None:
    plain = Workload.from_labels("ratings", "default", "")
    assert (plain.app, plain.version) == ("ratings", "unknown")
    assert (plain.canonical_service, plain.canonical_revision) == ("ratings", "latest")
    assert plain.principal == plain.cluster == "unknown"
    k8s = Workload.from_labels(
        "ratings",
        "default",
        "spiffe://td/ns/default/sa/ratings",
        [("app.kubernetes.io/name", "rating-app"), ("app.kubernetes.io/version", "3")],
        cluster="vm-east",
    )
    assert (k8s.app, k8s.version, k8s.canonical_service, k8s.canonical_revision) == (
        "rating-app", "3", "rating-app", "3",
    )  # fmt: skip
    assert k8s.cluster == "vm-east"
    explicit = Workload.from_labels(
        "ratings",
        "default",
        "",
        {
            "app": "a",
            "version": "v9",
            "service.istio.io/canonical-name": "cs",
            "service.istio.io/canonical-revision": "cr",
        },
    )
    assert explicit.key == ("ratings", "default", "unknown", "a", "v9", "cs", "cr", "unknown")
    assert Workload(name="", canonical_revision="").key[0::6] == ("unknown", "latest")


def test_workload_from_principal_and_service_from_host() -> None:
    peer = Workload.from_principal("spiffe://cluster.local/ns/web/sa/frontend")
    assert (peer.namespace, peer.name) == ("web", "unknown")
    assert Workload.from_principal("spiffe://odd-id").namespace == "unknown"
    assert Workload.from_principal("") is UNKNOWN_WORKLOAD
    assert Service.from_host("reviews.default.svc.cluster.local:9080") == Service(
        "reviews.default.svc.cluster.local", "reviews", "default"
    )
    assert Service.from_host("api.example.com") == Service("api.example.com", "api.example.com")
    assert Service.from_host("[::1]:8080").host == "[::1]"
    assert Service.from_host("") is UNKNOWN_SERVICE
    assert Service(host="").key == ("unknown", "unknown", "unknown")


def test_response_flags_and_value_formatting() -> None:
    assert response_flags() == "-"
    assert response_flags(ResponseFlag.NONE, "") == "-"
    assert response_flags(ResponseFlag.UPSTREAM_REQUEST_TIMEOUT, "URX") == "UT,URX"
    assert format_value(3) == "3"
    assert format_value(2.0) == "2"
    assert format_value(0.25) == "0.25"
    assert format_value(float("inf")) == "+Inf"
    assert format_value(float("-inf")) == "-Inf"
    assert format_value(float("nan")) == "NaN"
    assert format_value(1e20) == "1e+20"


def test_records_passed_positionally_keep_their_meaning() -> None:
    record = RequestRecord(Reporter.SOURCE, PEER, REVIEWS, 201, 12.5, 10, 20)
    assert (record.response_code, record.duration_ms) == (201, 12.5)
    assert (record.request_bytes, record.response_bytes) == (10, 20)
    assert record.connection_security_policy == SecurityPolicy.UNKNOWN
