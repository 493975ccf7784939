"""The Compose stack for real (issue 6's acceptance): ``scripts/compose.sh up`` brings
Consul, OpenBao, meshd and the demo (web -> api v1/v2 -> counter over TCP, each with a
sidecar container in its network namespace) up healthy on the images built without a
registry; a request through 127.0.0.1:8080 crosses all of it; every proxy is SYNCED;
a rule applied with ``docker compose exec meshd meshctl`` changes the traffic; traffic
between containers is mTLS and a plaintext probe is refused; Prometheus has Istio's
metrics; the demo keeps serving with meshd stopped, and with Consul stopped (on the
last known endpoints).

The stack is up once for the module (tests/compose/conftest.py). Tests that change it
put it back (the route, a stopped container) before they end.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.compose.stack import (
    ANSWER,
    COMPOSE_DIR,
    COMPOSE_FILE,
    LOCAL_IMAGES,
    PROJECT,
    SIDECARS,
    WEB_URL,
    Stack,
    eventually,
    get,
)
from tests.support.docker_engine import IMAGE_BUILD_TIMEOUT, DockerEngine

# The module's first test may build the images from scratch (the stack fixture).
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(IMAGE_BUILD_TIMEOUT)]

OUTAGE_S = 8.0
"""How long a component stays stopped while the demo is checked: longer than a
sidecar's registration TTL (two 2 s health intervals) and its config long-poll retry."""


def answers(n: int = 5) -> list[str]:
    """N requests through the demo, each 200; their bodies."""
    bodies = []
    for _ in range(n):
        status, body = get()
        assert status == 200, f"GET {WEB_URL} answered {status}: {body}"
        bodies.append(body)
    return bodies


def versions(bodies: list[str]) -> set[str]:
    found = set()
    for body in bodies:
        match = ANSWER.match(body)
        assert match, f"not what web answers after web -> api -> counter: {body!r}"
        found.add(match["version"])
    return found


def serve_through_outage(stack: Stack, what: str) -> int:
    """Requests through the demo for OUTAGE_S seconds: every one must answer 200."""
    deadline = time.monotonic() + OUTAGE_S
    served = 0
    while time.monotonic() < deadline:
        status, body = get()
        assert status == 200, (
            f"with {what} stopped, request {served + 1} answered {status}: {body}\n"
            f"{stack.logs('web-sidecar', 'api-v1-sidecar', tail=15)}"
        )
        served += 1
        time.sleep(0.2)
    return served


def test_a_request_crosses_web_api_and_counter(stack: Stack) -> None:
    first, second = answers(2)
    one, two = ANSWER.match(first), ANSWER.match(second)
    assert one, f"web answered {first!r}, not web -> api (...) -> counter (...)"
    assert two, f"web answered {second!r}"
    # The demo's rules route every call to api v1; the counter (TCP, behind api's
    # sidecar --upstream) counted both requests.
    assert (one["version"], two["version"]) == ("v1", "v1")
    assert int(two["visits"]) == int(one["visits"]) + 1


def test_every_proxy_is_synced_on_the_current_version(stack: Stack) -> None:
    proxies = eventually(
        "every sidecar SYNCED in meshctl proxy-status",
        stack.synced,
        context=lambda: stack.meshctl("proxy-status"),
    )
    assert set(proxies) == set(SIDECARS)
    table = stack.meshctl("proxy-status")
    for proxy in SIDECARS:
        line = next((ln for ln in table.splitlines() if ln.startswith(proxy + " ")), "")
        assert " SYNCED " in line, f"{proxy} is not SYNCED in\n{table}"
    # The sidecars registered in Consul, where meshd (--registry consul) found them.
    services = stack.exec("consul", "consul", "catalog", "services").split()
    assert {"web", "api", "counter"} <= set(services), services


