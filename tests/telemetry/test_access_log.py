"""The JSON access log: one line per request with Istio's field names, one write per
line, flushed at most once per interval, failures counted and never raised."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from sidecar.telemetry import AccessLog, Reporter, ResponseFlag, Workload
from sidecar.telemetry.access_log import FIELDS
from tests.telemetry.support import PEER_PRINCIPAL, parse_strict, request, telemetry

START = 1_780_000_000.123  # 2026-05-28T20:26:40.123Z

FULL: dict[str, Any] = {
    "start_time": START,
    "method": "POST",
    "authority": "reviews:9080",
    "path": "/reviews/7?full=1",
    "protocol": "HTTP/1.1",
    "user_agent": "curl/8.5.0",
    "request_id": "0b8f4c9e-7a1d-4a44-9d53-4f3c2e1d0a9b",
    "x_forwarded_for": "198.18.0.1",
    "route_name": "canary",
    "upstream_cluster": "outbound|9080|v2|reviews.shop.svc.cluster.local",
    "upstream_host": "198.18.0.7:15006",
    "upstream_local_address": "198.18.0.2:41000",
    "downstream_local_address": "127.0.0.1:15001",
    "downstream_remote_address": "127.0.0.1:50312",
    "upstream_service_time_ms": 41.7,
    "upstream_request_attempts": 2,
    "duration_ms": 43.9,
    "response_code": 503,
    "response_flags": "UT,URX",
    "request_bytes": 312,
    "response_bytes": 95,
}


class CountingStream:
    """A text stream that records every call."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.flushes = 0

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        self.flushes += 1


class BrokenStream:
    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        raise OSError(28, "No space left on device")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_json_line_per_request_with_istios_fields() -> None:
    stream = io.StringIO()
    t = telemetry(access_log=AccessLog(stream))
    t.record(request(**FULL))
    t.record(request())
    lines = stream.getvalue().splitlines(keepends=True)
    assert len(lines) == 2
    assert all(line.endswith("}\n") for line in lines)
    entry = json.loads(lines[0])
    assert list(entry) == sorted(FIELDS) == list(FIELDS)  # alphabetical, as Envoy writes
    assert entry == {
        "authority": "reviews:9080",
        "bytes_received": 312,
        "bytes_sent": 95,
        "connection_security_policy": "mutual_tls",
        "downstream_local_address": "127.0.0.1:15001",
        "downstream_peer_uri_san": None,
        "downstream_remote_address": "127.0.0.1:50312",
        "duration": 43,
        "method": "POST",
        "path": "/reviews/7?full=1",
        "protocol": "HTTP/1.1",
        "request_id": "0b8f4c9e-7a1d-4a44-9d53-4f3c2e1d0a9b",
        "requested_server_name": None,
        "response_code": 503,
        "response_code_details": None,
        "response_flags": "UT,URX",
        "route_name": "canary",
        "start_time": "2026-05-28T20:26:40.123Z",
        "upstream_cluster": "outbound|9080|v2|reviews.shop.svc.cluster.local",
        "upstream_host": "198.18.0.7:15006",
        "upstream_local_address": "198.18.0.2:41000",
        "upstream_peer_uri_san": PEER_PRINCIPAL,
        "upstream_request_attempt_count": 2,
        "upstream_service_time": 41,
        "upstream_transport_failure_reason": None,
        "user_agent": "curl/8.5.0",
        "x_forwarded_for": "198.18.0.1",
    }
    bare = json.loads(lines[1])
    assert bare["start_time"] is None  # the proxy gave no start time
    assert bare["method"] is None
    assert bare["response_flags"] == "-"


