"""The sidecar's request and TCP metrics, with Istio's names, labels and buckets, in
Prometheus text format 0.0.4.

The hot path (:meth:`Telemetry.record`, once per finished request) does no string
formatting and allocates one key tuple: the series is found in a dict by its label
tuple (the peer's and the service's parts are precomputed tuples), and each of the
three histograms finds its bucket with :func:`bisect.bisect_left` over the bounds. A
series is a flat list of numbers; labels are rendered to text once, when the series
is created, and bucket counts are made cumulative only in :meth:`Telemetry.render`.

The cap (``max_series``) counts Prometheus time series, the unit of cardinality that
costs memory here and in Prometheus: one HTTP label set exposes 67 of them (a counter
and three histograms of 19 buckets, +Inf, sum and count), one TCP label set 4. An
observation whose new label set would pass the cap is not recorded; it is counted in
``mesh_sidecar_metric_series_dropped_total``, so an unbounded label (a client presenting
a new principal per connection, say) can grow neither the sidecar's memory nor a scrape
(about 1 KB per series with Istio's 25 labels).

Single-threaded by design: one event loop per process calls it. With ``--workers N``
every process has its own; :class:`MetricState` and :func:`merge_states` sum them.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from sidecar.telemetry.access_log import AccessLog
from sidecar.telemetry.labels import (
    Reporter,
    RequestRecord,
    Service,
    TcpLabels,
    Workload,
)

# Envoy's default histogram buckets, which Istio's standard histograms use unchanged
# (envoyproxy/envoy source/common/stats/histogram_impl.cc, HistogramSettingsImpl::
# defaultBuckets). Istio records durations in milliseconds and sizes in bytes against
# the same bounds.
ENVOY_DEFAULT_BUCKETS: Final[tuple[float, ...]] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
    60_000, 300_000, 600_000, 1_800_000, 3_600_000,
)  # fmt: skip
DURATION_BUCKETS_MS: Final = ENVOY_DEFAULT_BUCKETS
SIZE_BUCKETS_BYTES: Final = ENVOY_DEFAULT_BUCKETS

DEFAULT_MAX_SERIES: Final = 10_000  # Prometheus series: ~149 HTTP or 2,500 TCP label sets

# Istio's standard labels, in the order its proxy emits them (istio_stats.cc).
WORKLOAD_LABEL_NAMES: Final = (
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
)
HTTP_LABEL_NAMES: Final = (
    *WORKLOAD_LABEL_NAMES,
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)
TCP_LABEL_NAMES: Final = (
    *WORKLOAD_LABEL_NAMES,
    "response_flags",
    "connection_security_policy",
)

# The layout of one HTTP series: four scalars, then three bucket arrays (the last slot
# of each is the +Inf bucket).
_COUNT, _DURATION_SUM, _REQUEST_SUM, _RESPONSE_SUM = 0, 1, 2, 3
_NB: Final = len(ENVOY_DEFAULT_BUCKETS) + 1
_DURATION_AT: Final = 4
_REQUEST_AT: Final = _DURATION_AT + _NB
_RESPONSE_AT: Final = _REQUEST_AT + _NB
_HTTP_SLOTS: Final = _RESPONSE_AT + _NB
# One TCP series.
_OPENED, _CLOSED, _SENT, _RECEIVED = 0, 1, 2, 3

HTTP_SERIES_PER_LABEL_SET: Final = 1 + 3 * (_NB + 2)  # 67
TCP_SERIES_PER_LABEL_SET: Final = 4

_SOURCE: Final = Reporter.SOURCE.value

# record() unpacks the first fields of a RequestRecord by position.
_UNPACKED: Final = (
    "reporter", "peer", "service", "response_code", "duration_ms", "request_bytes",
    "response_bytes", "response_flags", "connection_security_policy", "request_protocol",
    "grpc_response_status",
)  # fmt: skip
if RequestRecord._fields[: len(_UNPACKED)] != _UNPACKED:  # pragma: no cover
    raise RuntimeError("RequestRecord's fields moved: update Telemetry.record()")

HttpKey = tuple[str, tuple[str, ...], tuple[str, str, str], str, int, str, str, str]
TcpKey = tuple[str, tuple[str, ...], tuple[str, str, str], str, str]

_HELP = {
    "istio_requests_total": "Requests handled by this sidecar (Istio standard metric).",
    "istio_request_duration_milliseconds": "Duration of requests in milliseconds, from "
    "the first byte received to the last byte sent (Istio standard metric).",
    "istio_request_bytes": "Request sizes in bytes received from the downstream, head "
    "and body (Istio standard metric).",
    "istio_response_bytes": "Response sizes in bytes sent to the downstream, head and "
    "body (Istio standard metric).",
    "istio_tcp_sent_bytes_total": "Bytes sent to the downstream on proxied TCP "
    "connections (Istio standard metric).",
    "istio_tcp_received_bytes_total": "Bytes received from the downstream on proxied "
    "TCP connections (Istio standard metric).",
    "istio_tcp_connections_opened_total": "Proxied TCP connections opened (Istio standard metric).",
    "istio_tcp_connections_closed_total": "Proxied TCP connections closed (Istio standard metric).",
    "mesh_sidecar_metric_series": "Prometheus series the Istio metrics of this sidecar "
    "expose (a new label set is dropped past the cap).",
    "mesh_sidecar_metric_series_dropped_total": "Observations not recorded because "
    "their label set would have exceeded the series cap.",
    "mesh_sidecar_access_log_write_errors_total": "Access log lines that could not be written.",
}


def escape_label_value(value: str) -> str:
    """A label value as the text format wants it: backslash, double quote and line feed
    escaped."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def format_value(value: float) -> str:
    """A sample value: integers without a fraction, ``+Inf``/``-Inf``/``NaN`` spelled as
    Prometheus spells them."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _le(bound: float) -> str:
    # Envoy prints bounds in fixed point ("0.5", "1", "3600000"); so do we.
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


_LE: Final = (*(f'le="{_le(b)}"' for b in ENVOY_DEFAULT_BUCKETS), 'le="+Inf"')


def render_labels(names: Iterable[str], values: Iterable[str]) -> str:
    """``a="x",b="y"`` with the values escaped."""
    return ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True))


def _header(out: list[str], name: str, kind: str) -> None:
    out.append(f"# HELP {name} {_HELP[name]}\n# TYPE {name} {kind}\n")


class Telemetry:
    """The Istio metrics of one sidecar (and, when given, its access log).

    ``workload``, ``namespace``, ``principal`` and ``labels`` describe the local workload
    (the source on the outbound side, the destination on the inbound side): see
    :meth:`Workload.from_labels` for how app, version and canonical service/revision
    are derived. The proxy calls :meth:`record` once per finished HTTP request,
    :meth:`tcp_opened`/:meth:`tcp_closed` once per proxied TCP connection; the admin
    server calls :meth:`render` per scrape. ``access_log`` (None: off) gets every
    record; ``max_series`` caps the Prometheus series exposed (see the module's doc).
    """

    def __init__(
        self,
        workload: str,
        namespace: str,
        principal: str,
        *,
        labels: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        cluster: str = "",
        access_log: AccessLog | None = None,
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> None:
        if max_series < 0:
            raise ValueError(f"max_series must be 0 or more, not {max_series}")
        self.local = Workload.from_labels(workload, namespace, principal, labels, cluster=cluster)
        self.access_log = access_log
        self.max_series = max_series
        self.dropped = 0
        self._http: dict[HttpKey, list[float]] = {}
        self._http_labels: dict[HttpKey, str] = {}
        self._tcp: dict[TcpKey, list[int]] = {}
        self._tcp_labels: dict[TcpKey, str] = {}

    @property
    def series(self) -> int:
        """Prometheus series exposed by the Istio metrics: what ``max_series`` caps."""
        return (
            len(self._http) * HTTP_SERIES_PER_LABEL_SET + len(self._tcp) * TCP_SERIES_PER_LABEL_SET
        )

    @property
    def label_sets(self) -> int:
        """Distinct label sets held, HTTP and TCP."""
        return len(self._http) + len(self._tcp)

    # --- the hot path ---------------------------------------------------------------

    def record(self, record: RequestRecord) -> None:
        """Count one finished HTTP request (and log it when there is an access log)."""
        # One slice and an unpack (the fields in _UNPACKED) beat eleven attribute reads.
        (reporter, peer, service, code, duration, received, sent, flags, policy, protocol,
         grpc_status) = record[:11]  # fmt: skip
        key = (reporter, peer.key, service.key, protocol, code, grpc_status, flags, policy)
        v = self._http.get(key)
        if v is None:
            v = self._new_http_series(key, record)
        if v is not None:
            v[_COUNT] += 1
            v[_DURATION_SUM] += duration
            v[_REQUEST_SUM] += received
            v[_RESPONSE_SUM] += sent
            v[_DURATION_AT + bisect_left(DURATION_BUCKETS_MS, duration)] += 1
            v[_REQUEST_AT + bisect_left(SIZE_BUCKETS_BYTES, received)] += 1
            v[_RESPONSE_AT + bisect_left(SIZE_BUCKETS_BYTES, sent)] += 1
        if self.access_log is not None:
            self.access_log.write(record)

    def tcp_opened(self, labels: TcpLabels) -> None:
        """A proxied TCP connection was set up (to the upstream, on the outbound side)."""
        v = self._tcp_series(labels)
        if v is not None:
            v[_OPENED] += 1

    def tcp_transferred(self, labels: TcpLabels, sent: int, received: int) -> None:
        """Bytes moved on a connection that is still open, since the last report: call it
        now and then on long-lived connections so the byte counters move before they
        close (Istio's proxy reports every 5 s)."""
        v = self._tcp_series(labels)
        if v is not None:
            v[_SENT] += sent
            v[_RECEIVED] += received

    def tcp_closed(self, labels: TcpLabels, sent: int = 0, received: int = 0) -> None:
        """A proxied TCP connection closed; ``sent`` (to the downstream) and ``received``
        (from the downstream) are the bytes not yet reported with
        :meth:`tcp_transferred` (all of them, if it was never called)."""
        v = self._tcp_series(labels)
        if v is not None:
            v[_CLOSED] += 1
            v[_SENT] += sent
            v[_RECEIVED] += received

    # --- new series (once per label set) ------------------------------------------

    def _room(self, cost: int) -> bool:
        if self.series + cost <= self.max_series:
            return True
        self.dropped += 1
        return False

    def _workload_values(self, reporter: str, peer: Workload, service: Service) -> list[str]:
        src, dst = (self.local.key, peer.key) if reporter == _SOURCE else (peer.key, self.local.key)
        s_name, s_ns, s_principal, s_app, s_version, s_cs, s_cr, s_cluster = src
        d_name, d_ns, d_principal, d_app, d_version, d_cs, d_cr, d_cluster = dst
        host, name, namespace = service.key
        return [
            str(reporter),
            s_name, s_cs, s_cr, s_ns, s_principal, s_app, s_version, s_cluster,
            d_name, d_ns, d_principal, d_app, d_version,
            host, d_cs, d_cr, name, namespace, d_cluster,
        ]  # fmt: skip

    def _new_http_series(self, key: HttpKey, r: RequestRecord) -> list[float] | None:
        if not self._room(HTTP_SERIES_PER_LABEL_SET):
            return None
        values = self._workload_values(r.reporter, r.peer, r.service)
        values += [
            str(r.request_protocol),
            str(r.response_code),
            str(r.grpc_response_status),
            str(r.response_flags),
            str(r.connection_security_policy),
        ]
        v: list[float] = [0] * _HTTP_SLOTS
        v[_DURATION_SUM] = 0.0
        self._http[key] = v
        self._http_labels[key] = render_labels(HTTP_LABEL_NAMES, values)
        return v

    def _tcp_series(self, labels: TcpLabels) -> list[int] | None:
        key = (
            labels.reporter,
            labels.peer.key,
            labels.service.key,
            labels.response_flags,
            labels.connection_security_policy,
        )
        v = self._tcp.get(key)
        if v is not None:
            return v
        if not self._room(TCP_SERIES_PER_LABEL_SET):
            return None
        values = self._workload_values(labels.reporter, labels.peer, labels.service)
        values += [
            "tcp",
            str(labels.response_flags),
            str(labels.connection_security_policy),
        ]
        v = [0, 0, 0, 0]
        self._tcp[key] = v
        self._tcp_labels[key] = render_labels(TCP_LABEL_NAMES, values)
        return v

    # --- the scrape ---------------------------------------------------------------------

    def state(self) -> MetricState:
        """What :meth:`render` shows, keyed by rendered label set. The value lists are the
        live ones (no copy): encode or render the state before the next request."""
        return MetricState(
            http={self._http_labels[k]: v for k, v in self._http.items()},
            tcp={self._tcp_labels[k]: v for k, v in self._tcp.items()},
            dropped=self.dropped,
            access_log_errors=None if self.access_log is None else self.access_log.errors,
        )

    def render(self) -> str:
        """Every metric in Prometheus text format 0.0.4 (``# HELP``, ``# TYPE``, then the
        samples; histograms as cumulative ``_bucket{le=...}``, ``_sum``, ``_count``)."""
        return render_state(self.state())


@dataclass(frozen=True, slots=True)
class MetricState:
    """The Istio metrics of one process, keyed by rendered label set (the identity of a
    Prometheus series): what a worker process sends the main one, which sums them with
    :func:`merge_states`. ``access_log_errors`` is None without an access log."""

    http: dict[str, list[float]]
    tcp: dict[str, list[int]]
    dropped: int = 0
    access_log_errors: int | None = None

    @property
    def series(self) -> int:
        return len(self.http) * HTTP_SERIES_PER_LABEL_SET + len(self.tcp) * TCP_SERIES_PER_LABEL_SET

    @property
    def requests(self) -> int:
        """HTTP requests counted (all label sets)."""
        return int(sum(v[_COUNT] for v in self.http.values()))


def merge_states(states: Iterable[MetricState]) -> MetricState:
    """The sum of several processes' metrics: counters, histogram buckets, sums and
    counts add up per label set (every process uses the same buckets). Pure; the inputs
    are not changed."""
    http: dict[str, list[float]] = {}
    tcp: dict[str, list[int]] = {}
    dropped = 0
    errors: int | None = None
    for state in states:
        for labels, values in state.http.items():
            into = http.get(labels)
            if into is None:
                http[labels] = list(values)
            else:
                for i, value in enumerate(values):
                    into[i] += value
        for labels, counts in state.tcp.items():
            tcp_into = tcp.get(labels)
            if tcp_into is None:
                tcp[labels] = list(counts)
            else:
                for i, count in enumerate(counts):
                    tcp_into[i] += count
        dropped += state.dropped
        if state.access_log_errors is not None:
            errors = (errors or 0) + state.access_log_errors
    return MetricState(http, tcp, dropped, errors)


def render_state(state: MetricState) -> str:
    """``state`` in Prometheus text format 0.0.4 (see :meth:`Telemetry.render`)."""
    out: list[str] = []
    http = list(state.http.items())
    _header(out, "istio_requests_total", "counter")
    out += [f"istio_requests_total{{{labels}}} {v[_COUNT]}\n" for labels, v in http]
    for name, at, total in (
        ("istio_request_duration_milliseconds", _DURATION_AT, _DURATION_SUM),
        ("istio_request_bytes", _REQUEST_AT, _REQUEST_SUM),
        ("istio_response_bytes", _RESPONSE_AT, _RESPONSE_SUM),
    ):
        _header(out, name, "histogram")
        for labels, v in http:
            _histogram(out, name, labels, v[at : at + _NB], v[total], v[_COUNT])

    tcp = list(state.tcp.items())
    for name, slot in (
        ("istio_tcp_sent_bytes_total", _SENT),
        ("istio_tcp_received_bytes_total", _RECEIVED),
        ("istio_tcp_connections_opened_total", _OPENED),
        ("istio_tcp_connections_closed_total", _CLOSED),
    ):
        _header(out, name, "counter")
        out += [f"{name}{{{labels}}} {v[slot]}\n" for labels, v in tcp]

    _header(out, "mesh_sidecar_metric_series", "gauge")
    out.append(f"mesh_sidecar_metric_series {state.series}\n")
    _header(out, "mesh_sidecar_metric_series_dropped_total", "counter")
    out.append(f"mesh_sidecar_metric_series_dropped_total {state.dropped}\n")
    if state.access_log_errors is not None:
        _header(out, "mesh_sidecar_access_log_write_errors_total", "counter")
        out.append(f"mesh_sidecar_access_log_write_errors_total {state.access_log_errors}\n")
    return "".join(out)


def _histogram(
    out: list[str], name: str, labels: str, buckets: list[float], total: float, count: float
) -> None:
    cumulative: float = 0  # bucket counts are ints; the sum is the only float
    prefix = f"{name}_bucket{{{labels},"
    for le, n in zip(_LE, buckets, strict=True):
        cumulative += n
        out.append(f"{prefix}{le}}} {format_value(cumulative)}\n")
    out.append(f"{name}_sum{{{labels}}} {format_value(total)}\n")
    out.append(f"{name}_count{{{labels}}} {format_value(count)}\n")
