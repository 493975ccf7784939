"""The compose stack's files, checked without running anything: the network stays in
198.18.0.0/15, every long-running service has a health check, every sidecar shares its
app's network namespace and reads only its own volume, Prometheus scrapes every
sidecar, and Grafana's provisioning and dashboard (the Grafana image cannot be pulled
on the test machines, so this is all the checking it gets here) use the data source
they provision and Istio's metric names with the labels meshd's sidecars export."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.telemetry.metrics import HTTP_LABEL_NAMES, TCP_LABEL_NAMES
from tests.compose.stack import COMPOSE_DIR, COMPOSE_FILE

TEST_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
ENGINE_BRIDGE = ipaddress.IPv4Network("198.18.0.0/24")
ONE_SHOTS = {"vault-init", "mesh-init"}
ISTIO_METRICS = {
    "istio_requests_total",
    "istio_request_duration_milliseconds_bucket",
    "istio_tcp_sent_bytes_total",
    "istio_tcp_received_bytes_total",
    "istio_tcp_connections_opened_total",
    "istio_tcp_connections_closed_total",
}
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Compose's ``${VAR:-default}`` with no variables set: the defaults users get."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: m[2] or "", value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = interpolate(yaml.safe_load(COMPOSE_FILE.read_text()))
    assert isinstance(loaded, dict)
    return loaded


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def sidecars(compose: dict[str, Any]) -> dict[str, str]:
    """Sidecar service -> the app service whose network namespace it shares."""
    return {
        name: str(svc["network_mode"]).removeprefix("service:")
        for name, svc in services(compose).items()
        if str(svc.get("network_mode", "")).startswith("service:")
    }


def test_no_version_or_name_key_for_compose_v1_and_v2(compose: dict[str, Any]) -> None:
    assert "version" not in compose
    assert "name" not in compose  # docker-compose 1.29 refuses it; compose/.env names it
    env = (COMPOSE_DIR / ".env").read_text()
    assert "COMPOSE_PROJECT_NAME=meshd-compose" in env.splitlines()


def test_the_network_is_in_the_test_range_and_addresses_fit(compose: dict[str, Any]) -> None:
    (config,) = compose["networks"]["mesh"]["ipam"]["config"]
    subnet = ipaddress.IPv4Network(config["subnet"])
    dynamic = ipaddress.IPv4Network(config["ip_range"])
    assert subnet.subnet_of(TEST_RANGE)
    assert not subnet.overlaps(ENGINE_BRIDGE)
    assert dynamic.subnet_of(subnet)
    fixed: dict[str, ipaddress.IPv4Address] = {}
    for name, svc in services(compose).items():
        networks = svc.get("networks") or {}
        if isinstance(networks, dict) and networks.get("mesh"):
            address = ipaddress.IPv4Address(networks["mesh"]["ipv4_address"])
            assert address in subnet, f"{name}: {address} is outside {subnet}"
            assert address not in dynamic, f"{name}: {address} may be given to a one-shot step"
            fixed[name] = address
    assert len(set(fixed.values())) == len(fixed), fixed
    # Each sidecar registers its app's fixed address, and Consul binds its own.
    for sidecar, app in sidecars(compose).items():
        command = str(services(compose)[sidecar]["command"])
        assert f"--address={fixed[app]}" in command, (sidecar, command)
    assert f"-bind={fixed['consul']}" in services(compose)["consul"]["command"]


def test_every_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name, svc in services(compose).items():
        if name in ONE_SHOTS or name in {"prometheus", "grafana"}:
            continue
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_sidecars_share_their_apps_namespace_and_read_only_their_volume(
    compose: dict[str, Any],
) -> None:
    pairs = sidecars(compose)
    assert pairs == {
        "web-sidecar": "web",
        "api-v1-sidecar": "api-v1",
        "api-v2-sidecar": "api-v2",
        "counter-sidecar": "counter",
    }
    init = services(compose)["mesh-init"]
    joins = [pair.split("=") for pair in init["environment"]["MESH_JOINS"].split()]
    assert sorted(name for _, name in joins) == sorted(pairs.values())
    init_volumes = set(init["volumes"])
    for sidecar, app in pairs.items():
        volumes = services(compose)[sidecar]["volumes"]
        assert volumes == [f"{sidecar}:/var/lib/mesh-sidecar"], (sidecar, volumes)
        assert f"{sidecar}:/join/{app}" in init_volumes
        assert services(compose)[sidecar]["depends_on"]["mesh-init"] == {
            "condition": "service_completed_successfully"
        }


def test_web_is_published_on_loopback_8080(compose: dict[str, Any]) -> None:
    assert services(compose)["web"]["ports"] == ["127.0.0.1:8080:8080"]
    for name, svc in services(compose).items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_meshd_runs_with_consul_and_vault(compose: dict[str, Any]) -> None:
    command = services(compose)["meshd"]["command"]
    for flag in ("--store=consul", "--registry=consul", "--ca=vault"):
        assert flag in command
    assert services(compose)["meshd"]["hostname"] == "meshd"  # its certificate's name


def test_init_scripts_and_rules_exist() -> None:
    for script in ("vault-init.sh", "mesh-init.sh"):
        text = (COMPOSE_DIR / "init" / script).read_text()
        assert text.startswith("#!/bin/sh\n")
        assert "set -eu" in text
    for rules in ("demo.yaml", "api-v1.yaml", "api-v2.yaml", "api-split.yaml"):
        docs = list(yaml.safe_load_all((COMPOSE_DIR / "rules" / rules).read_text()))
        assert docs
        assert all(d["apiVersion"].endswith("istio.io/v1") for d in docs), rules


def test_prometheus_scrapes_every_sidecar_and_meshd(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    sidecar_job = jobs["mesh-sidecars"]
    assert sidecar_job["metrics_path"] == "/stats/prometheus"
    targets = {t for group in sidecar_job["static_configs"] for t in group["targets"]}
    assert targets == {f"{app}:15000" for app in sidecars(compose).values()}
    meshd = jobs["meshd"]
    assert meshd["scheme"] == "https"
    assert meshd["tls_config"]["server_name"] == "meshd"
    # The CA file comes from the mesh-ca volume mesh-init fills.
    assert "mesh-ca:/etc/prometheus/mesh:ro" in services(compose)["prometheus"]["volumes"]
    assert meshd["tls_config"]["ca_file"] == "/etc/prometheus/mesh/ca-bundle.pem"


def _dashboards() -> list[Path]:
    found = sorted((COMPOSE_DIR / "grafana" / "dashboards").glob("*.json"))
    assert found, "no Grafana dashboard in compose/grafana/dashboards"
    return found


def test_grafana_provisioning_points_at_the_stack(compose: dict[str, Any]) -> None:
    root = COMPOSE_DIR / "grafana" / "provisioning"
    datasources = yaml.safe_load((root / "datasources" / "prometheus.yaml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((root / "dashboards" / "meshd.yaml").read_text())["providers"]
    mounted = {
        v.split(":")[1] for v in services(compose)["grafana"]["volumes"] if "dashboards" in v
    }
    assert {p["options"]["path"] for p in providers} <= mounted
    home = services(compose)["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).name in {d.name for d in _dashboards()}


@pytest.mark.parametrize("path", _dashboards(), ids=lambda p: p.name)
def test_dashboard_reads_istio_metrics_with_the_sidecars_labels(path: Path) -> None:
    datasources = yaml.safe_load(
        (COMPOSE_DIR / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )
    uids = {d["uid"] for d in datasources["datasources"]}
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"]
    assert dashboard["title"]
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    labels = set(HTTP_LABEL_NAMES) | set(TCP_LABEL_NAMES) | {"le", "job", "instance"}
    variables = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
    used: set[str] = set()
    for panel in panels:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), expr
            assert expr.count("{") == expr.count("}"), expr
            used |= set(re.findall(r"\b(istio_[a-z_]+|meshd_[a-z_]+)\b", expr))
            for selector in re.findall(r"\{([^}]*)\}", expr):
                for name in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector):
                    assert name in labels, f"{panel['title']}: label {name} is not exported"
            for grouping in re.findall(r"\bby \(([^)]*)\)", expr):
                for name in (n.strip() for n in grouping.split(",")):
                    assert name in labels, f"{panel['title']}: label {name} is not exported"
            for variable in re.findall(r"\$(\w+)", expr):
                assert variable in variables or variable.startswith("__"), variable
    assert used >= ISTIO_METRICS, f"the dashboard does not read {ISTIO_METRICS - used}"