def test_a_rule_applied_with_meshctl_changes_the_traffic(stack: Stack) -> None:
    assert versions(answers()) == {"v1"}
    try:
        said = stack.meshctl("apply", "-f", "/etc/meshd/rules/api-v2.yaml")
        assert "virtualservice.networking.istio.io/api configured" in said
        eventually("web's calls to go to api v2 only", lambda: versions(answers(3)) == {"v2"})
        assert versions(answers(10)) == {"v2"}
        eventually("every sidecar to ACK the new config", stack.synced)
    finally:
        stack.meshctl("apply", "-f", "/etc/meshd/rules/api-v1.yaml")
    eventually("web's calls to go back to api v1", lambda: versions(answers(3)) == {"v1"})
    history = stack.meshctl("history", "virtualservice", "api")
    assert len([ln for ln in history.splitlines() if ln.strip()]) >= 4, history  # head + 3


PLAINTEXT_PROBE = """
import json, socket, ssl
result = {}
s = socket.create_connection(("198.18.40.11", 15006), 5)
s.settimeout(5)
s.sendall(b"GET / HTTP/1.1\\r\\nHost: api:9080\\r\\n\\r\\n")
try:
    result["plaintext"] = s.recv(4096).decode("latin-1")
except OSError as exc:
    result["plaintext_error"] = repr(exc)
s.close()
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
try:
    t = context.wrap_socket(socket.create_connection(("198.18.40.11", 15006), 5))
    t.settimeout(5)
    result["server_cert"] = t.getpeercert(binary_form=True) is not None
    t.sendall(b"GET / HTTP/1.1\\r\\nHost: api:9080\\r\\n\\r\\n")
    result["tls"] = t.recv(4096).decode("latin-1")
except (OSError, ssl.SSLError) as exc:
    result["tls_error"] = repr(exc)
print(json.dumps(result))
"""


def test_traffic_between_containers_is_mtls_and_plaintext_is_refused(stack: Stack) -> None:
    # api v1's sidecar inbound (198.18.40.11:15006), probed from the web container.
    probe = stack.python("web", PLAINTEXT_PROBE)
    assert "HTTP/" not in probe.get("plaintext", ""), f"plaintext got an HTTP answer: {probe}"
    assert probe.get("plaintext", "") == "" or "plaintext_error" in probe, probe
    # A TLS client with no mesh certificate: the sidecar requires one.
    assert "HTTP/" not in probe.get("tls", ""), f"TLS without a client cert was served: {probe}"
    # The app itself listens on api's loopback only: nothing to reach around the sidecar.
    direct = stack.python(
        "web",
        "import json, socket\n"
        "try:\n"
        "    socket.create_connection(('198.18.40.11', 9080), 3); print(json.dumps('open'))\n"
        "except OSError as exc:\n"
        "    print(json.dumps(repr(exc)))\n",
    )
    assert "refused" in direct.lower(), f"api's app port answered from web's container: {direct}"
    # What the sidecars saw: every request api served came over mutual TLS, from web's
    # identity; the TCP hop to counter too.
    metrics = stack.python(
        "api-v1",
        "import json, urllib.request\n"
        "print(json.dumps(urllib.request.urlopen("
        "'http://127.0.0.1:15000/stats/prometheus', timeout=5).read().decode()))",
    )
    inbound = [
        ln
        for ln in metrics.splitlines()
        if ln.startswith("istio_requests_total{") and 'reporter="destination"' in ln
    ]
    assert inbound, "api v1's sidecar counted no inbound request"
    assert all('connection_security_policy="mutual_tls"' in ln for ln in inbound), inbound
    assert all(
        'source_principal="spiffe://cluster.local/ns/default/sa/web"' in ln for ln in inbound
    ), inbound
    tcp = [
        ln for ln in metrics.splitlines() if ln.startswith("istio_tcp_connections_opened_total{")
    ]
    assert any('destination_service_name="counter"' in ln for ln in tcp), tcp


QUERY = """
import json, sys, urllib.parse, urllib.request
url = "http://prometheus:9090/api/v1/query?" + urllib.parse.urlencode({"query": sys.argv[1]})
print(json.dumps(json.load(urllib.request.urlopen(url, timeout=10))["data"]["result"]))
"""


