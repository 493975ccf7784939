"""``/stats/prometheus`` on the admin app: the sidecar's own lines, then the Istio
metrics when the app holds a :class:`Telemetry`; unchanged without one."""

from __future__ import annotations

from pathlib import Path

from sidecar.admin import PROMETHEUS, AdminApp, parse_head
from sidecar.config_store import ConfigStore
from sidecar.control_client import Connectivity
from sidecar.telemetry import Telemetry
from tests.sidecar.support import PROXY, FakeIdentity, make_settings, make_snapshot
from tests.telemetry.support import parse_strict, request, telemetry

SCRAPE = b"GET /stats/prometheus HTTP/1.1\r\nHost: 127.0.0.1"


def _app(tmp_path: Path, metrics: Telemetry | None) -> AdminApp:
    settings = make_settings(tmp_path)
    store = ConfigStore(tmp_path, PROXY)
    store.apply(make_snapshot("v1"))
    connectivity = Connectivity(settings.meshd_url)
    return AdminApp(settings, PROXY, store, connectivity, FakeIdentity(), telemetry=metrics)


def test_scrape_holds_the_istio_metrics_after_the_sidecars_own(tmp_path: Path) -> None:
    metrics = telemetry()
    metrics.record(request())
    metrics.record(request(response_code=503))
    response = _app(tmp_path, metrics).handle(parse_head(SCRAPE))
    assert response.status == 200
    assert response.content_type == PROMETHEUS
    text = response.body.decode()
    families = parse_strict(text)
    assert families["mesh_sidecar_config_updates_total"].value() == 1
    assert families["istio_requests_total"].value(response_code="503") == 1
    assert families["istio_request_duration_milliseconds"].value("_count", response_code="200") == 1
    assert text.index("mesh_sidecar_config_updates_total") < text.index("istio_requests_total")


def test_scrape_without_telemetry_is_unchanged(tmp_path: Path) -> None:
    response = _app(tmp_path, None).handle(parse_head(SCRAPE))
    text = response.body.decode()
    assert "mesh_sidecar_config_updates_total 1" in text
    assert "istio_" not in text
    assert text.endswith("\n")
