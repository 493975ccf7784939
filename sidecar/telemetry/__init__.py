"""Telemetry of the sidecar: Istio's standard request and TCP metrics (names, labels,
buckets), rendered for ``/stats/prometheus``, and the optional JSON access log.

Pure Python and free of I/O frameworks (no trio, pydantic or FastAPI): the proxy calls
:meth:`Telemetry.record` once per finished request and :meth:`Telemetry.tcp_opened` /
:meth:`Telemetry.tcp_closed` per TCP connection; the admin server calls
:meth:`Telemetry.render`. See ``docs/metrics.md``.
"""

from sidecar.telemetry.access_log import AccessLog, TextSink
from sidecar.telemetry.labels import (
    LATEST,
    UNKNOWN,
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
    DEFAULT_MAX_SERIES,
    DURATION_BUCKETS_MS,
    HTTP_LABEL_NAMES,
    SIZE_BUCKETS_BYTES,
    TCP_LABEL_NAMES,
    Telemetry,
)

__all__ = [
    "DEFAULT_MAX_SERIES",
    "DURATION_BUCKETS_MS",
    "HTTP_LABEL_NAMES",
    "LATEST",
    "SIZE_BUCKETS_BYTES",
    "TCP_LABEL_NAMES",
    "UNKNOWN",
    "UNKNOWN_SERVICE",
    "UNKNOWN_WORKLOAD",
    "AccessLog",
    "Reporter",
    "RequestRecord",
    "ResponseFlag",
    "SecurityPolicy",
    "Service",
    "TcpLabels",
    "Telemetry",
    "TextSink",
    "Workload",
    "response_flags",
]