def test_prometheus_has_istio_metrics_for_the_demo(stack: Stack) -> None:
    answers(3)

    def query(promql: str) -> list[dict[str, Any]]:
        out = stack.exec("meshd", "python", "-c", QUERY, promql)
        result = json.loads(out.strip().splitlines()[-1])
        assert isinstance(result, list)
        return result

    def series_for(promql: str, label: str) -> set[str] | None:
        found = {str(r["metric"].get(label)) for r in query(promql)}
        return found or None

    services = eventually(
        "Prometheus to scrape istio_requests_total for api (reporter=destination)",
        lambda: series_for(
            'sum by (destination_service_name) (istio_requests_total{reporter="destination"})',
            "destination_service_name",
        ),
        timeout=45,
        context=lambda: json.dumps(query("up")),
    )
    assert "api" in services, services
    # The calling side's series come from another target (web's sidecar), scraped on its
    # own schedule: it may lag the destination's by up to a scrape interval.
    callers = eventually(
        "Prometheus to scrape istio_requests_total for api (reporter=source)",
        lambda: series_for(
            'sum by (source_workload) (istio_requests_total{reporter="source",'
            'destination_service_name="api"})',
            "source_workload",
        ),
        timeout=30,
        context=lambda: json.dumps(query("up")),
    )
    assert callers == {"web"}, callers
    assert series_for(
        'sum by (le) (istio_request_duration_milliseconds_bucket{destination_service_name="api"})',
        "le",
    )
    tcp = eventually(
        "istio_tcp_connections_opened_total for counter",
        lambda: series_for(
            "sum by (destination_service_name) (istio_tcp_connections_opened_total)",
            "destination_service_name",
        ),
        timeout=30,
    )
    assert "counter" in tcp, tcp
    # Every target is up: the four sidecars' admin ports and meshd's /metrics over HTTPS.
    up = {(str(r["metric"]["job"]), str(r["metric"]["instance"])): r["value"] for r in query("up")}
    assert {instance for _, instance in up} == {
        "web:15000",
        "api-v1:15000",
        "api-v2:15000",
        "counter:15000",
        "meshd:15012",
    }, up
    assert all(value[1] == "1" for value in up.values()), up
    # The config Prometheus runs is valid by its own tool.
    checked = stack.exec(
        "prometheus", "promtool", "check", "config", "/etc/prometheus/prometheus.yml"
    )
    assert "SUCCESS" in checked, checked


def test_the_demo_keeps_serving_while_meshd_is_stopped(stack: Stack) -> None:
    stack.compose("stop", "meshd")
    try:
        assert serve_through_outage(stack, "meshd") >= 10
        assert stack.health("web-sidecar") != "unhealthy"
    finally:
        stack.compose("start", "meshd")
    stack.wait_healthy("meshd")
    eventually("every sidecar to reconnect and be SYNCED", stack.synced)
    assert versions(answers()) == {"v1"}


def test_the_demo_keeps_serving_on_last_known_endpoints_while_consul_is_stopped(
    stack: Stack,
) -> None:
    stack.compose("stop", "consul")
    try:
        assert serve_through_outage(stack, "Consul") >= 10
    finally:
        stack.compose("start", "consul")
    stack.wait_healthy("consul", "meshd")
    # Consul kept its catalog (a server with a data volume); the sidecars report again.
    eventually("every sidecar to be SYNCED after Consul's restart", stack.synced)
    assert versions(answers()) == {"v1"}


def test_the_compose_file_defaults_to_public_images(docker_engine: DockerEngine) -> None:
    """Without the local image variables, `docker compose config` names the public
    images users pull, and meshd's own image."""
    env = dict.fromkeys(LOCAL_IMAGES, "")
    done = docker_engine.compose(
        "--profile",
        "monitoring",
        "config",
        files=[COMPOSE_FILE],
        project=PROJECT,
        cwd=COMPOSE_DIR,
        env=env,
    )
    images = {
        line.split("image:", 1)[1].strip() for line in done.stdout.splitlines() if "image:" in line
    }
    assert images == {
        "hashicorp/consul:1.20",
        "openbao/openbao:2.5.3",
        "meshd:local",
        "prom/prometheus:v3.4.0",
        "grafana/grafana:11.6.0",
    }, images