def test_inbound_line_names_the_calling_peer_as_downstream() -> None:
    stream = io.StringIO()
    log = AccessLog(stream)
    caller = Workload.from_principal("spiffe://cluster.local/ns/web/sa/frontend")
    log.write(request(reporter=Reporter.DESTINATION, peer=caller, requested_server_name="sni"))
    entry = json.loads(stream.getvalue())
    assert entry["downstream_peer_uri_san"] == "spiffe://cluster.local/ns/web/sa/frontend"
    assert entry["upstream_peer_uri_san"] is None
    assert entry["requested_server_name"] == "sni"
    log.write(request(peer=Workload()))  # an unknown peer has no SAN to show
    assert json.loads(stream.getvalue().splitlines()[1])["upstream_peer_uri_san"] is None


def test_hostile_header_values_stay_on_one_line() -> None:
    stream = io.StringIO()
    log = AccessLog(stream)
    agent = 'evil\n{"method":"DELETE"}\r\t"\\ é ☃ \x00'
    log.write(request(user_agent=agent, path="/a\nb"))
    text = stream.getvalue()
    assert text.count("\n") == 1
    assert text.isascii()  # non-ASCII escaped: safe for any log pipeline
    entry = json.loads(text)
    assert entry["user_agent"] == agent
    assert entry["path"] == "/a\nb"


def test_one_write_per_line_and_flush_at_most_once_per_interval() -> None:
    stream, clock = CountingStream(), Clock()
    log = AccessLog(stream, flush_interval_s=1.0, clock=clock)
    for _ in range(5):
        log.write(request(**FULL))
        clock.now += 0.1
    assert len(stream.writes) == 5
    assert all(w.count("\n") == 1 and w.endswith("\n") for w in stream.writes)
    assert stream.flushes == 0
    clock.now += 0.6
    log.write(request())
    assert stream.flushes == 1
    log.write(request())
    assert stream.flushes == 1
    log.flush()
    assert stream.flushes == 2
    assert log.lines == 7


def test_zero_interval_flushes_every_line() -> None:
    stream = CountingStream()
    log = AccessLog(stream, flush_interval_s=0)
    log.write(request())
    log.write(request())
    assert stream.flushes == 2


def test_failed_writes_are_counted_logged_once_and_never_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = AccessLog(BrokenStream(), flush_interval_s=0)
    t = telemetry(access_log=log)
    with caplog.at_level(logging.WARNING, logger="sidecar.telemetry"):
        for _ in range(3):
            t.record(request())
        log.flush()
    assert log.errors == 4
    assert log.lines == 0
    warnings = [r for r in caplog.records if r.name == "sidecar.telemetry"]
    assert len(warnings) == 1
    assert "No space left on device" in warnings[0].getMessage()
    families = parse_strict(t.render())
    assert families["mesh_sidecar_access_log_write_errors_total"].value() == 4
    assert families["istio_requests_total"].value() == 3  # the metrics still count


def test_closed_stream_counts_as_a_failure() -> None:
    stream = io.StringIO()
    log = AccessLog(stream)
    stream.close()
    log.write(request())
    assert log.errors == 1


def test_no_access_log_unless_asked() -> None:
    t = telemetry()
    assert t.access_log is None
    t.record(request(**FULL))  # nothing to write to, nothing written
    assert "access_log" not in t.render()


def test_to_path_appends_and_closes(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text('{"earlier":true}\n')
    with AccessLog.to_path(path) as log:
        log.write(request(response_flags=ResponseFlag.NO_ROUTE, response_code=404))
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    entry = json.loads(lines[1])
    assert (entry["response_code"], entry["response_flags"]) == (404, "NR")
    log.close()  # closing twice is harmless


def test_start_time_is_utc_with_milliseconds() -> None:
    stream = io.StringIO()
    log = AccessLog(stream)
    for ts in (START, START + 0.5, START + 1.0005):
        log.write(request(start_time=ts))
    starts = [json.loads(line)["start_time"] for line in stream.getvalue().splitlines()]
    assert starts == [
        "2026-05-28T20:26:40.123Z",
        "2026-05-28T20:26:40.623Z",
        "2026-05-28T20:26:41.123Z",
    ]
