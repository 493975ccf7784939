"""Micro-benchmark of the telemetry hot path: ``python -m sidecar.telemetry.bench``.

Prints nanoseconds per call (best of 3 runs, the loop's own cost included) for
:meth:`Telemetry.record` on warm label sets (with and without the access log),
for building a :class:`RequestRecord` (and, for comparison, the same fields as a frozen
slotted dataclass), for a TCP connection's open and close, and milliseconds per
:meth:`Telemetry.render`. Not a test: numbers depend on the machine; compare runs on one
machine before and after a change.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar.microbench import best_seconds_per_call
from sidecar.telemetry.access_log import AccessLog
from sidecar.telemetry.labels import (
    Reporter,
    RequestRecord,
    ResponseFlag,
    SecurityPolicy,
    Service,
    TcpLabels,
    Workload,
)
from sidecar.telemetry.metrics import HTTP_LABEL_NAMES, Telemetry

BATCH = 1000
FLAGS = (ResponseFlag.NONE, ResponseFlag.UPSTREAM_REQUEST_TIMEOUT)


def _ns_per_item(run_batch: Callable[[], object], seconds: float) -> float:
    """Best of three: ns per item of a batch of :data:`BATCH` items."""
    return best_seconds_per_call(run_batch, seconds) / BATCH * 1e9


def _records(*, full: bool) -> list[RequestRecord]:
    """:data:`BATCH` records over 8 label sets (2 peers x 2 codes x 2 flag values)."""
    peers = [
        Workload.from_labels(f"reviews-{v}", "default", "spiffe://cluster.local/ns/default/sa/reviews",
                             {"app": "reviews", "version": v})
        for v in ("v1", "v2")
    ]  # fmt: skip
    service = Service.from_host("reviews.default.svc.cluster.local")
    extra: dict[str, Any] = {}
    if full:
        extra = {
            "start_time": time.time(),
            "method": "GET",
            "authority": "reviews:9080",
            "path": "/reviews/0",
            "protocol": "HTTP/1.1",
            "user_agent": "curl/8.5.0",
            "request_id": "0b8f4c9e-7a1d-4a44-9d53-4f3c2e1d0a9b",
            "route_name": "default",
            "upstream_cluster": "outbound|9080|v1|reviews.default.svc.cluster.local",
            "upstream_host": "198.18.0.7:15006",
            "downstream_remote_address": "127.0.0.1:50312",
            "upstream_service_time_ms": 2.0,
        }
    out = []
    for i in range(BATCH):  # the label sets: peer x status x flags
        failed = (i // 2) % 2 == 1
        out.append(
            RequestRecord(
                Reporter.SOURCE,
                peers[i % 2],
                service,
                503 if failed else 200,
                float(i % 50) + 0.25,
                request_bytes=180 + i % 7,
                response_bytes=1200 + i % 300,
                response_flags=FLAGS[(i // 4) % 2],
                connection_security_policy=SecurityPolicy.MUTUAL_TLS,
                **extra,
            )
        )
    return out


def _row(what: str, ns: float) -> None:
    print(f"  {what:<44} {ns:7.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=0.3, help="time per measurement")
    args = parser.parse_args()
    seconds: float = args.seconds
    principal = "spiffe://cluster.local/ns/default/sa/productpage"

    telemetry = Telemetry("productpage", "default", principal, labels={"version": "v1"})
    records = _records(full=False)
    record = telemetry.record

    def record_batch() -> None:
        for r in records:
            record(r)

    record_batch()  # warm: every label set exists
    print(
        f"telemetry: {telemetry.label_sets} warm HTTP label sets of {len(HTTP_LABEL_NAMES)} "
        f"labels ({telemetry.series} Prometheus series)"
    )
    print("ns per call (best of 3, loop included):")
    _row("record(), warm label set, no access log", _ns_per_item(record_batch, seconds))

    full = _records(full=True)
    with Path(os.devnull).open("w", encoding="utf-8") as devnull:
        access_log = AccessLog(devnull)
        logged = Telemetry("productpage", "default", principal, access_log=access_log)
        record_logged, line = logged.record, access_log.format

        def logged_batch() -> None:
            for r in full:
                record_logged(r)

        def format_batch() -> None:
            for r in full:
                line(r)

        _row("record(), warm, access log to /dev/null", _ns_per_item(logged_batch, seconds))
        _row("  of which AccessLog.format()", _ns_per_item(format_batch, seconds))

    peer, service = records[0].peer, records[0].service
    mtls = SecurityPolicy.MUTUAL_TLS
    frozen = dataclasses.make_dataclass(
        "FrozenRecord",
        [(name, Any, dataclasses.field(default=RequestRecord._field_defaults.get(name)))
         for name in RequestRecord._fields],
        frozen=True,
        slots=True,
    )  # fmt: skip

    def build_batch(cls: Callable[..., object]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(BATCH):
                cls(Reporter.SOURCE, peer, service, 200, 1.5, 180, 1200,
                    connection_security_policy=mtls)  # fmt: skip

        return run

    _row(
        "RequestRecord(...), the metrics fields", _ns_per_item(build_batch(RequestRecord), seconds)
    )
    _row("  the same as a frozen slotted dataclass", _ns_per_item(build_batch(frozen), seconds))

    tcp = TcpLabels(Reporter.DESTINATION, Workload.from_principal(principal), service, mtls)

    def tcp_batch() -> None:
        for _ in range(BATCH):
            telemetry.tcp_opened(tcp)
            telemetry.tcp_closed(tcp, 4096, 512)

    _row("tcp_opened() + tcp_closed()", _ns_per_item(tcp_batch, seconds))

    for n in (10, 100):
        big = Telemetry("productpage", "default", principal, max_series=n * 67)
        for i in range(n):
            p = Workload.from_principal(f"spiffe://cluster.local/ns/default/sa/client-{i}")
            big.record(RequestRecord(Reporter.DESTINATION, p, service, 200, 1.0, 100, 100))
        start = time.perf_counter()
        text = big.render()
        took = (time.perf_counter() - start) * 1e3
        print(
            f"render(): {n} HTTP label sets, {big.series} series -> "
            f"{len(text) / 1e6:.2f} MB in {took:.1f} ms"
        )


if __name__ == "__main__":
    main()
